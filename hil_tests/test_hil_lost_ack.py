"""A lost ack: the node retransmits the same frame, the gateway acks it again and forwards the
report only once.

The node's receiver stays in standby for the receive window of its first report, after the
gateway has stored that report and while the gateway sends its ack: the ack is on the air but
nobody hears it (on the medium the node counts as not listening).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.protocol import frames
from gateway.protocol.session import report_id
from hil_tests.helpers import (
    BENCH_KINDS,
    Bench,
    DeafWindows,
    NodeFleet,
    fast_node_config,
    node_board_skip_reason,
    open_bench,
    wait_until,
)


@pytest.fixture(params=BENCH_KINDS)
async def bench(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bench]:
    if request.param == "hardware" and (reason := node_board_skip_reason()):
        pytest.skip(reason)
    async with open_bench(request.param, tmp_path) as opened:
        yield opened


async def test_lost_ack_leads_to_one_retransmission_forwarded_once(bench: Bench) -> None:
    # One report during the test: the next is due long after it ends.
    node_config = fast_node_config(bench.config, report_interval_s=600.0)
    radios: list[DeafWindows] = []

    def deaf_radio(radio: Any) -> DeafWindows:
        radios.append(DeafWindows(radio))
        return radios[0]

    [node] = await bench.nodes(1, node_config, wrap=deaf_radio)
    [radio] = radios
    gateway = bench.gateway()
    sink = gateway.sink
    # Deaf for the first window in which an ack is certainly coming: the report is stored.
    radio.deaf_windows = 1
    radio.armed = lambda: node.joined and bool(sink.reports)
    fleet = NodeFleet([node])
    await gateway.start()
    fleet.start()
    try:
        # The gateway logs a downlink once its transmission has ended, which can be after the
        # node has heard it: wait for both sides.
        await wait_until(
            lambda: (
                node.stats.acks_received == 1
                and not node.pending
                and len(gateway.downlinks(node.device_id, "ack")) >= 2
            ),
            30.0,
            "report acked, and both acks logged",
            describe=lambda: (
                f"node {node.stats}, sink {sink.reports}, "
                f"acks logged {gateway.downlinks(node.device_id, 'ack')}"
            ),
        )
    finally:
        await fleet.stop()
        await gateway.stop()

    device = node.device_id
    assert radio.windows_missed == 1
    # The node sent the very same report frame again (same counter, same tag).
    reports_sent = [p for p in radio.sent if frames.peek(p).type is frames.AirFrameType.REPORT]
    assert len(reports_sent) >= 2
    assert len(set(reports_sent)) == 1
    assert frames.peek(reports_sent[0]).counter == 0
    assert node.stats.retransmissions == len(reports_sent) - 1
    # The gateway recognised the retransmission, acked counter 0 again ...
    assert gateway.state.nodes[device].duplicates >= 1
    acks = gateway.downlinks(device, "ack")
    assert acks.count({"ack": 0}) >= 2
    assert acks == [{"ack": 0}] * len(acks)
    # ... and the report reached the sink exactly once, under the report id of counter 0.
    lease = gateway.lora.core.lease(device)
    assert lease is not None
    [stored] = sink.of(device)
    assert stored.report_id == report_id(device, lease.session_id, 0)
    assert stored.seq == 0
    assert stored.data["counter"] == 1
    assert len(sink.reports) == 1
