"""Randomised soak: thousands of commands with random lifetimes and radio delays; none may be
executed after its deadline.

Real time is too slow for 10,000 commands behind LoRa receive windows, so this runs on a
virtual clock: an asyncio event loop whose ``time()`` jumps straight to the next timer
whenever nothing is ready (``VirtualClockLoop``). Everything time-driven reads that clock:
``loop.time()`` is the monotonic clock of the gateway's LoRa shell (``LoraNetwork``,
``monotonic=`` and ``wall=`` injected), of the RF medium and of the simulated nodes. Work
handed to threads (SQLite lease and command-reference stores) is waited for in real time with
the virtual clock stopped, so a disk write never looks like a long pause.

The code under test is the real path of a command below the bridge:
``envelope.validate`` and ``expiry.compute_deadline`` (as the bridge calls them), the
arrival check (``expiry.check(..., ARRIVAL)``), ``LoraNetwork.execute`` with its queue
timers, receive-window scheduling, the queue and transmission checks with time on air, the
``ttl_ds`` given to the node, and the node library's own TTL check before it executes
(``node.runner``: an ``Execute`` past its deadline is answered ``expired`` unrun). Only the
radio is a stand-in: ``MediumRadio`` puts the gateway
straight on the simulated RF medium (continuous receive, half duplex) and adds random
processing delays on receive and transmit, sometimes long enough to miss a window.

Checks: no execution after the command's deadline; the time to live granted to the node
never outlives the deadline (beyond how late the radio itself started the frame); no command
executed twice; ``expired`` never reported for a
command the node executed; every report the nodes produced reached the sink.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import math
import os
import random
import selectors
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drivers.radio.base import RadioSettings, RxHandler, RxPacket
from drivers.sim.medium import AirParams, Frame, RfMedium
from drivers.sim.node import SimNode
from gateway.driver_settings import plan_nodes, radio_settings
from gateway.lora import LoraNetwork
from gateway.model import Command, CommandResult, CommandStatus, EventKind, IncomingCommand
from gateway.protocol import envelope, expiry
from gateway.state import GatewayState
from gateway.timefmt import rfc3339
from hil_tests.faults_fixtures import (
    FAST_NODES,
    Execution,
    FaultRow,
    base_config,
    publish_row,
    sized,
    watch_executions,
)
from tests.sink_fixtures import RecordingSink

WALL_EPOCH = 1_800_000_000.0  # the virtual wall clock starts in 2027
JOIN_EVENTS = (EventKind.JOINED, EventKind.REJOINED)


# --------------------------------------------------------------------------- virtual clock


class _VirtualSelector(selectors.DefaultSelector):
    """Polls for real I/O without waiting; a wait becomes a jump of the virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        loop = self.loop
        assert loop is not None
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if loop.threads_busy or timeout is None:
            # A thread is working (or nothing is scheduled): wait for it in real time; its
            # completion wakes the loop through the self-pipe. The virtual clock stands still.
            return super().select(None if timeout is None else min(timeout, 1.0))
        loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that runs as fast as the CPU allows."""

    def __init__(self, start: float = 1000.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = start
        self.threads_busy = 0
        self.jumped_s = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self.jumped_s += seconds

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        future = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1

        def done(_future: Any) -> None:
            self.threads_busy -= 1

        future.add_done_callback(done)
        return future


# ----------------------------------------------------------------------- radio on a medium


class MediumRadio:
    """The ``Radio`` interface directly on the RF medium: continuous receive, half duplex.

    Received packets reach the gateway after a random processing delay (``RxPacket.t_mono``
    stays the true end of the frame, as RxDone would say); a transmission starts after a
    random delay, now and then a long one that misses the node's receive window.
    """

    def __init__(
        self, medium: RfMedium, settings: RadioSettings, rng: random.Random, *, stall: float
    ) -> None:
        self.settings = settings
        self.medium = medium
        self._params = AirParams.from_settings(settings, role="gateway")
        self._rng = rng
        self._stall = stall
        self._on_receive: RxHandler | None = None
        self._session = 0
        self._open = False
        self._transmitting = False
        self.stalls = 0
        # End of each frame sent -> how late the radio started it after being asked.
        self.lateness: dict[float, float] = {}
        medium.attach(self, position=(0.0, 0.0), name="gateway")

    # Radio
    async def open(self, on_receive: RxHandler) -> None:
        self._on_receive = on_receive
        self._open = True
        self._session += 1

    async def close(self) -> None:
        self._open = False
        self.medium.detach(self)

    async def transmit(self, payload: bytes) -> float:
        delay = self._rng.uniform(0.0, 0.04)
        if self._rng.random() < self._stall:
            self.stalls += 1
            delay = self._rng.uniform(0.05, 0.5)
        await asyncio.sleep(delay)
        loop = self.medium.loop
        self._transmitting = True
        try:
            frame = self.medium.transmit(
                self, bytes(payload), self._params, float(self.settings.tx_power_dbm)
            )
            self.lateness[frame.end] = delay
            done = loop.create_future()
            loop.call_at(frame.end, _resolve, done)
            await done
        finally:
            self._transmitting = False
            self._session += 1
        return frame.airtime_s

    async def reconfigure(self, settings: RadioSettings) -> None:
        self.settings = settings
        self._params = AirParams.from_settings(settings, role="gateway")

    def healthy(self) -> bool:
        return self._open

    # medium endpoint
    def air_params(self) -> AirParams:
        return self._params

    def rx_session(self) -> int | None:
        return self._session if self._open and not self._transmitting else None

    def on_frame_detected(self, session: int, frame: Frame) -> None:
        pass

    def on_frame_received(self, session: int, frame: Frame, rssi_dbm: float, snr_db: float) -> bool:
        if session != self._session or self._on_receive is None:
            return False
        loop = self.medium.loop
        packet = RxPacket(frame.payload, rssi_dbm, snr_db, loop.time())
        loop.call_later(self._rng.uniform(0.0, 0.03), self._on_receive, packet)
        return True

    def on_frame_failed(self, session: int, frame: Frame) -> None:
        pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# ----------------------------------------------------------------------------------- soak


@dataclass(slots=True)
class Outcome:
    command: Command
    number: int
    result: CommandResult | None = None
    progress: list[CommandStatus] = field(default_factory=list)


@dataclass(slots=True)
class SoakFigures:
    commands: int
    statuses: Counter[str]
    late: list[int]
    overgranted: list[int]
    executed_twice: list[int]
    expired_but_executed: list[int]
    unfinished: list[int]
    rejected_at_gateway: int
    reports_produced: int
    reports_delivered: int
    report_duplicates: int
    lost: dict[str, list[int]]
    virtual_s: float
    radio_stalls: int


def random_lifetime(rng: random.Random, wall_now: float) -> dict[str, Any]:
    """Expiry hints as senders give them: mostly ttl_s, some expires_at, some neither."""
    lifetime = math.exp(rng.uniform(math.log(0.05), math.log(90.0)))
    draw = rng.random()
    if draw < 0.6:
        return {"ttl_s": round(lifetime, 3)}
    if draw < 0.85:
        return {"expires_at": rfc3339(wall_now + lifetime)}
    if draw < 0.95:
        return {"ttl_s": round(lifetime, 3), "expires_at": rfc3339(wall_now + 2 * lifetime)}
    return {}


async def run_soak(data_dir: Path, commands: int, seed: int) -> SoakFigures:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    config = base_config(
        data_dir,
        mqtt_port=1,  # a valid config needs an upstream; none is built below the bridge
        nodes=8,
        seed=seed,
        extra={
            # The 10 % sub-band: at 1 % the downlink budget, not expiry, would be measured.
            "radio": {"rx_delay_s": 0.5, "frequency_hz": 869_525_000},
            "commands": {"default_ttl_s": 20.0, "node_answer_timeout_s": 10.0},
            "sim": {"state_dir": str(data_dir / "world")},
        },
    )

    def wall() -> float:
        return WALL_EPOCH + loop.time()

    medium = RfMedium(loop, seed=seed, loss_probability=0.08)
    settings = radio_settings(config.radio)
    radio = MediumRadio(medium, settings, random.Random(seed + 1), stall=0.03)
    state = GatewayState(clock=wall, monotonic=loop.time)
    lora = LoraNetwork(config, radio, state, monotonic=loop.time, wall=wall)
    outcomes: dict[str, Outcome] = {}

    def progress(command: Command, status: CommandStatus, _detail: str | None) -> None:
        outcomes[command.id].progress.append(status)

    lora.progress = progress
    sink = RecordingSink()
    nodes: list[SimNode] = []
    for index, plan in enumerate(plan_nodes(config)):
        angle = 2 * math.pi * index / config.sim.nodes
        position = (plan.distance_m * math.cos(angle), plan.distance_m * math.sin(angle))
        node_config = dataclasses.replace(FAST_NODES, report_interval_s=rng.uniform(15.0, 45.0))
        node_rng = random.Random(seed * 7919 + index)
        nodes.append(
            SimNode.on_medium(
                plan.eui,
                plan.root_key,
                medium,
                settings,
                position=position,
                name=f"node-{index}",
                config=node_config,
                rng=node_rng,
            )
        )
    executions: list[Execution] = []
    watch_executions(nodes, executions)

    await lora.start(sink)
    node_tasks = [loop.create_task(_start_later(n, rng.uniform(0.0, 5.0))) for n in nodes]
    policy = expiry.ExpiryPolicy.from_config(config.commands)
    tasks: list[asyncio.Task[None]] = []
    rejected = 0

    async def carry_out(outcome: Outcome) -> None:
        command = outcome.command
        if expiry.check(command, loop.time(), stage=expiry.Stage.ARRIVAL) is not None:
            outcome.result = CommandResult(
                command.id, command.device, CommandStatus.EXPIRED, wall(), "expired_on_arrival"
            )
            return
        outcome.result = await lora.execute(command)

    try:
        deadline = loop.time() + 120.0
        while len(sink.devices_with(*JOIN_EVENTS)) < len(nodes) and loop.time() < deadline:
            await asyncio.sleep(0.5)
        assert len(sink.devices_with(*JOIN_EVENTS)) == len(nodes), "not every node joined"
        devices = [node.device_id for node in nodes]
        for number in range(1, commands + 1):
            await asyncio.sleep(rng.expovariate(1.0))
            body = {"id": f"k{number}", "action": "ping", "params": {"n": number}}
            body |= random_lifetime(rng, wall())
            transport = rng.choice([None, None, None, rng.uniform(0.0, 60.0)])
            incoming = IncomingCommand(
                "soak", rng.choice(devices), body, loop.time(), expiry_s=transport
            )
            checked = envelope.validate(
                incoming, lora.owns, policy, now_mono=loop.time(), now_wall=wall()
            )
            if isinstance(checked, envelope.Rejection):
                rejected += 1
                continue
            outcome = outcomes[checked.id] = Outcome(checked, number)
            tasks.append(loop.create_task(carry_out(outcome)))
        await asyncio.gather(*tasks)
        # Let the nodes deliver what they still hold before the reports are counted.
        produced_by_node = {node.device_id: node.report_counter for node in nodes}
        settle_until = loop.time() + 120.0
        while loop.time() < settle_until:
            delivered = set(sink.counters())
            if all(
                (device, n) in delivered
                for device, top in produced_by_node.items()
                for n in range(1, top + 1)
            ):
                break
            await asyncio.sleep(1.0)
    finally:
        for node in nodes:
            node.stop()
        for task in node_tasks:
            task.cancel()
        for task in node_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await lora.stop()

    delivered = set(sink.counters())
    lost = {
        device: [n for n in range(1, top + 1) if (device, n) not in delivered]
        for device, top in produced_by_node.items()
    }
    by_number = {o.number: o for o in outcomes.values()}
    executed_at: dict[int, list[Execution]] = {}
    for execution in executions:
        executed_at.setdefault(int(execution.params["n"]), []).append(execution)
    granted = {
        int(record.params["n"]): record.arrival_ttl_s
        for node in nodes
        for record in node.executed
        if "n" in record.params
    }
    late = [
        n
        for n, runs in executed_at.items()
        if any(run.at > by_number[n].command.deadline for run in runs)
    ]
    # The node counts its time to live from the end of the frame; a radio that started the
    # frame late (after the gateway computed the time left) shifts that end by its lateness.
    ends = sorted(radio.lateness)

    def lateness_of(end: float) -> float:
        index = bisect.bisect_left(ends, end - 1e-6)
        if index < len(ends) and abs(ends[index] - end) <= 1e-6:
            return radio.lateness[ends[index]]
        raise AssertionError(f"no downlink ended at {end}")

    overgranted = [
        n
        for n, runs in executed_at.items()
        if runs[0].at + granted.get(n, 0.0)
        > by_number[n].command.deadline + lateness_of(runs[0].at) + 1e-6
    ]
    statuses = Counter(str(o.result.status) for o in outcomes.values() if o.result is not None)
    return SoakFigures(
        commands=commands,
        statuses=statuses,
        late=late,
        overgranted=overgranted,
        executed_twice=[n for n, runs in executed_at.items() if len(runs) > 1],
        expired_but_executed=[
            o.number
            for o in outcomes.values()
            if o.result is not None
            and o.result.status is CommandStatus.EXPIRED
            and o.number in executed_at
        ],
        unfinished=[o.number for o in outcomes.values() if o.result is None],
        rejected_at_gateway=rejected,
        reports_produced=sum(produced_by_node.values()),
        reports_delivered=len(delivered),
        report_duplicates=len(sink.counters()) - len(delivered),
        lost={device: numbers for device, numbers in lost.items() if numbers},
        virtual_s=loop.time(),
        radio_stalls=radio.stalls,
    )


async def _start_later(node: SimNode, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await node.run()


@pytest.mark.timeout(sized(120, 3600))
def test_randomised_command_soak_executes_nothing_after_its_deadline(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    commands = sized(500, 10_000)
    seed = int(os.environ.get("DUOGATE_SOAK_SEED", "20260101"))
    loop = VirtualClockLoop()
    started = time.monotonic()
    try:
        figures = loop.run_until_complete(run_soak(tmp_path / "data", commands, seed))
    finally:
        loop.close()
    real_s = time.monotonic() - started
    lost = sum(len(numbers) for numbers in figures.lost.values())
    row = FaultRow(
        "randomised command soak (virtual clock)",
        figures.commands,
        figures.reports_produced,
        figures.reports_delivered,
        lost,
        figures.report_duplicates,
        None,
        commands=figures.commands,
        late=len(figures.late),
    )
    publish_row(request, row)
    print(
        f"seed {seed}: {figures.virtual_s:.0f} s of radio time in {real_s:.1f} s; "
        f"results {dict(figures.statuses)}; refused by envelope {figures.rejected_at_gateway}; "
        f"radio stalls {figures.radio_stalls}"
    )
    assert not figures.late, f"executed after the deadline: {figures.late[:20]}"
    assert not figures.overgranted, f"granted time beyond the deadline: {figures.overgranted[:20]}"
    assert not figures.executed_twice, f"executed twice: {figures.executed_twice[:20]}"
    assert not figures.expired_but_executed, figures.expired_but_executed[:20]
    assert not figures.unfinished, f"no final result: {figures.unfinished[:20]}"
    assert figures.statuses["executed"] > 0 and figures.statuses["expired"] > 0
    assert lost == 0, f"reports never delivered: {figures.lost}"
