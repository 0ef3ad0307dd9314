"""How the MQTT upstream uses its socket: packets of one loop turn in one write, PUBACKs read
in a few calls, paho's DISCONNECT out before the socket closes. Real mosquitto, real sockets;
the gateway's socket is a ``socket.socket`` that counts its calls."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import Config
from gateway.upstreams.mqtt import MqttUpstream
from tests.mqtt_upstream_fixtures import mqtt_config, report
from tests.servers import Mosquitto

PREFIX = "duogate/gwsock"
TIMEOUT = 15.0
DISCONNECT = 0xE0


def make_config(host: str, port: int, **mqtt: Any) -> Config:
    return mqtt_config(
        "gwsock", host, port, **{"keepalive_s": 60, "publish_timeout_s": 5.0, **mqtt}
    )


class CountingSocket(socket.socket):
    """A real connected socket that counts the calls made on it to send and to receive."""

    def __init__(self, connected: socket.socket) -> None:
        super().__init__(connected.family, connected.type, connected.proto, connected.detach())
        self.sends = 0
        self.recvs = 0

    def send(self, data: Any, flags: int = 0) -> int:
        self.sends += 1
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.sends += 1
        super().sendall(data, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.recvs += 1
        return super().recv(bufsize, flags)


@pytest.fixture
def counting_sockets(monkeypatch: pytest.MonkeyPatch) -> list[CountingSocket]:
    """Every TCP connection paho opens from now on is a ``CountingSocket`` (in this list)."""
    made: list[CountingSocket] = []
    plain_create_connection = socket.create_connection

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        counting = CountingSocket(plain_create_connection(*args, **kwargs))
        made.append(counting)
        return counting

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return made


class Observer:
    """An application on the broker: a threaded paho client recording what it receives."""

    def __init__(self, mosquitto: Mosquitto, topic: str) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(mosquitto.host, mosquitto.port, 30)
        self.client.loop_start()
        self.client.subscribe(topic, 1)
        assert subscribed.wait(TIMEOUT), "observer subscription not acknowledged"

    async def take(self, count: int) -> list[paho.MQTTMessage]:
        deadline = time.monotonic() + TIMEOUT
        taken: list[paho.MQTTMessage] = []
        while len(taken) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(taken)} of {count} messages in {TIMEOUT}s")
            try:
                taken.append(await asyncio.to_thread(self.messages.get, True, min(left, 0.5)))
            except queue.Empty:
                continue
        return taken

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RecordingRelay:
    """A TCP relay to the broker that keeps every byte the gateway sent, and notes when the
    gateway closed its side."""

    def __init__(self, mosquitto: Mosquitto) -> None:
        self.target = (mosquitto.host, mosquitto.port)
        self.sent_by_gateway = bytearray()
        self.gateway_closed = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, keep: Callable[[bytes], Any]
        ) -> None:
            try:
                while data := await source.read(65536):
                    keep(data)
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pump(reader, up_writer, self.sent_by_gateway.extend),
            pump(up_reader, writer, lambda data: None),
            return_exceptions=True,
        )
        self.gateway_closed.set()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def relay(mosquitto: Mosquitto) -> AsyncIterator[RecordingRelay]:
    recording = RecordingRelay(mosquitto)
    await recording.start()
    yield recording
    await recording.close()


def packet_types(stream: bytes) -> list[int]:
    """The MQTT control packet type (high nibble of the first byte) of each packet in turn."""
    types: list[int] = []
    pos = 0
    while pos < len(stream):
        first = stream[pos]
        pos += 1
        length, shift = 0, 0
        while True:
            byte = stream[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        types.append(first & 0xF0)
        pos += length
    assert pos == len(stream), "the stream ends inside a packet"
    return types


async def started(config: Config) -> MqttUpstream:
    async def ignore(command: Any) -> None:
        return None

    upstream = MqttUpstream(config)
    await upstream.start(ignore)
    assert await upstream.wait_connected(TIMEOUT), "upstream did not connect"
    return upstream


async def test_publishes_of_one_turn_go_out_in_order_in_one_write_and_acks_in_few_reads(
    mosquitto: Mosquitto, counting_sockets: list[CountingSocket]
) -> None:
    reports = 30
    observer = Observer(mosquitto, f"{PREFIX}/devices/+/report")
    upstream = await started(make_config(mosquitto.host, mosquitto.port, inflight=reports))
    try:
        assert upstream.client is not None
        sock = upstream.client.socket()
        assert isinstance(sock, CountingSocket) and sock in counting_sockets
        sends_before, recvs_before = sock.sends, sock.recvs
        # gather starts every publish in the same turn of the loop
        await asyncio.wait_for(
            asyncio.gather(*(upstream.publish_report(report(n)) for n in range(reports))),
            TIMEOUT,
        )
        sends, recvs = sock.sends - sends_before, sock.recvs - recvs_before
        arrived = await observer.take(reports)
        assert [json.loads(message.payload)["seq"] for message in arrived] == list(range(reports))
        assert sends == 1, f"{reports} publishes took {sends} writes"
        # paho reads each packet in three calls (type, length, body) when left to itself
        assert recvs < 3 * reports, f"{reports} PUBACKs took {recvs} reads"
    finally:
        await upstream.stop()
        observer.close()


async def test_publishes_after_the_turn_that_wrote_go_out_in_their_own_write(
    mosquitto: Mosquitto, counting_sockets: list[CountingSocket]
) -> None:
    observer = Observer(mosquitto, f"{PREFIX}/devices/+/report")
    upstream = await started(make_config(mosquitto.host, mosquitto.port))
    try:
        assert upstream.client is not None
        sock = upstream.client.socket()
        assert isinstance(sock, CountingSocket)
        sends_before = sock.sends
        for n in range(3):  # one after the other: each waits for its PUBACK
            await asyncio.wait_for(upstream.publish_report(report(n)), TIMEOUT)
        assert sock.sends - sends_before == 3
        arrived = await observer.take(3)
        assert [json.loads(message.payload)["seq"] for message in arrived] == [0, 1, 2]
    finally:
        await upstream.stop()
        observer.close()


async def test_a_clean_stop_sends_disconnect_before_closing_the_socket(
    relay: RecordingRelay,
) -> None:
    upstream = await started(make_config("127.0.0.1", relay.port))
    await upstream.publish_report(report(1))
    await upstream.stop()
    await asyncio.wait_for(relay.gateway_closed.wait(), TIMEOUT)
    types = packet_types(bytes(relay.sent_by_gateway))
    assert types[-1] == DISCONNECT, [hex(kind) for kind in types]
    assert types.count(DISCONNECT) == 1
