"""XMPP test helpers shared by the upstream, ad-hoc and bridge tests.

``Peer`` is a stock slixmpp client on its own account (subscriber, sender of command IQs);
``TextClient`` is a second, independent XMPP implementation (xmpppy) that plays a text client
such as Profanity for the ad-hoc forms, so their rendering is not checked by the library the
gateway itself uses. ``running_rig`` starts an ``XmppUpstream`` against a fixture server with
``PlayBridge`` in place of the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import xmpp
from slixmpp import ClientXMPP, Iq, Message, Presence
from slixmpp.exceptions import IqError

from gateway.config import Secret, XmppSection
from gateway.model import CommandResult, CommandStatus, IncomingCommand, Report
from gateway.timefmt import parse_rfc3339, rfc3339
from gateway.upstreams.xmpp import XmppUpstream
from gateway.upstreams.xmpp_stanzas import AMP_NS, NS, register_stanza_plugins
from tests.servers import XmppServer

KNOWN = "lora-0000000000000001"
UNKNOWN = "lora-00000000000000ff"
DEVICES = [
    {"device": KNOWN, "kind": "lora", "name": "greenhouse", "online": True},
    {"device": "modbus-bus1-3", "kind": "modbus", "name": "meter", "online": False},
]


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def freeze(server: XmppServer) -> None:
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGSTOP)


def thaw(server: XmppServer) -> None:
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGCONT)


def report(n: int) -> Report:
    return Report(
        id=f"r-{n}", device=KNOWN, kind="lora", ts=1_790_000_000.0 + n, seq=n,
        data={"t": 20.0 + n, "door": "open"}, rssi=-90.5, snr=6.25,
    )  # fmt: skip


class Peer:
    """A stock XMPP client on its own account: receives reports, sends commands."""

    def __init__(self, server: XmppServer, jid: str, password: str) -> None:
        register_stanza_plugins()
        self.server = server
        self.client = ClientXMPP(f"{jid}/desk", password)
        self.client.ssl_context = ssl.create_default_context(cafile=str(server.ca_file))
        self.client.enable_direct_tls = False
        for plugin in ("xep_0030", "xep_0004", "xep_0050"):
            self.client.register_plugin(plugin)
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.presences: asyncio.Queue[Presence] = asyncio.Queue()
        self.client.add_event_handler("message", self.messages.put_nowait)
        for kind in ("presence_available", "presence_unavailable", "presence_subscribed",
                     "presence_unsubscribed"):  # fmt: skip
            self.client.add_event_handler(kind, self.presences.put_nowait)
        self.online = asyncio.Event()
        self.client.add_event_handler("session_start", self._started)

    def _started(self, _event: Any) -> None:
        self.client.send_presence()
        self.online.set()

    async def connect(self) -> Peer:
        self.client.connect(self.server.host, self.server.port)
        await asyncio.wait_for(self.online.wait(), 10)
        # A round trip after the initial presence: the server handles a stream's stanzas in
        # order, so once it answers, it takes this peer as available and delivers to it
        # (before, a message sent at once could go to offline storage instead).
        disco = self.client.plugin["xep_0030"]
        await disco.get_info(jid=self.client.boundjid.domain, timeout=10)
        return self

    async def close(self) -> None:
        self.client.cancel_connection_attempt()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(wait=1.0), 2.0)
        self.client.abort()

    async def next_with(self, element: str, timeout: float = 10.0) -> Message:
        """The next message carrying ``<element xmlns='urn:duogate:1'/>``."""
        while True:
            message = await asyncio.wait_for(self.messages.get(), timeout)
            if message.xml.find(f"{{{NS}}}{element}") is not None:
                return message

    async def next_presence(self, sender: str, kind: str, timeout: float = 10.0) -> Presence:
        """The next presence of type ``kind`` from ``sender`` (bare JID); others are skipped."""
        while True:
            presence = await asyncio.wait_for(self.presences.get(), timeout)
            if presence["from"].bare == sender and presence["type"] == kind:
                return presence

    async def command(
        self,
        to: Any,
        *,
        params: str | None = None,
        amp_expire_at: float | None = None,
        **attributes: str,
    ) -> Iq:
        iq = self.client.make_iq_set(ito=to)
        element = iq["duogate_command"]
        for name, value in attributes.items():
            element[name] = value
        if params is not None:
            ET.SubElement(element.xml, f"{{{NS}}}params").text = params
        if amp_expire_at is not None:
            amp = ET.SubElement(element.xml, f"{{{AMP_NS}}}amp")
            ET.SubElement(
                amp, f"{{{AMP_NS}}}rule",
                condition="expire-at", action="drop", value=rfc3339(amp_expire_at),
            )  # fmt: skip
        return await iq.send(timeout=10)


async def refused(request: Any) -> Iq:
    """The error IQ a request was answered with."""
    with pytest.raises(IqError) as caught:
        await request
    return caught.value.iq


class PlayBridge:
    """What the bridge does with a command, reduced to a table of outcomes."""

    def __init__(self) -> None:
        self.commands: list[IncomingCommand] = []
        self.upstream: XmppUpstream | None = None

    async def on_command(self, command: IncomingCommand) -> None:
        assert self.upstream is not None
        self.commands.append(command)
        status, detail = self._decide(command)
        body = command.body if isinstance(command.body, dict) else {}
        command_id = str(body.get("id", "?"))
        if status is CommandStatus.EXECUTED:
            sent = CommandResult(command_id, command.device, CommandStatus.SENT, time.time())
            await self.upstream.publish_result(sent, command.reply_to)
        result = CommandResult(command_id, command.device, status, time.time(), detail)
        await self.upstream.publish_result(result, command.reply_to)

    @staticmethod
    def _decide(command: IncomingCommand) -> tuple[CommandStatus, str | None]:
        body = command.body
        if not isinstance(body, dict) or "action" not in body:
            return CommandStatus.REJECTED, "action is missing"
        if command.device not in {d["device"] for d in DEVICES}:
            return CommandStatus.REJECTED, f"unknown device {command.device}"
        expires_at = body.get("expires_at")
        if expires_at is not None and parse_rfc3339(str(expires_at)) <= time.time():
            return CommandStatus.EXPIRED, "expires_at has passed"
        if command.expiry_s is not None and command.expiry_s <= 0:
            return CommandStatus.EXPIRED, "transport expiry has passed"
        return {
            "relay": (CommandStatus.EXECUTED, None),
            "jam": (CommandStatus.FAILED, "relay stuck"),
            "sleep": (CommandStatus.TIMEOUT, None),
        }.get(str(body["action"]), (CommandStatus.REJECTED, "unknown action"))


@dataclass
class Rig:
    server: XmppServer
    upstream: XmppUpstream
    bridge: PlayBridge
    jids: dict[str, str]
    peers: dict[str, Peer] = field(default_factory=dict)

    async def peer(self, name: str) -> Peer:
        peer = await Peer(self.server, self.jids[name], f"pw-{name}").connect()
        self.peers[f"{name}-{len(self.peers)}"] = peer
        return peer


@contextlib.asynccontextmanager
async def running_rig(
    server: XmppServer,
    tmp_path: Path,
    *,
    wait_connected: bool = True,
    ack_timeout_s: float = 10.0,
    **settings: Any,
) -> AsyncIterator[Rig]:
    jids = {
        name: server.create_user(name, f"pw-{name}") for name in ("gw", "alice", "bob", "mallory")
    }
    secret = tmp_path / "xmpp-password"
    secret.write_text("pw-gw\n")
    defaults: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "tls": "starttls",
        "ca_file": server.ca_file,
    }
    config = XmppSection(
        enabled=True,
        jid=f"{jids['gw']}/duogate",
        password=Secret(file=secret),
        subscribers=[jids["alice"], jids["bob"]],
        allowed_jids=[jids["alice"]],
        keepalive_s=10,
        reconnect_max_s=1.0,
        **(defaults | settings),
    )
    bridge = PlayBridge()
    upstream = XmppUpstream(
        config, lambda: DEVICES, ack_timeout_s=ack_timeout_s, connect_timeout_s=10, adhoc_wait_s=5
    )
    bridge.upstream = upstream
    rig = Rig(server, upstream, bridge, jids)
    await upstream.start(bridge.on_command)
    try:
        if wait_connected:
            await wait_until(lambda: upstream.connected, 10)
        yield rig
    finally:
        if server.proc is not None:
            thaw(server)
        await upstream.stop()
        for peer in rig.peers.values():
            await peer.close()


COMMANDS_NS = "http://jabber.org/protocol/commands"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DATA_NS = "jabber:x:data"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class TextClient:
    """An account driven by xmpppy: raw disco and ad-hoc IQs out, answers as ElementTree.

    xmpppy is synchronous, so every exchange runs in a worker thread while the gateway keeps
    the event loop. It does not check the server certificate (the fixture servers use their
    own CA; the gateway's certificate checks are tested with slixmpp elsewhere).
    """

    def __init__(self, server: XmppServer, jid: str, password: str) -> None:
        self.server = server
        self.jid = xmpp.JID(jid)
        self.password = password
        self.client = xmpp.Client(self.jid.getDomain(), debug=[])

    async def connect(self) -> TextClient:
        await asyncio.to_thread(self._login)
        return self

    def _login(self) -> None:
        if self.client.connect(server=(self.server.host, self.server.port)) != "tls":
            raise AssertionError(f"{self.jid}: no STARTTLS session with {self.server.name}")
        if not self.client.auth(self.jid.getNode(), self.password, resource="text"):
            raise AssertionError(f"{self.jid}: login refused by {self.server.name}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.client.disconnect)

    async def ask(self, iq: xmpp.Iq, timeout: float = 10.0) -> ET.Element:
        """Send ``iq`` and return the answer (result or error) as an element."""
        answer = await asyncio.to_thread(self.client.SendAndWaitForResponse, iq, timeout)
        if answer is None:
            raise AssertionError(f"no answer within {timeout:.0f} s to {iq}")
        return ET.fromstring(str(answer))

    async def disco_items(self, to: str, node: str) -> ET.Element:
        iq = xmpp.Iq("get", DISCO_ITEMS_NS, to=to)
        iq.setQuerynode(node)
        return await self.ask(iq)

    async def disco_info(self, to: str, node: str) -> ET.Element:
        iq = xmpp.Iq("get", DISCO_INFO_NS, to=to)
        iq.setQuerynode(node)
        return await self.ask(iq)

    async def execute(
        self,
        to: str,
        node: str,
        *,
        action: str = "execute",
        sessionid: str | None = None,
        submit: dict[str, str] | None = None,
    ) -> ET.Element:
        """An XEP-0050 request; ``submit`` fills a submitted data form (field var -> value)."""
        iq = xmpp.Iq("set", to=to)
        attributes = {"node": node, "action": action}
        if sessionid is not None:
            attributes["sessionid"] = sessionid
        command = iq.addChild("command", attributes, namespace=COMMANDS_NS)
        if submit is not None:
            form = command.addChild("x", {"type": "submit"}, namespace=DATA_NS)
            for var, value in submit.items():
                form.addChild("field", {"var": var}).addChild("value").setData(value)
        return await self.ask(iq)


def error_condition(answer: ET.Element) -> str | None:
    """The RFC 6120 condition of an error IQ (``forbidden``, ...), None for a result."""
    if answer.get("type") != "error":
        return None
    error = answer.find("{jabber:client}error")
    assert error is not None, ET.tostring(answer)
    for child in error:
        if child.tag.startswith(f"{{{STANZAS_NS}}}") and child.tag != f"{{{STANZAS_NS}}}text":
            return child.tag.split("}", 1)[1]
    raise AssertionError(f"error without a condition: {ET.tostring(answer)!r}")
