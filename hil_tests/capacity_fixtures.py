"""Report load on the simulated bench: N nodes reporting every I seconds through the real SX127x
driver and LoRa stack, measured over a window once the fleet is under way.

Run as a module it sweeps loads around the computed capacity and prints what the simulated
world carried (the figures quoted in docs/DEPLOY.md, "Capacity")::

    .venv/bin/python -m hil_tests.capacity_fixtures sweep [SUB_BAND_PERCENT]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.sim.node import SimNode
from gateway.protocol.capacity import (
    SUB_BAND_1_PERCENT,
    SUB_BAND_10_PERCENT,
    Capacity,
    capacity,
)
from gateway.protocol.dutycycle import DutyCycle, SubBand
from hil_tests.helpers import NodeFleet, SimBench, fast_node_config, sim_config
from tests.sink_fixtures import RecordingSink

# The scaled-down bench: SF7 at 125 kHz, a report every 10 or 20 s instead of every few
# minutes. The duty-cycle window shrinks with the intervals (an hour becomes a minute, a few
# report intervals as in the field), so a short run meets the limit a long one would: the
# allowed fraction of the air is the same.
SPREADING_FACTOR = 7
DUTY_WINDOW_S = 60.0
BEHIND_SHARE = 0.75
CHANNELS_HZ = {SUB_BAND_1_PERCENT: 868_100_000, SUB_BAND_10_PERCENT: 869_525_000}


@dataclass(frozen=True, slots=True)
class LoadRun:
    """What a fleet offered and what reached the gateway's sink during the measured window."""

    nodes: int
    interval_s: float
    window_s: float
    offered: int  # reports the nodes produced in the window
    delivered: int  # reports that reached the sink for the first time in the window
    backlog_before: int  # reports waiting in the nodes' queues when the window opened
    backlog_after: int  # ... and when it closed
    dropped: int  # reports the nodes threw away (queue full), in the window
    duty_cycle_blocked: int  # acks the gateway withheld for its duty cycle, in the window
    collisions: int  # frames lost to collisions on the medium, in the window

    @property
    def offered_per_h(self) -> float:
        return self.nodes * 3600 / self.interval_s

    @property
    def delivered_per_h(self) -> float:
        return self.delivered * 3600 / self.window_s

    @property
    def delivered_share(self) -> float:
        return self.delivered / self.offered if self.offered else 1.0

    @property
    def falling_behind(self) -> bool:
        """Reports pile up in the nodes: their queues grew while less than three quarters of
        what they produced got through (a window of a few report intervals is too short to
        ask more), or reports were thrown away."""
        growing = self.backlog_after > self.backlog_before
        return self.dropped > 0 or (growing and self.delivered_share < BEHIND_SHARE)


def backlog(nodes: list[SimNode]) -> int:
    return sum(
        sum(1 for uplink in node.pending if uplink.kind == "report") + (not node.joined)
        for node in nodes
    )


def distinct_reports(sink: RecordingSink) -> int:
    """Reports in the sink, each counted once (a report framed again after a rejoin has a new
    report id but the same body counter)."""
    return len({(report.device, report.data.get("counter")) for report in sink.reports})


async def run_load(
    data_dir: Path,
    sub_band: SubBand,
    nodes: int,
    interval_s: float,
    *,
    warmup_s: float,
    window_s: float,
    seed: int = 1,
) -> LoadRun:
    """Run ``nodes`` nodes reporting every ``interval_s`` on the sub-band's usual channel for
    ``warmup_s`` (joins, first reports), then measure for ``window_s``."""
    radio: dict[str, Any] = {
        "frequency_hz": CHANNELS_HZ[sub_band],
        "spreading_factor": SPREADING_FACTOR,
        "bandwidth_hz": 125_000,
    }
    bench = SimBench(sim_config(data_dir, radio=radio), seed=seed)
    assert bench.medium is not None
    gateway = bench.gateway()
    gateway.lora.duty = DutyCycle(bench.config.radio.region, window_s=DUTY_WINDOW_S)
    node_config = fast_node_config(bench.config, report_interval_s=interval_s)
    fleet = NodeFleet(await bench.nodes(nodes, node_config))
    await gateway.start()
    try:
        fleet.start(min(interval_s, warmup_s / 2), seed=seed)
        await asyncio.sleep(warmup_s)
        offered_before = sum(node.report_counter for node in fleet.nodes)
        delivered_before = distinct_reports(gateway.sink)
        backlog_before = backlog(fleet.nodes)
        dropped_before = sum(node.stats.reports_dropped for node in fleet.nodes)
        blocked_before = gateway.lora.counters["duty_cycle_blocked"]
        collisions_before = bench.medium.stats.lost_collision
        await asyncio.sleep(window_s)
        run = LoadRun(
            nodes=nodes,
            interval_s=interval_s,
            window_s=window_s,
            offered=sum(node.report_counter for node in fleet.nodes) - offered_before,
            delivered=distinct_reports(gateway.sink) - delivered_before,
            backlog_before=backlog_before,
            backlog_after=backlog(fleet.nodes),
            dropped=sum(node.stats.reports_dropped for node in fleet.nodes) - dropped_before,
            duty_cycle_blocked=gateway.lora.counters["duty_cycle_blocked"] - blocked_before,
            collisions=bench.medium.stats.lost_collision - collisions_before,
        )
    finally:
        await fleet.stop()
        await gateway.stop()
        await bench.close()
    failures = fleet.failed()
    assert not failures, f"node firmware failed: {failures!r}"
    return run


def scaled_capacity(sub_band: SubBand) -> Capacity:
    return capacity(SPREADING_FACTOR, sub_band)


# ------------------------------------------------------------------------------------ sweep

# Nodes in the 1 % sub-band may not report every 10 s (their own duty cycle needs 10.3 s).
SWEEP_INTERVAL_S = {SUB_BAND_10_PERCENT: 10.0, SUB_BAND_1_PERCENT: 20.0}
SWEEP_LOADS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # x the computed capacity


async def _sweep(sub_band: SubBand) -> None:
    expected = scaled_capacity(sub_band)
    interval_s = SWEEP_INTERVAL_S[sub_band]
    print(
        f"SF{SPREADING_FACTOR}/125 kHz, {sub_band.limit:.0%} sub-band: computed"
        f" {expected.reports_per_h:.0f} reports/h ({expected.limited_by});"
        f" nodes report every {interval_s:g} s"
    )
    print("load  nodes  offered/h  delivered/h  share  backlog  dropped  blocked  collisions")
    for load in SWEEP_LOADS:
        nodes = max(1, round(load * expected.reports_per_h * interval_s / 3600))
        with tempfile.TemporaryDirectory() as scratch:
            run = await run_load(
                Path(scratch),
                sub_band,
                nodes,
                interval_s,
                warmup_s=DUTY_WINDOW_S,  # a whole duty-cycle window before measuring
                window_s=DUTY_WINDOW_S,
            )
        print(
            f"{load:4.2f}  {nodes:5d}  {run.offered_per_h:9.0f}  {run.delivered_per_h:11.0f}"
            f"  {run.delivered_share:5.2f}  {run.backlog_before:3d}->{run.backlog_after:<3d}"
            f"  {run.dropped:7d}  {run.duty_cycle_blocked:7d}  {run.collisions:10d}"
            f"{'  falling behind' if run.falling_behind else ''}",
            flush=True,
        )


def main(argv: list[str]) -> int:
    bands = {"1": SUB_BAND_1_PERCENT, "10": SUB_BAND_10_PERCENT}
    if len(argv) in (1, 2) and argv[0] == "sweep" and (len(argv) == 1 or argv[1] in bands):
        for key in argv[1:] or ["10", "1"]:
            asyncio.run(_sweep(bands[key]))
        return 0
    print("usage: python -m hil_tests.capacity_fixtures sweep [1|10]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
