"""Fault scenario: power cut. Whatever a node saw acknowledged on air reaches the broker, however
the gateway process dies.

Three processes, as on a bench: ``python -m gateway sim`` (RF medium, simulated nodes sending
confirmed reports at a few per second, and the gateway's SX127x chip served on a socket),
``python -m gateway run`` (the real SX127x driver on ``radio.spi = "sim://..."``) and mosquitto.

1. The gateway is killed with SIGKILL at random instants under load and restarted, many times.
   Half of the kills are aimed at a report on its way: once a node's state file shows a frame
   about to go on air for the first time, the kill follows after a random delay between nothing
   and the end of its receive window, so kills land between the row's write and its sync, and
   between the sync and the ack. In some repetitions the broker is down around the kill, so
   the acknowledged reports can only be on the gateway's disk.
2. The sync calls fail: ``strace`` attaches to the running gateway and makes every ``fsync`` and
   ``fdatasync`` return EIO for a few seconds under load (with the broker down in every other
   repetition, so no upstream holds the reports either); then the gateway is killed and
   restarted without the fault. A report whose commit failed must not have been acked. Skipped,
   with the reason, when ``strace`` cannot attach and inject here.

What counts is read on the nodes' side: a report is acknowledged when its node took it out of
its queue on an authenticated ack (``acked_from_state_files``). Every such report must arrive
on MQTT, after each restart and at the end; duplicates are allowed and counted in the row.

Reach. A SIGKILL ends the process, not the machine: pages written but never synced survive in
the page cache. So the first scenario catches a gateway that acks a report before its row is
written (held in memory, committed later), and the second one a gateway that acks a report
whose commit failed at the sync (SQLite rolls such a commit back). A gateway that wrote its
rows and skipped the sync (``synchronous=OFF``) would pass the first one (the second one only
notices that no sync call was there to fail); losing unsynced pages takes a power cut below
the file system (a virtual machine, or a block device that drops unsynced writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import pytest

from hil_tests.faults_fixtures import (
    Child,
    FaultRow,
    Ledger,
    MqttSubscriber,
    Stopwatch,
    acked_from_state_files,
    free_port,
    produced_from_state_files,
    publish_row,
    sized,
    time_to_hold,
    wait_until,
)
from tests.servers import Mosquitto, wait_for_port

NODES = 6
REPORT_INTERVAL_S = 2.0  # six nodes: three confirmed reports a second, acks included
RX_DELAY_S = 0.3
READY_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = sized(20.0, 60.0)  # a start takes about 2 s; lost reports never come
SYNC_CALLS = "fsync,fdatasync"

Acked = Mapping[str, Collection[int]]


def write_config(tmp_path: Path, gateway_id: str, broker_port: int, world_port: int) -> Path:
    path = tmp_path / "duogate.toml"
    path.write_text(
        f"""
[gateway]
id = "{gateway_id}"
data_dir = "{tmp_path / "data"}"

[radio]
driver = "sx127x"
spi = "sim://127.0.0.1:{world_port}"
rx_delay_s = {RX_DELAY_S}
bandwidth_hz = 500_000

[join]
open_join = true
join_rx_delay_s = 0.3

[mqtt]
port = {broker_port}
discovery = false
reconnect_min_s = 0.5
reconnect_max_s = 2.0

[sim]
nodes = {NODES}
report_interval_s = {REPORT_INTERVAL_S}
seed = 16
listen = "127.0.0.1:{world_port}"
state_dir = "{tmp_path / "world"}"
start_spread_s = 2.0
join_backoff_min_s = 0.5
join_backoff_max_s = 4.0
retry_min_s = 0.4
retry_max_s = 2.0
next_uplink_gap_s = 0.2

[console]
enabled = false

[metrics]
enabled = false
"""
    )
    return path


class ReadyListener:
    """The gateway's ``NOTIFY_SOCKET`` (abstract namespace): tells when ``duogate run`` is up."""

    def __init__(self) -> None:
        self.address = f"@duogate-power-cut-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setblocking(False)

    def drain(self) -> None:
        """Forget what a gateway killed earlier said."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(4096)

    async def wait_ready(self, child: Child) -> None:
        # Polled, not awaited under a timeout: a timeout that fires as a datagram arrives
        # would cancel the read that took it, and READY=1 would be lost.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert child.proc is not None and child.proc.poll() is None, child.tail()
            try:
                message = self.sock.recv(4096)
            except BlockingIOError:
                await asyncio.sleep(0.02)
                continue
            if "READY=1" in message.decode(errors="replace").splitlines():
                return
        raise AssertionError(f"no READY=1 in {READY_TIMEOUT_S:g} s\n{child.tail()}")

    def close(self) -> None:
        self.sock.close()


class Bench:
    """World, gateway, broker and subscriber of one scenario."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, gateway_id: str) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.world_port = free_port()
        config = write_config(tmp_path, gateway_id, broker.port, self.world_port)
        self.notify = ReadyListener()
        self.world = Child(["sim", "--config", str(config)], tmp_path / "world.log")
        self.gateway = Child(
            ["run", "--config", str(config)],
            tmp_path / "gateway.log",
            env={"NOTIFY_SOCKET": self.notify.address},
        )
        self.ledger = Ledger()
        self.subscriber = MqttSubscriber(broker.port, f"duogate/{gateway_id}", self.ledger)
        self.state_dir = tmp_path / "world"
        self.acked = acked_from_state_files(self.state_dir)
        self.produced = produced_from_state_files(self.state_dir)
        self.recoveries = Stopwatch()
        self.lost_at_restarts: list[dict[str, list[int]]] = []
        self.cuts = 0

    async def start(self) -> None:
        await self.subscriber.wait_connected()
        self.world.start()
        assert self.world.proc is not None
        await asyncio.to_thread(wait_for_port, "127.0.0.1", self.world_port, 30.0, self.world.proc)
        await self.start_gateway()
        # Faults start once every node has joined and been heard: a node that has to join
        # again backs off (its firmware's join backoff), which would measure the node.
        heard = await wait_until(lambda: len(self.ledger.devices()) == NODES, 90.0)
        assert heard, f"not every node was heard before the first fault\n{self.gateway.tail()}"

    async def start_gateway(self) -> None:
        self.notify.drain()
        self.gateway.start()
        await self.notify.wait_ready(self.gateway)

    def kill_gateway(self) -> dict[str, set[int]]:
        """SIGKILL (the power cut); what the nodes had seen acked at that moment."""
        self.gateway.signal(signal.SIGKILL)
        self.cuts += 1
        return self.acked()

    async def restart(self, acked_at_cut: Acked, broker_down: bool, rng: random.Random) -> bool:
        """Power back after a random moment; whether every report acked before the cut arrived
        (what did not is kept in ``lost_at_restarts``)."""
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        started = time.monotonic()
        await self.start_gateway()
        if broker_down:
            await asyncio.to_thread(self.broker.start)
        self.recoveries.add(
            await time_to_hold(self.ledger, acked_at_cut, started, RECOVERY_TIMEOUT_S)
        )
        missing = self.ledger.missing_of(acked_at_cut)
        if missing:
            self.lost_at_restarts.append(missing)
        return not missing

    async def finish(self) -> tuple[dict[str, set[int]], dict[str, int]]:
        """Stop the nodes, then give the gateway time to deliver what they saw acked."""
        self.world.signal(signal.SIGTERM)
        acked, produced = self.acked(), self.produced()
        await wait_until(lambda: self.ledger.holds(acked), 30.0)
        return acked, produced

    def close(self) -> None:
        self.gateway.signal(signal.SIGTERM)
        self.world.signal(signal.SIGTERM)
        self.subscriber.close()
        self.notify.close()

    def diagnose(self) -> str:
        return f"gateway log:\n{self.gateway.tail()}\nworld log:\n{self.world.tail(10)}"


def frames_about_to_go_on_air(state_dir: Path) -> set[tuple[str, int]]:
    """(node, frame counter) of uplinks a node is about to send for the first time: a node
    writes its state file just before each transmission (with the attempt it is about to make)
    and again after the receive window."""
    found: set[tuple[str, int]] = set()
    for path in state_dir.glob("node-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pending = json.loads(path.read_text())["pending"]
            if pending and pending[0]["frame"] is not None and pending[0]["attempts"] == 1:
                found.add((path.name, int(pending[0]["counter"])))
    return found


async def wait_for_uplink(state_dir: Path, timeout: float) -> bool:
    """Return once a node is about to send a new frame (False when none did within timeout)."""
    before = frames_about_to_go_on_air(state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if frames_about_to_go_on_air(state_dir) - before:
            return True
        await asyncio.sleep(0.005)
    return False


def summary(acked: Acked, produced: Mapping[str, int]) -> str:
    acked_count = sum(len(numbers) for numbers in acked.values())
    return f"{sum(produced.values())} produced, {acked_count} acked on air"


# --------------------------------------------------------------------------- 1. SIGKILL


@pytest.mark.timeout(sized(120, 3600))
async def test_power_cut_at_random_instants_loses_no_acked_report(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repetitions = sized(8, 80)
    rng = random.Random(1601)
    bench = Bench(tmp_path, mosquitto, "powercut")
    aimed = broker_outages = 0
    try:
        await bench.start()
        for repetition in range(repetitions):
            # Some steady work first: the nodes' queues drain and fresh reports come up.
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            broker_down = repetition % 4 == 3
            if broker_down:
                # Reports acked from here on are only on the gateway's disk at the cut.
                broker_outages += 1
                await asyncio.to_thread(mosquitto.stop)
                await asyncio.sleep(rng.uniform(0.3, 1.5))
            if repetition % 2 == 0 and await wait_for_uplink(bench.state_dir, 5.0):
                aimed += 1
                # From the node's save just before it transmits to past the ack: the very
                # short delays land between the row's write and its sync.
                ceiling = rng.choice((0.005, 0.02, 0.1, RX_DELAY_S + 0.05))
                await asyncio.sleep(rng.uniform(0.0, ceiling))
            else:
                await asyncio.sleep(min(3.0, rng.expovariate(1 / 0.8)))
            acked_at_cut = bench.kill_gateway()
            if not await bench.restart(acked_at_cut, broker_down, rng):
                break  # the test fails; more cuts would only wait for reports that are gone
        acked, produced = await bench.finish()
    finally:
        bench.close()

    sent, delivered, lost, duplicates = bench.ledger.tally_of(acked)
    fault = (
        f"power cut: gateway SIGKILL under load ({aimed} aimed at an uplink, "
        f"{broker_outages} with the broker down; {summary(acked, produced)})"
    )
    row = FaultRow(fault, bench.cuts, sent, delivered, lost, duplicates, bench.recoveries.worst)
    publish_row(request, row)
    assert sent > 0
    lost_at_restarts = bench.lost_at_restarts
    assert not lost_at_restarts, f"acked before a cut, lost: {lost_at_restarts}\n{bench.diagnose()}"
    assert lost == 0, f"acked, lost: {bench.ledger.missing_of(acked)}\n{bench.diagnose()}"
    assert bench.recoveries.worst is not None


# -------------------------------------------------------------------- 2. failing syncs


def strace_command(pid: int, output: Path) -> list[str]:
    """Attach to ``pid`` and every thread it has or starts; every sync call fails with EIO.

    Attached to the running gateway rather than starting it under ``inject=...:when=N+``:
    strace counts ``when`` per thread and per call, so only attaching and detaching sets a
    window in time whatever the store's threads and its number of syncs."""
    return [
        "strace",
        "-f",
        "-p",
        str(pid),
        "-o",
        str(output),
        "-e",
        f"trace={SYNC_CALLS}",
        "-e",
        f"inject={SYNC_CALLS}:error=EIO",
    ]


@contextlib.contextmanager
def failing_syncs(pid: int, output: Path) -> Iterator[subprocess.Popen[str]]:
    """While inside, every sync call of process ``pid`` fails; detached on the way out (a
    traced process killed meanwhile ends strace by itself)."""
    tracer = subprocess.Popen(
        strace_command(pid, output), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert tracer.stderr is not None
        # strace says "Process N attached" on stderr once every thread is under its control.
        line = tracer.stderr.readline()
        if "attached" not in line:
            tracer.wait(timeout=10)
            raise RuntimeError(f"strace did not attach: {line.strip()}{tracer.stderr.read()}")
        yield tracer
    finally:
        if tracer.poll() is None:
            tracer.terminate()
        tracer.wait(timeout=10)


def injected(output: Path) -> int:
    with contextlib.suppress(OSError):
        return sum("(INJECTED)" in line for line in output.read_text().splitlines())
    return 0


PROBE = """
import os, sys, tempfile, time
with tempfile.TemporaryFile() as file:
    print("ready", flush=True)
    for _ in range(200):
        try:
            os.fdatasync(file.fileno())
        except OSError as exc:
            print(exc.errno, flush=True)
            break
        time.sleep(0.02)
"""


def strace_cannot_inject(tmp_path: Path) -> str | None:
    """Why ``strace`` cannot make a running process's sync calls fail here, or None if it can."""
    if shutil.which("strace") is None:
        return "strace is not installed"
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert probe.stdout is not None
    try:
        probe.stdout.readline()
        try:
            with failing_syncs(probe.pid, tmp_path / "probe.strace"):
                answer = probe.stdout.readline().strip()
        except RuntimeError as exc:
            return str(exc)
        if answer != "5":  # EIO
            return f"strace attached but the sync call did not fail: {answer or 'no answer'}"
        return None
    finally:
        probe.kill()
        probe.wait()


@pytest.mark.timeout(sized(120, 3600))
async def test_failed_sync_then_power_cut_loses_no_acked_report(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    reason = await asyncio.to_thread(strace_cannot_inject, tmp_path)
    if reason is not None:
        pytest.skip(f"cannot inject failing sync calls: {reason}")
    repetitions = sized(2, 16)
    rng = random.Random(1602)
    bench = Bench(tmp_path, mosquitto, "syncfail")
    failed_syncs = broker_outages = 0
    try:
        await bench.start()
        for repetition in range(repetitions):
            broker_down = repetition % 2 == 0  # no upstream holds the reports either
            if broker_down:
                broker_outages += 1
                await asyncio.to_thread(mosquitto.stop)
            await asyncio.sleep(rng.uniform(0.5, 1.5))  # acked rows on disk, then syncs fail
            output = tmp_path / f"syncs-{repetition}.strace"
            with failing_syncs(bench.gateway.pid, output):
                await asyncio.sleep(rng.uniform(2.0, 4.0))
                acked_at_cut = bench.kill_gateway()
            failed_syncs += injected(output)
            if not await bench.restart(acked_at_cut, broker_down, rng):
                break
        acked, produced = await bench.finish()
    finally:
        bench.close()

    sent, delivered, lost, duplicates = bench.ledger.tally_of(acked)
    fault = (
        f"power cut: {SYNC_CALLS} fail (EIO) for 2-4 s, then SIGKILL ({failed_syncs} syncs "
        f"failed, {broker_outages} with the broker down; {summary(acked, produced)})"
    )
    row = FaultRow(fault, bench.cuts, sent, delivered, lost, duplicates, bench.recoveries.worst)
    publish_row(request, row)
    assert failed_syncs > 0, "no sync call failed: the fault never reached the gateway"
    assert sent > 0
    lost_at_restarts = bench.lost_at_restarts
    assert not lost_at_restarts, f"acked before a cut, lost: {lost_at_restarts}\n{bench.diagnose()}"
    assert lost == 0, f"acked, lost: {bench.ledger.missing_of(acked)}\n{bench.diagnose()}"
    assert bench.recoveries.worst is not None
