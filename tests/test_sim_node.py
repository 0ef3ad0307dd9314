"""Simulated nodes (the node library on simulated SX127x chips) against the real network core,
through the gateway's own SX127x driver on the same medium (tests/sim_node_fixtures.py).
Times are scaled down (reports every 0.2 s instead of every minute, 500 kHz channels).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drivers.sim.node import NodeConfig, NodeStateError, SimNode
from gateway.model import CommandStatus
from gateway.protocol.frames import DownlinkCommand
from gateway.protocol.join import DeviceCredentials
from gateway.protocol.session import NetworkCore
from tests.sim_node_fixtures import FAST, SETTINGS, Gateway, gateways, root_key_of


@pytest.fixture
async def gateway_of() -> AsyncIterator[Callable[[list[int]], Awaitable[Gateway]]]:
    async with gateways() as build:
        yield build


async def until(condition: Callable[[], bool], timeout_s: float = 45.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def make_node(
    gateway: Gateway, eui: int, state_path: Path | None = None, config: NodeConfig = FAST
) -> SimNode:
    return gateway.node(eui, state_path, config)


async def stopped(node: SimNode, task: asyncio.Task[None]) -> None:
    node.stop()
    await asyncio.wait_for(task, 5)


async def test_node_joins_and_its_reports_are_acked(gateway_of: Any) -> None:
    gateway = await gateway_of([1])
    node = make_node(gateway, 1)
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.acks_received >= 5)
    await stopped(node, task)
    bodies = gateway.reports_of(node.device_id)
    assert [b["counter"] for b in bodies] == list(range(1, len(bodies) + 1))
    assert all(set(b) == {"counter", "temperature_c", "relay"} for b in bodies)
    assert node.stats.joins == 1 and node.joined
    assert node.stats.reports_sent >= 5
    assert gateway.rejected == []


async def test_commands_are_executed_and_answered(gateway_of: Any) -> None:
    gateway = await gateway_of([2])
    node = make_node(gateway, 2)
    task = asyncio.create_task(node.run())
    await until(lambda: node.joined)
    device = node.device_id
    gateway.send_command(device, DownlinkCommand(1, "relay", {"on": True}, ttl_ds=300))
    gateway.send_command(device, DownlinkCommand(2, "set_interval", {"seconds": 0.1}, 300))
    gateway.send_command(device, DownlinkCommand(3, "ping", {}, ttl_ds=50))
    gateway.send_command(device, DownlinkCommand(4, "launch", {}, ttl_ds=50))
    gateway.send_command(device, DownlinkCommand(5, "relay", {"on": "yes"}, ttl_ds=50))
    await until(lambda: len(gateway.results) == 5)
    await until(lambda: any(b["relay"] for b in gateway.reports_of(device)))
    await stopped(node, task)
    outcome = {r.command_ref: (r.status, r.detail) for r in gateway.results}
    assert outcome == {
        1: (CommandStatus.EXECUTED, None),
        2: (CommandStatus.EXECUTED, None),
        3: (CommandStatus.EXECUTED, "pong"),
        4: (CommandStatus.FAILED, "unknown action 'launch'"),
        5: (CommandStatus.FAILED, 'params must be {"on": true|false}'),
    }
    assert node.relay and node.interval_s == 0.1
    assert [(c.ref, c.arrival_ttl_s) for c in node.executed][:3] == [(1, 30.0), (2, 30.0), (3, 5.0)]
    assert node.stats.commands_executed == 3 and node.stats.commands_failed == 2


async def test_a_command_out_of_time_on_arrival_is_answered_expired(gateway_of: Any) -> None:
    gateway = await gateway_of([3])
    node = make_node(gateway, 3)
    task = asyncio.create_task(node.run())
    await until(lambda: node.joined)
    gateway.send_command(node.device_id, DownlinkCommand(9, "relay", {"on": True}, ttl_ds=0))
    await until(lambda: len(gateway.results) == 1)
    await stopped(node, task)
    assert gateway.results[0].status is CommandStatus.EXPIRED
    assert node.stats.commands_expired == 1 and node.stats.commands_executed == 0
    assert not node.relay and node.executed == []


async def test_a_repeated_command_is_not_executed_twice(gateway_of: Any) -> None:
    gateway = await gateway_of([4])
    node = make_node(gateway, 4)
    task = asyncio.create_task(node.run())
    await until(lambda: node.joined)
    command = DownlinkCommand(7, "ping", {}, ttl_ds=100)
    gateway.send_command(node.device_id, command)
    await until(lambda: len(gateway.results) == 1)
    gateway.send_command(node.device_id, command)  # e.g. its result was thought lost
    await until(lambda: len(gateway.results) == 2)
    await stopped(node, task)
    assert node.stats.commands_executed == 1 and node.stats.commands_repeated == 1
    assert [r.status for r in gateway.results] == [CommandStatus.EXECUTED] * 2


async def test_lost_acks_give_duplicates_that_are_forwarded_once(gateway_of: Any) -> None:
    gateway = await gateway_of([5])
    node = make_node(gateway, 5)
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.acks_received >= 1)
    gateway.drop_downlinks = 3
    await until(lambda: node.stats.acks_received >= 6)
    await stopped(node, task)
    assert gateway.duplicates >= 3
    assert node.stats.retransmissions >= 3
    counters = [b["counter"] for b in gateway.reports_of(node.device_id)]
    assert counters == list(range(1, len(counters) + 1))


async def test_a_gateway_outage_loses_no_report(gateway_of: Any) -> None:
    """Scaled: 12 report intervals of outage, as 48 s are for a 4 s report interval (the
    queue of 16 holds them while the first retransmissions back off)."""
    gateway = await gateway_of([6])
    node = make_node(gateway, 6)
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.acks_received >= 2)
    gateway.online = False
    await asyncio.sleep(12 * FAST.report_interval_s)
    queued = len(node.pending)
    assert queued >= 5  # a backlog built up during the outage
    gateway.online = True
    made = node.report_counter
    await until(lambda: len(gateway.reports_of(node.device_id)) >= made)
    await stopped(node, task)
    counters = sorted(b["counter"] for b in gateway.reports_of(node.device_id))
    assert counters[:made] == list(range(1, made + 1))
    assert node.stats.reports_dropped == 0 and node.stats.uplinks_given_up == 0


async def test_a_restarted_node_continues_its_session(tmp_path: Path, gateway_of: Any) -> None:
    gateway = await gateway_of([7])
    state = tmp_path / "node7.json"
    node = make_node(gateway, 7, state)
    task = asyncio.create_task(node.run())
    gateway.send_command(node.device_id, DownlinkCommand(1, "relay", {"on": True}, 100))
    await until(lambda: node.stats.acks_received >= 4 and node.relay)
    await stopped(node, task)
    node.close()  # powered off
    counter, address = node.report_counter, node.address
    pending = {uplink.body["counter"] for uplink in node.pending if uplink.kind == "report"}
    before = len(gateway.reports)

    again = make_node(gateway, 7, state)
    assert again.joined and again.address == address and again.relay
    task = asyncio.create_task(again.run())
    # Acks for what was pending at the cut, then for two reports made after it.
    await until(lambda: again.stats.acks_received >= len(node.pending) + 2)
    await stopped(again, task)
    assert again.stats.join_attempts == 0
    counters = [b["counter"] for b in gateway.reports_of(again.device_id)]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    # Reports pending at the power cut were kept in flash and arrive after it, once each:
    # nothing made before the cut is lost. New reports and frames continue above the blocks
    # reserved in flash: no number is used twice, and the gateway takes the new frames.
    assert set(range(1, counter + 1)) <= set(counters)
    made_after = [c for c in counters[before:] if c not in pending]
    assert made_after and min(made_after) > counter
    assert "replayed_counter" not in gateway.rejected


async def test_reports_pending_at_a_power_cut_are_not_lost(tmp_path: Path, gateway_of: Any) -> None:
    gateway = await gateway_of([12])
    state = tmp_path / "node12.json"
    node = make_node(gateway, 12, state)
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.acks_received >= 2)
    gateway.online = False  # reports queue up, unacked
    await until(lambda: len(node.pending) >= 4)
    await stopped(node, task)
    node.close()  # powered off with reports waiting
    made = node.report_counter
    gateway.online = True

    again = make_node(gateway, 12, state)
    assert len(again.pending) >= 4
    task = asyncio.create_task(again.run())
    await until(
        lambda: (
            set(range(1, made + 1)) <= {b["counter"] for b in gateway.reports_of(again.device_id)}
        )
    )
    await stopped(again, task)
    counters = [b["counter"] for b in gateway.reports_of(again.device_id)]
    assert len(set(counters)) == len(counters)  # once each
    assert again.stats.join_attempts == 0 and "replayed_counter" not in gateway.rejected


async def test_a_node_rejoins_when_the_gateway_forgot_it(gateway_of: Any) -> None:
    gateway = await gateway_of([8])
    node = make_node(gateway, 8, config=replace(FAST, rejoin_after_unacked=3))
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.acks_received >= 2)
    gateway.core = NetworkCore(SETTINGS, {8: DeviceCredentials(root_key_of(8))})
    await until(lambda: node.stats.joins == 2)
    made = node.report_counter
    await until(lambda: len(gateway.reports_of(node.device_id)) >= made)
    await stopped(node, task)
    assert "unknown_address" in gateway.rejected
    assert node.stats.sessions_lost == 1
    counters = {b["counter"] for b in gateway.reports_of(node.device_id)}
    assert set(range(1, made + 1)) <= counters


async def test_joins_retry_with_backoff_until_the_gateway_answers(gateway_of: Any) -> None:
    gateway = await gateway_of([9])
    gateway.online = False
    node = make_node(gateway, 9)
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.join_attempts >= 3)
    gateway.online = True
    await until(lambda: node.joined and node.stats.acks_received >= 1)
    await stopped(node, task)
    assert node.stats.joins == 1


async def test_many_nodes_join_together_and_get_unique_addresses(gateway_of: Any) -> None:
    euis = list(range(100, 120))
    gateway = await gateway_of(euis)
    # One channel for twenty: reports every 5 s, not 0.2 s, or the air would be full.
    config = replace(FAST, report_interval_s=5.0, join_backoff_max_s=2.0)
    nodes = [make_node(gateway, eui, config=config) for eui in euis]
    tasks = [asyncio.create_task(node.run()) for node in nodes]
    await until(lambda: all(node.stats.acks_received >= 1 for node in nodes))
    for node, task in zip(nodes, tasks, strict=True):
        await stopped(node, task)
    assert len({node.address for node in nodes}) == len(nodes)


def test_node_config_keeps_a_queue_of_at_least_16() -> None:
    with pytest.raises(ValueError):
        NodeConfig(queue_size=8)


async def test_a_full_queue_drops_the_oldest_unsent_report(gateway_of: Any) -> None:
    gateway = await gateway_of([10])
    gateway.online = False
    node = make_node(gateway, 10, config=replace(FAST, report_interval_s=0.01))
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.reports_dropped >= 3)
    await stopped(node, task)
    assert len(node.pending) == 16
    counters = [p.body["counter"] for p in node.pending]
    assert counters == sorted(counters) and counters[-1] == node.report_counter


async def test_unusable_state_files_are_one_line_errors(tmp_path: Path, gateway_of: Any) -> None:
    gateway = await gateway_of([11])
    state = tmp_path / "node.json"
    state.write_text("{not json")
    with pytest.raises(NodeStateError, match="unreadable node state"):
        make_node(gateway, 11, state)
    state.write_text('{"eui": "000000000000000c", "root_key": "00"}')
    with pytest.raises(NodeStateError, match="another node"):
        make_node(gateway, 11, state)
    state.write_text(json.dumps({"eui": "000000000000000b", "root_key": root_key_of(11).hex()}))
    with pytest.raises(NodeStateError, match="KeyError"):
        make_node(gateway, 11, state)
