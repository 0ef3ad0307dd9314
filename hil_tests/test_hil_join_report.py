"""Many nodes join and report through the real SX127x driver and the real LoRa stack.

Simulated bench: 50 nodes at SF7 (a report is about 100 ms on air, its ack about 50 ms) spread
from 50 m to 2 km, starting 0.2 s apart, reporting every 15 s, so the channel is busy but not
saturated: frames collide, the capture effect and retransmissions sort it out. Real bench:
``DUOGATE_HIL_NODES`` (default 4) nodes take turns on the node board's radio.
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
    StoredReport,
    fast_node_config,
    node_board_skip_reason,
    open_bench,
    wait_until,
)

SIM_NODES = 50
REPORTS_PER_NODE = 2


@pytest.fixture(params=BENCH_KINDS)
async def bench(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bench]:
    if request.param == "hardware" and (reason := node_board_skip_reason()):
        pytest.skip(reason)
    async with open_bench(request.param, tmp_path) as opened:
        yield opened


def assert_counters_without_gaps(reports: list[StoredReport]) -> None:
    """Per session, the frame counters forwarded are 0, 1, 2, ... and the report bodies'
    counters follow one another (a gap would be a report lost after it was acked, or dropped
    on the node)."""
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


async def test_nodes_join_with_unique_addresses_and_report_without_gaps(bench: Bench) -> None:
    count = int(os.environ.get(NODES_ENV, "4")) if bench.hardware else SIM_NODES
    report_interval_s = 15.0 if not bench.hardware else 4.0 * count
    node_config = fast_node_config(bench.config, report_interval_s=report_interval_s)
    fleet = NodeFleet(await bench.nodes(count, node_config))
    gateway = bench.gateway()
    await gateway.start()
    fleet.start(stagger_s=0.2)
    sink = gateway.sink

    def done() -> bool:
        if fleet.failed():
            return True
        return all(
            node.joined and len(sink.of(node.device_id)) >= REPORTS_PER_NODE for node in fleet.nodes
        )

    def progress() -> str:
        joined = sum(node.joined for node in fleet.nodes)
        short = sum(len(sink.of(node.device_id)) < REPORTS_PER_NODE for node in fleet.nodes)
        air = bench.medium.stats.as_dict() if bench.medium is not None else {}
        return f"{joined}/{count} joined, {short} nodes short of reports, air {air}"

    try:
        await wait_until(done, 100.0, "every node joined and reported", describe=progress)
        assert not fleet.failed()
    finally:
        await fleet.stop()
        await gateway.stop()

    # Unique addresses, and the node and the gateway agree on each one.
    addresses = [node.address for node in fleet.nodes]
    assert len(set(addresses)) == count, sorted(addresses)
    leases = {info.device_id: info.address for info in gateway.lora.core.leases()}
    assert {node.device_id: node.address for node in fleet.nodes} == leases
    joined_events = {device for device, kind, _ in sink.events if kind == "joined"}
    assert joined_events == set(leases)

    # Every report forwarded once, in order, without gaps.
    report_ids = [report.report_id for report in sink.reports]
    assert len(report_ids) == len(set(report_ids))
    for node in fleet.nodes:
        stored = sink.of(node.device_id)
        assert_counters_without_gaps(stored)
        # Whatever the node saw acked was forwarded (the ack follows the store).
        assert len(stored) >= node.stats.acks_received
        assert node.stats.uplinks_given_up == 0
        assert node.stats.reports_dropped == 0

    if bench.medium is not None:
        print(
            bench.medium.stats.as_dict(),
            sum(n.stats.retransmissions for n in fleet.nodes),
            sum(n.stats.join_attempts for n in fleet.nodes),
        )
