"""The XMPP side of the whole-loop tests (``test_bridge_xmpp``, ``test_bridge_dual``): a gateway
account and the people's accounts on a fixture server, and a subscriber that keeps what it is
sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slixmpp import Iq, Message

from gateway.daemon import Gateway
from gateway.upstreams.xmpp import XmppUpstream
from gateway.upstreams.xmpp_stanzas import NS
from tests.bridge_fixtures import TIMEOUT, max_counter
from tests.servers import XmppServer
from tests.xmpp_fixtures import Peer


def xmpp_settings(server: XmppServer, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """An ``[xmpp]`` section for a fresh gateway account, and the JIDs of the people."""
    jids = {name: server.create_user(name, f"pw-{name}") for name in ("gw", "alice", "mallory")}
    secret = tmp_path / "xmpp-password"
    secret.write_text("pw-gw\n")
    secret.chmod(0o600)
    section = {
        "enabled": True,
        "jid": f"{jids['gw']}/duogate",
        "password": {"file": str(secret)},
        "host": server.host,
        "port": server.port,
        "tls": "starttls",
        "ca_file": str(server.ca_file),
        "subscribers": [jids["alice"]],
        "allowed_jids": [jids["alice"]],
        "keepalive_s": 10,
        "reconnect_max_s": 1.0,
    }
    return section, jids


def xmpp_of(gateway: Gateway) -> XmppUpstream:
    assert gateway.bridge is not None
    upstream = gateway.bridge.upstreams["xmpp"]
    assert isinstance(upstream, XmppUpstream)
    return upstream


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


class XmppWatcher:
    """A subscriber account that keeps every report and command result it is sent.

    ``drop`` forgets a connection whose server died; ``connect`` logs in again (messages sent
    meanwhile come from the server's offline storage).
    """

    def __init__(self, server: XmppServer, jid: str, password: str) -> None:
        self.server = server
        self.jid = jid
        self.password = password
        self.peer: Peer | None = None
        self.reports: list[dict[str, Any]] = []
        self.results: list[dict[str, str]] = []  # progress messages (accepted, sent)

    async def connect(self) -> XmppWatcher:
        peer = Peer(self.server, self.jid, self.password)
        peer.client.add_event_handler("message", self._on_message)
        self.peer = await peer.connect()
        return self

    async def drop(self) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            await peer.close()

    def _on_message(self, message: Message) -> None:
        if message.xml.find(f"{{{NS}}}report") is not None:
            self.reports.append(message["duogate_report"].to_wire())
        elif message.xml.find(f"{{{NS}}}result") is not None:
            result = message["duogate_result"]
            self.results.append({k: result[k] for k in ("id", "device", "status", "detail")})

    def by_device(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for report in self.reports:
            found.setdefault(report["device"], []).append(report)
        return found

    def counter(self, device: str) -> int:
        return max_counter(self.by_device().get(device, []))

    async def wait_for_counters(self, devices: list[str], counter: int) -> None:
        await wait_until(
            lambda: all(self.counter(d) >= counter for d in devices),
            f"XMPP reports up to counter {counter} from {devices}",
        )

    def statuses(self, command_id: str) -> list[str]:
        return [r["status"] for r in self.results if r["id"] == command_id]

    async def command(self, to: Any, **attributes: Any) -> Iq:
        assert self.peer is not None
        return await self.peer.command(to, **attributes)


def answer(iq: Iq) -> tuple[str, str, str | None]:
    """(IQ type, result status, the urn:duogate:1 element in <error/> if any)."""
    error = iq.xml.find("{jabber:client}error")
    extra = None
    if error is not None:
        extra = next((c.tag.split("}")[1] for c in error if c.tag.startswith(f"{{{NS}}}")), None)
    return iq["type"], iq["duogate_result"]["status"], extra
