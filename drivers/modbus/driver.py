"""Modbus poller and writer: a ``DeviceDriver`` for every slave configured under ``[modbus]``.

Each device has a poll task; each bus has one ``BusLink`` whose lock serialises every request
on it (polls and writes queue on the same lock, in arrival order), while buses run
concurrently. A failed request is retried ``bus.retries`` times with a doubling backoff
(the lock is released while waiting). ``offline_after_failures`` failed polls in a row give
an OFFLINE event; an offline device is polled with one attempt per interval and the first
answer gives ONLINE. Writes arrive as commands: ``write`` with
``{"register": name, "value": v}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from drivers.modbus.codec import (
    CodecError,
    RegisterValue,
    WriteRejected,
    engineering_range,
    validate_write,
    value_type,
)
from drivers.modbus.codec import decode as decode_register
from drivers.modbus.health import Availability, ChangeFilter
from drivers.modbus.link import BusLink, ModbusFailure
from drivers.modbus.plan import ReadBlock, plan_reads
from drivers.modbus.settings import BusSettings, DeviceSettings, ModbusSettings, RegisterSettings
from gateway.devices import DeviceInfo, DeviceSink
from gateway.model import Command, CommandResult, CommandStatus, EventKind, modbus_device_id

log = logging.getLogger(__name__)

REPORT_KIND = "reading"
MAX_BACKOFF_S = 5.0
T = TypeVar("T")


def quiet_pymodbus_log() -> None:
    """pymodbus logs each timeout as a multi-line frame dump; this driver logs one line instead.

    Left alone when the ``pymodbus`` logger was given a level on purpose.
    """
    pymodbus_log = logging.getLogger("pymodbus")
    if pymodbus_log.level == logging.NOTSET:
        pymodbus_log.setLevel(logging.CRITICAL)


@dataclass(eq=False)
class _Device:
    id: str
    bus: BusSettings
    config: DeviceSettings
    blocks: list[ReadBlock]
    registers: dict[str, RegisterSettings]
    availability: Availability
    changes: ChangeFilter
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ModbusDriver:
    """Polls every configured slave into reports and executes ``write`` commands."""

    kind = "modbus"

    def __init__(
        self,
        settings: ModbusSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._wall = wall_clock
        self._devices: dict[str, _Device] = {}
        for bus in settings.buses:
            for config in bus.devices:
                device_id = modbus_device_id(bus.name, config.unit)
                per_field = {r.name: r.deadband for r in config.registers if r.deadband is not None}
                self._devices[device_id] = _Device(
                    id=device_id,
                    bus=bus,
                    config=config,
                    blocks=plan_reads(config.registers),
                    registers={r.name: r for r in config.registers},
                    availability=Availability(config.offline_after_failures),
                    changes=ChangeFilter(config.publish, config.deadband, per_field),
                )
        self._links: dict[str, BusLink] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sink: DeviceSink | None = None
        self.stats: Counter[str] = Counter()

    # -- DeviceDriver -----------------------------------------------------------------------

    def devices(self) -> list[DeviceInfo]:
        return [self._info(device) for device in self._devices.values()]

    def owns(self, device: str) -> bool:
        return device in self._devices

    async def start(self, sink: DeviceSink) -> None:
        if self._tasks:
            raise RuntimeError("modbus driver already started")
        self._sink = sink
        quiet_pymodbus_log()
        self._links = {bus.name: BusLink(bus) for bus in self.settings.buses}
        for device in self._devices.values():
            device.wake = asyncio.Event()
            task = asyncio.create_task(self._run_device(device), name=f"modbus-poll-{device.id}")
            self._tasks.append(task)
        log.info("modbus: polling %d devices on %d buses", len(self._devices), len(self._links))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for link in self._links.values():
            await link.close()
        self._links.clear()

    async def execute(self, command: Command) -> CommandResult:
        device = self._devices.get(command.device)
        if device is None:
            return self._result(command, CommandStatus.REJECTED, "not a modbus device here")
        if command.action != "write":
            reason = f"unknown action {command.action!r}; modbus devices take 'write'"
            return self._result(command, CommandStatus.REJECTED, reason)
        try:
            register, payload, value = self._check_write(device, command.params)
        except WriteRejected as exc:
            self.stats["writes_rejected"] += 1
            return self._result(command, CommandStatus.REJECTED, str(exc))
        link = self._links.get(device.bus.name)
        if link is None:
            return self._result(command, CommandStatus.FAILED, "modbus driver is not running")
        async with link.lock:
            try:
                await link.ensure_connected()
            except ModbusFailure as exc:
                self.stats["writes_failed"] += 1
                return self._result(command, CommandStatus.FAILED, exc.reason)
            if self._clock() >= command.deadline:
                self.stats["writes_expired"] += 1
                return self._result(command, CommandStatus.EXPIRED, "expired before the bus write")
            try:
                await link.write(device.config.unit, register, payload)
            except ModbusFailure as exc:
                self.stats["writes_failed"] += 1
                log.warning("modbus: %s write %s failed: %s", device.id, register.name, exc.reason)
                return self._result(command, CommandStatus.FAILED, exc.reason)
        self.stats["writes_executed"] += 1
        device.wake.set()  # poll now so the new value is reported
        return self._result(command, CommandStatus.EXECUTED, f"{register.name}={value}")

    # -- extras -----------------------------------------------------------------------------

    def request_poll(self, device: str) -> None:
        """Poll ``device`` now instead of waiting for its interval."""
        self._devices[device].wake.set()

    def availability(self, device: str) -> str:
        """``unknown``, ``online`` or ``offline``."""
        return self._devices[device].availability.state

    # -- internals --------------------------------------------------------------------------

    def _check_write(
        self, device: _Device, params: dict[str, Any]
    ) -> tuple[RegisterSettings, list[int] | bool, Any]:
        if not isinstance(params, dict):
            raise WriteRejected("params must be an object")
        name = params.get("register")
        if not isinstance(name, str):
            raise WriteRejected("params.register must name a register")
        if "value" not in params:
            raise WriteRejected("params.value is missing")
        register = device.registers.get(name)
        if register is None:
            raise WriteRejected(f"unknown register {name!r}")
        value = params["value"]
        return register, validate_write(register, value), value

    def _result(self, command: Command, status: CommandStatus, detail: str | None) -> CommandResult:
        return CommandResult(command.id, command.device, status, self._wall(), detail)

    def _info(self, device: _Device) -> DeviceInfo:
        fields: dict[str, dict[str, Any]] = {}
        for register in device.config.registers:
            meta: dict[str, Any] = {
                "type": value_type(register),
                "writable": register.writable,
                "unit": register.unit,
                "device_class": register.device_class,
                "state_class": register.state_class,
            }
            span = engineering_range(register)
            low = register.min if register.min is not None else (span[0] if span else None)
            high = register.max if register.max is not None else (span[1] if span else None)
            if low is not None and high is not None:
                meta["min"], meta["max"] = low, high
            if register.type in ("int16", "uint16", "int32", "uint32"):
                meta["step"] = abs(register.scale)
            fields[register.name] = meta
        writable = any(r.writable for r in device.config.registers)
        name = device.config.name or f"{device.bus.name} unit {device.config.unit}"
        return DeviceInfo(device.id, "modbus", name, fields, ("write",) if writable else ())

    async def _run_device(self, device: _Device) -> None:
        loop = asyncio.get_running_loop()
        interval = device.config.poll_interval_s
        next_due = loop.time()
        while True:
            try:
                await self._poll(device)
            except Exception:  # a bug or a failing sink must not end the device's polling
                self.stats["poll_errors"] += 1
                log.exception("modbus: %s poll crashed", device.id)
            # On Python 3.11 asyncio.wait_for (used inside pymodbus) swallows a cancel that
            # lands just as the answer arrives; honour it here or stop() waits forever.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            next_due = max(next_due + interval, loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_due - loop.time()):
                    await device.wake.wait()
            if device.wake.is_set():
                device.wake.clear()
                next_due = loop.time()

    async def _poll(self, device: _Device) -> None:
        link = self._links[device.bus.name]
        offline = device.availability.state == "offline"
        attempts = 1 if offline else device.bus.retries + 1
        unit = device.config.unit
        values: dict[str, RegisterValue | None] = {}
        self.stats["polls"] += 1
        try:
            for block in device.blocks:
                raw = await self._transact(
                    device.bus, link, lambda b=block: link.read(unit, b), attempts
                )
                for register in block.registers:
                    values[register.name] = self._decode(
                        device, register, block.values_for(register, raw)
                    )
        except ModbusFailure as exc:
            await self._poll_failed(device, exc)
            return
        assert self._sink is not None
        if device.availability.success() is EventKind.ONLINE:
            log.info("modbus: %s online", device.id)
            device.changes.reset()
            await self._sink.event(device.id, EventKind.ONLINE, {"bus": device.bus.name})
        if not device.changes.should_publish(values):
            self.stats["unchanged"] += 1
            return
        await self._sink.report(device.id, REPORT_KIND, values)
        device.changes.commit(values)
        self.stats["reports"] += 1

    def _decode(
        self, device: _Device, register: RegisterSettings, raw: list[Any]
    ) -> RegisterValue | None:
        try:
            return decode_register(register, raw)
        except CodecError as exc:
            self.stats["decode_errors"] += 1
            log.warning("modbus: %s %s", device.id, exc)
            return None

    async def _poll_failed(self, device: _Device, exc: ModbusFailure) -> None:
        self.stats["poll_failures"] += 1
        event = device.availability.failure()
        log.debug("modbus: %s poll failed: %s", device.id, exc.reason)
        if event is EventKind.OFFLINE:
            failures = device.availability.failures
            log.warning(
                "modbus: %s offline after %d failed polls: %s", device.id, failures, exc.reason
            )
            assert self._sink is not None
            detail = {"bus": device.bus.name, "reason": exc.reason, "failures": failures}
            await self._sink.event(device.id, EventKind.OFFLINE, detail)

    async def _transact(
        self, bus: BusSettings, link: BusLink, request: Callable[[], Awaitable[T]], attempts: int
    ) -> T:
        failure: ModbusFailure | None = None
        for attempt in range(attempts):
            if attempt:
                self.stats["retries"] += 1
                await asyncio.sleep(min(bus.retry_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            async with link.lock:
                try:
                    return await request()
                except ModbusFailure as exc:
                    failure = exc
        assert failure is not None
        raise failure
