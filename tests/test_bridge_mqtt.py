"""The whole loop against a real mosquitto: simulated nodes -> real SX127x driver -> bridge ->
outbox -> MQTT, and commands back down to the nodes.

The gateway runs in this process (``radio.driver = "sim"``: the world's nodes, medium and chip
share the event loop); a paho client in its own thread watches the broker. Node timing is
scaled down (reports every ~1 s, short receive delays and backoffs) to keep the tests short.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
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
from gateway.protocol import frames
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
        "radio": {"driver": "sim", "rx_delay_s": 0.3, "bandwidth_hz": 250_000},
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
            "next_uplink_gap_s": 0.2,
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
            assert (
                by_id.setdefault(report["id"], report["data"]["counter"])
                == (report["data"]["counter"])
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
    """Fault at the radio: the next ``count`` downlinks addressed to a node are lost.

    With ``only``, just downlinks carrying that flag (e.g. ``Flag.COMMAND``) are lost.
    """

    def __init__(self, node: SimNode, count: int, only: frames.Flag | None = None) -> None:
        self.node = node
        self.left = count
        self.only = only
        self.inner = node.link
        node.link = self  # type: ignore[assignment]

    async def transmit(self, payload: bytes) -> float:
        return await self.inner.transmit(payload)

    async def receive(self, timeout_s: float) -> tuple[bytes, float, float] | None:
        heard = await self.inner.receive(timeout_s)
        if heard is not None and self.left > 0 and self._addressed_to_node(heard[0]):
            self.left -= 1
            return None
        return heard

    def _addressed_to_node(self, phy: bytes) -> bool:
        try:
            header = frames.peek(phy)
        except frames.FrameRejected:
            return False
        if header.type is not frames.FrameType.DOWNLINK or header.address != self.node.address:
            return False
        return self.only is None or bool(header.flags & self.only)


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
        # One node misses the gateway's first acks: it retransmits the same frames.
        lossy = world.nodes[0]
        dropper = AckDropper(lossy, 3)
        await watcher.wait_for_counters(devices, 5)
        assert dropper.left == 0
        assert lossy.stats.retransmissions >= 3
        seen_twice = gateway.state.nodes[lossy.device_id].duplicates
        assert seen_twice >= 3, "the gateway never saw a retransmitted report"
    watcher.drop()
    assert_no_gaps(watcher.reports(), devices, ids_once=True)


async def test_broker_killed_mid_stream_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
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
        # The killed broker forgot its retained messages; the gateway puts them back.
        late = MqttWatcher(mosquitto, (f"{PREFIX}/status", f"{PREFIX}/devices/+/availability"))
        late.connect()
        await late.wait_until(
            lambda: (
                {(m.topic, m.payload) for m in late.snapshot() if m.retain}
                >= {(f"{PREFIX}/status", b"online")}
                | {(f"{PREFIX}/devices/{d}/availability", b"online") for d in devices}
            ),
            "retained status and availability after the broker restart",
        )
        late.drop()
    watcher.drop()
    reports = watcher.reports()
    assert_no_gaps(reports, devices, ids_once=False)
    for device in devices:
        assert max_counter(reports[device]) > before.get(device, 0) + 3


# -- commands ---------------------------------------------------------------------------------


async def test_command_in_time_is_accepted_sent_executed_and_answered_on_its_response_topic(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 1)
        assert node.relay is False
        watcher.command(
            device,
            {"id": "c-on", "action": "relay", "params": {"on": True}, "ttl_s": 20},
            response_topic="app/replies/7",
            correlation=b"\x00req-7",
        )
        assert await watcher.wait_for_final(device, "c-on") == "executed"
        assert node.relay is True
        assert [(c.action, c.params) for c in node.executed] == [("relay", {"on": True})]
        # The node's next reports carry the new state.
        await watcher.wait_until(
            lambda: any(r["data"]["relay"] for r in watcher.reports()[device]),
            "a report with the relay on",
        )
    watcher.drop()
    assert watcher.statuses(device, "c-on") == ["accepted", "sent", "executed"]
    replies = watcher.on("app/replies/7")
    assert [m.json()["status"] for m in replies] == ["accepted", "sent", "executed"]
    assert {m.correlation for m in replies} == {b"\x00req-7"}
    on_result_topic = watcher.on(f"{PREFIX}/devices/{device}/command/result")
    assert {m.correlation for m in on_result_topic} == {b"\x00req-7"}


async def test_commands_that_expire_before_the_receive_window_never_reach_the_node(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 1)
        # Less than one whole second to live: it cannot reach the node with time left.
        watcher.command(
            device, {"id": "short", "action": "relay", "params": {"on": True}, "ttl_s": 0.9}
        )
        # A long ttl_s, but the MQTT 5 Message Expiry Interval says one second.
        watcher.command(
            device,
            {"id": "transport", "action": "relay", "params": {"on": True}, "ttl_s": 60},
            expiry_s=1,
        )
        for command_id in ("short", "transport"):
            assert await watcher.wait_for_final(device, command_id) == "expired"
        seen = max_counter(watcher.reports()[device])
        await watcher.wait_for_counters([device], seen + 2)  # receive windows came and went
        assert node.relay is False
        assert node.executed == []
        assert node.stats.commands_expired == 0  # not even dropped on arrival: never sent
        downlinks = [e for e in gateway.state.frames.recent() if e.type == "command"]
        assert downlinks == []
    watcher.drop()
    for command_id in ("short", "transport"):
        results = watcher.results(device, command_id)
        assert [r["status"] for r in results] == ["accepted", "expired"]
        assert results[-1]["detail"] in ("expired_in_queue", "expired_before_transmission")
    assert all(not r["data"]["relay"] for r in watcher.reports()[device])


MALFORMED: list[tuple[str, bytes | str | dict[str, Any], str]] = [
    ("", b"switch it on", "invalid_json"),
    ("", b"\xff\xfe{", "invalid_json"),
    ("", "[1, 2]", "not_an_object"),
    ("", {"action": "relay", "params": {"on": True}}, "missing_id"),
    ("", {"id": 7, "action": "relay"}, "invalid_id"),
    ("m-action", {"id": "m-action", "params": {"on": True}}, "missing_action"),
    ("m-params", {"id": "m-params", "action": "relay", "params": [True]}, "invalid_params"),
    (
        "m-ttl",
        {"id": "m-ttl", "action": "relay", "params": {"on": True}, "ttl_s": -5},
        "invalid_ttl_s",
    ),
    ("m-ttl-text", {"id": "m-ttl-text", "action": "ping", "ttl_s": "5"}, "invalid_ttl_s"),
    ("m-field", {"id": "m-field", "action": "ping", "ttl": 5}, "unknown_field"),
    ("m-when", {"id": "m-when", "action": "ping", "expires_at": "soon"}, "invalid_expires_at"),
    ("m-dance", {"id": "m-dance", "action": "dance"}, "unknown_action"),
]


async def test_malformed_commands_are_rejected_with_a_reason_and_disturb_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 1)
        for index, (_, body, _) in enumerate(MALFORMED):
            watcher.command(device, body, correlation=f"bad-{index}".encode())
        strangers = ["lora-00000000000000ff", "not-a-device", "modbus-x-1"]
        for index, stranger in enumerate(strangers):
            watcher.command(
                stranger,
                {"id": f"s-{index}", "action": "ping"},
                correlation=f"stranger-{index}".encode(),
            )

        def answered() -> bool:
            got = {m.correlation for m in watcher.snapshot() if m.topic.endswith("/result")}
            return len(got) == len(MALFORMED) + len(strangers)

        await watcher.wait_until(answered, "an answer to every malformed command")
        # The daemon carries on: reports keep coming and a good command still works.
        seen = max_counter(watcher.reports()[device])
        watcher.command(device, {"id": "good", "action": "ping", "ttl_s": 20})
        assert await watcher.wait_for_final(device, "good") == "executed"
        await watcher.wait_for_counters([device], seen + 2)
        assert [c.action for c in node.executed] == ["ping"]
    watcher.drop()
    results = [m for m in watcher.snapshot() if m.topic.endswith("/command/result")]
    by_correlation = {m.correlation: m for m in results if m.correlation is not None}
    for index, (command_id, _, reason) in enumerate(MALFORMED):
        message = by_correlation[f"bad-{index}".encode()]
        assert message.topic == f"{PREFIX}/devices/{device}/command/result"
        assert message.json()["status"] == "rejected"
        assert message.json()["detail"] == reason
        assert message.json()["id"] == command_id
    for index, stranger in enumerate(strangers):
        message = by_correlation[f"stranger-{index}".encode()]
        assert message.topic == f"{PREFIX}/devices/{stranger}/command/result"
        assert (message.json()["status"], message.json()["detail"]) == (
            "rejected",
            "unknown_device",
        )
    # Each rejected command got exactly one result, and none was ever "accepted".
    assert len(results) == len(MALFORMED) + len(strangers) + 3  # + good: accepted/sent/executed


# -- Home Assistant ---------------------------------------------------------------------------


async def test_discovery_is_retained_for_joined_nodes_and_availability_follows_events(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        early = MqttWatcher(mosquitto)
        early.connect()
        await early.wait_for_counters([device], 1)
        # A subscriber arriving later gets the discovery configs and availability retained.
        late = MqttWatcher(mosquitto, ("homeassistant/#", f"{PREFIX}/#"))
        late.connect()
        node_id = f"{GATEWAY_ID}_{device}"
        switch_topic = f"homeassistant/switch/{node_id}/relay/config"
        availability = f"{PREFIX}/devices/{device}/availability"
        expected = {
            f"homeassistant/sensor/{node_id}/temperature_c/config",
            f"homeassistant/sensor/{node_id}/counter/config",
            switch_topic,
            f"homeassistant/button/{node_id}/action_ping/config",
            availability,
            f"{PREFIX}/status",
        }
        await late.wait_until(
            lambda: expected <= {m.topic for m in late.snapshot() if m.retain},
            "retained discovery configs and availability",
        )
        assert [m.payload for m in late.on(availability)] == [b"online"]
        assert [m.payload for m in late.on(f"{PREFIX}/status")] == [b"online"]
        switch = late.on(switch_topic)[-1].json()
        assert switch["command_topic"] == f"{PREFIX}/devices/{device}/command"
        assert switch["state_topic"] == f"{PREFIX}/devices/{device}/report"
        assert {a["topic"] for a in switch["availability"]} == {availability, f"{PREFIX}/status"}

        # Home Assistant switching the relay: its template rendered, sent as it would send it.
        template = ImmutableSandboxedEnvironment().from_string(switch["command_template"])
        template.globals["now"] = lambda: datetime.datetime.now(datetime.UTC)
        early.publish(switch["command_topic"], template.render(value="ON"))
        await early.wait_until(lambda: node.relay, "the relay switched from Home Assistant")

        assert gateway.bridge is not None
        await gateway.bridge.event(device, EventKind.OFFLINE)
        await late.wait_until(
            lambda: [m.payload for m in late.on(availability)][-1:] == [b"offline"],
            "availability offline after an offline event",
        )
        await gateway.bridge.event(device, EventKind.ONLINE)
        await late.wait_until(
            lambda: [m.payload for m in late.on(availability)][-1:] == [b"online"],
            "availability online after an online event",
        )
    # A clean stop says so on the gateway's status topic.
    await late.wait_until(
        lambda: [m.payload for m in late.on(f"{PREFIX}/status")][-1:] == [b"offline"],
        "status offline after a clean stop",
    )
    early.drop()
    late.drop()
