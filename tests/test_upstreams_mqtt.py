from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import Config
from gateway.model import (
    CommandResult,
    CommandStatus,
    DeviceEvent,
    EventKind,
    IncomingCommand,
)
from gateway.store.outbox import Outbox
from gateway.upstreams.base import UnpublishableItem, UpstreamUnavailable
from gateway.upstreams.mqtt import MqttSetupError, MqttUpstream
from tests.mqtt_upstream_fixtures import DEVICE, mqtt_config, report
from tests.servers import Mosquitto

PREFIX = "duogate/gwtest"
TIMEOUT = 15.0


# -- helpers --------------------------------------------------------------------------------


def make_config(host: str, port: int, **mqtt: Any) -> Config:
    return mqtt_config("gwtest", host, port, **mqtt)


class Observer:
    """An application on the broker: a threaded paho client that records what it receives."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: list[str],
        *,
        protocol: int = paho.MQTTv5,
        client_id: str = "",
        tls: dict[str, Path] | None = None,
    ) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if tls is not None:
            self.client.tls_set(
                ca_certs=str(tls["ca_file"]),
                certfile=str(tls["cert_file"]),
                keyfile=str(tls["key_file"]),
            )
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(host, port, 30)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(topic, 1) for topic in topics])
            assert subscribed.wait(TIMEOUT), "observer subscription not acknowledged"

    async def next(self, topic: str | None = None, timeout: float = TIMEOUT) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message on {topic or 'any topic'} in {timeout}s")
            try:
                msg = await asyncio.to_thread(self.messages.get, True, min(left, 0.5))
            except queue.Empty:
                continue
            if topic is None or msg.topic == topic:
                return msg

    def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, **props: Any
    ) -> None:
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        self.client.publish(topic, payload, 1, retain, properties).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class TcpProxy:
    """A TCP relay between the gateway and the broker that can stall or cut the connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers += [writer, up_writer]
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def sever(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.flowing.set()
        self.sever()
        self.server.close()
        await self.server.wait_closed()


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def ignore_commands(incoming: IncomingCommand) -> None:
    return None


async def started(config: Config, handler: Any = ignore_commands, **kwargs: Any) -> MqttUpstream:
    upstream = MqttUpstream(config, **kwargs)
    await upstream.start(handler)
    assert await upstream.wait_connected(TIMEOUT), "upstream did not connect"
    return upstream


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[TcpProxy]:
    relay = TcpProxy(mosquitto.host, mosquitto.port)
    await relay.start()
    yield relay
    await relay.close()


# -- reports and status ---------------------------------------------------------------------


async def test_reports_arrive_in_order_with_qos1(mosquitto: Mosquitto) -> None:
    observer = Observer(mosquitto.host, mosquitto.port, [f"{PREFIX}/devices/+/report"])
    upstream = await started(make_config(mosquitto.host, mosquitto.port))
    try:
        # Several publishes in flight at once (the in-flight window), order still kept.
        await asyncio.gather(*(upstream.publish_report(report(n)) for n in range(30)))
        for n in range(30, 40):
            await upstream.publish_report(report(n))
        for n in range(40):
            msg = await observer.next()
            assert msg.topic == f"{PREFIX}/devices/{DEVICE}/report"
            assert msg.qos == 1
            assert json.loads(msg.payload) == report(n).to_wire()
        assert upstream.stats["published"] >= 41  # 40 reports + the birth message
    finally:
        await upstream.stop()
        observer.close()


async def test_a_report_json_cannot_carry_is_refused_and_the_next_one_goes_out(
    mosquitto: Mosquitto,
) -> None:
    observer = Observer(mosquitto.host, mosquitto.port, [f"{PREFIX}/devices/+/report"])
    upstream = await started(make_config(mosquitto.host, mosquitto.port))
    try:
        for data in ({"temperature": float("nan")}, {"readings": {1, 2}}):
            bad = dataclasses.replace(report(1), data=data)
            with pytest.raises(UnpublishableItem, match="not plain JSON"):
                await upstream.publish_report(bad)
        await upstream.publish_report(report(2))
        message = await observer.next()
        assert json.loads(message.payload) == report(2).to_wire()
    finally:
        await upstream.stop()
        observer.close()


async def test_events_and_retained_online_status(mosquitto: Mosquitto) -> None:
    upstream = await started(make_config(mosquitto.host, mosquitto.port))
    try:
        observer = Observer(
            mosquitto.host, mosquitto.port, [f"{PREFIX}/status", f"{PREFIX}/devices/+/event"]
        )
        status = await observer.next(f"{PREFIX}/status")
        assert (status.payload, status.retain) == (b"online", True)
        event = DeviceEvent(DEVICE, EventKind.JOINED, 1_780_000_000.5, {"address": 7})
        await upstream.publish_event(event)
        msg = await observer.next(f"{PREFIX}/devices/{DEVICE}/event")
        assert json.loads(msg.payload) == event.to_wire()
        observer.close()
    finally:
        await upstream.stop()
    late = Observer(mosquitto.host, mosquitto.port, [f"{PREFIX}/status"])
    try:
        status = await late.next(f"{PREFIX}/status")
        assert (status.payload, status.retain) == (b"offline", True)  # clean stop says so too
    finally:
        late.close()


async def test_outbox_entry_stays_until_puback(
    mosquitto: Mosquitto, proxy: TcpProxy, tmp_path: Path
) -> None:
    upstream = await started(make_config("127.0.0.1", proxy.port, publish_timeout_s=10.0))
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    try:
        await outbox.add_durable(report(1))
        (entry,) = await outbox.pending("mqtt")
        proxy.flowing.clear()  # the broker's PUBACK cannot reach the gateway
        publish = asyncio.ensure_future(upstream.publish_report(entry.item))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        assert not publish.done()
        assert outbox.size == 1
        proxy.flowing.set()
        await asyncio.wait_for(publish, TIMEOUT)
        outbox.mark_delivered("mqtt", [entry.entry_id])
        await outbox.flush()
        assert outbox.size == 0
    finally:
        await outbox.close()
        await upstream.stop()


async def test_a_message_larger_than_the_socket_takes_goes_out_whole_once_it_drains(
    mosquitto: Mosquitto, proxy: TcpProxy
) -> None:
    observer = Observer(mosquitto.host, mosquitto.port, [f"{PREFIX}/bulk"])
    upstream = await started(make_config("127.0.0.1", proxy.port, publish_timeout_s=10.0))
    try:
        payload = bytes(range(256)) * 16384  # 4 MiB: far more than a socket buffer holds
        proxy.flowing.clear()  # the broker side takes nothing for now
        bulk = asyncio.ensure_future(upstream.extras.publish_raw(f"{PREFIX}/bulk", payload, 1))
        behind = asyncio.ensure_future(upstream.publish_report(report(1)))
        await asyncio.sleep(0.3)
        assert not bulk.done() and not behind.done()
        proxy.flowing.set()
        await asyncio.wait_for(asyncio.gather(bulk, behind), TIMEOUT)
        message = await observer.next(f"{PREFIX}/bulk")
        assert message.payload == payload
    finally:
        await upstream.stop()
        observer.close()


async def test_missing_puback_times_out_as_unavailable(
    mosquitto: Mosquitto, proxy: TcpProxy
) -> None:
    upstream = await started(make_config("127.0.0.1", proxy.port, publish_timeout_s=0.5))
    try:
        proxy.flowing.clear()
        with pytest.raises(UpstreamUnavailable, match="acknowledgement"):
            await upstream.publish_report(report(1))
        assert upstream.stats["publish_failures"] == 1
    finally:
        proxy.flowing.set()
        await upstream.stop()


async def test_broker_stop_then_reconnect(mosquitto: Mosquitto) -> None:
    upstream = await started(make_config(mosquitto.host, mosquitto.port))
    try:

        async def publish_until_failure() -> UpstreamUnavailable:
            n = 0
            while True:
                try:
                    await upstream.publish_report(report(n))
                except UpstreamUnavailable as exc:
                    return exc
                n += 1

        publisher = asyncio.ensure_future(publish_until_failure())
        await asyncio.sleep(0.2)
        await asyncio.to_thread(mosquitto.stop)
        failure = await asyncio.wait_for(publisher, TIMEOUT)
        assert isinstance(failure, UpstreamUnavailable)
        assert not upstream.connected
        with pytest.raises(UpstreamUnavailable):
            await upstream.publish_report(report(10_000))

        await asyncio.to_thread(mosquitto.start)
        assert await upstream.wait_connected(TIMEOUT)
        observer = Observer(mosquitto.host, mosquitto.port, [f"{PREFIX}/devices/+/report"])
        await upstream.publish_report(report(20_000))
        msg = await observer.next()
        assert json.loads(msg.payload)["seq"] == 20_000
        observer.close()
        assert upstream.stats["disconnects"] >= 1
        assert upstream.stats["connects"] >= 2
    finally:
        await upstream.stop()


async def test_last_will_when_connection_is_cut(mosquitto: Mosquitto, proxy: TcpProxy) -> None:
    observer = Observer(mosquitto.host, mosquitto.port, [f"{PREFIX}/status"])
    upstream = await started(make_config("127.0.0.1", proxy.port))
    try:
        assert (await observer.next()).payload == b"online"
        proxy.sever()
        will = await observer.next()
        assert will.payload == b"offline"
        # The gateway reconnects by itself and says so.
        assert (await observer.next()).payload == b"online"
        await wait_until(lambda: upstream.connected)
        await upstream.publish_report(report(1))
    finally:
        await upstream.stop()
        observer.close()


async def test_mqtt311_mode(mosquitto: Mosquitto) -> None:
    observer = Observer(
        mosquitto.host,
        mosquitto.port,
        [f"{PREFIX}/devices/+/report", f"{PREFIX}/devices/+/command/result"],
        protocol=paho.MQTTv311,
    )
    received: asyncio.Queue[IncomingCommand] = asyncio.Queue()

    async def handler(incoming: IncomingCommand) -> None:
        await received.put(incoming)

    # A retained command must never be executed when the gateway (re)subscribes.
    observer.publish(
        f"{PREFIX}/devices/{DEVICE}/command", json.dumps({"id": "old", "action": "x"}), retain=True
    )
    upstream = await started(make_config(mosquitto.host, mosquitto.port, protocol="3.1.1"), handler)
    try:
        await upstream.publish_report(report(3))
        assert json.loads((await observer.next()).payload)["seq"] == 3

        observer.publish(f"{PREFIX}/devices/{DEVICE}/command", '{"id": "c1", "action": "ping"}')
        incoming = await asyncio.wait_for(received.get(), TIMEOUT)
        assert incoming.body == {"id": "c1", "action": "ping"}
        assert (incoming.expiry_s, incoming.reply_to) == (None, {})
        assert upstream.stats["retained_commands_dropped"] == 1
        assert received.empty()

        result = CommandResult("c1", DEVICE, CommandStatus.ACCEPTED, 1_780_000_000.0)
        await upstream.publish_result(result, incoming.reply_to)
        msg = await observer.next(f"{PREFIX}/devices/{DEVICE}/command/result")
        assert json.loads(msg.payload) == result.to_wire()
    finally:
        await upstream.stop()
        observer.publish(f"{PREFIX}/devices/{DEVICE}/command", b"", retain=True)
        observer.close()


# -- commands -------------------------------------------------------------------------------


async def test_command_with_response_topic_correlation_and_expiry(mosquitto: Mosquitto) -> None:
    app = Observer(
        mosquitto.host,
        mosquitto.port,
        [f"{PREFIX}/responses/#", f"{PREFIX}/devices/+/command/result"],
    )
    received: asyncio.Queue[IncomingCommand] = asyncio.Queue()

    async def handler(incoming: IncomingCommand) -> None:
        await received.put(incoming)

    upstream = await started(make_config(mosquitto.host, mosquitto.port), handler)
    try:
        body = {"id": "c7", "action": "unlock", "params": {"door": 2}, "ttl_s": 20}
        before = time.monotonic()
        app.publish(
            f"{PREFIX}/devices/{DEVICE}/command",
            json.dumps(body),
            ResponseTopic=f"{PREFIX}/responses/42",
            CorrelationData=b"\x01\x02\xff",
            MessageExpiryInterval=30,
        )
        incoming = await asyncio.wait_for(received.get(), TIMEOUT)
        assert incoming.origin == "mqtt"
        assert incoming.device == DEVICE
        assert incoming.body == body
        assert incoming.expiry_s is not None and 25 <= incoming.expiry_s <= 30
        assert before <= incoming.received_mono <= time.monotonic()
        assert incoming.reply_to == {
            "response_topic": f"{PREFIX}/responses/42",
            "correlation_data_hex": "0102ff",
        }

        result = CommandResult("c7", DEVICE, CommandStatus.EXECUTED, 1_780_000_001.25, "done")
        await upstream.publish_result(result, incoming.reply_to)
        by_topic = {}
        for _ in range(2):
            msg = await app.next()
            by_topic[msg.topic] = msg
        for topic in (f"{PREFIX}/responses/42", f"{PREFIX}/devices/{DEVICE}/command/result"):
            msg = by_topic[topic]
            assert json.loads(msg.payload) == result.to_wire()
            assert msg.properties.CorrelationData == b"\x01\x02\xff"
    finally:
        await upstream.stop()
        app.close()


async def test_commands_sent_while_the_gateway_is_away_are_not_replayed(
    mosquitto: Mosquitto,
) -> None:
    app = Observer(mosquitto.host, mosquitto.port, [])
    received: list[Any] = []

    async def handler(incoming: IncomingCommand) -> None:
        received.append(incoming.body)

    config = make_config(mosquitto.host, mosquitto.port)
    first = await started(config, handler)
    await first.stop()
    # The session (and its subscription) lives on at the broker; a command sent now must not
    # be executed whenever the gateway comes back.
    app.publish(f"{PREFIX}/devices/{DEVICE}/command", json.dumps({"id": "stale", "ttl_s": 60}))
    second = await started(config, handler)
    try:
        assert second.session_present is True
        app.publish(f"{PREFIX}/devices/{DEVICE}/command", json.dumps({"id": "fresh"}))
        await wait_until(lambda: len(received) >= 1)
        await asyncio.sleep(0.2)
        assert received == [{"id": "fresh"}]
    finally:
        await second.stop()
        app.close()


async def test_malformed_command_bodies_reach_the_bridge_raw(mosquitto: Mosquitto) -> None:
    app = Observer(mosquitto.host, mosquitto.port, [])
    received: asyncio.Queue[IncomingCommand] = asyncio.Queue()

    async def handler(incoming: IncomingCommand) -> None:
        await received.put(incoming)

    upstream = await started(make_config(mosquitto.host, mosquitto.port), handler)
    try:
        for payload in (b"not json{", b"[1, 2]", b"\xff\xfe"):
            app.publish(f"{PREFIX}/devices/{DEVICE}/command", payload)
        bodies = [(await asyncio.wait_for(received.get(), TIMEOUT)).body for _ in range(3)]
        assert bodies == ["not json{", "[1, 2]", b"\xff\xfe"]
        # Not a command topic: ignored, and the result topic is not taken for a command.
        app.publish(f"{PREFIX}/devices/{DEVICE}/command/result", b"{}")
        app.publish(f"{PREFIX}/devices/{DEVICE}/command", b'{"id": "after"}')
        last = await asyncio.wait_for(received.get(), TIMEOUT)
        assert last.body == {"id": "after"}
    finally:
        await upstream.stop()
        app.close()


async def test_slow_bridge_makes_the_inbox_drop_loudly(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    app = Observer(mosquitto.host, mosquitto.port, [])
    release = asyncio.Event()
    handled: list[str] = []

    async def slow_handler(incoming: IncomingCommand) -> None:
        await release.wait()
        handled.append(incoming.body["id"])  # type: ignore[index]

    upstream = await started(
        make_config(mosquitto.host, mosquitto.port), slow_handler, inbox_size=1
    )
    try:
        for n in range(5):
            app.publish(f"{PREFIX}/devices/{DEVICE}/command", json.dumps({"id": f"c{n}"}))
        await wait_until(lambda: upstream.stats["messages_received"] == 5)
        dropped = upstream.stats["inbox_dropped"]
        assert dropped in (3, 4)  # one in the handler (unless not yet taken), one waiting
        assert "mqtt: inbox full (1)" in caplog.text
        release.set()
        await wait_until(lambda: len(handled) == 5 - dropped)
        assert handled[0] == "c0"
    finally:
        await upstream.stop()
        app.close()


async def test_handler_errors_are_counted_not_fatal(mosquitto: Mosquitto) -> None:
    app = Observer(mosquitto.host, mosquitto.port, [])
    seen: list[str] = []

    async def flaky(incoming: IncomingCommand) -> None:
        seen.append(incoming.body["id"])  # type: ignore[index]
        if len(seen) == 1:
            raise RuntimeError("bridge bug")

    upstream = await started(make_config(mosquitto.host, mosquitto.port), flaky)
    try:
        for n in range(2):
            app.publish(f"{PREFIX}/devices/{DEVICE}/command", json.dumps({"id": f"c{n}"}))
        await wait_until(lambda: len(seen) == 2)
        assert upstream.stats["handler_errors"] == 1
    finally:
        await upstream.stop()
        app.close()


# -- extras ---------------------------------------------------------------------------------


async def test_publish_raw_and_subscribe_extra(mosquitto: Mosquitto) -> None:
    app = Observer(mosquitto.host, mosquitto.port, ["homeassistant/sensor/#"])
    upstream = await started(make_config(mosquitto.host, mosquitto.port))
    calls: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_ha_status(topic: str, payload: bytes, arrival: float) -> None:
        assert 0 < time.monotonic() - arrival < TIMEOUT
        await calls.put((topic, payload))

    try:
        upstream.subscribe_extra("homeassistant/status", on_ha_status)
        await asyncio.sleep(0.3)  # let the SUBACK arrive
        app.publish("homeassistant/status", "online")
        assert await asyncio.wait_for(calls.get(), TIMEOUT) == ("homeassistant/status", b"online")

        await upstream.publish_raw("homeassistant/sensor/x/config", '{"name": "x"}', 1, True)
        msg = await app.next("homeassistant/sensor/x/config")
        assert msg.payload == b'{"name": "x"}'
        with pytest.raises(ValueError):
            await upstream.publish_raw("homeassistant/#", b"", 1)
    finally:
        await upstream.stop()
        app.close()


async def test_extra_command_topics_drop_retained_messages_under_mqtt_311(
    mosquitto: Mosquitto,
) -> None:
    """MQTT 3.1.1 has no retain handling: a retained command on an extra command topic (Home
    Assistant's entity topics) would run again at every reconnect; it is dropped instead."""
    app = Observer(mosquitto.host, mosquitto.port, [])
    app.publish("site/lamp/set", "ON", retain=True)
    upstream = await started(make_config(mosquitto.host, mosquitto.port, protocol="3.1.1"))
    calls: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        upstream.subscribe_extra(
            "site/+/set", lambda _t, payload, _a: calls.put_nowait(payload), commands=True
        )
        await wait_until(lambda: upstream.stats["retained_commands_dropped"] == 1)
        app.publish("site/lamp/set", "OFF")
        assert await asyncio.wait_for(calls.get(), TIMEOUT) == b"OFF"
        assert calls.empty()
    finally:
        await upstream.stop()
        app.close()


async def test_ready_listener_and_session_across_broker_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "persist")  # must be able to save its database
    broker.start()
    upstream = MqttUpstream(make_config(broker.host, broker.port))
    calls: list[bool] = []
    upstream.add_ready_listener(lambda: calls.append(upstream.connected))
    await upstream.start(ignore_commands)
    try:
        await wait_until(lambda: calls == [True])
        assert upstream.session_present is False
        await asyncio.to_thread(broker.restart)
        await wait_until(lambda: len(calls) == 2)
        # Fixed client id, clean start off, session expiry: the broker kept the session
        # (and the command subscription) across its own restart.
        assert upstream.session_present is True
    finally:
        await upstream.stop()
        broker.kill()


async def test_persistent_session_in_mqtt311(mosquitto: Mosquitto) -> None:
    config = make_config(mosquitto.host, mosquitto.port, protocol="3.1.1")
    first = await started(config)
    await first.stop()
    second = await started(config)
    try:
        assert second.session_present is True
    finally:
        await second.stop()


async def test_silent_server_and_unreachable_broker(mosquitto: Mosquitto) -> None:
    # A server that accepts TCP but never answers CONNECT: the attempt times out and retries.
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    upstream = MqttUpstream(make_config("127.0.0.1", port, connect_timeout_s=0.3))
    await upstream.start(ignore_commands)
    try:
        await wait_until(lambda: upstream.stats["connect_failures"] >= 2)
        assert not upstream.connected
        with pytest.raises(UpstreamUnavailable):
            await upstream.publish_event(DeviceEvent(DEVICE, EventKind.ONLINE, 1.0))
    finally:
        await upstream.stop()
        silent.close()
    # Nothing listening at all (the broker is down when the gateway starts).
    await asyncio.to_thread(mosquitto.stop)
    upstream = MqttUpstream(make_config(mosquitto.host, mosquitto.port))
    await upstream.start(ignore_commands)
    try:
        await wait_until(lambda: upstream.stats["connect_failures"] >= 2)
        await asyncio.to_thread(mosquitto.start)
        assert await upstream.wait_connected(TIMEOUT)
    finally:
        await upstream.stop()


# -- authentication and TLS -----------------------------------------------------------------


async def test_password_authentication(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "auth", users={"gateway": "s3cret"})
    broker.start()
    try:
        secret = tmp_path / "mqtt.pw"
        secret.write_text("s3cret\n")
        wrong = tmp_path / "wrong.pw"
        wrong.write_text("nope\n")
        bad = MqttUpstream(
            make_config(broker.host, broker.port, username="gateway", password={"file": wrong})
        )
        await bad.start(ignore_commands)
        try:
            await wait_until(lambda: bad.stats["connect_failures"] >= 2)
            assert not bad.connected
        finally:
            await bad.stop()
        good = await started(
            make_config(broker.host, broker.port, username="gateway", password={"file": secret})
        )
        await good.publish_report(report(1))
        await good.stop()
    finally:
        broker.kill()


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(directory: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class TlsMosquitto(Mosquitto):
    """mosquitto with a TLS listener that requires a client certificate from our CA."""

    def __init__(self, workdir: Path, pki: dict[str, Path]) -> None:
        self.pki = pki
        super().__init__(workdir)

    def _write_config(self) -> None:
        super()._write_config()
        with self.config_path.open("a") as config:
            config.write(
                f"cafile {self.pki['ca']}\n"
                f"certfile {self.pki['server_cert']}\n"
                f"keyfile {self.pki['server_key']}\n"
                "require_certificate true\n"
            )


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("duogate test CA", ca_key, None, ca=True)
    ca_path, _ = _write_pem(pki_dir, "ca", ca_cert, ca_key)
    issuer = (ca_cert.subject, ca_key)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server_cert, server_key_path = _write_pem(
        pki_dir, "server", _issue("localhost", server_key, issuer), server_key
    )
    client_cert, client_key_path = _write_pem(
        pki_dir, "client", _issue("gateway", client_key, issuer), client_key
    )
    broker = TlsMosquitto(
        tmp_path / "tls",
        {"ca": ca_path, "server_cert": server_cert, "server_key": server_key_path},
    )
    broker.start()
    try:
        tls = {"ca_file": ca_path, "cert_file": client_cert, "key_file": client_key_path}
        app = Observer("127.0.0.1", broker.port, [f"{PREFIX}/devices/+/report"], tls=tls)
        received: list[IncomingCommand] = []

        async def handler(incoming: IncomingCommand) -> None:
            received.append(incoming)

        # A long keepalive: no PINGRESP comes to unstick data left inside the TLS layer.
        config = make_config("127.0.0.1", broker.port, tls=tls, keepalive_s=300)
        upstream = await started(config, handler)
        try:
            await upstream.publish_report(report(1))
            assert json.loads((await app.next()).payload)["seq"] == 1
            # A burst of commands, several per TLS record: every one must come through.
            infos = [
                app.client.publish(f"{PREFIX}/devices/{DEVICE}/command", json.dumps({"id": str(n)}))
                for n in range(50)
            ]
            for info in infos:
                info.wait_for_publish(TIMEOUT)
            await wait_until(lambda: len(received) == 50)
            assert [r.body["id"] for r in received] == [str(n) for n in range(50)]  # type: ignore[index]
        finally:
            await upstream.stop()
            app.close()
        # insecure_skip_verify: no CA to check the broker against, still a TLS session.
        insecure = {"cert_file": client_cert, "key_file": client_key_path}
        insecure["insecure_skip_verify"] = True  # type: ignore[assignment]
        unchecked = await started(make_config("127.0.0.1", broker.port, tls=insecure))
        await unchecked.stop()
        # Without a client certificate the broker refuses the handshake.
        no_cert = MqttUpstream(make_config("127.0.0.1", broker.port, tls={"ca_file": ca_path}))
        await no_cert.start(ignore_commands)
        try:
            await wait_until(lambda: no_cert.stats["connect_failures"] >= 1)
            assert not no_cert.connected
        finally:
            await no_cert.stop()
    finally:
        broker.kill()


async def test_unreadable_secret_or_certificate_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pw"
    upstream = MqttUpstream(
        make_config("127.0.0.1", 1, username="gateway", password={"file": missing})
    )
    with pytest.raises(MqttSetupError, match=r"^mqtt\.password: cannot read the secret"):
        await upstream.start(ignore_commands)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    upstream = MqttUpstream(make_config("127.0.0.1", 1, tls={"ca_file": garbage}))
    with pytest.raises(MqttSetupError, match=r"^mqtt\.tls: cannot load certificates"):
        await upstream.start(ignore_commands)


# -- pure helpers ---------------------------------------------------------------------------


async def test_publishing_before_start_is_unavailable() -> None:
    upstream = MqttUpstream(make_config("127.0.0.1", 1))
    assert not upstream.connected
    with pytest.raises(UpstreamUnavailable):
        await upstream.publish_report(report(1))
