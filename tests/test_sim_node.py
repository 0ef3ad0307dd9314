"""Simulated node firmware against the real network core over an in-memory air link.

The gateway side here does what the bridge does: hand each uplink to the core, keep new
reports once by report id, and answer in the node's receive window with an ack and, when one
waits, a command. Times are scaled down (reports every 0.2 s instead of every minute).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drivers.sim.node import NodeConfig, NodeStateError, SimNode
from gateway.model import CommandStatus
from gateway.protocol.frames import DownlinkCommand, FrameRejected
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    NetworkCore,
    ReportReceived,
)

FAST = NodeConfig(
    report_interval_s=0.2,
    join_rx_delay_s=0.1,
    rx_early_s=0.03,
    rx_window_s=0.15,
    join_backoff_min_s=0.1,
    join_backoff_max_s=0.4,
    retry_min_s=0.1,
    retry_max_s=0.4,
    next_uplink_gap_s=0.02,
    rejoin_after_unacked=1000,
)
SETTINGS = JoinSettings(rx_delay_s=0.1, join_rx_delay_s=0.1)


def root_key_of(eui: int) -> bytes:
    return bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")[:8] + eui.to_bytes(8, "big")


class Gateway:
    """The bridge's part, in memory: receive, keep once, answer in the window."""

    def __init__(self, euis: list[int]) -> None:
        registry = {eui: DeviceCredentials(root_key_of(eui)) for eui in euis}
        self.core = NetworkCore(SETTINGS, registry)
        self.online = True
        self.drop_downlinks = 0  # answers to lose on air, next first
        self.reports: dict[str, ReportReceived] = {}  # by report id: forwarded once
        self.duplicates = 0
        self.results: list[CommandResultReceived] = []
        self.rejected: list[str] = []
        self.joins: list[JoinAccepted] = []
        self.commands: dict[str, deque[DownlinkCommand]] = {}

    def reports_of(self, device_id: str) -> list[dict[str, Any]]:
        return [r.body for r in self.reports.values() if r.device_id == device_id]

    def on_uplink(self, link: FakeLink, phy: bytes) -> None:
        if not self.online:
            return
        try:
            actions = self.core.receive(phy, time.time())
        except FrameRejected as exc:
            self.rejected.append(exc.reason)
            return
        for action in actions:
            if isinstance(action, JoinAccepted):
                self.joins.append(action)
                link.deliver_after(action.send_after_s, action.frame, self)
            elif isinstance(action, (ReportReceived, CommandResultReceived)):
                if isinstance(action, ReportReceived):
                    if action.duplicate:
                        self.duplicates += 1
                    self.reports.setdefault(action.report_id, action)
                elif not action.duplicate:
                    self.results.append(action)
                queue = self.commands.get(action.device_id)
                command = queue.popleft() if queue else None
                ack = action.counter if action.confirmed else None
                frame = self.core.build_downlink(action.device_id, ack, command)
                link.deliver_after(action.rx_delay_s, frame, self)

    def send_command(self, device_id: str, command: DownlinkCommand) -> None:
        self.commands.setdefault(device_id, deque()).append(command)


class FakeLink:
    """A node radio: frames arrive in the inbox; a window hears those starting while open."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._arrivals: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def transmit(self, payload: bytes) -> float:
        await asyncio.sleep(0.002)
        self.gateway.on_uplink(self, payload)
        return 0.002

    def deliver_after(self, delay_s: float, payload: bytes, gateway: Gateway) -> None:
        if gateway.drop_downlinks:
            gateway.drop_downlinks -= 1
            return
        loop = asyncio.get_running_loop()
        loop.call_later(delay_s, lambda: self._arrivals.put_nowait((loop.time(), payload)))

    async def receive(self, timeout_s: float) -> tuple[bytes, float, float] | None:
        loop = asyncio.get_running_loop()
        opened = loop.time()
        closes = opened + timeout_s
        try:
            async with asyncio.timeout_at(closes):
                while True:
                    started, payload = await self._arrivals.get()
                    if started >= opened:
                        return payload, -80.0, 7.5
        except TimeoutError:
            return None


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def make_node(
    gateway: Gateway, eui: int, state_path: Path | None = None, config: NodeConfig = FAST
) -> SimNode:
    return SimNode(eui, root_key_of(eui), FakeLink(gateway), config=config, state_path=state_path)


async def stopped(node: SimNode, task: asyncio.Task[None]) -> None:
    node.stop()
    await asyncio.wait_for(task, 5)


async def test_node_joins_and_its_reports_are_acked() -> None:
    gateway = Gateway([1])
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


async def test_commands_are_executed_and_answered() -> None:
    gateway = Gateway([2])
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


async def test_a_command_out_of_time_on_arrival_is_answered_expired() -> None:
    gateway = Gateway([3])
    node = make_node(gateway, 3)
    task = asyncio.create_task(node.run())
    await until(lambda: node.joined)
    gateway.send_command(node.device_id, DownlinkCommand(9, "relay", {"on": True}, ttl_ds=0))
    await until(lambda: len(gateway.results) == 1)
    await stopped(node, task)
    assert gateway.results[0].status is CommandStatus.EXPIRED
    assert node.stats.commands_expired == 1 and node.stats.commands_executed == 0
    assert not node.relay and node.executed == []


async def test_a_repeated_command_is_not_executed_twice() -> None:
    gateway = Gateway([4])
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


async def test_lost_acks_give_duplicates_that_are_forwarded_once() -> None:
    gateway = Gateway([5])
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


async def test_a_gateway_outage_loses_no_report() -> None:
    """Scaled: 15 report intervals of outage, as a minute is for a 4 s report interval."""
    gateway = Gateway([6])
    node = make_node(gateway, 6)
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.acks_received >= 2)
    gateway.online = False
    await asyncio.sleep(15 * FAST.report_interval_s)
    queued = len(node.pending)
    assert queued >= 5  # a backlog built up during the outage
    gateway.online = True
    made = node.report_counter
    await until(lambda: len(gateway.reports_of(node.device_id)) >= made)
    await stopped(node, task)
    counters = sorted(b["counter"] for b in gateway.reports_of(node.device_id))
    assert counters[:made] == list(range(1, made + 1))
    assert node.stats.reports_dropped == 0 and node.stats.uplinks_given_up == 0


async def test_a_restarted_node_continues_its_session(tmp_path: Path) -> None:
    gateway = Gateway([7])
    state = tmp_path / "node7.json"
    node = make_node(gateway, 7, state)
    task = asyncio.create_task(node.run())
    gateway.send_command(node.device_id, DownlinkCommand(1, "relay", {"on": True}, 100))
    await until(lambda: node.stats.acks_received >= 4 and node.relay)
    await stopped(node, task)
    counter, address = node.report_counter, node.address

    again = make_node(gateway, 7, state)
    assert again.joined and again.address == address and again.relay
    task = asyncio.create_task(again.run())
    await until(lambda: again.stats.acks_received >= 3)
    await stopped(again, task)
    assert again.stats.join_attempts == 0
    counters = [b["counter"] for b in gateway.reports_of(again.device_id)]
    assert counters == list(range(1, len(counters) + 1))
    assert len(counters) > counter
    assert "replayed_counter" not in gateway.rejected


async def test_a_node_rejoins_when_the_gateway_forgot_it() -> None:
    gateway = Gateway([8])
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


async def test_joins_retry_with_backoff_until_the_gateway_answers() -> None:
    gateway = Gateway([9])
    gateway.online = False
    node = make_node(gateway, 9)
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.join_attempts >= 3)
    gateway.online = True
    await until(lambda: node.joined and node.stats.acks_received >= 1)
    await stopped(node, task)
    assert node.stats.joins == 1


async def test_many_nodes_join_together_and_get_unique_addresses() -> None:
    euis = list(range(100, 120))
    gateway = Gateway(euis)
    nodes = [make_node(gateway, eui) for eui in euis]
    tasks = [asyncio.create_task(node.run()) for node in nodes]
    await until(lambda: all(node.stats.acks_received >= 1 for node in nodes))
    for node, task in zip(nodes, tasks, strict=True):
        await stopped(node, task)
    assert len({node.address for node in nodes}) == len(nodes)


def test_node_config_keeps_a_queue_of_at_least_16() -> None:
    with pytest.raises(ValueError):
        NodeConfig(queue_size=8)


async def test_a_full_queue_drops_the_oldest_unsent_report() -> None:
    gateway = Gateway([10])
    gateway.online = False
    node = make_node(gateway, 10, config=replace(FAST, report_interval_s=0.01))
    task = asyncio.create_task(node.run())
    await until(lambda: node.stats.reports_dropped >= 3)
    await stopped(node, task)
    assert len(node.pending) == 16
    counters = [p.body["counter"] for p in node.pending]
    assert counters == sorted(counters) and counters[-1] == node.report_counter


def test_unusable_state_files_are_one_line_errors(tmp_path: Path) -> None:
    gateway = Gateway([11])
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
