"""The whole loop against a real mosquitto: simulated nodes -> real SX127x driver -> bridge ->
outbox -> MQTT, and commands back down to the nodes.

The gateway runs in this process (``radio.driver = "sim"``: the world's nodes, medium and chip
share the event loop); a paho client in its own thread watches the broker. Node timing is
scaled down (reports every ~1 s, short receive delays and backoffs) to keep the tests short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.sim.node import SimNode
from drivers.sim.world import SimWorld
from gateway.config import Config, parse_config
from gateway.daemon import Gateway
from gateway.model import EventKind
from tests.servers import Mosquitto

GATEWAY_ID = "t"
PREFIX = f"duogate/{GATEWAY_ID}"
TIMEOUT = 30.0


# -- helpers shared with the other bridge tests -----------------------------------------------


def fast_settings(
    data_dir: Path, broker_port: int, *, nodes: int = 2, interval_s: float = 1.0
) -> dict[str, Any]:
    """A gateway + simulated world whose nodes report every ``interval_s`` and react fast."""
    return {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(data_dir), "log_level": "info"},
        "radio": {"driver": "sim", "rx_delay_s": 0.3},
        "join": {"open_join": True, "join_rx_delay_s": 0.3},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "keepalive_s": 5,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "publish_timeout_s": 3.0,
            "connect_timeout_s": 3.0,
        },
        "commands": {"node_answer_timeout_s": 5.0},
        "outbox": {"commit_interval_s": 0.02},
        "sim": {
            "nodes": nodes,
            "report_interval_s": interval_s,
            "seed": 3,
            "start_spread_s": 0.5,
            "join_backoff_min_s": 0.3,
            "join_backoff_max_s": 1.5,
            "retry_min_s": 0.3,
            "retry_max_s": 1.0,
            "next_uplink_gap_s": 0.05,
        },
        "console": {"enabled": False},
        "metrics": {"enabled": False},
    }


def fast_config(tmp_path: Path, broker: Mosquitto, **kwargs: Any) -> Config:
    return parse_config(fast_settings(tmp_path / "data", broker.port, **kwargs))


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttWatcher:
    """A subscriber on its own thread that records everything under the given filters."""

    def __init__(self, broker: Mosquitto, filters: tuple[str, ...] = ("#",)) -> None:
        self.broker = broker
        self.filters = filters
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._client: paho.Client | None = None

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and subscribe (QoS 1), blocking until the broker confirmed the subscription."""
        subscribed = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watcher-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        client.on_message = self._on_message
        client.on_subscribe = lambda *_args: subscribed.set()
        client.connect(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()
        client.subscribe([(topic, 1) for topic in self.filters])
        if not subscribed.wait(timeout):
            raise AssertionError("watcher: no SUBACK from the broker")
        self._client = client

    def drop(self) -> None:
        """Forget the connection (after the broker was killed) without reconnecting."""
        client, self._client = self._client, None
        if client is not None:
            client.loop_stop()
            with contextlib.suppress(Exception):
                client.disconnect()

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        properties = getattr(message, "properties", None)
        correlation = getattr(properties, "CorrelationData", None) if properties else None
        record = Message(
            message.topic,
            bytes(message.payload),
            bool(message.retain),
            bytes(correlation) if correlation is not None else None,
            time.monotonic(),
        )
        with self._lock:
            self.messages.append(record)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
    ) -> None:
        assert self._client is not None
        properties = None
        if response_topic is not None or correlation is not None or expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=1, properties=properties)
        info.wait_for_publish(10)

    def command(self, device: str, body: dict[str, Any] | str | bytes, **kwargs: Any) -> None:
        payload = json.dumps(body) if isinstance(body, dict) else body
        self.publish(f"{PREFIX}/devices/{device}/command", payload, **kwargs)

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.snapshot() if m.topic == topic]

    def reports(self) -> dict[str, list[dict[str, Any]]]:
        """Reports per device, in arrival order."""
        found: dict[str, list[dict[str, Any]]] = {}
        for message in self.snapshot():
            parts = message.topic.split("/")
            if message.topic.startswith(PREFIX + "/devices/") and parts[-1] == "report":
                found.setdefault(parts[-2], []).append(message.json())
        return found

    def results(self, device: str, command_id: str | None = None) -> list[dict[str, Any]]:
        topic = f"{PREFIX}/devices/{device}/command/result"
        return [
            m.json() for m in self.on(topic) if command_id is None or m.json()["id"] == command_id
        ]

    def statuses(self, device: str, command_id: str) -> list[str]:
        return [result["status"] for result in self.results(device, command_id)]

    async def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def wait_for_counters(self, devices: list[str], counter: int, **kwargs: Any) -> None:
        """Until every device has reported counters up to at least ``counter``."""

        def reached() -> bool:
            reports = self.reports()
            return all(
                max((r["data"]["counter"] for r in reports.get(d, [])), default=0) >= counter
                for d in devices
            )

        await self.wait_until(reached, f"counter {counter} from {devices}", **kwargs)

    async def wait_for_final(self, device: str, command_id: str, **kwargs: Any) -> str:
        finals = {"executed", "failed", "expired", "rejected", "timeout"}
        await self.wait_until(
            lambda: any(s in finals for s in self.statuses(device, command_id)),
            f"a final result of {command_id!r}",
            **kwargs,
        )
        return next(s for s in self.statuses(device, command_id) if s in finals)


def max_counter(reports: list[dict[str, Any]]) -> int:
    return max((r["data"]["counter"] for r in reports), default=0)


def assert_no_gaps(
    reports: dict[str, list[dict[str, Any]]], devices: list[str], *, ids_once: bool
) -> None:
    """Every device's counters run 1..n without a hole, in order; one counter per report id."""
    for device in devices:
        got = reports.get(device, [])
        counters = [r["data"]["counter"] for r in got]
        assert counters, f"{device}: no reports"
        distinct = sorted(set(counters))
        missing = sorted(set(range(1, distinct[-1] + 1)) - set(distinct))
        assert not missing, f"{device}: counters missing: {missing}"
        by_id: dict[str, int] = {}
        for report in got:
            assert by_id.setdefault(report["id"], report["data"]["counter"]) == (
                report["data"]["counter"]
            ), f"{device}: report id {report['id']} carried two counters"
        if ids_once:
            ids = [r["id"] for r in got]
            assert len(ids) == len(set(ids)), f"{device}: a report was forwarded twice"
            assert counters == distinct, f"{device}: reports out of order: {counters}"


@contextlib.asynccontextmanager
async def running_gateway(config: Config) -> AsyncIterator[Gateway]:
    gateway = Gateway.build(config)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def world_of(gateway: Gateway) -> SimWorld:
    world = getattr(gateway.radio, "world", None)
    assert isinstance(world, SimWorld)
    return world


def joined_devices(world: SimWorld) -> list[str]:
    return [node.device_id for node in world.nodes if node.joined]


class AckDropper:
    """Fault at the radio: the next ``count`` downlinks a node hears are lost on the way."""

    def __init__(self, node: SimNode, count: int) -> None:
        self.left = count
        self.inner = node.link
        node.link = self  # type: ignore[assignment]

    async def transmit(self, payload: bytes) -> float:
        return await self.inner.transmit(payload)

    async def receive(self, timeout_s: float) -> tuple[bytes, float, float] | None:
        heard = await self.inner.receive(timeout_s)
        if heard is not None and self.left > 0:
            self.left -= 1
            return None
        return heard


# -- reports ----------------------------------------------------------------------------------


async def test_reports_arrive_in_order_without_gaps_and_retransmissions_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    config = fast_config(tmp_path, mosquitto, nodes=3)
    async with running_gateway(config) as gateway:
        world = world_of(gateway)
        devices = [node.device_id for node in world.nodes]
        await watcher.wait_for_counters(devices, 2)
        # The node misses the gateway's next acks: it retransmits the same frames.
        lossy = world.nodes[0]
        dropper = AckDropper(lossy, 3)
        await watcher.wait_for_counters(devices, 6)
        assert dropper.left == 0
        assert lossy.stats.retransmissions >= 3
        seen_twice = gateway.state.nodes[lossy.device_id].duplicates
        assert seen_twice >= 3, "the gateway never saw a retransmitted report"
    watcher.drop()
    assert_no_gaps(watcher.reports(), devices, ids_once=True)


async def test_broker_killed_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    config = fast_config(tmp_path, mosquitto, nodes=2)
    async with running_gateway(config) as gateway:
        devices = [node.device_id for node in world_of(gateway).nodes]
        await watcher.wait_for_counters(devices, 2)
        mosquitto.kill()
        watcher.drop()
        before = {d: max_counter(r) for d, r in watcher.reports().items()}
        await asyncio.sleep(3.0)  # reports keep coming from the nodes into the outbox
        assert gateway.bridge is not None and gateway.bridge.outbox is not None
        assert gateway.bridge.outbox.size > 0
        # Blocking on purpose: the gateway (same event loop) cannot reconnect before the
        # watcher has subscribed again, so the watcher misses nothing that is published.
        mosquitto.start()
        watcher.connect()
        await watcher.wait_for_counters(devices, max(before.values()) + 6)
    watcher.drop()
    reports = watcher.reports()
    assert_no_gaps(reports, devices, ids_once=False)
    for device in devices:
        assert max_counter(reports[device]) > before.get(device, 0) + 3
