"""FleetCommands on its own: which gateway's bridge takes a fleet command, what is kept, and
who answers a kept command whose device's owner went offline (a FleetLink that is not
connected: nothing here needs the broker)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.fleet.commands import FleetCommands
from gateway.fleet.kept_commands import KeptCommands
from gateway.fleet.link import FleetLink
from gateway.model import IncomingCommand
from gateway.protocol.expiry import ExpiryPolicy
from gateway.protocol.fleet import SessionRecord
from gateway.protocol.join import LeaseRecord
from gateway.tasks import TaskSet
from tests.fleet_fixtures import FLEET, FLEET_KEY_HEX, gateway_settings

DEVICE = "lora-0016c0f100000001"


@dataclass
class Owners:
    me: str
    records: dict[str, SessionRecord] = field(default_factory=dict)
    alive: dict[str, bool] = field(default_factory=dict)
    serving: set[str] = field(default_factory=set)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def owned_by(owner: str) -> SessionRecord:
    lease = LeaseRecord(0x0016C0F100000001, 1, (), 0.0, address=0x0104)
    return SessionRecord(DEVICE, owner, 1, lease, -1)


def fleet_commands(tmp_path: Path, owners: Owners, clock: Clock) -> FleetCommands:
    tmp_path.mkdir(parents=True, exist_ok=True)
    key_file = tmp_path / "fleet.key"
    key_file.write_text(FLEET_KEY_HEX + "\n")
    config = parse_config(gateway_settings(owners.me, tmp_path / "data", 1, key_file, 0x0100))
    assert config.fleet is not None
    link = FleetLink(config, config.fleet)
    kept = KeptCommands(keep_s=120.0, answer_s=10.0, policy=ExpiryPolicy(), monotonic=clock)
    tasks = TaskSet(logging.getLogger("test"), "task failed")
    return FleetCommands(owners, link, kept, tasks, owns_locally=lambda d: d == "modbus-1")


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


@pytest.mark.parametrize(("me", "answers"), [("gw-b", True), ("gw-c", False)])
async def test_a_kept_command_of_an_offline_owner_is_answered_once_by_the_first_alive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, me: str, answers: bool
) -> None:
    clock = Clock()
    alive = {"gw-a": False, "gw-b": True, "gw-c": True}
    keeper = fleet_commands(tmp_path, Owners(me, {DEVICE: owned_by("gw-a")}, alive), clock)
    keeper.arrived(command(clock, ttl_s=30.0))
    clock.now += 30.0 + 9.0
    keeper.answer_abandoned()
    assert "owner_offline" not in caplog.text  # within the margin after the deadline
    clock.now += 2.0
    with caplog.at_level(logging.INFO, logger="duogate.fleet"):
        keeper.answer_abandoned()
    assert ("'c1' for lora-0016c0f100000001: owner_offline" in caplog.text) is answers
    assert keeper.kept.open_for(DEVICE) == []
