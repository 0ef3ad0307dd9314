"""Shared parts of the fault scenarios (``test_faults_*.py``).

Every scenario runs in a short form under ``make test`` and a long form under ``make soak``
(``DUOGATE_SOAK=1``), and ends with one line

    fault, repetitions, reports sent, reports delivered, lost, duplicates, worst recovery time

printed to the terminal and, when ``DUOGATE_RELIABILITY_OUT`` names a file, appended to it as a
CSV row.

Counting. A simulated node numbers its reports 1, 2, 3, ... (``counter`` in the report body,
``SimNode.report_counter``). At the end of a scenario the nodes' counters are read, and the
subscriber must have received every report up to them: ``lost`` is the reports the nodes
produced minus the distinct (device, counter) pairs delivered, ``duplicates`` the deliveries
beyond the distinct ones. A report dropped by a node because its queue overflowed while the
gateway could not take it is lost too.

Recovery time: from the moment a fault ends (process restarted, space freed) until the
subscriber holds every report the nodes had produced at that moment. A chip fault ends only
by the driver's own reset, so there it runs from the moment the fault began.

The in-process scenarios run the nodes with ``FAST_NODES`` timing, powered up one after the
other across a report interval, on 500 kHz channels (short frames): the channel stays quiet
enough that what is measured is the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from slixmpp import ClientXMPP, Message

from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.chip import FailMode, SimulatedSX127x
from drivers.sim.inprocess import InProcessSimRadio
from drivers.sim.node import NodeConfig, SimNode
from drivers.sim.world import SimWorld
from gateway.config import Config, parse_config
from gateway.driver_settings import sim_radio_settings
from gateway.upstreams.xmpp_stanzas import NS, register_stanza_plugins
from tests.servers import Prosody

SOAK = os.environ.get("DUOGATE_SOAK", "") not in ("", "0")
RESULTS_ENV = "DUOGATE_RELIABILITY_OUT"
RESULT_COLUMNS = (
    "form",
    "fault",
    "repetitions",
    "reports_sent",
    "reports_delivered",
    "lost",
    "duplicates",
    "worst_recovery_s",
    "commands",
    "late_executions",
)

# Node firmware timing scaled down from real time (``NodeConfig`` defaults are for the field):
# retries start at 0.4 s and are capped at 2 s, so a node notices a recovered gateway quickly.
FAST_NODES = NodeConfig(
    report_interval_s=3.0,
    join_rx_delay_s=0.3,
    join_backoff_min_s=0.5,
    join_backoff_max_s=4.0,
    retry_min_s=0.4,
    retry_max_s=2.0,
    next_uplink_gap_s=0.2,
    jitter=0.8,  # waits spread widely, so nodes that collided once do not collide again
    max_attempts=200,
    rejoin_after_unacked=60,
)


def sized(short: Any, long: Any) -> Any:
    """The short form's value under ``make test``, the long form's under ``make soak``."""
    return long if SOAK else short


# ----------------------------------------------------------------------------- result rows


@dataclass(slots=True)
class FaultRow:
    fault: str
    repetitions: int
    sent: int
    delivered: int
    lost: int
    duplicates: int
    worst_recovery_s: float | None
    commands: int = 0
    late: int = 0

    def line(self) -> str:
        worst = "n/a" if self.worst_recovery_s is None else f"{self.worst_recovery_s:.1f} s"
        text = (
            f"{self.fault}, {self.repetitions}, {self.sent}, {self.delivered}, {self.lost}, "
            f"{self.duplicates}, {worst}"
        )
        if self.commands:
            text += f" (commands {self.commands}, executed late {self.late})"
        return text

    def csv_row(self) -> list[str]:
        worst = "" if self.worst_recovery_s is None else f"{self.worst_recovery_s:.2f}"
        return [
            "long" if SOAK else "short",
            self.fault,
            str(self.repetitions),
            str(self.sent),
            str(self.delivered),
            str(self.lost),
            str(self.duplicates),
            worst,
            str(self.commands),
            str(self.late),
        ]


def publish_row(request: pytest.FixtureRequest, row: FaultRow) -> None:
    """Show the row on the terminal (also under ``pytest -q``) and append it to the results."""
    line = "reliability: " + row.line()
    print(line)
    request.node.user_properties.append(("reliability", row.line()))
    plugins = request.config.pluginmanager
    reporter = plugins.getplugin("terminalreporter")
    capture = plugins.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None and "PYTEST_XDIST_WORKER" not in os.environ:
            reporter.write_line("")
            reporter.write_line(line)
        else:  # a pytest-xdist worker writes its report to a pipe; its stderr is the terminal
            sys.stderr.write(f"\n{line}\n")
            sys.stderr.flush()
    out = os.environ.get(RESULTS_ENV)
    if out:
        with Path(out).open("a", newline="") as stream:
            fcntl.flock(stream, fcntl.LOCK_EX)  # pytest-xdist workers append side by side
            writer = csv.writer(stream)
            if stream.tell() == 0:
                writer.writerow(RESULT_COLUMNS)
            writer.writerow(row.csv_row())


# ------------------------------------------------------------------------------ the ledger


@dataclass(frozen=True, slots=True)
class Delivery:
    at: float  # time.monotonic() at arrival
    device: str
    counter: int
    report_id: str


class Ledger:
    """Every report the subscriber received (thread-safe: paho calls in from its thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._seen: dict[str, set[int]] = {}

    def add(self, device: str, counter: int, report_id: str) -> None:
        with self._lock:
            self._deliveries.append(Delivery(time.monotonic(), device, counter, report_id))
            self._seen.setdefault(device, set()).add(counter)

    def add_wire(self, wire: Mapping[str, Any]) -> None:
        """A report as published (``Report.to_wire()``)."""
        data = wire.get("data")
        counter = data.get("counter") if isinstance(data, dict) else None
        if isinstance(counter, int):
            self.add(str(wire.get("device")), counter, str(wire.get("id")))

    def devices(self) -> set[str]:
        with self._lock:
            return set(self._seen)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._deliveries)

    def covers(self, produced: Mapping[str, int]) -> bool:
        with self._lock:
            return all(
                len(self._seen.get(device, ())) >= top
                and all(n in self._seen.get(device, ()) for n in range(1, top + 1))
                for device, top in produced.items()
            )

    def missing(self, produced: Mapping[str, int]) -> dict[str, list[int]]:
        with self._lock:
            gaps = {
                device: [n for n in range(1, top + 1) if n not in self._seen.get(device, ())]
                for device, top in produced.items()
            }
        return {device: numbers for device, numbers in gaps.items() if numbers}

    def tally(self, produced: Mapping[str, int]) -> tuple[int, int, int, int]:
        """(sent, delivered, lost, duplicates) for reports 1..produced[device] of each node."""
        with self._lock:
            sent = sum(produced.values())
            delivered = sum(
                len({n for n in self._seen.get(device, ()) if n <= top})
                for device, top in produced.items()
            )
            distinct = sum(len(numbers) for numbers in self._seen.values())
            duplicates = len(self._deliveries) - distinct
        return sent, delivered, sent - delivered, duplicates

    def holds(self, acked: Mapping[str, Collection[int]]) -> bool:
        """Whether every one of these reports (device -> report counters) was received."""
        with self._lock:
            return all(
                set(numbers) <= self._seen.get(device, set()) for device, numbers in acked.items()
            )

    def missing_of(self, acked: Mapping[str, Collection[int]]) -> dict[str, list[int]]:
        with self._lock:
            gaps = {
                device: sorted(set(numbers) - self._seen.get(device, set()))
                for device, numbers in acked.items()
            }
        return {device: numbers for device, numbers in gaps.items() if numbers}

    def tally_of(self, acked: Mapping[str, Collection[int]]) -> tuple[int, int, int, int]:
        """(sent, delivered, lost, duplicates) for exactly these reports (device -> counters)."""
        with self._lock:
            sent = sum(len(set(numbers)) for numbers in acked.values())
            delivered = sum(
                len(set(numbers) & self._seen.get(device, set()))
                for device, numbers in acked.items()
            )
            distinct = sum(len(numbers) for numbers in self._seen.values())
            duplicates = len(self._deliveries) - distinct
        return sent, delivered, sent - delivered, duplicates


async def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def recovery_time(
    ledger: Ledger, produced: Callable[[], dict[str, int]], started: float, timeout: float
) -> float | None:
    """Seconds from ``started`` (the fault's end) until the subscriber holds every report the
    nodes had produced at that moment; None when that does not happen within ``timeout``."""
    snapshot = produced()
    if await wait_until(lambda: ledger.covers(snapshot), timeout):
        return time.monotonic() - started
    return None


def worst(times: Iterable[float | None]) -> float | None:
    """The longest recovery, or None when any recovery did not complete."""
    values = list(times)
    if not values or any(t is None for t in values):
        return None
    return max(t for t in values if t is not None)


async def settle(
    ledger: Ledger, produced: Callable[[], dict[str, int]], timeout: float
) -> dict[str, int]:
    """Snapshot what the nodes produced, then give the gateway ``timeout`` to deliver it."""
    snapshot = produced()
    await wait_until(lambda: ledger.covers(snapshot), timeout)
    return snapshot


# ------------------------------------------------------------------------ MQTT subscriber


class MqttSubscriber:
    """A QoS 1 subscriber with a persistent session that reconnects within a fraction of a
    second, recording reports in a ``Ledger`` and every other message in ``messages``."""

    def __init__(
        self,
        port: int,
        prefix: str,
        ledger: Ledger,
        *,
        host: str = "127.0.0.1",
        username: str | None = None,
        password: str | None = None,
        client_id: str = "reliability-subscriber",
        topics: Iterable[str] = (),
    ) -> None:
        self.ledger = ledger
        self.prefix = prefix
        self.messages: list[tuple[float, str, bytes]] = []
        self._topics = [f"{prefix}/devices/+/report", *topics]
        self.connected = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_args: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        for topic in self._topics:
            client.subscribe(topic, qos=1)
        self.connected.set()

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        self.messages.append((time.monotonic(), message.topic, bytes(message.payload)))
        if message.topic.endswith("/report"):
            with contextlib.suppress(ValueError):
                self.ledger.add_wire(json.loads(message.payload))

    async def wait_connected(self, timeout: float = 15.0) -> None:
        assert await wait_until(self.connected.is_set, timeout), "subscriber did not connect"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------ XMPP subscriber


class ProsodyWithOffline(Prosody):
    """The test prosody plus mod_offline, as any server for people has: a report sent while
    the subscriber is between connections waits for it instead of bouncing."""

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        self.config_path.write_text(text.replace('"presence";', '"presence"; "offline";', 1))


class XmppSubscriber:
    """A person's XMPP client receiving reports; reconnects within 0.1 s after any loss."""

    def __init__(self, server: Prosody, jid: str, password: str, ledger: Ledger) -> None:
        register_stanza_plugins()
        self.server = server
        self.jid = jid
        self.password = password
        self.ledger = ledger
        self.connected = asyncio.Event()
        self.sessions = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="xmpp-subscriber")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_connected(self, timeout: float = 15.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    def _on_message(self, message: Message) -> None:
        if message.xml.find(f"{{{NS}}}report") is not None:
            with contextlib.suppress(ValueError, TypeError):
                self.ledger.add_wire(message["duogate_report"].to_wire())

    async def _run(self) -> None:
        while True:
            client = ClientXMPP(f"{self.jid}/subscriber", self.password)
            client.ssl_context = ssl.create_default_context(cafile=str(self.server.ca_file))
            client.enable_direct_tls = False
            session, gone = asyncio.Event(), asyncio.Event()

            def started(_event: Any, client: ClientXMPP = client, session: asyncio.Event = session):
                client.send_presence()
                session.set()

            client.add_event_handler("session_start", started)
            client.add_event_handler("disconnected", lambda _e, gone=gone: gone.set())
            client.add_event_handler("connection_failed", lambda _e, gone=gone: gone.set())
            client.add_event_handler("message", self._on_message)
            try:
                client.connect(self.server.host, self.server.port)
                waiters = [asyncio.ensure_future(e.wait()) for e in (session, gone)]
                await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if session.is_set() and not gone.is_set():
                    self.sessions += 1
                    self.connected.set()
                    await gone.wait()
            finally:
                self.connected.clear()
                client.cancel_connection_attempt()
                client.abort()
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------- in-process gateways


class TunedSimRadio(InProcessSimRadio):
    """``radio.driver = "sim"`` with the nodes' timing scaled down and a quicker chip probe.

    Still the real SX127x driver on the register-level simulated chip.
    """

    def __init__(self, config: Config, nodes: NodeConfig = FAST_NODES, probe_s: float = 1.0):
        super().__init__(sim_radio_settings(config), probe_interval_s=probe_s)
        self.node_config = nodes
        self._node_tasks: list[asyncio.Task[None]] = []

    @property
    def driver(self) -> Sx127xRadio:
        return self._radio

    @property
    def chip(self) -> FaultyChip:
        assert self.world is not None and isinstance(self.world.chip, FaultyChip)
        return self.world.chip

    async def open(self, on_receive: Any) -> None:
        world = SimWorld(dataclasses.replace(self.sim_settings.world, node=self.node_config))
        world.chip.detach()
        world.chip = FaultyChip(world.loop, world.medium, position=(0.0, 0.0), name="gateway")
        self.world = world
        await self._radio.open(on_receive)
        # Nodes powered up at different moments, spread over one report interval (started
        # together they would report in step and collide every time).
        spacing = self.node_config.report_interval_s / max(1, len(world.nodes))
        self._node_tasks = [
            world.loop.create_task(_start_later(node, index * spacing))
            for index, node in enumerate(world.nodes)
        ]

    async def close(self) -> None:
        for task in self._node_tasks:
            task.cancel()
        for task in self._node_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().close()


async def _start_later(node: SimNode, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await node.run()


class FaultyChip(SimulatedSX127x):
    """The simulated SX1276 with a fault that can outlive a reset through RST (a damaged part):
    while ``persistent`` is set, every reset comes back with that fault."""

    persistent: FailMode | None = None

    def reset(self) -> None:
        super().reset()
        if self.persistent is not None:
            self.fail_mode = self.persistent


@dataclass(frozen=True, slots=True)
class Execution:
    at: float  # the node's loop time when it executed (time.monotonic() on the default loop)
    device: str
    action: str
    params: dict[str, Any]


def watch_executions(nodes: Iterable[SimNode], log: list[Execution]) -> None:
    """Record when each node's firmware executes a command (it still executes as before)."""
    for node in nodes:
        original = node._execute

        def execute(
            action: str, params: dict[str, Any], node: SimNode = node, original: Any = original
        ) -> Any:
            now = asyncio.get_running_loop().time()
            log.append(Execution(now, node.device_id, action, dict(params)))
            return original(action, params)

        node._execute = execute  # type: ignore[method-assign]


def world_nodes(radio: InProcessSimRadio) -> list[SimNode]:
    assert radio.world is not None
    return radio.world.nodes


def node_diagnostics(nodes: Iterable[SimNode]) -> str:
    """What each node still holds and has counted: for the message of a failed check."""
    lines = []
    for node in nodes:
        pending = [
            (uplink.kind, uplink.body.get("counter"), uplink.counter, uplink.attempts)
            for uplink in node.pending
        ]
        lines.append(f"{node.device_id}: pending {pending}; {node.stats}")
    return "\n".join(lines)


def produced_by(nodes: list[SimNode]) -> Callable[[], dict[str, int]]:
    return lambda: {node.device_id: node.report_counter for node in nodes}


def produced_from_state_files(state_dir: Path) -> Callable[[], dict[str, int]]:
    """Node counters of a world running in another process, from its node state files."""

    def read() -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in sorted(state_dir.glob("node-*.json")):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                counts[f"lora-{data['eui']}"] = int(data["report_counter"])
        return counts

    return read


def acked_from_state_files(state_dir: Path) -> Callable[[], dict[str, set[int]]]:
    """Reports each node of a world running in another process has seen acknowledged on air,
    from its node state file: every report it produced (1..report_counter) that no longer
    waits in its queue (a node removes a report from its queue when an authenticated downlink
    acks it). A report the node dropped instead (queue full, attempts used up) counts too and
    shows as lost, as in ``Ledger.tally``."""

    def read() -> dict[str, set[int]]:
        acked: dict[str, set[int]] = {}
        for path in sorted(state_dir.glob("node-*.json")):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                waiting = {
                    uplink["body"].get("counter")
                    for uplink in data["pending"]
                    if uplink["kind"] == "report"
                }
                produced = range(1, int(data["report_counter"]) + 1)
                acked[f"lora-{data['eui']}"] = {n for n in produced if n not in waiting}
        return acked

    return read


async def time_to_hold(
    ledger: Ledger, acked: Mapping[str, Collection[int]], started: float, timeout: float
) -> float | None:
    """Seconds from ``started`` until the subscriber holds every report of ``acked``; None when
    that does not happen within ``timeout``."""
    if await wait_until(lambda: ledger.holds(acked), timeout):
        return time.monotonic() - started
    return None


def base_config(
    data_dir: Path,
    *,
    mqtt_port: int | None = None,
    nodes: int = 3,
    interval_s: float = 3.0,
    seed: int = 11,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """A gateway on the simulated radio with open join, fast receive windows and MQTT."""
    data: dict[str, dict[str, Any]] = {
        "gateway": {"id": "rel", "data_dir": str(data_dir)},
        # 500 kHz: frames a quarter as long as at 125 kHz, so the test's own traffic rarely
        # collides and what is measured is the fault, not the channel.
        "radio": {"driver": "sim", "rx_delay_s": 0.3, "bandwidth_hz": 500_000},
        "join": {"open_join": True, "join_rx_delay_s": 0.3},
        "mqtt": {
            "enabled": mqtt_port is not None,
            "port": mqtt_port or 1883,
            "discovery": False,
            "reconnect_min_s": 0.5,
            "reconnect_max_s": 2.0,
            "publish_timeout_s": 5.0,
            "connect_timeout_s": 5.0,
        },
        "sim": {"nodes": nodes, "report_interval_s": interval_s, "seed": seed},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Stopwatch:
    """Recovery times of one scenario."""

    times: list[float | None] = field(default_factory=list)

    def add(self, value: float | None) -> None:
        self.times.append(value)

    @property
    def worst(self) -> float | None:
        return worst(self.times)


REPO = Path(__file__).resolve().parent.parent


class Child:
    """A ``python -m gateway ...`` child with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *self.args],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
