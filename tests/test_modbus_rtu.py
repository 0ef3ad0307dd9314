"""The Modbus driver over RTU: pymodbus's serial server on one pty, the driver on another."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.sim import SimModbusServer
from gateway.config import ModbusSection
from gateway.driver_settings import modbus_settings
from gateway.model import Command, CommandStatus, EventKind
from tests.sink_fixtures import RecordingSink

METER = {  # a [[modbus.buses.devices]] table
    "unit": 7,
    "poll_interval_s": 0.05,
    "offline_after_failures": 2,
    "registers": [
        {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.01},
        {"name": "power", "table": "input", "address": 1, "type": "float32",
         "word_order": "little"},
        {"name": "energy", "table": "input", "address": 3, "type": "uint32", "scale": 0.1},
        {"name": "setpoint", "table": "holding", "address": 10, "type": "uint16",
         "writable": True, "max": 1000},
        {"name": "pump", "table": "coil", "address": 2, "writable": True},
    ],
}  # fmt: skip


@pytest.fixture
async def line() -> AsyncIterator[tuple[SimModbusServer, ModbusDriver, RecordingSink]]:
    async with SimModbusServer(units=[7], transport="rtu") as server:
        await server.write_words(7, "input", 0, [0xF830, 0x0000, 0xC2F7, 0x0001, 0x86A0])
        bus = server.bus("line", [METER], timeout_s=0.25, retries=2, retry_backoff_s=0.01)
        section = ModbusSection.from_table({"enabled": True, "buses": [bus]})
        driver = ModbusDriver(modbus_settings(section))
        sink = RecordingSink()
        await driver.start(sink)
        try:
            yield server, driver, sink
        finally:
            await driver.stop()


async def test_rtu_poll_decodes_values(line: Any) -> None:
    server, _driver, sink = line
    assert server.path.startswith("/dev/pts/")
    await sink.wait_for(lambda: sink.data("modbus-line-7"))
    assert sink.data("modbus-line-7")[0] == {
        "temp": -20.0,
        "power": -123.5,
        "energy": 10_000.0,
        "setpoint": 0,
        "pump": False,
    }


async def test_rtu_write_is_confirmed_and_stored(line: Any) -> None:
    server, driver, sink = line
    await sink.wait_for(lambda: sink.data("modbus-line-7"))
    for register, value in (("setpoint", 750), ("pump", True)):
        params = {"register": register, "value": value}
        command = Command("c", "modbus-line-7", "write", params, time.monotonic() + 5, "test")
        assert (await driver.execute(command)).status is CommandStatus.EXECUTED
    assert await server.read_words(7, "holding", 10) == [750]
    assert (await server.read_words(7, "coil", 2))[0] is True
    await sink.wait_for(lambda: sink.data("modbus-line-7")[-1]["pump"] is True)


async def test_rtu_crc_errors_are_retried(line: Any) -> None:
    server, driver, sink = line
    await sink.wait_for(lambda: sink.data("modbus-line-7"))
    server.corrupt_responses(2)  # two bad CRCs in a row: the third attempt gets through
    await server.write_words(7, "input", 0, [100])
    await sink.wait_for(lambda: sink.data("modbus-line-7")[-1]["temp"] == 1.0)
    assert driver.stats["retries"] >= 2
    assert sink.kinds("modbus-line-7") == [EventKind.ONLINE]


async def test_rtu_silent_slave_offline_then_online(line: Any) -> None:
    server, driver, sink = line
    await sink.wait_for(lambda: sink.kinds("modbus-line-7") == [EventKind.ONLINE])
    server.set_silent(7)
    await sink.wait_for(lambda: EventKind.OFFLINE in sink.kinds("modbus-line-7"))
    assert driver.availability("modbus-line-7") == "offline"
    server.set_silent(7, silent=False)
    await sink.wait_for(lambda: sink.kinds("modbus-line-7")[-1] is EventKind.ONLINE)
    assert sink.kinds("modbus-line-7") == [EventKind.ONLINE, EventKind.OFFLINE, EventKind.ONLINE]
