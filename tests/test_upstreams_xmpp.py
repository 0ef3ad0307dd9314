"""XmppUpstream against a real prosody (TLS, XEP-0198, XEP-0199, XEP-0050).

A second slixmpp client plays the subscriber and the commander; the test plays the bridge.
Freezing prosody with SIGSTOP holds back its XEP-0198 acks, which shows that a publish
returns only once the server has acknowledged it.
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
from slixmpp import ClientXMPP, Iq, Message, Presence
from slixmpp.exceptions import IqError

from gateway.config import Secret, XmppSection
from gateway.model import CommandResult, CommandStatus, DeviceEvent, EventKind, Report
from gateway.timefmt import parse_rfc3339, rfc3339
from gateway.upstreams.base import IncomingCommand, UpstreamUnavailable
from gateway.upstreams.mqtt import UnpublishableItem
from gateway.upstreams.xmpp import XmppUpstream
from gateway.upstreams.xmpp_stanzas import AMP_NS, NS, register_stanza_plugins
from tests.servers import Prosody, free_port, make_self_signed_cert

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


def freeze(server: Prosody) -> None:
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGSTOP)


def thaw(server: Prosody) -> None:
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGCONT)


def report(n: int) -> Report:
    return Report(
        id=f"r-{n}", device=KNOWN, kind="lora", ts=1_790_000_000.0 + n, seq=n,
        data={"t": 20.0 + n, "door": "open"}, rssi=-90.5, snr=6.25,
    )  # fmt: skip


class Peer:
    """A stock XMPP client on its own account: receives reports, sends commands."""

    def __init__(self, server: Prosody, jid: str, password: str) -> None:
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
    prosody: Prosody
    upstream: XmppUpstream
    bridge: PlayBridge
    jids: dict[str, str]
    peers: dict[str, Peer] = field(default_factory=dict)

    async def peer(self, name: str) -> Peer:
        peer = await Peer(self.prosody, self.jids[name], f"pw-{name}").connect()
        self.peers[f"{name}-{len(self.peers)}"] = peer
        return peer


@contextlib.asynccontextmanager
async def running_rig(
    prosody: Prosody,
    tmp_path: Path,
    *,
    wait_connected: bool = True,
    ack_timeout_s: float = 10.0,
    **settings: Any,
) -> AsyncIterator[Rig]:
    jids = {
        name: prosody.create_user(name, f"pw-{name}") for name in ("gw", "alice", "bob", "mallory")
    }
    secret = tmp_path / "xmpp-password"
    secret.write_text("pw-gw\n")
    defaults: dict[str, Any] = {
        "host": prosody.host,
        "port": prosody.port,
        "tls": "starttls",
        "ca_file": prosody.ca_file,
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
    rig = Rig(prosody, upstream, bridge, jids)
    await upstream.start(bridge.on_command)
    try:
        if wait_connected:
            await wait_until(lambda: upstream.connected, 10)
        yield rig
    finally:
        if prosody.proc is not None:
            thaw(prosody)
        await upstream.stop()
        for peer in rig.peers.values():
            await peer.close()


@pytest.fixture
async def rig(prosody: Prosody, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(prosody, tmp_path) as rig:
        yield rig


async def test_reports_and_events_reach_every_subscriber(rig: Rig):
    alice, bob, mallory = await rig.peer("alice"), await rig.peer("bob"), await rig.peer("mallory")
    sent = report(1)
    await asyncio.wait_for(rig.upstream.publish_report(sent), 10)
    for peer in (alice, bob):
        message = await peer.next_with("report")
        assert message["type"] == "normal"
        assert message["from"] == rig.upstream.jid
        assert message["duogate_report"].to_wire() == sent.to_wire()
        assert "t=21.0" in message["body"]
    event = DeviceEvent(
        device=KNOWN, event=EventKind.OFFLINE, ts=1_790_000_100.0, detail={"after_s": 600}
    )
    await asyncio.wait_for(rig.upstream.publish_event(event), 10)
    received = (await bob.next_with("event"))["duogate_event"]
    assert (received["device"], received["event"], received["ts"], received["detail"]) == (
        KNOWN, "offline", "2026-09-21T14:15:00.000Z", {"after_s": 600},
    )  # fmt: skip
    assert mallory.messages.empty()
    assert rig.upstream.counters["stanzas_acked"] == 4
    poison = Report(id="r-nan", device=KNOWN, kind="lora", ts=1.0, seq=9, data={"t": float("nan")})
    with pytest.raises(UnpublishableItem, match="not plain JSON"):
        await rig.upstream.publish_report(poison)
    assert rig.upstream.counters["unsendable"] == 1 and rig.upstream.connected


async def test_presence_is_shared_with_known_contacts_only(rig: Rig):
    alice, mallory = await rig.peer("alice"), await rig.peer("mallory")
    gateway = rig.jids["gw"]
    alice.client.send_presence(pto=gateway, ptype="subscribe")
    online = await alice.next_presence(gateway, "available")
    assert online["from"] == rig.upstream.jid and online["status"] == "gateway online"
    mallory.client.send_presence(pto=gateway, ptype="subscribe")
    await wait_until(lambda: rig.upstream.counters["subscriptions_refused"] == 1)
    seen = [mallory.presences.get_nowait() for _ in range(mallory.presences.qsize())]
    assert not [p for p in seen if p["from"].bare == gateway and p["type"] == "available"]
    await rig.upstream.stop()
    await alice.next_presence(gateway, "unavailable")


async def test_publish_returns_only_after_the_server_ack(rig: Rig):
    alice = await rig.peer("alice")
    freeze(rig.prosody)
    publishing = asyncio.create_task(rig.upstream.publish_report(report(2)))
    await asyncio.sleep(1.0)
    assert not publishing.done(), "publish returned while the server could not have acked"
    thaw(rig.prosody)
    await asyncio.wait_for(publishing, 10)
    assert (await alice.next_with("report"))["duogate_report"]["id"] == "r-2"
    many = [rig.upstream.publish_report(report(n)) for n in range(10, 30)]
    await asyncio.wait_for(asyncio.gather(*many), 10)
    got = {(await alice.next_with("report"))["duogate_report"]["id"] for _ in range(20)}
    assert got == {f"r-{n}" for n in range(10, 30)}


async def test_commands_are_answered_with_their_outcome(rig: Rig):
    alice, mallory = await rig.peer("alice"), await rig.peer("mallory")
    gateway, bridge = rig.upstream.jid, rig.bridge
    now = time.time()

    answer = await alice.command(
        gateway,
        device=KNOWN,
        id="c1",
        action="relay",
        params='{"on": true}',
        amp_expire_at=now + 30,
    )
    assert answer["type"] == "result"
    assert (answer["duogate_result"]["id"], answer["duogate_result"]["status"]) == (
        "c1",
        "executed",
    )
    progress = await alice.next_with("result")
    assert (progress["duogate_result"]["id"], progress["duogate_result"]["status"]) == (
        "c1",
        "sent",
    )
    handed = bridge.commands[-1]
    assert handed.origin == "xmpp" and handed.device == KNOWN
    assert handed.body == {"id": "c1", "action": "relay", "params": {"on": True}}
    assert handed.expiry_s is not None and 0 < handed.expiry_s <= 30
    assert handed.reply_to == {"iq_id": answer["id"], "from": str(alice.client.boundjid)}

    failed = await refused(alice.command(gateway, device=KNOWN, id="c2", action="jam"))
    assert failed["error"]["condition"] == "undefined-condition"
    assert failed["error"]["text"] == "relay stuck"

    past = rfc3339(now - 5)
    expired = await refused(
        alice.command(gateway, device=KNOWN, id="c3", action="relay", expires=past)
    )
    assert expired["error"]["condition"] == "not-acceptable"
    assert expired["error"].xml.find(f"{{{NS}}}expired") is not None
    assert expired["duogate_result"]["status"] == "expired"
    amp_expired = await refused(
        alice.command(gateway, device=KNOWN, id="c4", action="relay", amp_expire_at=now - 5)
    )
    assert amp_expired["error"]["condition"] == "not-acceptable"
    assert bridge.commands[-1].expiry_s == 0.0

    unknown = await refused(alice.command(gateway, device=UNKNOWN, id="c5", action="relay"))
    assert unknown["error"]["condition"] == "item-not-found"
    no_action = await refused(alice.command(gateway, device=KNOWN, id="c6"))
    assert no_action["error"]["condition"] == "bad-request"
    timed_out = await refused(alice.command(gateway, device=KNOWN, id="c7", action="sleep"))
    assert timed_out["error"]["condition"] == "remote-server-timeout"
    assert len(bridge.commands) == 7

    bad_params = await refused(
        alice.command(gateway, device=KNOWN, id="c8", action="relay", params="{on")
    )
    assert bad_params["error"]["condition"] == "bad-request"
    assert "params is not JSON" in bad_params["error"]["text"]
    no_device = await refused(alice.command(gateway, id="c9", action="relay"))
    assert no_device["error"]["condition"] == "bad-request"
    intruder = await refused(mallory.command(gateway, device=KNOWN, id="c10", action="relay"))
    assert intruder["error"]["condition"] == "forbidden"
    assert len(bridge.commands) == 7, "refused commands must not reach the bridge"
    assert rig.upstream.counters["commands_malformed"] == 2
    assert rig.upstream.counters["commands_forbidden"] == 1


async def test_server_loss_fails_pending_publishes_and_reconnects(rig: Rig):
    upstream, server = rig.upstream, rig.prosody
    freeze(server)
    pending = [asyncio.create_task(upstream.publish_report(report(n))) for n in (1, 2, 3)]
    await asyncio.sleep(0.3)
    server.kill()  # the server dies with the stanzas unacknowledged
    for publishing in pending:
        with pytest.raises(UpstreamUnavailable):
            await asyncio.wait_for(publishing, 10)
    assert not upstream.connected
    with pytest.raises(UpstreamUnavailable):
        await upstream.publish_report(report(4))
    server.start()
    await wait_until(lambda: upstream.connected, 15)
    alice = await rig.peer("alice")
    for n in (1, 2, 3, 4):  # the bridge resends what the outbox still holds
        await asyncio.wait_for(upstream.publish_report(report(n)), 10)
    got = [(await alice.next_with("report"))["duogate_report"]["id"] for _ in range(4)]
    assert got == ["r-1", "r-2", "r-3", "r-4"]
    answer = await alice.command(upstream.jid, device=KNOWN, id="c1", action="relay")
    assert answer["duogate_result"]["status"] == "executed"


async def test_a_server_that_stops_acking_is_dropped_and_the_stream_resumed(
    prosody: Prosody, tmp_path: Path
):
    async with running_rig(prosody, tmp_path, ack_timeout_s=2.0) as rig:
        alice = await rig.peer("alice")
        freeze(prosody)
        with pytest.raises(UpstreamUnavailable, match="no server ack"):
            await asyncio.wait_for(rig.upstream.publish_report(report(1)), 10)
        assert not rig.upstream.connected
        thaw(prosody)
        await wait_until(lambda: rig.upstream.connected)
        assert rig.upstream.counters["resumed"] == 1
        await asyncio.wait_for(rig.upstream.publish_report(report(1)), 10)
        got = {(await alice.next_with("report"))["duogate_report"]["id"] for _ in range(2)}
        assert got == {"r-1"}, "delivered twice (first stream or its resumption, then the bridge)"


class Relay:
    """A TCP relay in front of prosody whose connections the test can cut."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()

    def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_stream_is_resumed_after_a_network_cut(prosody: Prosody, tmp_path: Path):
    relay = Relay(prosody.host, prosody.port)
    port = await relay.start()
    try:
        async with running_rig(prosody, tmp_path, port=port) as rig:
            alice = await rig.peer("alice")
            await asyncio.wait_for(rig.upstream.publish_report(report(1)), 10)
            relay.cut()
            await wait_until(lambda: rig.upstream.counters["resumed"] == 1)
            await asyncio.wait_for(rig.upstream.publish_report(report(2)), 10)
            got = {(await alice.next_with("report"))["duogate_report"]["id"] for _ in range(2)}
            assert got == {"r-1", "r-2"}
            answer = await alice.command(rig.upstream.jid, device=KNOWN, id="c1", action="relay")
            assert answer["duogate_result"]["status"] == "executed"
    finally:
        relay.close()


async def test_adhoc_commands_for_desktop_clients(rig: Rig):
    alice, mallory = await rig.peer("alice"), await rig.peer("mallory")
    gateway = rig.upstream.jid
    adhoc = alice.client.plugin["xep_0050"]

    listing = await adhoc.get_commands(gateway)
    nodes = {item[1] for item in listing["disco_items"]["items"]}
    assert {"list-devices", "send-command"} <= nodes

    devices = await adhoc.send_command(gateway, "list-devices")
    assert devices["command"]["status"] == "completed"
    rows = devices["command"]["form"]["items"]
    assert [(row["device"], row["online"]) for row in rows] == [
        (KNOWN, "true"), ("modbus-bus1-3", "false"),
    ]  # fmt: skip

    form = await adhoc.send_command(gateway, "send-command")
    assert form["command"]["status"] == "executing"
    device_field = form["command"]["form"].get_fields()["device"]
    assert KNOWN in [option["value"] for option in device_field["options"]]
    submit = alice.client.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in (
        ("device", KNOWN),
        ("action", "relay"),
        ("params", '{"on": false}'),
        ("ttl_s", "20"),
    ):
        submit.add_field(var=var, value=value)
    done = await adhoc.send_command(
        gateway, "send-command", action="complete", payload=submit,
        sessionid=form["command"]["sessionid"],
    )  # fmt: skip
    assert done["command"]["status"] == "completed"
    level, note = done["command"]["notes"][0]
    assert level == "info" and note == f"{KNOWN} relay: executed"
    handed = rig.bridge.commands[-1]
    assert handed.body["params"] == {"on": False} and handed.body["ttl_s"] == 20.0
    assert handed.reply_to["from"] == str(alice.client.boundjid)

    forbidden = await refused(
        mallory.client.plugin["xep_0050"].send_command(gateway, "list-devices")
    )
    assert forbidden["error"]["condition"] == "forbidden"


def variant_prosody(workdir: Path, edit: Callable[[str], str]) -> Prosody:
    """The harness's prosody with its configuration edited before the first start."""
    server = Prosody(workdir)
    server.config_path.write_text(edit(server.config_path.read_text()))
    server.start()
    return server


async def test_direct_tls(tmp_path: Path):
    direct_port = free_port()
    server = variant_prosody(
        tmp_path / "direct",
        lambda text: text.replace(
            "c2s_direct_tls_ports = { }", f"c2s_direct_tls_ports = {{ {direct_port} }}"
        ),
    )
    try:
        async with running_rig(server, tmp_path, port=direct_port, tls="direct") as rig:
            alice = await rig.peer("alice")
            await asyncio.wait_for(rig.upstream.publish_report(report(1)), 10)
            assert (await alice.next_with("report"))["duogate_report"]["id"] == "r-1"
    finally:
        server.kill()


async def test_without_stream_management_a_ping_confirms_delivery(tmp_path: Path):
    server = variant_prosody(tmp_path / "nosm", lambda text: text.replace('"smacks";', ""))
    try:
        async with running_rig(server, tmp_path) as rig:
            alice = await rig.peer("alice")
            freeze(server)
            publishing = asyncio.create_task(rig.upstream.publish_report(report(1)))
            await asyncio.sleep(1.0)
            assert not publishing.done(), "publish returned while the server was frozen"
            thaw(server)
            await asyncio.wait_for(publishing, 10)
            assert (await alice.next_with("report"))["duogate_report"]["id"] == "r-1"
            assert rig.upstream.counters["resumed"] == 0
    finally:
        server.kill()


async def test_an_untrusted_server_certificate_is_refused(prosody: Prosody, tmp_path: Path):
    other_ca, _ = make_self_signed_cert(tmp_path, "localhost")
    async with running_rig(prosody, tmp_path, ca_file=other_ca, wait_connected=False) as rig:
        await wait_until(lambda: rig.upstream.counters["reconnects"] >= 2)
        assert not rig.upstream.connected
        with pytest.raises(UpstreamUnavailable):
            await rig.upstream.publish_report(report(1))
    assert "Authenticated" not in prosody.log_tail(200)
