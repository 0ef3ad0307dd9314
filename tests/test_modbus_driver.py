"""The Modbus driver against pymodbus's own server on 127.0.0.1: polls, writes, availability."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.sim import SimModbusServer
from gateway.config import ModbusSection
from gateway.driver_settings import modbus_settings
from gateway.model import Command, CommandStatus, EventKind
from tests.sink_fixtures import RecordingSink


def device(unit: int, registers: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """A ``[[modbus.buses.devices]]`` table."""
    return {"unit": unit, "poll_interval_s": 0.05, **settings, "registers": registers}


def driver_for(*buses: dict[str, Any]) -> ModbusDriver:
    """A driver for ``[[modbus.buses]]`` tables, checked and converted as the gateway does."""
    section = ModbusSection.from_table({"enabled": True, "buses": list(buses)})
    return ModbusDriver(modbus_settings(section))


def write(device_id: str, register: str, value: Any, ttl_s: float = 5.0) -> Command:
    params = {"register": register, "value": value}
    return Command(f"c-{register}", device_id, "write", params, time.monotonic() + ttl_s, "test")


async def wait_polls(driver: ModbusDriver, count: int) -> None:
    target = driver.stats["polls"] + count
    async with asyncio.timeout(10):
        while driver.stats["polls"] < target:
            await asyncio.sleep(0.01)


TYPED_MAP = [
    {"name": "temp", "table": "holding", "address": 0, "type": "int16", "scale": 0.1},
    {"name": "count", "table": "holding", "address": 1, "type": "uint32"},
    {"name": "power", "table": "holding", "address": 3, "type": "float32"},
    {"name": "power_lw", "table": "input", "address": 0, "type": "float32", "word_order": "little"},
    {"name": "swapped", "table": "input", "address": 2, "byte_order": "little"},
    {"name": "relay", "table": "coil", "address": 3},
    {"name": "door", "table": "discrete", "address": 5},
]


@pytest.fixture
async def server() -> AsyncIterator[SimModbusServer]:
    async with SimModbusServer(units=[1, 2]) as sim:
        yield sim


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    drivers: list[ModbusDriver] = []

    async def start(*buses: Any) -> tuple[ModbusDriver, RecordingSink]:
        driver = driver_for(*buses)
        sink = RecordingSink()
        await driver.start(sink)
        drivers.append(driver)
        return driver, sink

    yield start
    for driver in drivers:
        await driver.stop()


async def test_poll_decodes_every_type(server: SimModbusServer, running: Any) -> None:
    # Raw words as a meter would hold them, written straight into the slave's datastore.
    await server.write_words(1, "holding", 0, [0xFF83, 0xB2D0, 0x5E00, 0x449A, 0x5000])
    await server.write_words(1, "input", 0, [0x5000, 0x449A, 0x3412])
    await server.write_words(1, "coil", 3, [True])
    bus = server.bus("plant", [device(1, TYPED_MAP)], timeout_s=0.5)
    _driver, sink = await running(bus)

    await sink.wait_for(lambda: sink.data("modbus-plant-1"))
    assert sink.reports[0].kind == "reading"
    assert sink.data("modbus-plant-1")[0] == {
        "temp": -12.5,
        "count": 3_000_000_000,
        "power": 1234.5,
        "power_lw": 1234.5,
        "swapped": 0x1234,
        "relay": True,
        "door": False,
    }
    assert sink.kinds("modbus-plant-1") == [EventKind.ONLINE]


async def test_on_change_respects_deadband(server: SimModbusServer, running: Any) -> None:
    temp = {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.1}
    bus = server.bus("b", [device(1, [temp], deadband=1.0)], timeout_s=0.5)
    await server.write_words(1, "input", 0, [200])  # before the first poll can read 0
    driver, sink = await running(bus)
    await sink.wait_for(lambda: sink.data("modbus-b-1") == [{"temp": 20.0}] or False)

    await server.write_words(1, "input", 0, [209])  # +0.9: inside the deadband
    await wait_polls(driver, 4)  # a poll is counted a moment before it is classified
    assert sink.data("modbus-b-1") == [{"temp": 20.0}]
    assert driver.stats["unchanged"] >= 3

    await server.write_words(1, "input", 0, [211])  # +1.1 from what was published
    await sink.wait_for(lambda: len(sink.data("modbus-b-1")) == 2)
    assert sink.data("modbus-b-1")[1] == {"temp": 21.1}


async def test_every_poll_reports_unchanged_values(server: SimModbusServer, running: Any) -> None:
    register = {"name": "level", "table": "holding", "address": 7}
    bus = server.bus("b", [device(2, [register], publish="every_poll")], timeout_s=0.5)
    _driver, sink = await running(bus)
    await sink.wait_for(lambda: len(sink.data("modbus-b-2")) >= 3)
    assert all(data == {"level": 0} for data in sink.data("modbus-b-2"))


WRITABLE_MAP = [
    {"name": "setpoint", "table": "holding", "address": 0, "type": "int16", "scale": 0.1,
     "writable": True, "min": 5, "max": 30},
    {"name": "limit", "table": "holding", "address": 2, "type": "float32",
     "word_order": "little", "writable": True},
    {"name": "relay", "table": "coil", "address": 0, "writable": True},
    {"name": "reading", "table": "input", "address": 0},
]  # fmt: skip


async def test_write_commands_reach_the_slave(server: SimModbusServer, running: Any) -> None:
    bus = server.bus("b", [device(1, WRITABLE_MAP, poll_interval_s=30)], timeout_s=0.5)
    driver, sink = await running(bus)
    await sink.wait_for(lambda: len(sink.data("modbus-b-1")) == 1)

    result = await driver.execute(write("modbus-b-1", "setpoint", 21.5))
    assert (result.status, result.detail) == (CommandStatus.EXECUTED, "setpoint=21.5")
    assert await server.read_words(1, "holding", 0) == [215]

    assert (await driver.execute(write("modbus-b-1", "limit", -2.25))).status == "executed"
    assert await server.read_words(1, "holding", 2, 2) == [0x0000, 0xC010]

    assert (await driver.execute(write("modbus-b-1", "relay", True))).status == "executed"
    assert (await server.read_words(1, "coil", 0))[0] is True

    # A write triggers a poll at once, though the interval is 30 s.
    await sink.wait_for(lambda: len(sink.data("modbus-b-1")) >= 2)
    await sink.wait_for(lambda: sink.data("modbus-b-1")[-1]["relay"] is True)
    assert sink.data("modbus-b-1")[-1] == {
        "setpoint": 21.5, "limit": -2.25, "relay": True, "reading": 0
    }  # fmt: skip


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"register": "setpoint", "value": 40}, "above the maximum 30"),
        ({"register": "setpoint", "value": "warm"}, "expects a number"),
        ({"register": "reading", "value": 1}, "read-only"),
        ({"register": "nope", "value": 1}, "unknown register 'nope'"),
        ({"register": "setpoint"}, "params.value is missing"),
        ({"value": 1}, "params.register must name a register"),
    ],
)
async def test_invalid_writes_are_rejected(
    server: SimModbusServer, running: Any, params: dict[str, Any], reason: str
) -> None:
    bus = server.bus("b", [device(1, WRITABLE_MAP, poll_interval_s=30)], timeout_s=0.5)
    driver, _sink = await running(bus)
    before = server.requests[1]
    command = Command("c1", "modbus-b-1", "write", params, time.monotonic() + 5, "test")
    result = await driver.execute(command)
    assert result.status is CommandStatus.REJECTED
    assert result.detail is not None and reason in result.detail
    assert server.requests[1] - before <= 1  # at most the first poll, never a write
    assert await server.read_words(1, "holding", 0, 4) == [0, 0, 0, 0]


async def test_unknown_action_and_device_are_rejected(server: SimModbusServer) -> None:
    driver = driver_for(server.bus("b", [device(1, WRITABLE_MAP)]))
    reboot = Command("c1", "modbus-b-1", "reboot", {}, time.monotonic() + 5, "test")
    assert (await driver.execute(reboot)).status is CommandStatus.REJECTED
    other = write("modbus-b-9", "setpoint", 20)
    assert (await driver.execute(other)).status is CommandStatus.REJECTED
    assert driver.owns("modbus-b-1") and not driver.owns("modbus-b-9")


async def test_expired_write_is_never_put_on_the_bus(server: SimModbusServer, running: Any) -> None:
    bus = server.bus("b", [device(1, WRITABLE_MAP, poll_interval_s=30)], timeout_s=0.5)
    driver, sink = await running(bus)
    await sink.wait_for(lambda: len(sink.data("modbus-b-1")) == 1)
    before = server.requests[1]

    result = await driver.execute(write("modbus-b-1", "setpoint", 21.5, ttl_s=-0.001))
    assert result.status is CommandStatus.EXPIRED
    assert server.requests[1] == before
    assert await server.read_words(1, "holding", 0) == [0]


async def test_deadline_checked_after_waiting_for_the_bus(
    server: SimModbusServer, running: Any
) -> None:
    """A write queued behind a poll of a silent slave expires while it waits."""
    silent = device(2, [{"name": "x", "table": "holding", "address": 0}])
    target = device(1, WRITABLE_MAP, poll_interval_s=30)
    bus = server.bus("b", [target, silent], timeout_s=1.0, retries=0)
    driver, sink = await running(bus)
    await sink.wait_for(lambda: len(sink.data("modbus-b-1")) == 1)
    server.set_silent(2)
    before = server.requests[2]
    async with asyncio.timeout(5):
        while server.requests[2] == before:  # a poll of unit 2 now holds the bus
            await asyncio.sleep(0.005)

    result = await driver.execute(write("modbus-b-1", "setpoint", 21.5, ttl_s=0.1))
    assert result.status is CommandStatus.EXPIRED
    assert await server.read_words(1, "holding", 0) == [0]


async def test_exception_response_fails_the_write(server: SimModbusServer, running: Any) -> None:
    bus = server.bus("b", [device(1, WRITABLE_MAP, poll_interval_s=30)], timeout_s=0.5)
    driver, sink = await running(bus)
    await sink.wait_for(lambda: len(sink.data("modbus-b-1")) == 1)
    server.fail_with(1, ExcCodes.DEVICE_BUSY)
    result = await driver.execute(write("modbus-b-1", "setpoint", 21.5))
    assert result.status is CommandStatus.FAILED
    assert result.detail == "exception response 0x06 (device_busy)"


async def test_write_to_a_silent_slave_fails(server: SimModbusServer, running: Any) -> None:
    bus = server.bus("b", [device(1, WRITABLE_MAP, poll_interval_s=30)], timeout_s=0.3)
    driver, sink = await running(bus)
    await sink.wait_for(lambda: len(sink.data("modbus-b-1")) == 1)
    server.set_silent(1)
    result = await driver.execute(write("modbus-b-1", "relay", True))
    assert (result.status, result.detail) == (CommandStatus.FAILED, "no answer (timeout)")


async def test_silent_slave_goes_offline_and_back(server: SimModbusServer, running: Any) -> None:
    register = {"name": "level", "table": "holding", "address": 7}
    quiet = device(1, [register], offline_after_failures=2)
    chatty = device(2, [register], publish="every_poll")
    bus = server.bus("b", [quiet, chatty], timeout_s=0.2, retries=1, retry_backoff_s=0.01)
    driver, sink = await running(bus)
    await sink.wait_for(lambda: sink.kinds("modbus-b-1") == [EventKind.ONLINE])

    server.set_silent(1)
    await sink.wait_for(lambda: EventKind.OFFLINE in sink.kinds("modbus-b-1"))
    offline = [d for name, e, d in sink.events if name == "modbus-b-1" and e is EventKind.OFFLINE]
    assert offline == [{"bus": "b", "reason": "no answer (timeout)", "failures": 2}]
    assert driver.availability("modbus-b-1") == "offline"
    assert driver.stats["retries"] >= 2

    # The other slave on the same bus keeps reporting while unit 1 is silent.
    reports_before = len(sink.data("modbus-b-2"))
    await sink.wait_for(lambda: len(sink.data("modbus-b-2")) >= reports_before + 3)
    assert sink.kinds("modbus-b-2") == [EventKind.ONLINE]

    await server.write_words(1, "holding", 7, [42])
    server.set_silent(1, silent=False)
    await sink.wait_for(lambda: sink.kinds("modbus-b-1")[-1] is EventKind.ONLINE)
    await sink.wait_for(lambda: sink.data("modbus-b-1")[-1] == {"level": 42})
    assert sink.kinds("modbus-b-1") == [EventKind.ONLINE, EventKind.OFFLINE, EventKind.ONLINE]


async def test_exception_responses_count_as_failures(server: SimModbusServer, running: Any) -> None:
    register = {"name": "level", "table": "holding", "address": 7}
    bus = server.bus("b", [device(1, [register], offline_after_failures=3)], retries=0)
    _driver, sink = await running(bus)
    await sink.wait_for(lambda: sink.kinds("modbus-b-1") == [EventKind.ONLINE])
    server.fail_with(1, ExcCodes.DEVICE_FAILURE)
    await sink.wait_for(lambda: EventKind.OFFLINE in sink.kinds("modbus-b-1"))
    assert sink.events[-1][2]["reason"] == "exception response 0x04 (device_failure)"
    server.fail_with(1, None)
    await sink.wait_for(lambda: sink.kinds("modbus-b-1")[-1] is EventKind.ONLINE)


async def test_unreachable_tcp_slave_goes_offline_while_another_bus_reports(
    server: SimModbusServer, running: Any
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    register = {"name": "level", "table": "holding", "address": 7}
    dead = {"name": "dead", "transport": "tcp", "host": "127.0.0.1", "tcp_port": closed_port,
            "timeout_s": 0.2, "retries": 0,
            "devices": [device(1, [register], offline_after_failures=2)]}  # fmt: skip
    alive = server.bus("alive", [device(1, [register], publish="every_poll")])
    _driver, sink = await running(dead, alive)
    await sink.wait_for(lambda: EventKind.OFFLINE in sink.kinds("modbus-dead-1"))
    [offline] = [detail for name, _e, detail in sink.events if name == "modbus-dead-1"]
    assert offline["reason"] == f"cannot open 127.0.0.1:{closed_port}"
    await sink.wait_for(lambda: len(sink.data("modbus-alive-1")) >= 3)


def test_device_info_describes_the_register_map(server: SimModbusServer) -> None:
    driver = driver_for(server.bus("b", [device(1, WRITABLE_MAP)]))
    [info] = driver.devices()
    assert (info.device, info.kind, info.name, info.actions) == (
        "modbus-b-1", "modbus", "b unit 1", ("write",)
    )  # fmt: skip
    assert info.fields["setpoint"] == {
        "type": "int16", "writable": True, "unit": None, "device_class": None,
        "state_class": None, "min": 5.0, "max": 30.0, "step": 0.1,
    }  # fmt: skip
    assert info.fields["relay"]["type"] == "bool"
    assert info.fields["reading"]["min"] == 0 and info.fields["reading"]["max"] == 65535
