"""Gateways of a fleet in one process on real mosquitto: who serves a device, hand-overs, a
gateway that goes away, commands on the fleet topic (tests/fleet_fixtures.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drivers.sim.node import SimNode
from gateway.daemon import Gateway
from gateway.model import lora_device_id
from gateway.protocol.fleet import FleetSeal, encode_record
from tests.bridge_fixtures import MqttWatcher
from tests.fleet_fixtures import FLEET, FLEET_KEY_HEX, Site, site, until
from tests.servers import Mosquitto

A_POOL, B_POOL = 0x0100, 0x0200
LIVE = ("accepted", "sent")  # statuses a command has before its final one


@pytest.fixture
def broker(tmp_path: Path):
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def watcher(broker: Mosquitto) -> Iterator[MqttWatcher]:
    """An application on the fleet topics."""
    watching = MqttWatcher(broker, (f"{FLEET}/#",))
    watching.connect()
    yield watching
    watching.drop()


def reports(watcher: MqttWatcher, device: str | None = None) -> list[dict[str, Any]]:
    found = []
    for message in list(watcher.messages):
        parts = message.topic.split("/")
        if len(parts) == 4 and parts[1] == "devices" and parts[3] == "report":
            body = message.json()
            if device is None or body["device"] == device:
                found.append(body)
    return found


async def node_served_by_a(
    s: Site, watcher: MqttWatcher, eui: int, x: float, *, b_x: float, published: int
) -> tuple[Gateway, Gateway, SimNode]:
    """gw-a at 0 m, gw-b at ``b_x``, a node at ``x`` served by gw-a with ``published`` reports
    on the fleet topics."""
    a = await s.gateway("gw-a", 0.0, pool_start=A_POOL)
    b = await s.gateway("gw-b", b_x, pool_start=B_POOL)
    node = s.node(eui, x)
    await until(lambda: node.device_id in a.fleet.serving, 30, "the node served by gw-a")
    await until(lambda: len(reports(watcher, node.device_id)) >= published, 30, "its reports")
    return a, b, node


def duplicated(watcher: MqttWatcher) -> list[str]:
    counts = Counter(report["id"] for report in reports(watcher))
    return [report_id for report_id, count in counts.items() if count > 1]


def results(watcher: MqttWatcher, command_id: str) -> list[dict[str, Any]]:
    return [
        m.json()
        for m in list(watcher.messages)
        if m.topic.endswith("/command/result") and m.json().get("id") == command_id
    ]


async def test_each_device_is_served_by_one_gateway_and_reported_once(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    async with site(tmp_path, broker.port) as s:
        a = await s.gateway("gw-a", 0.0, pool_start=A_POOL)
        b = await s.gateway("gw-b", 600.0, pool_start=B_POOL)
        near_a = s.node(0x0016C0F100000001, 60.0)
        middle = s.node(0x0016C0F100000002, 300.0, 40.0)
        near_b = s.node(0x0016C0F100000003, 560.0)
        nodes = [near_a, middle, near_b]
        await until(lambda: all(n.joined for n in nodes), 30, "all nodes joined")
        await until(
            lambda: all(len(reports(watcher, n.device_id)) >= 4 for n in nodes),
            40,
            "four reports of every node on the fleet topics",
        )
        # A join request lost at the nearer gateway is answered by the other one; the
        # device then moves to the nearer one on its next uplinks.
        await until(lambda: near_a.device_id in a.fleet.serving, 20, "near_a served by A")
        await until(lambda: near_b.device_id in b.fleet.serving, 20, "near_b served by B")
        assert not (a.fleet.serving & b.fleet.serving)
        addresses = [n.address for n in nodes]
        assert len(set(addresses)) == len(nodes)
        pools = (range(A_POOL, A_POOL + 0x100), range(B_POOL, B_POOL + 0x100))
        assert all(any(address in pool for pool in pools) for address in addresses)
        heard_by = [r.get("gateways") or [] for r in reports(watcher, middle.device_id)]
        assert any(len(g) == 2 for g in heard_by), heard_by
        assert duplicated(watcher) == []


async def test_a_node_moving_away_is_handed_over_without_loss_or_duplicates(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    async with site(tmp_path, broker.port) as s:
        a, b, roamer = await node_served_by_a(
            s, watcher, 0x0016C0F100000011, 50.0, b_x=600.0, published=3
        )
        device = roamer.device_id
        s.move(roamer, 560.0)
        await until(lambda: device in b.fleet.serving, 40, "the roamer served by gw-b")
        settled = roamer.stats.acks_received
        await until(
            lambda: roamer.stats.acks_received >= settled + 4, 40, "four reports acked at B"
        )
        assert roamer.stats.joins == 1, "the roamer kept its session"
        acked = roamer.stats.acks_received
        await until(
            lambda: len({r["id"] for r in reports(watcher, device)}) >= acked,
            10,
            "every acked report on the fleet topic",
        )
        assert duplicated(watcher) == []
        assert device not in a.fleet.serving


async def test_a_fleet_command_is_carried_out_once_by_the_owner(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    async with site(tmp_path, broker.port) as s:
        await s.gateway("gw-a", 0.0, pool_start=A_POOL)
        await s.gateway("gw-b", 600.0, pool_start=B_POOL)
        node = s.node(0x0016C0F100000021, 300.0, 30.0)
        await until(lambda: node.joined and reports(watcher, node.device_id), 30, "reporting")
        command_id = f"c-{uuid.uuid4().hex[:8]}"
        envelope = {"id": command_id, "action": "relay", "params": {"on": True}, "ttl_s": 30}
        watcher.publish(f"{FLEET}/devices/{node.device_id}/command", json.dumps(envelope))
        final = await until(
            lambda: [r for r in results(watcher, command_id) if r["status"] == "executed"],
            30,
            "the command executed",
        )
        assert len(final) == 1
        assert [c.action for c in node.executed] == ["relay"]
        unknown = f"c-{uuid.uuid4().hex[:8]}"
        nobody = lora_device_id(0x0016C0F1000000FF)
        watcher.publish(
            f"{FLEET}/devices/{nobody}/command",
            json.dumps({"id": unknown, "action": "ping", "ttl_s": 30}),
        )
        answers = await until(lambda: results(watcher, unknown), 15, "an answer")
        await until(lambda: True, 1, "")
        assert len(results(watcher, unknown)) == 1, answers
        assert answers[0]["status"] == "rejected"


async def test_devices_of_a_gateway_that_goes_away_are_served_by_a_neighbour(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    async with site(tmp_path, broker.port) as s:
        a, b, node = await node_served_by_a(
            s, watcher, 0x0016C0F100000031, 150.0, b_x=450.0, published=3
        )
        device = node.device_id
        await s.stop_gateway("gw-a")
        await until(lambda: device in b.fleet.serving, 30, "taken over by gw-b")
        acked = node.stats.acks_received
        await until(lambda: node.stats.acks_received >= acked + 3, 30, "acked by gw-b")
        assert node.stats.joins == 1
        acked = node.stats.acks_received
        await until(
            lambda: len({r["id"] for r in reports(watcher, device)}) >= acked,
            10,
            "every acked report on the fleet topic",
        )
        assert duplicated(watcher) == []
        assert a.fleet is not None


async def test_a_command_waiting_at_the_old_owner_is_carried_out_by_the_new_one(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    async with site(tmp_path, broker.port) as s:
        _, b, node = await node_served_by_a(
            s, watcher, 0x0016C0F100000041, 50.0, b_x=600.0, published=2
        )
        device = node.device_id
        s.move(node, 580.0)  # out of gw-a's reach: the command waits there
        command_id = f"c-{uuid.uuid4().hex[:8]}"
        envelope = {"id": command_id, "action": "relay", "params": {"on": True}, "ttl_s": 60}
        watcher.publish(f"{FLEET}/devices/{device}/command", json.dumps(envelope))
        await until(lambda: device in b.fleet.serving, 30, "handed over to gw-b")
        final = await until(
            lambda: [r for r in results(watcher, command_id) if r["status"] == "executed"],
            40,
            "the command executed by gw-b",
        )
        assert len(final) == 1
        assert [c.action for c in node.executed] == ["relay"]
        statuses = [r["status"] for r in results(watcher, command_id)]
        assert "rejected" not in statuses, statuses


async def test_a_command_left_by_a_gateway_that_went_away_is_executed_once(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    async with site(tmp_path, broker.port) as s:
        a, b, node = await node_served_by_a(
            s, watcher, 0x0016C0F100000051, 150.0, b_x=450.0, published=2
        )
        device = node.device_id
        command_id = f"c-{uuid.uuid4().hex[:8]}"
        envelope = {"id": command_id, "action": "relay", "params": {"on": True}, "ttl_s": 60}
        watcher.publish(f"{FLEET}/devices/{device}/command", json.dumps(envelope))
        # gw-a goes as soon as it sent the command (or at once if it had not yet).
        await until(lambda: node.executed or a.lora.scheduler.queued(device), 20, "queued")
        await s.stop_gateway("gw-a")
        await until(lambda: device in b.fleet.serving, 30, "taken over by gw-b")
        final = await until(
            lambda: [r for r in results(watcher, command_id) if r["status"] == "executed"],
            40,
            "the command's outcome from gw-b",
        )
        assert len(final) == 1
        assert [c.action for c in node.executed] == ["relay"], "executed once"


async def test_a_command_run_through_a_gateway_that_died_is_asked_about_after_its_deadline(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    """gw-a sends a command, the node runs it and walks out of every gateway's reach before
    its result gets through, gw-a dies; the node comes back beside gw-b after the command's
    deadline. gw-b does not call it expired: it asks the node (no time left to run it) and
    publishes what the node did."""
    async with site(tmp_path, broker.port) as s:
        _, b, node = await node_served_by_a(
            s, watcher, 0x0016C0F100000071, 150.0, b_x=450.0, published=2
        )
        device = node.device_id
        run = node.runner.execute

        def run_then_walk_away(command: Any) -> tuple[int, str | None]:
            s.move(node, 3000.0)  # out of every gateway's reach: its result is heard by none
            return run(command)

        node.runner.execute = run_then_walk_away
        command_id = f"c-{uuid.uuid4().hex[:8]}"
        ttl_s = 6.0
        envelope = {"id": command_id, "action": "relay", "params": {"on": True}, "ttl_s": ttl_s}
        watcher.publish(f"{FLEET}/devices/{device}/command", json.dumps(envelope))
        published_at = asyncio.get_running_loop().time()
        await until(lambda: node.executed, 20, "the command run by the node")
        await s.stop_gateway("gw-a")
        await asyncio.sleep(
            max(0.0, published_at + ttl_s + 1.0 - asyncio.get_running_loop().time())
        )
        assert not [r for r in results(watcher, command_id) if r["status"] not in LIVE]
        s.move(node, 430.0)
        final = await until(
            lambda: [r for r in results(watcher, command_id) if r["status"] not in LIVE],
            30,
            "the command's outcome from gw-b",
        )
        assert [r["status"] for r in final] == ["executed"], final
        assert [c.action for c in node.executed] == ["relay"], "executed once"
        asked = [
            f.body
            for f in b.lora.state.frames.recent()
            if f.node == device and isinstance(f.body, dict) and f.body.get("command") == "relay"
        ]
        assert asked and all(body["ttl_ds"] == 0 for body in asked), asked


async def test_records_and_sightings_forged_on_the_broker_move_nothing(
    tmp_path: Path, broker: Mosquitto, watcher: MqttWatcher
) -> None:
    async with site(tmp_path, broker.port) as s:
        a = await s.gateway("gw-a", 0.0, pool_start=A_POOL)
        b = await s.gateway("gw-b", 600.0, pool_start=B_POOL)
        node = s.node(0x0016C0F100000061, 60.0)
        device = node.device_id
        await until(lambda: device in a.fleet.serving, 30, "served by gw-a")
        record = a.fleet.records[device]
        stolen = replace(record, owner="gw-b", epoch=record.epoch + 5)
        topic = f"{FLEET}/sessions/{device}"
        other_key = FleetSeal(bytes(16)).seal(topic, encode_record(stolen))
        moved = FleetSeal(bytes.fromhex(FLEET_KEY_HEX)).seal(
            f"{FLEET}/sessions/lora-0016c0f1000000ff", encode_record(stolen)
        )
        for payload in (b'{"owner": "gw-b"}', other_key, moved):
            watcher.publish(topic, payload)
        watcher.publish(f"{FLEET}/devices/{device}/heard", b"\x01" * 40)
        await until(lambda: b.fleet.counters["rejected_messages"] >= 4, 10, "the forgeries refused")
        acked = node.stats.acks_received
        await until(lambda: node.stats.acks_received >= acked + 2, 20, "still acked")
        assert device in a.fleet.serving and device not in b.fleet.serving
        assert b.fleet.records[device].owner == "gw-a"
