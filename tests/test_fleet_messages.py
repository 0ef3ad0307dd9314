"""FleetMessages: the fleet's own messages sealed with the fleet key, a record published again
until the broker took it, and a message that is not the fleet's refused (a FleetLink to a real
mosquitto)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.fleet.link import FleetLink
from gateway.fleet.messages import FleetMessages
from gateway.protocol.fleet import FleetSeal, SessionRecord, decode_record, encode_record
from gateway.protocol.join import LeaseRecord
from gateway.tasks import TaskSet
from tests.bridge_fixtures import MqttWatcher
from tests.fleet_fixtures import FLEET, FLEET_KEY_HEX, gateway_settings, until
from tests.servers import Mosquitto

DEVICE = "lora-0016c0f100000001"
KEY = bytes.fromhex(FLEET_KEY_HEX)


def record(epoch: int = 1) -> SessionRecord:
    lease = LeaseRecord(0x0016C0F100000001, 1, (), 0.0, address=0x0104)
    return SessionRecord(DEVICE, "gw-a", epoch, lease, -1)


def fleet_messages(tmp_path: Path, broker_port: int) -> tuple[FleetMessages, dict[str, int]]:
    key_file = tmp_path / "fleet.key"
    key_file.write_text(FLEET_KEY_HEX + "\n")
    config = parse_config(gateway_settings("gw-a", tmp_path / "data", broker_port, key_file, 1))
    assert config.fleet is not None
    counters = {"not_published": 0, "rejected_messages": 0}
    tasks = TaskSet(logging.getLogger("test"), "task failed")
    return FleetMessages(FleetLink(config, config.fleet), KEY, tasks, counters), counters


async def settled(messages: FleetMessages) -> None:
    while len(messages._tasks):
        await asyncio.sleep(0.01)


async def test_a_record_the_broker_did_not_take_is_shared_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    messages, counters = fleet_messages(tmp_path, mosquitto.port)
    messages.share_record(record())
    await settled(messages)  # the link is not up yet
    assert messages.unshared == {DEVICE} and counters["not_published"] == 1
    watcher = MqttWatcher(mosquitto, (f"{FLEET}/sessions/+",))
    watcher.connect()
    await messages.link.start(lambda incoming: asyncio.sleep(0))
    try:
        assert await messages.link.wait_connected(10.0)
        messages.share_again({DEVICE: record(epoch=2)})
        await settled(messages)
        assert messages.unshared == set()
        topic = f"{FLEET}/sessions/{DEVICE}"
        received = await until(lambda: watcher.on(topic), 10.0, "the record")
        assert received[0].retain is False  # live, not a retained copy from before
        opened = decode_record(FleetSeal(KEY).open(topic, received[0].payload))
        assert opened == record(epoch=2)
    finally:
        watcher.drop()
        await messages.link.stop()


def test_a_message_sealed_with_another_key_is_refused_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages, counters = fleet_messages(tmp_path, 1)
    topic = f"{FLEET}/sessions/{DEVICE}"
    sealed = FleetSeal(KEY).seal(topic, encode_record(record()))
    assert messages.open(topic, sealed, decode_record) == record()
    forged = FleetSeal(bytes(16)).seal(topic, encode_record(record()))
    moved = FleetSeal(KEY).seal(f"{FLEET}/sessions/lora-0016c0f100000002", encode_record(record()))
    with caplog.at_level(logging.WARNING, logger="duogate.fleet"):
        assert messages.open(topic, forged, decode_record) is None
        assert messages.open(topic, moved, decode_record) is None  # sealed for another topic
        assert messages.open(topic, b"\x00" * 3, decode_record) is None
    assert counters["rejected_messages"] == 3
    assert caplog.text.count(f"fleet: message on {topic} refused") == 3
