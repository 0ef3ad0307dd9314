"""What the benchmarks are built from.

* ``InjectingRadio``: a ``Radio`` (drivers/radio/base.py) whose received frames come from the
  benchmark. It hands each frame to the gateway's ``on_receive`` exactly as a driver does,
  either on the loop or from another thread through ``call_soon_threadsafe`` (the SX127x
  driver's DIO0 path), with ``RxPacket.t_mono`` taken when the frame "arrived".
* ``NodeFleet``: nodes with registered root keys, joined through the gateway's real join
  path, that build validly authenticated (and encrypted) report frames with the node-side
  helpers of drivers/sim/node_frames.py (the node library's frames).
* ``AckClock`` and ``TimedMqttUpstream`` (``bench.xmpp_wire.TimedXmppUpstream`` for XMPP):
  the real upstream, noting the moment each ``publish_report`` returned, i.e. the server's
  acknowledgement (PUBACK, XEP-0198 ``<a/>``) was processed on the gateway's loop.
* ``BenchGateway``: the gateway assembled from its real parts (``LoraNetwork``, ``Bridge``,
  the upstreams, the durable outbox) on a private data directory, as ``gateway.daemon``
  assembles it, minus the console, metrics and web services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import socket
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.radio.base import RadioSettings, RxHandler, RxPacket
from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.bridge import Bridge
from gateway.config import Config
from gateway.lora import LoraNetwork
from gateway.model import Report, lora_device_id
from gateway.protocol.frames import FrameRejected, JoinAccept
from gateway.state import GatewayState
from gateway.upstreams.mqtt import MqttUpstream

RSSI_DBM = -87.0
SNR_DB = 7.25
FIRST_EUI = 0x70B3_D5E0_0000_0000
JOIN_BATCH = 100
CHECK_INTERVAL_S = 0.25
# Joins are injected as if RxDone happened just long enough ago that the accept is due in
# this many seconds (ample for the gateway's transmit lead of a few ms), so a thousand joins
# do not each wait out the join receive delay.
JOIN_WINDOW_AHEAD_S = 0.2
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, two u64 at 120.
TCP_INFO_SIZE = 256
TCP_INFO_BYTES_OFFSET = 120


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (lost reports, a server that did not start)."""


# ------------------------------------------------------------------------------ the radio


class InjectingRadio:
    """The driver boundary: frames given to ``receive`` reach the gateway's ``on_receive``."""

    def __init__(self, settings: RadioSettings | None = None) -> None:
        self.settings = settings or RadioSettings()
        self.transmitted: list[bytes] = []
        self._on_receive: RxHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, on_receive: RxHandler) -> None:
        self._on_receive = on_receive
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._on_receive = None

    async def transmit(self, payload: bytes) -> float:
        self.transmitted.append(payload)
        return self.settings.time_on_air_s(len(payload))

    async def reconfigure(self, settings: RadioSettings) -> None:
        self.settings = settings

    def healthy(self) -> bool:
        return True

    def receive(self, payload: bytes, t_mono: float | None = None) -> None:
        """A frame received now (call on the gateway's loop)."""
        if self._on_receive is None:
            raise BenchError("radio not open")
        t = time.monotonic() if t_mono is None else t_mono
        self._on_receive(RxPacket(payload, RSSI_DBM, SNR_DB, t))

    def receive_from_interrupt(self, payload: bytes) -> float:
        """A frame received now, signalled from another thread as a DIO0 handler does.

        Returns the ``t_mono`` stamped on the packet.
        """
        if self._on_receive is None or self._loop is None:
            raise BenchError("radio not open")
        t = time.monotonic()
        self._loop.call_soon_threadsafe(self._on_receive, RxPacket(payload, RSSI_DBM, SNR_DB, t))
        return t


class InterruptPacer:
    """A thread handing frames to the radio at a fixed rate, as a driver's DIO0 handler does.

    ``stamps`` maps each frame's key to the ``t_mono`` it was stamped with.
    """

    def __init__(self, radio: InjectingRadio, frames: list[tuple[Any, bytes]], rate: float):
        self.radio = radio
        self.frames = frames
        self.period = 1.0 / rate
        self.stamps: dict[Any, float] = {}
        self.late = 0  # frames sent more than one period behind schedule
        self._thread = threading.Thread(target=self._run, name="dio0", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def wait(self) -> None:
        while self._thread.is_alive():
            await asyncio.sleep(0.05)

    def _run(self) -> None:
        due = time.monotonic()
        for key, phy in self.frames:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -self.period:
                self.late += 1
            self.stamps[key] = self.radio.receive_from_interrupt(phy)
            due += self.period


# ------------------------------------------------------------------------------ the nodes


@dataclass(slots=True)
class Node:
    eui: int
    root_key: bytes
    session: NodeSession | None = None

    @property
    def device(self) -> str:
        return lora_device_id(self.eui)


class NodeFleet:
    """``count`` registered nodes (encrypted sessions) with reproducible root keys."""

    def __init__(self, count: int, *, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.nodes = [Node(FIRST_EUI + i, rng.randbytes(16)) for i in range(count)]
        self._rng = rng

    def write_registry(self, path: Path) -> Path:
        lines = []
        for node in self.nodes:
            lines += [
                "[[device]]",
                f'eui = "{node.eui:016x}"',
                f'root_key = "{node.root_key.hex()}"',
                "encrypt = true",
                "",
            ]
        path.write_text("\n".join(lines))
        return path

    async def join_all(self, radio: InjectingRadio, config: Config, timeout_s: float = 60) -> None:
        """Join every node through the gateway (join request in, join accept out).

        A node whose accept missed its window (the gateway was busy with the others) sends
        a new request, as a node does.
        """
        deadline = time.monotonic() + timeout_s
        for start in range(0, len(self.nodes), JOIN_BATCH):
            pending = self.nodes[start : start + JOIN_BATCH]
            while pending:
                if time.monotonic() > deadline:
                    raise BenchError(f"{len(pending)} nodes not joined in {timeout_s} s")
                pending = await self._join_round(radio, config, pending)

    async def _join_round(
        self, radio: InjectingRadio, config: Config, nodes: list[Node]
    ) -> list[Node]:
        """One request per node; returns the nodes that got no accept."""
        delay = config.join.join_rx_delay_s
        nonces: dict[int, bytes] = {}
        radio.transmitted.clear()
        for node in nodes:
            nonce = self._rng.randbytes(8)
            nonces[node.eui] = nonce
            rx_done = time.monotonic() - delay + JOIN_WINDOW_AHEAD_S
            radio.receive(join_request(node.eui, node.root_key, nonce), t_mono=rx_done)
        seen, quiet_since = 0, time.monotonic()
        while len(radio.transmitted) < len(nodes) and time.monotonic() - quiet_since < 1.0:
            await asyncio.sleep(0.005)
            if len(radio.transmitted) > seen:
                seen, quiet_since = len(radio.transmitted), time.monotonic()
        pending = list(nodes)
        for phy in radio.transmitted:
            for node in pending:
                try:
                    answer = open_join_answer(phy, node.eui, node.root_key, nonces[node.eui])
                except FrameRejected:
                    continue
                if not isinstance(answer, JoinAccept):
                    raise BenchError(f"join of {node.device} refused")
                node.session = NodeSession.from_accept(
                    node.eui, node.root_key, nonces[node.eui], answer
                )
                pending.remove(node)
                break
        radio.transmitted.clear()
        return pending

    def report_frames(
        self, count: int, *, start: int = 0, confirmed: Callable[[int], bool] | None = None
    ) -> Iterator[tuple[Node, int, bytes]]:
        """``count`` new report frames, round robin over the nodes.

        Unconfirmed unless ``confirmed(n)`` says so for the n-th frame: at the throughput
        benchmarks' rates acks could not go on air anyway (duty cycle), and those figures are
        about the way up.
        """
        nodes = self.nodes
        for n in range(start, start + count):
            node = nodes[n % len(nodes)]
            assert node.session is not None
            body = {"temperature_c": 20.0 + (n % 150) / 10, "relay": n % 2 == 0, "counter": n}
            wanted = confirmed is not None and confirmed(n)
            counter, phy = node.session.report(body, confirmed=wanted)
            yield node, counter, phy


# ------------------------------------------------------------------------------ the upstreams


class AckClock:
    """When each report's publish returned (the server's ack was processed).

    With ``keep_times``, also per report (keyed by device and frame counter): when it was
    acknowledged (``times``), when its outbox commit returned (``stored``) and when its
    publish began (``sent``).
    """

    def __init__(self, *, keep_times: bool = False) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.times: dict[tuple[str, int], float] | None = {} if keep_times else None
        self.stored: dict[tuple[str, int], float] = {}
        self.sent: dict[tuple[str, int], float] = {}
        self._target = 0
        self._reached: asyncio.Event | None = None

    def note_stored(self, device: str, seq: int | None) -> None:
        if self.times is not None and seq is not None:
            self.stored[(device, seq)] = time.monotonic()

    def note_sent(self, report: Report) -> None:
        if self.times is not None:
            self.sent[(report.device, report.seq)] = time.monotonic()

    def note(self, report: Report) -> None:
        now = time.monotonic()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if self.times is not None:
            self.times[(report.device, report.seq)] = now
        if self._reached is not None and self.count >= self._target:
            self._reached.set()

    async def wait_for(
        self, count: int, timeout_s: float, lost: Callable[[], int] = lambda: 0
    ) -> None:
        """Until ``count`` reports were acknowledged in all; BenchError after ``timeout_s``,
        or as soon as ``lost()`` says some will never be (refused by the outbox)."""
        self._target = count
        self._reached = asyncio.Event()
        deadline = time.monotonic() + timeout_s
        try:
            while self.count < count:
                if lost():
                    raise BenchError(f"{lost()} reports refused by the gateway's outbox")
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.count} of {count} reports acknowledged in time")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reached.wait(), CHECK_INTERVAL_S)
        finally:
            self._reached = None


class TimedMqttUpstream(MqttUpstream):
    def __init__(self, config: Config, acks: AckClock) -> None:
        super().__init__(config)
        self.acks = acks
        self.sample: tuple[str, int] | None = None  # topic and payload size of a report

    async def publish_report(self, report: Report) -> None:
        self.acks.note_sent(report)
        await super().publish_report(report)
        self.acks.note(report)
        if self.sample is None:
            topic = f"{self.prefix}/devices/{report.device}/report"
            payload = json.dumps(report.to_wire(), separators=(",", ":"), ensure_ascii=False)
            self.sample = (topic, len(payload.encode()))

    def wire_socket(self) -> Any:
        return self.client.socket() if self.client is not None else None


# ------------------------------------------------------------------------------ the gateway


class TimedBridge(Bridge):
    """The bridge, noting when each report's ``report`` (store durably) returned."""

    acks: AckClock

    async def report(self, device: str, kind: str, data: dict[str, Any], **details: Any) -> None:
        # Every keyword (rssi, snr, seq, report_id and whatever DeviceSink.report gains) as is.
        await super().report(device, kind, data, **details)
        self.acks.note_stored(device, details.get("seq"))


def bench_config(
    data_dir: Path,
    registry: Path,
    *,
    mqtt_port: int | None = None,
    xmpp: dict[str, Any] | None = None,
    commit_interval_s: float | None = None,
    services: bool = False,
) -> Config:
    """Defaults everywhere except: private paths, region ``none`` (joins of a thousand
    nodes are not held back by the duty cycle), no Home Assistant discovery and a short
    reconnect backoff. ``services``: the console and metrics server run as by default
    (metrics on a free port), else neither."""
    outbox: dict[str, Any] = {}
    if commit_interval_s is not None:
        outbox["commit_interval_s"] = commit_interval_s
    return Config.from_table(
        {
            "gateway": {"id": "bench", "data_dir": str(data_dir), "log_level": "warning"},
            "radio": {"driver": "sim", "region": "none"},
            "join": {"registry": str(registry)},
            "mqtt": {
                "enabled": mqtt_port is not None,
                "port": mqtt_port or 1883,
                "discovery": False,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
            },
            "xmpp": xmpp or {"enabled": False},
            "outbox": outbox,
            "console": {"enabled": services},
            "metrics": {"enabled": services, "port": 0},
        }
    )


@dataclass
class BenchGateway:
    config: Config
    radio: InjectingRadio
    state: GatewayState
    lora: LoraNetwork
    bridge: Bridge
    upstream: Any  # TimedMqttUpstream or bench.xmpp_wire.TimedXmppUpstream
    acks: AckClock
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, config: Config, *, keep_times: bool = False) -> BenchGateway:
        acks = AckClock(keep_times=keep_times)
        upstream: Any
        if config.mqtt.enabled:
            upstream = TimedMqttUpstream(config, acks)
        else:
            from bench.xmpp_wire import TimedXmppUpstream  # slixmpp only where it is used

            upstream = TimedXmppUpstream(config, acks)
        radio = InjectingRadio()
        state = GatewayState()
        lora = LoraNetwork(config, radio, state)
        bridge = TimedBridge(config, state, [upstream], [lora], radio=radio)
        bridge.acks = acks
        lora.progress = bridge.on_driver_progress
        return cls(config, radio, state, lora, bridge, upstream, acks)

    async def start(self) -> None:
        await self.bridge.start()

    async def stop(self) -> None:
        await self.bridge.stop()

    async def wait_connected(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.upstream.connected:
            if time.monotonic() > deadline:
                raise BenchError(f"{self.upstream.name} upstream not connected in time")
            await asyncio.sleep(0.01)

    async def wait_drained(self, timeout_s: float = 60) -> None:
        """Until the outbox is empty (every entry delivered and the marks committed)."""
        assert self.bridge.outbox is not None
        await until_outbox_empty(self.bridge.outbox, time.monotonic() + timeout_s)

    def not_stored(self) -> int:
        return self.lora.counters.get("report_not_stored", 0)


# ------------------------------------------------------------------------------ helpers


async def until_outbox_empty(outbox: Any, deadline: float | None, poll_s: float = 0.05) -> None:
    """Until every entry is delivered and its delivery mark committed (the outbox empty on
    disk too); BenchError after the monotonic ``deadline`` (None: no limit)."""
    while True:
        await outbox.flush()
        if outbox.size == 0:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise BenchError(f"outbox still holds {outbox.size} entries")
        await asyncio.sleep(poll_s)


@contextlib.asynccontextmanager
async def daemon_gateway(
    nodes: int, mqtt_port: int
) -> AsyncIterator[tuple[Any, InjectingRadio, NodeFleet, Config]]:
    """The gateway as ``duogate run`` assembles it (console and metrics on), with an injecting
    radio and ``nodes`` registered nodes, started in a temporary data directory; stopped when
    the block ends. Yields (gateway, radio, fleet, config)."""
    from gateway.daemon import Gateway  # the caller imports what the daemon imports, not us

    with tempfile.TemporaryDirectory(prefix="duogate-bench-") as tmp:
        fleet = NodeFleet(nodes)
        registry = fleet.write_registry(Path(tmp) / "registry.toml")
        config = bench_config(Path(tmp) / "data", registry, mqtt_port=mqtt_port, services=True)
        radio = InjectingRadio()
        gateway = Gateway.build(config, radio=radio)
        await gateway.start()
        try:
            yield gateway, radio, fleet, config
        finally:
            await gateway.stop()


def cpu_seconds() -> float:
    """CPU time of this process, all threads, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def vm_kib(field_name: str) -> int:
    """A field of /proc/self/status in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise BenchError(f"no {field_name} in /proc/self/status")


def tcp_counters(sock: socket.socket) -> tuple[int, int]:
    """Bytes this TCP socket sent (and had acknowledged) and received, from Linux TCP_INFO."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    return struct.unpack_from("=QQ", info, TCP_INFO_BYTES_OFFSET)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def quiet_logging() -> None:
    """Errors only (``DUOGATE_BENCH_LOG=info`` for more), on standard error."""
    level = os.environ.get("DUOGATE_BENCH_LOG", "error").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
