"""The capacity tables of docs/DEPLOY.md against the simulated world.

Nodes report through the real SX127x driver and LoRa stack on the simulated medium (collisions,
capture, half duplex), at SF7/125 kHz with report intervals of seconds instead of minutes and
the duty-cycle window shrunk to match (``hil_tests/capacity_fixtures.py``). Well below the
computed capacity every report arrives and the nodes keep up; well above it they fall behind:
reports wait in the nodes' queues, lost to collisions on the channel or to acks the gateway's
duty cycle no longer allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.protocol.capacity import SUB_BAND_1_PERCENT, SUB_BAND_10_PERCENT
from hil_tests.capacity_fixtures import LoadRun, run_load, scaled_capacity

WARMUP_S = 8.0  # joins and the first reports
WINDOW_S = 16.0


def describe(run: LoadRun) -> str:
    return (
        f"{run.nodes} nodes every {run.interval_s:g} s: offered {run.offered_per_h:.0f}/h,"
        f" delivered {run.delivered_per_h:.0f}/h, backlog {run.backlog_before}->"
        f"{run.backlog_after}, dropped {run.dropped}, acks withheld {run.duty_cycle_blocked},"
        f" collisions {run.collisions}"
    )


@pytest.mark.timeout(90)
async def test_well_below_capacity_every_report_arrives(tmp_path: Path) -> None:
    computed = scaled_capacity(SUB_BAND_10_PERCENT)  # limited by the channel
    nodes, interval_s = 5, 10.0
    assert nodes * 3600 / interval_s < 0.4 * computed.reports_per_h
    run = await run_load(
        tmp_path, SUB_BAND_10_PERCENT, nodes, interval_s, warmup_s=WARMUP_S, window_s=WINDOW_S
    )
    assert not run.falling_behind, describe(run)
    # At most the report each node has on the air when the window closes is not through yet.
    assert run.delivered >= run.offered - run.nodes, describe(run)
    assert run.backlog_after <= run.nodes and run.dropped == 0, describe(run)
    assert run.duty_cycle_blocked == 0, describe(run)


@pytest.mark.timeout(90)
async def test_well_above_the_channel_limit_nodes_fall_behind(tmp_path: Path) -> None:
    computed = scaled_capacity(SUB_BAND_10_PERCENT)
    nodes, interval_s = 29, 10.0
    assert nodes * 3600 / interval_s > 2 * computed.reports_per_h
    run = await run_load(
        tmp_path, SUB_BAND_10_PERCENT, nodes, interval_s, warmup_s=WARMUP_S, window_s=WINDOW_S
    )
    assert run.falling_behind, describe(run)
    assert run.collisions > run.delivered, describe(run)  # lost to collisions


@pytest.mark.timeout(90)
async def test_well_above_the_gateway_duty_cycle_nodes_fall_behind(tmp_path: Path) -> None:
    computed = scaled_capacity(SUB_BAND_1_PERCENT)  # limited by the gateway's 1 % for acks
    assert computed.limited_by == "gateway duty cycle"
    nodes, interval_s = 12, 20.0
    offered_per_h = nodes * 3600 / interval_s
    assert offered_per_h > 3 * computed.reports_per_h
    assert offered_per_h < 0.5 * computed.channel_reports_per_h  # the channel alone would cope
    run = await run_load(
        tmp_path, SUB_BAND_1_PERCENT, nodes, interval_s, warmup_s=WARMUP_S, window_s=WINDOW_S
    )
    assert run.falling_behind, describe(run)
    assert run.duty_cycle_blocked > 0, describe(run)  # acks the gateway could not send
