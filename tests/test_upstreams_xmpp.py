"""XmppUpstream against real prosody and ejabberd (TLS, XEP-0198, XEP-0199).

A second slixmpp client plays the subscriber and the commander; the test plays the bridge.
Freezing the server with SIGSTOP holds back its XEP-0198 acks, which shows that a publish
returns only once the server has acknowledged it. The ad-hoc commands (XEP-0050) are tested
with another XMPP library in test_upstreams_xmpp_adhoc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.model import DeviceEvent, EventKind, Report
from gateway.timefmt import rfc3339
from gateway.upstreams.base import UnpublishableItem, UpstreamUnavailable
from gateway.upstreams.xmpp_stanzas import NS
from tests.servers import Ejabberd, Prosody, XmppServer, free_port, make_self_signed_cert
from tests.xmpp_fixtures import (
    KNOWN,
    UNKNOWN,
    Peer,
    Rig,
    freeze,
    refused,
    report,
    running_rig,
    thaw,
    wait_until,
)

# Re-exported for the other test modules that drive a command peer.
__all__ = ["Peer", "refused"]


@pytest.fixture
async def rig(xmpp_server: XmppServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(xmpp_server, tmp_path) as rig:
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
    freeze(rig.server)
    publishing = asyncio.create_task(rig.upstream.publish_report(report(2)))
    await asyncio.sleep(1.0)
    assert not publishing.done(), "publish returned while the server could not have acked"
    thaw(rig.server)
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
    upstream, server = rig.upstream, rig.server
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
    xmpp_server: XmppServer, tmp_path: Path
):
    async with running_rig(xmpp_server, tmp_path, ack_timeout_s=2.0) as rig:
        alice = await rig.peer("alice")
        freeze(xmpp_server)
        with pytest.raises(UpstreamUnavailable, match="no server ack"):
            await asyncio.wait_for(rig.upstream.publish_report(report(1)), 10)
        assert not rig.upstream.connected
        thaw(xmpp_server)
        await wait_until(lambda: rig.upstream.connected)
        assert rig.upstream.counters["resumed"] == 1
        await asyncio.wait_for(rig.upstream.publish_report(report(1)), 10)
        got = {(await alice.next_with("report"))["duogate_report"]["id"] for _ in range(2)}
        assert got == {"r-1"}, "delivered twice (first stream or its resumption, then the bridge)"


class Relay:
    """A TCP relay in front of the server whose connections the test can cut."""

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


async def test_stream_is_resumed_after_a_network_cut(xmpp_server: XmppServer, tmp_path: Path):
    relay = Relay(xmpp_server.host, xmpp_server.port)
    port = await relay.start()
    try:
        async with running_rig(xmpp_server, tmp_path, port=port) as rig:
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


def variant_server(
    kind: str, workdir: Path, *, direct_tls_port: int | None = None, stream_management: bool = True
) -> XmppServer:
    """The harness's prosody or ejabberd with direct TLS added or stream management left out."""
    server: XmppServer
    if kind == "ejabberd":
        server = Ejabberd(
            workdir, direct_tls_port=direct_tls_port, stream_management=stream_management
        )
    else:
        server = Prosody(workdir)
        text = server.config_path.read_text()
        if direct_tls_port is not None:
            text = text.replace(
                "c2s_direct_tls_ports = { }", f"c2s_direct_tls_ports = {{ {direct_tls_port} }}"
            )
        if not stream_management:
            text = text.replace('"smacks";', "")
        server.config_path.write_text(text)
    server.start()
    return server


SERVER_KINDS = pytest.mark.parametrize("kind", ["prosody", "ejabberd"])


@SERVER_KINDS
async def test_direct_tls(kind: str, tmp_path: Path):
    direct_port = free_port()
    server = variant_server(kind, tmp_path / "direct", direct_tls_port=direct_port)
    try:
        async with running_rig(server, tmp_path, port=direct_port, tls="direct") as rig:
            alice = await rig.peer("alice")
            await asyncio.wait_for(rig.upstream.publish_report(report(1)), 10)
            assert (await alice.next_with("report"))["duogate_report"]["id"] == "r-1"
    finally:
        server.kill()


@SERVER_KINDS
async def test_without_stream_management_a_ping_confirms_delivery(kind: str, tmp_path: Path):
    server = variant_server(kind, tmp_path / "nosm", stream_management=False)
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


# What each server logs when a client logs in.
LOGIN_LOG_LINE = {"prosody": "Authenticated", "ejabberd": "Accepted c2s"}


async def test_an_untrusted_server_certificate_is_refused(xmpp_server: XmppServer, tmp_path: Path):
    other_ca, _ = make_self_signed_cert(tmp_path, "localhost")
    async with running_rig(xmpp_server, tmp_path, ca_file=other_ca, wait_connected=False) as rig:
        await wait_until(lambda: rig.upstream.counters["reconnects"] >= 2)
        assert not rig.upstream.connected
        with pytest.raises(UpstreamUnavailable):
            await rig.upstream.publish_report(report(1))
    assert LOGIN_LOG_LINE[xmpp_server.name] not in xmpp_server.log_tail(200)
