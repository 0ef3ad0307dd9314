"""The outbox pump on the in-memory upstream: order, no gaps, no duplicates, and an upstream
that drops, refuses, stalls or cannot carry an item holds back nothing but itself.

The whole gateway runs (simulated world, LoRa shell, bridge, SQLite outbox); only the server
is the twin. Wire format and broker behaviour are checked against mosquitto and prosody in
test_bridge_mqtt.py, test_bridge_xmpp.py and test_bridge_dual.py.
"""

from __future__ import annotations

from pathlib import Path

from gateway.model import Report
from gateway.upstreams.memory import MemoryUpstream
from tests.bridge_fixtures import AckDropper, assert_no_gaps, world_of
from tests.twin_fixtures import (
    counters_of,
    reporting_node,
    twin_config,
    twin_gateway,
    wait_for_counter,
    wire_reports,
)


async def test_reports_arrive_in_order_without_gaps_and_retransmissions_once(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path, nodes=3)) as (gateway, twin):
        world = world_of(gateway)
        devices = [node.device_id for node in world.nodes]
        # One node misses the gateway's first acks: it retransmits the same frames.
        lossy = world.nodes[0]
        dropper = AckDropper(lossy, 3)
        await wait_for_counter(twin, devices, 5)
        assert dropper.left == 0
        assert lossy.stats.retransmissions >= 3
        seen_twice = gateway.state.nodes[lossy.device_id].duplicates
        assert seen_twice >= 3, "the gateway never saw a retransmitted report"
    assert_no_gaps(wire_reports(twin), devices, ids_once=True)


async def test_an_upstream_lost_mid_stream_gets_everything_after_it_returns(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path, nodes=2)) as (gateway, twin):
        devices = [node.device_id for node in world_of(gateway).nodes]
        await wait_for_counter(twin, devices, 2)
        twin.disconnect()
        before = {d: max(counters_of(twin.reports, d)) for d in devices}
        outbox = gateway.bridge.outbox  # type: ignore[union-attr]
        assert outbox is not None
        await twin.wait_for(lambda: outbox.size >= 4, "reports kept in the outbox")
        assert not gateway.state.upstreams["mqtt"].connected
        await twin.reconnect()
        await wait_for_counter(twin, devices, max(before.values()) + 4)
    assert_no_gaps(wire_reports(twin), devices, ids_once=False)


async def test_a_refused_publish_pauses_delivery_and_loses_nothing(tmp_path: Path) -> None:
    async with twin_gateway(twin_config(tmp_path, nodes=1)) as (gateway, twin):
        device = (await reporting_node(gateway, twin)).device_id
        twin.refuse(3)
        await wait_for_counter(twin, [device], 4)
    assert_no_gaps(wire_reports(twin), [device], ids_once=False)


async def test_a_stalled_upstream_holds_back_only_itself(tmp_path: Path) -> None:
    mqtt, xmpp = MemoryUpstream("mqtt"), MemoryUpstream("xmpp", with_extras=False)
    config = twin_config(tmp_path, nodes=1)
    async with twin_gateway(config, mqtt, xmpp) as (gateway, _):
        device = world_of(gateway).nodes[0].device_id
        await wait_for_counter(xmpp, [device], 1)
        xmpp.stall()
        stalled_at = len(xmpp.reports)
        await wait_for_counter(mqtt, [device], max(counters_of(mqtt.reports, device)) + 3)
        assert len(xmpp.reports) == stalled_at
        xmpp.release()
        await wait_for_counter(xmpp, [device], max(counters_of(mqtt.reports, device)))
    for twin in (mqtt, xmpp):
        assert_no_gaps(wire_reports(twin), [device], ids_once=True)


async def test_an_item_the_upstream_can_never_take_is_dropped_and_counted(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path, nodes=1)) as (gateway, twin):
        device = (await reporting_node(gateway, twin)).device_id
        twin.cannot_carry(1)
        await twin.wait_for(lambda: bool(twin.not_carried), "an item it cannot carry")
        await wait_for_counter(twin, [device], max(counters_of(twin.reports, device)) + 3)
        assert gateway.bridge is not None
        assert gateway.bridge.counters["undeliverable_mqtt"] == 1
    (dropped,) = twin.not_carried
    counters = counters_of(twin.reports, device)
    assert counters == sorted(counters)
    if isinstance(dropped, Report):  # never sent again, and nothing else went missing
        assert dropped.data["counter"] not in counters
        missing = set(range(1, counters[-1] + 1)) - set(counters)
        assert missing == {dropped.data["counter"]}
    else:
        assert_no_gaps(wire_reports(twin), [device], ids_once=True)
