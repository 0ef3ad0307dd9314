"""Helpers for the bridge tests: a gateway with a fast simulated world, a paho watcher on the
broker, report checks, and ``duogate`` child processes for tests that kill or stop the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
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
from gateway.protocol import frames
from tests.servers import Mosquitto

GATEWAY_ID = "t"
PREFIX = f"duogate/{GATEWAY_ID}"
TIMEOUT = 30.0


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

    def __init__(
        self,
        broker: Mosquitto,
        filters: tuple[str, ...] = ("#",),
        *,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.broker = broker
        self.filters = filters
        self.login = login
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
        if self.login is not None:
            client.username_pw_set(*self.login)
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

    With ``only``, just downlinks carrying that flag (e.g. ``Flag.COMMAND``) are lost. It wraps
    the node's radio (node/radio.py): a packet it drops never reaches the node library.
    """

    def __init__(self, node: SimNode, count: int, only: frames.Flag | None = None) -> None:
        self.node = node
        self.left = count
        self.only = only
        self.inner = node.radio
        node.radio = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def received(self) -> tuple[bytes, float, float] | None:
        heard = self.inner.received()
        if heard is not None and self.left > 0 and self._addressed_to_node(heard[0]):
            self.left -= 1
            return None
        return heard

    def _addressed_to_node(self, phy: bytes) -> bool:
        try:
            header = frames.peek(phy)
        except frames.FrameRejected:
            return False
        if header.type is not frames.AirFrameType.DOWNLINK or header.address != self.node.address:
            return False
        return self.only is None or bool(header.flags & self.only)


# -- gateway and world as child processes --------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def toml_text(data: dict[str, Any]) -> str:
    """Enough TOML for the flat tables of a test config."""
    lines: list[str] = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


class Process:
    """A ``python -m gateway ...`` child with its output in a file."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *self.args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def signal(self, sig: int, timeout: float = 15.0) -> int | None:
        """Send ``sig``; wait up to ``timeout`` for the exit (0: do not wait, e.g. SIGSTOP)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        if timeout == 0:
            return None
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_process_port(port: int, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.alive(), f"{process.name} exited:\n{process.output()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{process.name} is not listening on {port}:\n{process.output()}")
