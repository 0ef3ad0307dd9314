"""FleetCommands on its own: which gateway's bridge takes a fleet command, what is kept, and
who answers a kept command whose device's owner went offline (a FleetLink that is not
connected, or connected to a real mosquitto where the answer has to reach the broker)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.fleet.commands import OWNER_GONE_S, FleetCommands
from gateway.fleet.kept_commands import KeptCommands
from gateway.fleet.link import FleetLink
from gateway.model import IncomingCommand
from gateway.protocol.expiry import ExpiryPolicy
from gateway.protocol.fleet import SessionRecord
from gateway.protocol.join import LeaseRecord
from gateway.tasks import TaskSet
from tests.bridge_fixtures import MqttWatcher
from tests.fleet_fixtures import FLEET, FLEET_KEY_HEX, gateway_settings, until
from tests.servers import Mosquitto

DEVICE = "lora-0016c0f100000001"


@dataclass
class Owners:
    me: str
    records: dict[str, SessionRecord] = field(default_factory=dict)
    alive: dict[str, bool] = field(default_factory=dict)
    offline_since: dict[str, float] = field(default_factory=dict)
    serving: set[str] = field(default_factory=set)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def owned_by(owner: str) -> SessionRecord:
    lease = LeaseRecord(0x0016C0F100000001, 1, (), 0.0, address=0x0104)
    return SessionRecord(DEVICE, owner, 1, lease, -1)


def fleet_commands(
    tmp_path: Path, owners: Owners, clock: Clock, broker_port: int = 1
) -> FleetCommands:
    tmp_path.mkdir(parents=True, exist_ok=True)
    key_file = tmp_path / "fleet.key"
    key_file.write_text(FLEET_KEY_HEX + "\n")
    settings = gateway_settings(owners.me, tmp_path / "data", broker_port, key_file, 0x0100)
    config = parse_config(settings)
    assert config.fleet is not None
    link = FleetLink(config, config.fleet)
    kept = KeptCommands(keep_s=120.0, answer_s=10.0, policy=ExpiryPolicy(), monotonic=clock)
    tasks = TaskSet(logging.getLogger("test"), "task failed")
    return FleetCommands(
        owners, link, kept, tasks, owns_locally=lambda d: d == "modbus-1", monotonic=clock
    )


def command(clock: Clock, device: str = DEVICE, ttl_s: float = 30.0) -> IncomingCommand:
    body = {"id": "c1", "action": "relay", "params": {"on": True}, "ttl_s": ttl_s}
    return IncomingCommand("fleet", device, body, received_mono=clock.now)


async def test_the_owner_takes_a_command_the_others_keep_it(tmp_path: Path) -> None:
    clock = Clock()
    owner = Owners("gw-a", {DEVICE: owned_by("gw-a")}, serving={DEVICE})
    other = Owners("gw-b", {DEVICE: owned_by("gw-a")})
    assert fleet_commands(tmp_path / "a", owner, clock).arrived(command(clock))
    keeper = fleet_commands(tmp_path / "b", other, clock)
    assert not keeper.arrived(command(clock))
    assert [c.device for c in keeper.kept.open_for(DEVICE)] == [DEVICE]


async def test_a_command_for_a_device_nobody_has_goes_to_the_first_gateway_alive(
    tmp_path: Path,
) -> None:
    clock = Clock()
    alive = {"gw-a": False, "gw-b": True, "gw-c": True}
    takes = [
        fleet_commands(tmp_path / name, Owners(name, alive=alive | {name: True}), clock).arrived(
            command(clock)
        )
        for name in ("gw-b", "gw-c")
    ]
    assert takes == [True, False]
    local = fleet_commands(tmp_path / "m", Owners("gw-c", alive=alive), clock)
    assert local.arrived(command(clock, "modbus-1"))  # a bus device: the gateway that has it
    assert not local.arrived(command(clock, "modbus-2"))


async def test_a_final_result_on_the_fleet_topic_ends_the_keeping(tmp_path: Path) -> None:
    clock = Clock()
    keeper = fleet_commands(tmp_path, Owners("gw-b", {DEVICE: owned_by("gw-a")}), clock)
    keeper.arrived(command(clock))
    topic = f"{FLEET}/devices/{DEVICE}/command/result"
    keeper.on_result(topic, json.dumps({"id": "c1", "status": "sent"}).encode(), 0.0)
    assert keeper.kept.open_for(DEVICE)
    keeper.on_result(topic, b"not json", 0.0)
    keeper.on_result(topic, json.dumps({"id": "c1", "status": "executed"}).encode(), 0.0)
    assert keeper.kept.open_for(DEVICE) == []


def answers(watcher: MqttWatcher) -> list[dict[str, Any]]:
    return [m.json() for m in watcher.on(f"{FLEET}/devices/{DEVICE}/command/result")]


async def settled(commands: FleetCommands) -> None:
    """Let the answers spawned by ``answer_abandoned`` finish."""
    while len(commands._tasks):
        await asyncio.sleep(0.01)


async def test_a_kept_command_of_an_offline_owner_is_answered_once_by_the_first_alive(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    alive = {"gw-a": False, "gw-b": True, "gw-c": True}
    keepers = {
        me: fleet_commands(
            tmp_path / me, Owners(me, {DEVICE: owned_by("gw-a")}, alive), clock, mosquitto.port
        )
        for me in ("gw-b", "gw-c")
    }
    watcher = MqttWatcher(mosquitto, (f"{FLEET}/devices/+/command/result",))
    watcher.connect()
    for keeper in keepers.values():
        await keeper.link.start(lambda incoming: asyncio.sleep(0))
        assert await keeper.link.wait_connected(10.0)
        keeper.link.synced = True  # as its coordinator marks it once the records are read
        keeper.arrived(command(clock, ttl_s=30.0))
    try:
        clock.now += 30.0 + 9.0  # within the margin after the deadline
        for keeper in keepers.values():
            keeper.answer_abandoned()
            await settled(keeper)
        clock.now += 2.0
        with caplog.at_level(logging.INFO, logger="duogate.fleet"):
            for _ in range(3):
                for keeper in keepers.values():
                    keeper.answer_abandoned()
                    await settled(keeper)
        results = await until(lambda: answers(watcher), 10.0, "the answer")
        assert [(r["status"], r["detail"]) for r in results] == [("timeout", "owner_offline")]
        assert "'c1' for lora-0016c0f100000001: owner_offline" in caplog.text
        assert len(keepers["gw-b"].kept) == 0
        await until(lambda: not keepers["gw-c"].kept, 10.0, "gw-c saw the answer")
        await asyncio.sleep(0.5)
        assert len(answers(watcher)) == 1
    finally:
        watcher.drop()
        for keeper in keepers.values():
            await keeper.link.stop()


async def test_an_answer_not_published_is_tried_again_at_the_next_check(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    alive = {"gw-a": False, "gw-b": True}
    keeper = fleet_commands(
        tmp_path, Owners("gw-b", {DEVICE: owned_by("gw-a")}, alive), clock, mosquitto.port
    )
    keeper.arrived(command(clock, ttl_s=30.0))
    clock.now += 30.0 + 11.0 + 120.0  # past the time it is kept for: kept, to be answered
    with caplog.at_level(logging.INFO, logger="duogate.fleet"):
        keeper.answer_abandoned()  # not connected yet
        await settled(keeper)
    assert "result of 'c1' not published yet: not connected" in caplog.text
    assert len(keeper.kept) == 1
    watcher = MqttWatcher(mosquitto, (f"{FLEET}/devices/+/command/result",))
    watcher.connect()
    await keeper.link.start(lambda incoming: asyncio.sleep(0))
    try:
        assert await keeper.link.wait_connected(10.0)
        keeper.link.synced = True  # as its coordinator marks it once the records are read
        keeper.answer_abandoned()
        await settled(keeper)
        results = await until(lambda: answers(watcher), 10.0, "the answer")
        assert [(r["status"], r["detail"]) for r in results] == [("timeout", "owner_offline")]
        assert len(keeper.kept) == 0
    finally:
        watcher.drop()
        await keeper.link.stop()


async def test_the_next_gateway_answers_when_the_first_one_went_away(tmp_path: Path) -> None:
    clock = Clock()
    alive = {"gw-a": False, "gw-b": True, "gw-c": True}
    keeper = fleet_commands(tmp_path, Owners("gw-c", {DEVICE: owned_by("gw-a")}, alive), clock)
    keeper.arrived(command(clock, ttl_s=30.0))
    clock.now += 30.0 + 11.0
    keeper.answer_abandoned()  # gw-b answers it: gw-c keeps it until that shows
    assert len(keeper.kept) == 1 and not keeper._answering
    alive["gw-b"] = False
    keeper.answer_abandoned()  # gw-c is the first online now (its link is down: kept)
    assert keeper._answering == {"c1"}
    await settled(keeper)
    assert len(keeper.kept) == 1


async def test_a_kept_command_whose_owner_answers_is_dropped_after_its_time(
    tmp_path: Path,
) -> None:
    clock = Clock()
    alive = {"gw-a": True, "gw-b": True}
    keeper = fleet_commands(tmp_path, Owners("gw-b", {DEVICE: owned_by("gw-a")}, alive), clock)
    keeper.arrived(command(clock, ttl_s=30.0))
    clock.now += 30.0 + 11.0
    keeper.answer_abandoned()
    assert len(keeper.kept) == 1  # should its owner go away before it answers
    clock.now += 120.0
    keeper.answer_abandoned()
    assert len(keeper.kept) == 0 and not keeper._answering


async def test_an_owner_offline_for_a_moment_answers_its_commands_itself(tmp_path: Path) -> None:
    clock = Clock()
    alive = {"gw-a": True, "gw-b": True}
    owners = Owners("gw-b", {DEVICE: owned_by("gw-a")}, alive)
    keeper = fleet_commands(tmp_path, owners, clock)
    keeper.arrived(command(clock, ttl_s=30.0))
    clock.now += 30.0 + 11.0
    alive["gw-a"], owners.offline_since["gw-a"] = False, clock.now  # its will: a dropped link
    clock.now += OWNER_GONE_S - 1.0
    keeper.answer_abandoned()
    assert not keeper._answering  # it may be back in a moment with the outcome
    clock.now += 1.0
    keeper.answer_abandoned()
    assert keeper._answering == {"c1"}
    await settled(keeper)
