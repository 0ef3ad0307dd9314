"""The BLE driver fed by the simulated advertisement source (real BTHome v2 bytes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest

from drivers.ble.advert import BleAdvert, sig_uuid
from drivers.ble.driver import BleDriver
from drivers.ble.scanner import BleScanner, backend_for
from drivers.ble.sim import SimAdvertSource, SimBleSensor
from gateway.config import BleSection
from gateway.driver_settings import ble_settings
from gateway.model import Command, CommandStatus, EventKind
from tests.sink_fixtures import RecordingSink, StoredReport

ROOM = "A4:C1:38:00:00:01"
DOOR = "A4:C1:38:00:00:02"
BEACON = "F0:00:00:00:BE:AC"
SENSORS = [
    SimBleSensor(ROOM, name="Room", temperature=21.5, humidity=40.0, rssi=-58),
    SimBleSensor(DOOR, name="Door", window=False, battery=55, rssi=-77),
    SimBleSensor(BEACON, name="Tag", kind="ibeacon", rssi=-90),
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Started = Callable[..., Any]


@pytest.fixture
async def start() -> AsyncIterator[Started]:
    drivers: list[BleDriver] = []

    async def make(
        clock: Callable[[], float] = time.monotonic, **settings: Any
    ) -> tuple[BleDriver, SimAdvertSource, RecordingSink]:
        section = BleSection.from_table({"enabled": True, "backend": "sim", **settings})
        backend = partial(SimAdvertSource, sensors=SENSORS, interval_s=None, clock=clock)
        driver = BleDriver(ble_settings(section), backend=backend, clock=clock)
        sink = RecordingSink()
        await driver.start(sink)
        drivers.append(driver)
        assert driver.scanner is not None
        source = driver.scanner.backend
        assert isinstance(source, SimAdvertSource)
        return driver, source, sink

    yield make
    for driver in drivers:
        await driver.stop()


async def test_bthome_advert_becomes_a_report(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0)
    source.advertise(ROOM)
    source.advertise(DOOR, window=True)
    await driver.drain()
    assert sink.reports == [
        StoredReport("ble-a4c138000001", "bthome",
                     {"battery": 90, "temperature": 21.5, "humidity": 40.0}, rssi=-58),
        StoredReport("ble-a4c138000002", "bthome",
                     {"battery": 55, "temperature": 21.0, "humidity": 45.0, "window": True},
                     rssi=-77),
    ]  # fmt: skip
    assert sink.kinds("ble-a4c138000001") == [EventKind.ONLINE]
    [room, door] = driver.devices()
    assert (room.device, room.kind, room.name) == ("ble-a4c138000001", "ble", "Room")
    assert room.fields["humidity"] == {
        "type": "float", "unit": "%", "device_class": "humidity", "writable": False
    }  # fmt: skip
    assert door.fields["window"]["type"] == "bool"


async def test_minimum_interval_per_device(start: Started) -> None:
    clock = FakeClock()
    driver, source, sink = await start(clock=clock, min_interval_s=60)
    for step in range(5):
        clock.now = 1000.0 + step
        source.advertise(ROOM, temperature=20.0 + step)
        source.advertise(DOOR)
    await driver.drain()
    assert len(sink.data("ble-a4c138000001")) == 1
    assert len(sink.data("ble-a4c138000002")) == 1
    assert driver.stats["suppressed"] == 8
    assert driver.limiter.suppressed == {"ble-a4c138000001": 4, "ble-a4c138000002": 4}

    clock.now = 1060.0
    source.advertise(ROOM, temperature=30.0)
    await driver.drain()
    assert [d["temperature"] for d in sink.data("ble-a4c138000001")] == [20.0, 30.0]


async def test_repeated_packet_is_reported_once(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0)
    advert = source.advertise(ROOM)
    source.inject(advert)
    source.inject(advert)
    await driver.drain()
    assert len(sink.data("ble-a4c138000001")) == 1
    assert driver.stats["duplicates"] == 2


async def test_deny_list(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0, deny=["a4c138000001"])
    source.advertise(ROOM)
    source.advertise(DOOR)
    await driver.drain()
    assert [r.device for r in sink.reports] == ["ble-a4c138000002"]
    assert driver.stats["denied"] == 1


async def test_allow_list_admits_only_its_macs(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0, allow=[DOOR.lower()], deny=[])
    for mac in (ROOM, DOOR, BEACON):
        source.advertise(mac)
    await driver.drain()
    assert [r.device for r in sink.reports] == ["ble-a4c138000002"]
    assert driver.stats["not_allowed"] == 2
    assert driver.owns("ble-a4c138000002") and not driver.owns("ble-a4c138000001")


async def test_raw_data_only_for_listed_devices(start: Started) -> None:
    other = "11:22:33:44:55:66"
    driver, source, sink = await start(min_interval_s=0, allow=[other])
    raw = BleAdvert(other, -66, None, {sig_uuid(0x181A): b"\x01\x02"}, {0x0059: b"\xca\xfe"}, 1.0)
    source.inject(raw)
    await driver.drain()
    assert sink.reports == [
        StoredReport("ble-112233445566", "advert",
                     {"manufacturer_data": {"0x0059": "cafe"},
                      "service_data": {"0000181a-0000-1000-8000-00805f9b34fb": "0102"}},
                     rssi=-66)
    ]  # fmt: skip


async def test_raw_data_of_unlisted_devices_is_ignored(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0)
    source.inject(BleAdvert("22:22:33:44:55:66", -66, None, {}, {0x0059: b"\xca\xfe"}, 1.0))
    await driver.drain()
    assert sink.reports == []
    assert driver.stats["ignored"] == 1


async def test_ibeacon_report(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0)
    source.advertise(BEACON)
    await driver.drain()
    assert sink.reports == [
        StoredReport("ble-f0000000beac", "ibeacon",
                     {"uuid": "e2c56db5-dffb-48d2-b060-d0f5a71096e0", "major": 1, "minor": 1,
                      "tx_power": -59}, rssi=-90)
    ]  # fmt: skip


async def test_broken_adverts_are_counted_by_reason(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0)
    source.inject(BleAdvert(ROOM, -50, None, {sig_uuid(0xFCD2): bytes.fromhex("4102")}, {}, 1.0))
    source.inject(BleAdvert(ROOM, -50, None, {}, {0x004C: b"\x02\x15\x00"}, 1.0))
    source.inject(BleAdvert("not-a-mac", -50, None, {}, {}, 1.0))
    source.advertise(ROOM)
    await driver.drain()
    assert len(sink.reports) == 1  # the good one still gets through
    assert driver.rejections == {
        "encrypted BTHome advertisement and no key configured": 1,
        "iBeacon data is 3 bytes, expected 23": 1,
        "not a MAC address: 'not-a-mac'": 1,
    }


async def test_unheard_device_goes_offline_and_back(start: Started) -> None:
    driver, source, sink = await start(min_interval_s=0, offline_after_s=0.2)
    source.advertise(ROOM)
    await sink.wait_for(lambda: EventKind.OFFLINE in sink.kinds("ble-a4c138000001"), timeout=5)
    source.advertise(ROOM)
    await driver.drain()
    assert sink.kinds("ble-a4c138000001") == [EventKind.ONLINE, EventKind.OFFLINE, EventKind.ONLINE]


async def test_commands_are_rejected(start: Started) -> None:
    driver, _source, _sink = await start()
    command = Command("c1", "ble-a4c138000001", "write", {}, time.monotonic() + 5, "test")
    result = await driver.execute(command)
    assert result.status is CommandStatus.REJECTED


async def test_sim_backend_from_config_advertises_by_itself() -> None:
    received: list[BleAdvert] = []
    factory = backend_for(ble_settings(BleSection(backend="sim")))
    scanner = BleScanner(received.append, backend=partial(factory, interval_s=0.01))
    async with scanner, asyncio.timeout(10):
        while len(received) < 8:
            await asyncio.sleep(0.01)
    assert len({advert.mac for advert in received}) >= 3
    assert scanner.backend.emitted >= 8
