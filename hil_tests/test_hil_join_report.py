"""Many nodes join and report through the real SX127x driver and the real LoRa stack.

Simulated bench: 50 nodes on one SF7 channel, spread from 50 m to 2 km, powered up at random
within 20 s and reporting every 20 s. The channel is 500 kHz wide (a 53-byte report is 26 ms on
air, its ack 13 ms): at 125 kHz the same traffic would need four times the air and the
scenario minutes. Even so frames collide, the half-duplex gateway misses frames while it acks
others, and nodes catch each other's frames in their receive windows; the capture effect and
retransmissions sort it out, and what reaches the sink must be complete and in order.

Real bench: ``DUOGATE_HIL_NODES`` (default 4) nodes take turns on the node board's radio.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil_tests.helpers import (
    BENCH_KINDS,
    NODES_ENV,
    Bench,
    NodeFleet,
    fast_node_config,
    node_board_skip_reason,
    open_bench,
    wait_until,
)
from tests.sink_fixtures import StoredReport

SIM_NODES = 50
SIM_RADIO = {
    "region": "US915",
    "frequency_hz": 923_300_000,
    "spreading_factor": 7,
    "bandwidth_hz": 500_000,
}
POWER_UP_SPREAD_S = 20.0
SIM_REPORT_INTERVAL_S = 20.0
REPORTS_PER_NODE = 2
BOUND_S = 110.0  # typically about 45 s


@pytest.fixture(params=BENCH_KINDS)
async def bench(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bench]:
    if request.param == "hardware" and (reason := node_board_skip_reason()):
        pytest.skip(reason)
    async with open_bench(request.param, tmp_path, radio=SIM_RADIO) as opened:
        yield opened


def assert_counters_without_gaps(reports: list[StoredReport]) -> None:
    """Per session, the frame counters forwarded are 0, 1, 2, ... in order, and so are the
    report bodies' own counters (a gap would be a report lost after its ack, or dropped)."""
    by_session: dict[str, list[StoredReport]] = defaultdict(list)
    for report in reports:
        by_session[report.session].append(report)
    for session, stored in by_session.items():
        seqs = [report.seq for report in stored]
        assert seqs == list(range(len(seqs))), f"{session}: frame counters {seqs}"
        bodies = [report.data["counter"] for report in stored]
        assert bodies == list(range(bodies[0], bodies[0] + len(bodies))), (
            f"{session}: report counters {bodies}"
        )


@pytest.mark.timeout(BOUND_S + 60)
async def test_nodes_join_with_unique_addresses_and_report_without_gaps(bench: Bench) -> None:
    if bench.hardware:
        count = int(os.environ.get(NODES_ENV, "4"))
        interval_s = 5.0 * count  # the nodes share one radio and take turns
    else:
        count, interval_s = SIM_NODES, SIM_REPORT_INTERVAL_S
    node_config = fast_node_config(bench.config, report_interval_s=interval_s)
    fleet = NodeFleet(await bench.nodes(count, node_config))
    gateway = bench.gateway()
    await gateway.start()
    sink = gateway.sink
    fleet.start(POWER_UP_SPREAD_S if not bench.hardware else 2.0)

    def everyone_reported() -> bool:
        return bool(fleet.failed()) or all(
            node.joined and len(sink.of(node.device_id)) >= REPORTS_PER_NODE for node in fleet.nodes
        )

    def progress() -> str:
        joined = sum(node.joined for node in fleet.nodes)
        short = [n.device_id for n in fleet.nodes if len(sink.of(n.device_id)) < REPORTS_PER_NODE]
        air = bench.medium.stats.as_dict() if bench.medium is not None else "real"
        return f"{joined}/{count} joined, short of reports: {short}, air: {air}"

    try:
        await wait_until(
            everyone_reported, BOUND_S, "every node joined and reported", describe=progress
        )
    finally:
        await fleet.stop()
        await gateway.stop()
    assert not fleet.failed()

    # Unique addresses, and each node and the gateway agree on it.
    addresses = [node.address for node in fleet.nodes]
    assert len(set(addresses)) == count, sorted(addresses)
    leases = {info.device_id: info.address for info in gateway.lora.core.leases()}
    assert {node.device_id: node.address for node in fleet.nodes} == leases
    assert {device for device, kind, _ in sink.events if kind == "joined"} == set(leases)

    # Every report forwarded once, in order, without gaps; nothing the node saw acked is missing.
    report_ids = [report.report_id for report in sink.reports]
    assert len(report_ids) == len(set(report_ids))
    for node in fleet.nodes:
        stored = sink.of(node.device_id)
        assert_counters_without_gaps(stored)
        assert len(stored) >= node.stats.acks_received
        assert node.stats.uplinks_given_up == 0
        assert node.stats.reports_dropped == 0

    if bench.medium is not None:
        # The channel really was contended: frames collided and some were captured.
        stats = bench.medium.stats
        assert stats.lost_collision > 0
        assert stats.captured > 0
        assert sum(node.stats.retransmissions for node in fleet.nodes) > 0
