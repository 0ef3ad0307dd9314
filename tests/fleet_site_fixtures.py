"""A simulated site played end to end for the fleet tests: ``duogate sim`` with three gateway
chips and 64 nodes, three ``duogate run`` gateways of one fleet, a broker (mosquitto, or a
NATS cluster with each gateway on its own node), and an application on the fleet topics.

The schedule (seconds from when every gateway drives its chip): node 0 walks from gw-a's side
to gw-b's at ``MOVE_S``; gw-c is killed (SIGKILL) at ``KILL_S``; ``cluster_fault`` (a NATS node
killed and started again) runs at ``CLUSTER_FAULT_S``; commands go to random devices between
``COMMANDS_FROM_S`` and ``COMMANDS_UNTIL_S``. At ``END_S`` the world stops, the gateways get
``DRAIN_S`` to publish what they hold, and the figures are taken from the nodes' ledger and what
the application received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from drivers.radio.base import RadioSettings
from drivers.sim.medium import RfMedium
from drivers.sim.world import coverage_m
from gateway.protocol.fleet import command_ref
from tests.bridge_fixtures import Process, wait_for_process_port
from tests.servers import free_port

FLEET = "site"
KEY_HEX = "8f1e0c3b5a7d9e2f4061728394a5b6c7"
NODES = 64
REPORT_INTERVAL_S = 12.0
PATH_LOSS_EXPONENT = 3.7  # a reach of about 500 m: 1, 2 or 3 gateways hear a node
RADIO = RadioSettings(frequency_hz=869_525_000, spreading_factor=7, bandwidth_hz=500_000)
GATEWAYS = {"gw-a": (0.0, 0.0), "gw-b": (600.0, 0.0), "gw-c": (300.0, 520.0)}
WALKED_TO = (560.0, 30.0)  # node 0 walks from beside gw-a to beside gw-b
POOLS = {"gw-a": 0x0100, "gw-b": 0x0200, "gw-c": 0x0300}
KILLED = "gw-c"
MOVE_S, KILL_S, CLUSTER_FAULT_S = 35.0, 45.0, 70.0
COMMANDS_FROM_S, COMMANDS_UNTIL_S, COMMANDS = 25.0, 65.0, 24
COMMAND_TTL_S = 30.0
DRAIN_S = 20.0
RETRY_MIN_S, RETRY_MAX_S, REJOIN_AFTER_UNACKED = 1.0, 4.0, 6
JOIN_BACKOFF_MAX_S = 8.0
RX_DELAY_S = 1.0
ATTEMPT_S = RX_DELAY_S + 1.0  # an uplink's air time and its receive window, generously
# A node of the killed gateway is served by a neighbour within one of two bounds. Heard by a
# neighbour: its next report (REPORT_INTERVAL_S), the claim (gather and settle), the next
# retransmission. Heard by none of its retransmissions (at the edge of a neighbour's reach):
# the unacked attempts that end its session, one join exchange, its first report acked.
CLAIM_BOUND_S = REPORT_INTERVAL_S + 10.0
FAILOVER_BOUND_S = (
    REPORT_INTERVAL_S
    + sum(min(RETRY_MAX_S, RETRY_MIN_S * 2**k) for k in range(REJOIN_AFTER_UNACKED - 1))
    + REJOIN_AFTER_UNACKED * ATTEMPT_S
    + JOIN_BACKOFF_MAX_S
    + 3 * ATTEMPT_S
)
END_S = KILL_S + FAILOVER_BOUND_S  # the world stops once the slowest may have been served

WORLD = """
[gateway]
data_dir = "{workdir}/world-data"
[radio]
frequency_hz = {frequency}
bandwidth_hz = {bandwidth}
[join]
open_join = true
join_rx_delay_s = 1.0
[sim]
nodes = {nodes}
seed = 7
report_interval_s = {interval}
start_spread_s = 10.0
join_backoff_min_s = 1.0
join_backoff_max_s = {join_backoff_max}
retry_min_s = {retry_min}
retry_max_s = {retry_max}
next_uplink_gap_s = 0.5
rejoin_after_unacked = {rejoin_after}
path_loss_exponent = {exponent}
schedule_from = "gateways"
ledger = "{workdir}/ledger.jsonl"
node_positions = [{positions}]
moves = [{{node = 0, at_s = {move_s}, to = [{to_x}, {to_y}]}}]
{chips}
"""

CHIP = """
[[sim.gateways]]
name = "{name}"
listen = "127.0.0.1:{port}"
position = [{x}, {y}]
"""

GATEWAY = """
[gateway]
id = "{name}"
log_level = "debug"
data_dir = "{workdir}/{name}-data"
[radio]
driver = "sx127x"
spi = "sim://127.0.0.1:{chip_port}"
frequency_hz = {frequency}
bandwidth_hz = {bandwidth}
rx_delay_s = 1.0
[join]
open_join = true
join_rx_delay_s = 1.0
address_pool_start = {pool}
address_pool_end = {pool_end}
[mqtt]
enabled = false
[commands]
node_answer_timeout_s = 20.0
[fleet]
name = "{fleet}"
key = {{ file = "{workdir}/fleet.key" }}
[fleet.broker]
host = "127.0.0.1"
port = {broker_port}
keepalive_s = 5
reconnect_min_s = 0.2
reconnect_max_s = 1.0
publish_timeout_s = 5.0
connect_timeout_s = 5.0
[console]
enabled = false
[metrics]
enabled = false
"""


# ----------------------------------------------------------------------------------- layout


def reach_m() -> float:
    loop = asyncio.new_event_loop()
    try:
        return coverage_m(RfMedium(loop, path_loss_exponent=PATH_LOSS_EXPONENT), RADIO)
    finally:
        loop.close()


def place_nodes(reach: float) -> list[tuple[float, float]]:
    """Seeded positions, each within 85 % of the reach of at least one gateway, most of them
    within reach of two; node 0 (the walker) starts next to gw-a."""
    rng = random.Random(19)
    places: list[tuple[float, float]] = [(40.0, -30.0)]
    while len(places) < NODES:
        x, y = rng.uniform(-150, 750), rng.uniform(-200, 650)
        if any(math.dist((x, y), g) < 0.85 * reach for g in GATEWAYS.values()):
            places.append((round(x, 1), round(y, 1)))
    return places


def coverage(places: list[tuple[float, float]], reach: float) -> dict[int, int]:
    """How many nodes are within the mean reach of 1, 2 or 3 gateways."""
    heard = Counter(sum(math.dist(p, g) < reach for g in GATEWAYS.values()) for p in places)
    return dict(sorted(heard.items()))


# ------------------------------------------------------------------------------ application


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    body: dict[str, Any]
    at: float  # time.monotonic()
    mid: int = 0
    dup: bool = False


class Application:
    """What an application on the fleet topics sees (paho, MQTT 3.1.1, QoS 1), and its
    commands."""

    def __init__(self, port: int) -> None:
        self.messages: list[Received] = []
        self.connections: list[tuple[float, str]] = []  # (monotonic, "connected"/"lost")
        self._lock = threading.Lock()
        # A persistent session that reconnects: a cluster node's death closes connections
        # on the others for a moment, and what was published meanwhile waits in the session.
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"app-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        client.reconnect_delay_set(0.2, 2.0)
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_args: subscribed.set()
        client.on_connect = lambda *_args: self.connections.append((time.monotonic(), "up"))
        client.on_disconnect = lambda *_args: self.connections.append((time.monotonic(), "lost"))
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        client.subscribe(
            [(f"{FLEET}/devices/+/report", 1), (f"{FLEET}/devices/+/command/result", 1)]
        )
        if not subscribed.wait(20):
            raise AssertionError("application: no SUBACK")
        self.client = client

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = {"unreadable": message.payload.hex()}
        with self._lock:
            self.messages.append(
                Received(message.topic, body, time.monotonic(), message.mid, bool(message.dup))
            )

    def wait_heard_from(self, ports: set[int], timeout: float = 30.0) -> None:
        """Publish a probe through each port until this application receives it: on a cluster
        a subscription reaches the other nodes a moment after its SUBACK."""
        for port in sorted(ports):
            probe = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"probe-{uuid.uuid4().hex[:8]}",
                protocol=paho.MQTTv311,
            )
            probe.connect("127.0.0.1", port, keepalive=30)
            probe.loop_start()
            try:
                deadline = time.monotonic() + timeout
                marker = f"probe-{port}"
                while not any(m.body.get("probe") == marker for m in self.snapshot()):
                    assert time.monotonic() < deadline, f"application hears nothing via {port}"
                    payload = json.dumps({"probe": marker})
                    probe.publish(f"{FLEET}/devices/{marker}/report", payload, 1)
                    time.sleep(0.5)
            finally:
                probe.loop_stop()
                probe.disconnect()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def command(self, device: str, command_id: str, action: str, params: dict[str, Any]) -> None:
        envelope = {"id": command_id, "action": action, "params": params, "ttl_s": COMMAND_TTL_S}
        topic, payload = f"{FLEET}/devices/{device}/command", json.dumps(envelope)
        deadline = time.monotonic() + 30.0
        while True:
            info = self.client.publish(topic, payload, 1)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(10)
            if info.is_published():
                return
            assert time.monotonic() < deadline, f"command {command_id} not taken by the broker"
            time.sleep(0.5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ----------------------------------------------------------------------------------- figures


@dataclass
class Figures:
    broker: str
    nodes: int
    coverage: dict[int, int]
    reports_made: int = 0
    acked: int = 0
    published: int = 0
    lost: list[str] = field(default_factory=list)  # acked by a node, never published
    duplicated: list[str] = field(default_factory=list)  # published by the gateways twice
    unknown: list[str] = field(default_factory=list)  # published, never made by a node
    lost_to_app_only: list[str] = field(default_factory=list)  # another listener had them
    results_to_others: dict[str, list[str]] = field(default_factory=dict)  # faulty commands
    # The same publication delivered twice (byte for byte: QoS 1 is at least once, and a
    # broker resends what it had not acknowledged when a connection dropped).
    redelivered: list[str] = field(default_factory=list)
    commands: Counter[str] = field(default_factory=Counter)  # final status -> count
    command_faults: list[str] = field(default_factory=list)
    walker_joins: int = 0
    walker_lost: list[str] = field(default_factory=list)
    failover_s: dict[str, float] = field(default_factory=dict)  # device -> seconds
    orphans: list[str] = field(default_factory=list)  # gw-c's nodes never served again
    alone: list[str] = field(default_factory=list)  # gw-c's nodes no other gateway reaches
    reconnects: dict[str, int] = field(default_factory=dict)  # gateway -> fleet connections
    logs: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        worst = max(self.failover_s.values(), default=float("nan"))
        median = statistics.median(self.failover_s.values()) if self.failover_s else math.nan
        return (
            f"fleet site on {self.broker}: {self.nodes} nodes, coverage (gateways: nodes) "
            f"{self.coverage}, {self.reports_made} reports made, {self.acked} acked, "
            f"{self.published} published; lost {len(self.lost)}, duplicated "
            f"{len(self.duplicated)} (delivered twice by the broker: {len(self.redelivered)}), "
            f"unknown {len(self.unknown)}; "
            f"commands {dict(self.commands)}, faults "
            f"{len(self.command_faults)}; walker joins {self.walker_joins}; "
            f"{len(self.failover_s)} nodes of {KILLED} served again, half within {median:.1f} s "
            f"(bound {CLAIM_BOUND_S:g} s), slowest after {worst:.1f} s (bound "
            f"{FAILOVER_BOUND_S:g} s), {len(self.alone)} out of others' "
            "reach"
        )

    def explain(self) -> str:
        tail = "\n".join(f"--- {name}\n{own_lines(log)[-4000:]}" for name, log in self.logs.items())
        return (
            f"{self.line()}\nlost {self.lost[:10]}\ndup {self.duplicated[:10]}\n"
            f"published but never made {self.unknown[:10]}\n"
            f"lost but received by another listener {self.lost_to_app_only[:10]}\n"
            f"results other listeners received of faulty commands {self.results_to_others}\n"
            f"commands {self.command_faults}\norphans {self.orphans}\n"
            f"{self.story(self.lost[:3] + self.slow()[:2] + self.orphans[:2])}"
            f"{self.command_stories()}{tail}"
        )

    def with_watchers(self, heard: list[list[Received]]) -> Figures:
        """Note which lost reports another listener received (lost by the broker on the way
        to the application, not by the gateways)."""
        ids = {m.body.get("id") for received in heard for m in received}
        self.lost_to_app_only = [rid for rid in self.lost if rid in ids]
        faulty = {fault.split(" ", 1)[0] for fault in self.command_faults}
        for message in (m for received in heard for m in received):
            if message.topic.endswith("/command/result") and message.body.get("id") in faulty:
                told = self.results_to_others.setdefault(message.body["id"], [])
                told.append(str(message.body.get("status")))
        return self

    def slow(self) -> list[str]:
        """The killed gateway's nodes served again later than the bound."""
        return [d for d, s in self.failover_s.items() if s > FAILOVER_BOUND_S]

    def story(self, report_ids: list[str]) -> str:
        """What every process logged about the devices of ``report_ids``."""
        told = []
        for device in dict.fromkeys(report_id.split(":")[0] for report_id in report_ids):
            lines = [
                f"{name}: {line}"
                for name, log in self.logs.items()
                for line in log.splitlines()
                if device in line
            ]
            told.append(f"--- about {device}\n" + "\n".join(lines[:60]) + "\n")
        return "".join(told)

    def command_stories(self) -> str:
        """What every process logged about the faulty commands and their devices."""
        told = []
        for fault in self.command_faults[:3]:
            command_id, device = fault.split(" ", 1)[0], fault.split("(", 1)[1].split(")")[0]
            lines = sorted(
                (line[:8], f"{name}: {line}")
                for name, log in self.logs.items()
                for line in log.splitlines()
                if command_id in line or (device in line and " DEBUG " not in line)
            )
            told.append(
                f"--- about {command_id} for {device}\n"
                + "\n".join(told_line for _, told_line in lines[-80:])
                + "\n"
            )
        return "".join(told)


def own_lines(log: str) -> str:
    """A log without paho's packet lines (the gateways log at debug level)."""
    return "\n".join(line for line in log.splitlines() if " paho: " not in line)


# ------------------------------------------------------------------------------------ checks


def check_reports(figures: Figures) -> None:
    assert figures.acked > 5 * figures.nodes, figures.explain()
    assert figures.lost == [], figures.explain()
    assert figures.duplicated == [], figures.explain()
    assert figures.unknown == [], figures.explain()
    assert sum(n for k, n in figures.coverage.items() if k >= 2) >= figures.nodes // 3


def check_commands(figures: Figures) -> None:
    assert figures.command_faults == [], figures.explain()
    assert figures.commands["executed"] >= 10, figures.explain()


def check_walker(figures: Figures) -> None:
    """The walking node keeps reporting with at most one rejoin."""
    assert 1 <= figures.walker_joins <= 2, figures.explain()
    assert figures.walker_lost == [], figures.explain()


def check_failover(figures: Figures) -> None:
    """The killed gateway's nodes are served by a neighbour: every one within the bound of a
    node no neighbour hears until it rejoins, half of them within the bound of a claim."""
    assert figures.failover_s, f"{KILLED} served no node\n{figures.explain()}"
    assert figures.orphans == [], figures.explain()
    assert max(figures.failover_s.values()) <= FAILOVER_BOUND_S, figures.explain()
    assert statistics.median(figures.failover_s.values()) <= CLAIM_BOUND_S, figures.explain()


# ------------------------------------------------------------------------------------- run


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def play_site(
    workdir: Path,
    broker: str,
    broker_ports: dict[str, int],
    app_port: int,
    cluster_fault: Callable[[], None] | None = None,
    watch_ports: tuple[int, ...] = (),
) -> Figures:
    """Play the schedule; ``broker_ports``: the port each gateway connects to; the
    application commands through ``app_port``, more listeners watch through ``watch_ports``
    (a report the application missed but a listener received was lost by the broker on the
    way to the application)."""
    reach = reach_m()
    places = place_nodes(reach)
    chip_ports = {name: free_port() for name in GATEWAYS}
    (workdir / "fleet.key").write_text(KEY_HEX + "\n")
    positions = ", ".join(
        f"{{node = {i}, position = [{x}, {y}]}}" for i, (x, y) in enumerate(places)
    )
    chips = "".join(
        CHIP.format(name=name, port=chip_ports[name], x=x, y=y) for name, (x, y) in GATEWAYS.items()
    )
    world_path = workdir / "world.toml"
    world_path.write_text(
        WORLD.format(
            workdir=workdir,
            frequency=RADIO.frequency_hz,
            bandwidth=RADIO.bandwidth_hz,
            nodes=NODES,
            interval=REPORT_INTERVAL_S,
            join_backoff_max=JOIN_BACKOFF_MAX_S,
            retry_min=RETRY_MIN_S,
            retry_max=RETRY_MAX_S,
            rejoin_after=REJOIN_AFTER_UNACKED,
            exponent=PATH_LOSS_EXPONENT,
            positions=positions,
            move_s=MOVE_S,
            to_x=WALKED_TO[0],
            to_y=WALKED_TO[1],
            chips=chips,
        )
    )
    processes: dict[str, Process] = {}
    for name in GATEWAYS:
        path = workdir / f"{name}.toml"
        path.write_text(
            GATEWAY.format(
                workdir=workdir,
                name=name,
                chip_port=chip_ports[name],
                frequency=RADIO.frequency_hz,
                bandwidth=RADIO.bandwidth_hz,
                pool=POOLS[name],
                pool_end=POOLS[name] + 0xFF,
                fleet=FLEET,
                broker_port=broker_ports[name],
            )
        )
        processes[name] = Process(name, ["run", "--config", str(path)], workdir)
    world = Process("sim", ["sim", "--config", str(world_path)], workdir)
    app = Application(app_port)
    app.wait_heard_from(set(broker_ports.values()))
    watchers = [Application(port) for port in watch_ports]
    ledger_path = workdir / "ledger.jsonl"
    commands: dict[str, str] = {}  # command id -> device
    killed_at = math.nan
    world.start()
    try:
        wait_for_process_port(chip_ports["gw-c"], world)
        for process in processes.values():
            process.start()
        started = _schedule_start(ledger_path, world)
        rng = random.Random(5)
        command_times = sorted(
            rng.uniform(COMMANDS_FROM_S, COMMANDS_UNTIL_S) for _ in range(COMMANDS)
        )
        events: list[tuple[float, str]] = [(KILL_S, "kill"), (END_S, "end")]
        if cluster_fault is not None:
            events.append((CLUSTER_FAULT_S, "cluster"))
        events += [(t, "command") for t in command_times]
        for at, what in sorted(events):
            _sleep_until(started + at, world, processes)
            if what == "kill":
                processes[KILLED].signal(signal.SIGKILL)
                killed_at = time.monotonic()
            elif what == "cluster":
                assert cluster_fault is not None
                cluster_fault()
            elif what == "command":
                devices = _reporting_devices(app)
                if devices:
                    device = rng.choice(sorted(devices))
                    command_id = f"c{len(commands):02d}-{uuid.uuid4().hex[:6]}"
                    on = rng.random() < 0.5
                    app.command(device, command_id, "relay", {"on": on})
                    commands[command_id] = device
        world.signal(signal.SIGTERM)
        time.sleep(DRAIN_S)
    finally:
        for process in processes.values():
            if process.alive():
                process.signal(signal.SIGTERM)
        if world.alive():
            world.signal(signal.SIGTERM)
        app.close()
        for watcher in watchers:
            watcher.close()
    _write_receipts(workdir / "app.jsonl", app)
    logs = {name: p.output() for name, p in [*processes.items(), ("sim", world)]}
    for name, log in logs.items():
        (workdir / f"{name}.log").write_text(log)
    return _figures(
        broker,
        places,
        reach,
        read_ledger(ledger_path),
        app.snapshot(),
        commands,
        killed_at,
        logs,
    ).with_watchers([w.snapshot() for w in watchers])


def _write_receipts(path: Path, app: Application) -> None:
    with path.open("w") as out:
        for m in app.snapshot():
            line = {"at": m.at, "mid": m.mid, "dup": m.dup, "topic": m.topic}
            line["id"] = m.body.get("id")
            out.write(json.dumps(line) + "\n")
        for at, what in app.connections:
            out.write(json.dumps({"at": at, "connection": what}) + "\n")


def _schedule_start(ledger_path: Path, world: Process) -> float:
    """The monotonic time of the ledger's ``schedule`` line (every gateway drives its chip)."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        for line in read_ledger(ledger_path):
            if line["event"] == "schedule":
                return time.monotonic() - (time.time() - line["t"])
        assert world.alive(), world.output()
        time.sleep(0.1)
    raise AssertionError(f"the gateways never drove their chips:\n{world.output()[-3000:]}")


def _sleep_until(at: float, world: Process, processes: dict[str, Process]) -> None:
    while time.monotonic() < at:
        assert world.alive(), f"sim exited:\n{world.output()[-3000:]}"
        time.sleep(min(0.2, max(0.0, at - time.monotonic())))


def _reporting_devices(app: Application) -> set[str]:
    return {
        m.body["device"]
        for m in app.snapshot()
        if m.topic.endswith("/report") and "probe" not in m.body
    }


def _figures(
    broker: str,
    places: list[tuple[float, float]],
    reach: float,
    ledger: list[dict[str, Any]],
    received: list[Received],
    commands: dict[str, str],
    killed_at: float,
    logs: dict[str, str],
) -> Figures:
    figures = Figures(broker, len(places), coverage(places, reach), logs=logs)
    reports = [m for m in received if m.topic.endswith("/report") and "probe" not in m.body]
    counts = Counter(m.body["id"] for m in reports)
    bodies = Counter((m.body["id"], json.dumps(m.body, sort_keys=True)) for m in reports)
    publications = Counter(report_id for report_id, _ in bodies)
    made = {line["report_id"]: line for line in ledger if line["event"] == "report"}
    acked = {line["report_id"] for line in ledger if line["event"] == "acked"}
    figures.reports_made, figures.acked, figures.published = len(made), len(acked), len(counts)
    figures.lost = sorted(acked - set(counts))
    figures.duplicated = sorted(rid for rid, n in publications.items() if n > 1)
    figures.unknown = sorted(set(counts) - set(made))
    figures.redelivered = sorted({rid for (rid, _), n in bodies.items() if n > 1})
    devices = {line["node"]: line["device"] for line in ledger if "device" in line}
    walker = devices.get(0, "")
    figures.walker_joins = sum(
        1 for line in ledger if line["event"] == "joined" and line.get("device") == walker
    )
    figures.walker_lost = [rid for rid in figures.lost if rid.startswith(walker + ":")]
    _command_figures(figures, ledger, received, commands)
    where = {devices[i]: place for i, place in enumerate(places) if i in devices}
    where[walker] = WALKED_TO
    _failover_figures(figures, reports, killed_at, where, reach)
    for name, log in logs.items():
        figures.reconnects[name] = log.count("mqtt: connected to")
    return figures


def _command_figures(
    figures: Figures,
    ledger: list[dict[str, Any]],
    received: list[Received],
    commands: dict[str, str],
) -> None:
    """Every command has one final result; ``executed`` only if its node ran it, once;
    ``expired`` or ``rejected`` only if its node never ran it; ``timeout`` (the outcome is not
    known: no answer in time, or its gateway went away with it on air) if the node ran it at
    most once."""
    finals: dict[str, list[str]] = {}
    for message in received:
        if message.topic.endswith("/command/result"):
            status = message.body.get("status")
            if status not in ("accepted", "sent"):
                finals.setdefault(message.body.get("id", "?"), []).append(status)
    ran: Counter[tuple[str, int]] = Counter(
        (line["device"], line["ref"])
        for line in ledger
        if line["event"] == "command" and line["status"] == "executed" and not line["repeated"]
    )
    for command_id, device in commands.items():
        statuses = finals.get(command_id, [])
        runs = ran[(device, command_ref(device, command_id))]
        if len(set(statuses)) != 1:
            figures.command_faults.append(f"{command_id} ({device}): results {statuses}")
            continue
        status = statuses[0]
        figures.commands[status] += 1
        if runs > 1 or (status != "timeout" and (status == "executed") != (runs == 1)):
            figures.command_faults.append(f"{command_id} ({device}): {status}, node ran it {runs}x")


def served_by(report: Received) -> str:
    """The gateway that served a report: the first of its ``gateways``."""
    gateways = report.body.get("gateways") or [{}]
    return str(gateways[0].get("gateway", ""))


def _failover_figures(
    figures: Figures,
    reports: list[Received],
    killed_at: float,
    where: dict[str, tuple[float, float]],
    reach: float,
) -> None:
    """The nodes gw-c served when it was killed, and how long until another gateway
    published their next report (those within another gateway's mean reach)."""
    last_before: dict[str, str] = {}
    for message in reports:
        if message.at < killed_at:
            last_before[message.body["device"]] = served_by(message)
    orphans = {device for device, gateway in last_before.items() if gateway == KILLED}
    others = [place for name, place in GATEWAYS.items() if name != KILLED]
    for device in sorted(orphans):
        if not any(math.dist(where[device], place) < reach for place in others):
            figures.alone.append(device)
            continue
        after = [
            m.at - killed_at
            for m in reports
            if m.at > killed_at and m.body["device"] == device and served_by(m) != KILLED
        ]
        if after:
            figures.failover_s[device] = min(after)
        else:
            figures.orphans.append(device)
