"""Join storm on the simulated bench: N nodes powered on in the same instant (a site-wide power
cut ending) join and report through the real SX127x driver and LoRa stack.

The air is not scaled: SF7/125 kHz on 869.525 MHz (EU868, 10 % sub-band), the gateway's
receive delays as deployed (1 s), the nodes' duty cycle that of the sub-band, every frame its
real time on air. Each node is the node library with its real-time constants; only the report
interval is long enough that the first report (made at power-on, sent once joined) is what
counts. Run as a module it prints the distribution::

    .venv/bin/python -m hil_tests.join_storm_fixtures 20 [BOUND_S] [SEED]
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from drivers.sim.node import NodeConfig, SimNode
from gateway.driver_settings import plan_nodes
from gateway.protocol.capacity import SUB_BAND_10_PERCENT
from hil_tests.helpers import GatewayUnderTest, SimBench, sim_config
from node import session as ns
from tests.sink_fixtures import RecordingSink

STORM_RADIO: dict[str, Any] = {
    "frequency_hz": 869_525_000,
    "spreading_factor": 7,
    "bandwidth_hz": 125_000,
    "rx_delay_s": 1.0,
}
STORM_JOIN: dict[str, Any] = {"join_rx_delay_s": 1.0}


def storm_node_config(**overrides: Any) -> NodeConfig:
    """The library's real-time constants (node.session.NodeConfig) with the 10 % sub-band's
    duty cycle; reports every 10 minutes (the first one, made at power-on, is measured)."""
    library = ns.NodeConfig()
    config = NodeConfig(
        report_interval_s=600.0,
        join_rx_delay_s=STORM_JOIN["join_rx_delay_s"],
        join_backoff_min_s=library.join_backoff_min_s,
        join_backoff_max_s=library.join_backoff_max_s,
        join_jitter=library.join_jitter,
        join_start_spread_s=library.join_start_spread_s,
        retry_min_s=library.retry_min_s,
        retry_max_s=library.retry_max_s,
        next_uplink_gap_s=library.next_uplink_gap_s,
        jitter=library.jitter,
        duty_cycle=SUB_BAND_10_PERCENT.limit,
    )
    return replace(config, **overrides)


class TimedSink(RecordingSink):
    """A recording sink that notes when each device's first report arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.first_report: dict[str, float] = {}

    async def report(self, device: str, kind: str, data: dict[str, Any], **kw: Any) -> None:
        self.first_report.setdefault(device, asyncio.get_running_loop().time())
        await super().report(device, kind, data, **kw)


@dataclass(frozen=True, slots=True)
class StormRun:
    """Seconds from power-on to each node's join and first report forwarded (None: not
    within the bound), and what the air and the gateway went through."""

    nodes: int
    bound_s: float
    joined_s: list[float | None]
    reported_s: list[float | None]
    join_attempts: list[int]
    air: dict[str, int]
    gateway: dict[str, int]
    elapsed_s: float

    @property
    def all_joined_s(self) -> float | None:
        return None if None in self.joined_s else max(t for t in self.joined_s if t is not None)

    @property
    def all_reported_s(self) -> float | None:
        if None in self.reported_s:
            return None
        return max(t for t in self.reported_s if t is not None)

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "bound_s": self.bound_s,
            "joined": sum(t is not None for t in self.joined_s),
            "reported": sum(t is not None for t in self.reported_s),
            "join": distribution(self.joined_s),
            "report": distribution(self.reported_s),
            "all_joined_s": _rounded(self.all_joined_s),
            "all_reported_s": _rounded(self.all_reported_s),
            "join_attempts": distribution([float(n) for n in self.join_attempts]),
            "air": self.air,
            "gateway": self.gateway,
            "elapsed_s": self.elapsed_s,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def percentile(ordered: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def distribution(times: list[float | None]) -> dict[str, float | None]:
    """Median, p95 and max over every node; a node that never got there counts as infinite
    (so a median or p95 it reaches is None)."""
    ordered = sorted(math.inf if t is None else t for t in times)

    def finite(value: float) -> float | None:
        return None if math.isinf(value) else round(value, 2)

    return {
        "median": finite(percentile(ordered, 0.5)),
        "p95": finite(percentile(ordered, 0.95)),
        "max": finite(ordered[-1]),
    }


async def run_storm(
    data_dir: Path,
    nodes: int,
    bound_s: float,
    *,
    seed: int = 1,
    node_config: NodeConfig | None = None,
) -> StormRun:
    """Power ``nodes`` nodes on at once and wait until every one has joined and had a report
    forwarded, or ``bound_s`` has passed."""
    config = sim_config(data_dir, radio=STORM_RADIO, join=STORM_JOIN)
    bench = SimBench(config, seed=seed)
    medium = bench.medium
    assert medium is not None
    gateway = GatewayUnderTest(config, bench.gateway_radio())
    sink = TimedSink()
    gateway.sink = sink
    fleet: list[SimNode] = []
    joined_at: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    for index, plan in enumerate(plan_nodes(config, nodes)):
        angle = 2 * math.pi * index / nodes
        node = SimNode.on_medium(
            plan.eui,
            plan.root_key,
            medium,
            bench.settings,
            position=(plan.distance_m * math.cos(angle), plan.distance_m * math.sin(angle)),
            config=node_config or storm_node_config(),
            rng=random.Random(plan.eui),
            # Seeded nonces and backoff draws.
            random_bytes=random.Random(seed * 1_000_003 + index).randbytes,
        )
        fleet.append(node)

        def note(event: Any, index: int = index, inner: Any = node.runner.on_event) -> None:
            if isinstance(event, ns.Joined):
                joined_at.setdefault(index, loop.time())
            inner(event)

        node.runner.on_event = note
    await gateway.start()
    tasks: list[asyncio.Task[None]] = []
    started = loop.time()
    try:
        for node in fleet:
            tasks.append(loop.create_task(node.run(), name=f"storm-{node.device_id}"))
        deadline = started + bound_s
        while loop.time() < deadline:
            if len(sink.first_report) == nodes and len(joined_at) == nodes:
                break
            if any(task.done() for task in tasks):
                break
            await asyncio.sleep(0.1)
        elapsed = loop.time() - started
    finally:
        for node in fleet:
            node.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await gateway.stop()
        for node in fleet:
            node.close()
        await bench.close()
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
    assert not failures, f"node firmware failed: {failures!r}"
    return StormRun(
        nodes=nodes,
        bound_s=bound_s,
        joined_s=[joined_at[i] - started if i in joined_at else None for i in range(nodes)],
        reported_s=[
            sink.first_report[node.device_id] - started
            if node.device_id in sink.first_report
            else None
            for node in fleet
        ],
        join_attempts=[node.stats.join_attempts for node in fleet],
        air=medium.stats.as_dict(),
        gateway=dict(gateway.lora.counters),
        elapsed_s=round(elapsed, 2),
    )


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 3 or not all(a.replace(".", "", 1).isdigit() for a in argv):
        print(
            "usage: python -m hil_tests.join_storm_fixtures NODES [BOUND_S] [SEED]", file=sys.stderr
        )
        return 2
    nodes = int(argv[0])
    bound_s = float(argv[1]) if len(argv) > 1 else 300.0
    seed = int(argv[2]) if len(argv) > 2 else 1
    with tempfile.TemporaryDirectory() as scratch:
        run = asyncio.run(run_storm(Path(scratch), nodes, bound_s, seed=seed))
    for key, value in run.summary().items():
        print(f"{key}: {value}")
    print("joined_s:", sorted(round(t, 1) if t is not None else math.inf for t in run.joined_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
