"""Simulated Modbus slaves: pymodbus's own server over TCP on 127.0.0.1 or RTU over ptys.

The server is pymodbus's ``ModbusTcpServer``/``ModbusSerialServer`` with its ``SimDevice``
datastore (separate coil, discrete, holding and input blocks per unit), so the bytes on the
wire are real Modbus. RTU runs over two pseudo-terminal pairs joined by a relay in this
process: the server opens one pty's path with pyserial, the client the other's. Test hooks:

* ``write_words``/``read_words`` and ``set_value``/``get_value`` reach into the datastore;
* ``set_silent(unit)`` makes a unit ignore requests (the client times out) until undone;
* ``fail_with(unit, code)`` makes a unit answer every request with an exception response;
* ``corrupt_responses(n)`` (RTU) flips a byte in the next ``n`` answers (CRC errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tty
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.codec import RegisterValue, decode, encode, width
from drivers.modbus.settings import RegisterSettings

Table = Literal["coil", "discrete", "holding", "input"]
# Function codes the datastore understands for reading / writing each table.
_READ_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_WRITE_FC = {"coil": 15, "discrete": 2, "holding": 16, "input": 4}


class _PtyRelay:
    """Two pty pairs joined back to back: bytes written on one slave end come out the other."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self.server_path, self._server_master = self._open_pair()
        self.client_path, self._client_master = self._open_pair()
        self.corrupt_next = 0
        self.drop = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open_pair(self) -> tuple[str, int]:
        master, slave = os.openpty()
        tty.setraw(master)
        os.set_blocking(master, False)
        self._fds += [master, slave]  # the slave end stays open so the master never sees EOF
        return os.ttyname(slave), master

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._client_master, self._pump, self._client_master, False)
        self._loop.add_reader(self._server_master, self._pump, self._server_master, True)

    def _pump(self, source: int, from_server: bool) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if self.drop:
            return
        if from_server and self.corrupt_next > 0 and data:
            self.corrupt_next -= 1
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        target = self._server_master if not from_server else self._client_master
        with contextlib.suppress(OSError):
            os.write(target, data)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._client_master)
            self._loop.remove_reader(self._server_master)
            self._loop = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


class SimModbusServer:
    """A set of simulated slaves (one per unit id) behind one TCP port or one RTU line."""

    def __init__(
        self,
        units: Iterable[int] = (1,),
        *,
        transport: Literal["tcp", "rtu"] = "tcp",
        registers: int = 1000,
        bits: int = 512,
        baudrate: int = 115_200,
    ) -> None:
        self.units = tuple(units)
        if not self.units:
            raise ValueError("at least one unit")
        self.transport = transport
        self.baudrate = baudrate
        self.requests: Counter[int] = Counter()  # requests seen per unit, answered or not
        self._silent: set[int] = set()
        self._failing: dict[int, ExcCodes] = {}
        self._devices = [self._sim_device(unit, registers, bits) for unit in self.units]
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._relay: _PtyRelay | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.path = ""

    def _sim_device(self, unit: int, registers: int, bits: int) -> SimDevice:
        def bit_block() -> list[SimData]:
            return [SimData(0, values=[False] * bits, datatype=DataType.BITS)]

        def word_block() -> list[SimData]:
            return [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(
            id=unit,
            simdata=(bit_block(), bit_block(), word_block(), word_block()),
            action=partial(self._action, unit),
        )

    async def _action(self, unit: int, *_args: object) -> ExcCodes | None:
        return self._failing.get(unit)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if not sending:
            self.requests[pdu.dev_id] += 1
            if pdu.dev_id in self._silent:
                return None  # the request handler then sends nothing
        return pdu

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        trace = self._trace_pdu  # type: ignore[arg-type]
        if self.transport == "tcp":
            server = ModbusTcpServer(self._devices, address=(self.host, 0), trace_pdu=trace)
            await server.serve_forever(background=True)
            assert server.transport is not None
            self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        else:
            self._relay = _PtyRelay()
            self._relay.start()
            self.path = self._relay.client_path
            server = ModbusSerialServer(
                self._devices,
                port=self._relay.server_path,
                baudrate=self.baudrate,
                trace_pdu=trace,
            )
            await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    async def __aenter__(self) -> SimModbusServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def bus(
        self, name: str, devices: Sequence[dict[str, Any]], **settings: object
    ) -> dict[str, Any]:
        """A ``[[modbus.buses]]`` table pointing at this server (``devices`` and ``settings``
        as in the config file)."""
        if self.transport == "tcp":
            endpoint: dict[str, object] = {"transport": "tcp", "host": self.host}
            endpoint["tcp_port"] = self.port
        else:
            endpoint = {"transport": "rtu", "port": self.path, "baudrate": self.baudrate}
        return {"name": name, **endpoint, **settings, "devices": list(devices)}

    # -- test hooks -------------------------------------------------------------------------

    def set_silent(self, unit: int | None = None, silent: bool = True) -> None:
        """Make ``unit`` (every unit when None) stop answering, or answer again."""
        targets = self.units if unit is None else (unit,)
        for target in targets:
            if silent:
                self._silent.add(target)
            else:
                self._silent.discard(target)

    def fail_with(self, unit: int, code: ExcCodes | None) -> None:
        """Answer every request to ``unit`` with exception ``code`` (None: answer normally)."""
        if code is None:
            self._failing.pop(unit, None)
        else:
            self._failing[unit] = code

    def corrupt_responses(self, count: int) -> None:
        """Flip the last byte of the next ``count`` RTU answers so their CRC fails."""
        if self._relay is None:
            raise RuntimeError("corruption is for the RTU line")
        self._relay.corrupt_next = count

    async def write_words(
        self, unit: int, table: Table, address: int, values: Sequence[int] | Sequence[bool]
    ) -> None:
        server = self._require()
        result = await server.context.async_setValues(unit, _WRITE_FC[table], address, list(values))
        if result is not None:
            raise ValueError(f"datastore refused {table}[{address}]: {result!r}")

    async def read_words(
        self, unit: int, table: Table, address: int, count: int = 1
    ) -> list[int] | list[bool]:
        server = self._require()
        result = await server.context.async_getValues(unit, _READ_FC[table], address, count)
        if not isinstance(result, list):
            raise ValueError(f"datastore refused {table}[{address}]: {result!r}")
        return result

    async def set_value(self, unit: int, register: RegisterSettings, value: RegisterValue) -> None:
        """Store an engineering value the way a slave with this register map would hold it."""
        payload = encode(register, value)
        words: list[int] | list[bool] = [payload] if isinstance(payload, bool) else payload
        await self.write_words(unit, register.table, register.address, words)

    async def get_value(self, unit: int, register: RegisterSettings) -> RegisterValue:
        raw = await self.read_words(unit, register.table, register.address, width(register))
        return decode(register, raw[: width(register)])

    def _require(self) -> ModbusTcpServer | ModbusSerialServer:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server


# -- a demo meter for `make run` -------------------------------------------------------------


DEMO_METER_REGISTERS: tuple[dict[str, Any], ...] = (
    {"name": "voltage", "table": "input", "address": 0, "type": "uint16", "scale": 0.1,
     "unit": "V", "device_class": "voltage", "state_class": "measurement"},
    {"name": "current", "table": "input", "address": 1, "type": "int16", "scale": 0.01,
     "unit": "A", "device_class": "current", "state_class": "measurement"},
    {"name": "power", "table": "input", "address": 2, "type": "float32",
     "unit": "W", "device_class": "power", "state_class": "measurement"},
    {"name": "energy", "table": "input", "address": 4, "type": "uint32", "scale": 0.001,
     "unit": "kWh", "device_class": "energy", "state_class": "total_increasing"},
    {"name": "setpoint", "table": "holding", "address": 0, "type": "int16", "scale": 0.1,
     "unit": "°C", "device_class": "temperature", "writable": True, "min": 5, "max": 30},
    {"name": "relay", "table": "coil", "address": 0, "writable": True},
)  # fmt: skip


def demo_meter(unit: int = 1, *, poll_interval_s: float = 5.0) -> dict[str, Any]:
    """An energy meter with a relay and a setpoint: the ``[[modbus.buses.devices]]`` table
    ``make run`` uses."""
    return {
        "unit": unit,
        "name": "Demo meter",
        "poll_interval_s": poll_interval_s,
        "deadband": 0.5,
        "registers": [dict(register) for register in DEMO_METER_REGISTERS],
    }


async def animate_demo_meter(
    server: SimModbusServer, unit: int = 1, *, period_s: float = 2.0
) -> None:
    """Move the demo meter's readings like a real load would, until cancelled."""
    registers = {r["name"]: RegisterSettings(**r) for r in DEMO_METER_REGISTERS}
    await server.set_value(unit, registers["setpoint"], 21.0)
    energy = 0.0
    step = 0
    while True:
        load = 500.0 + 400.0 * math.sin(step / 10)
        energy += load * period_s / 3_600_000
        await server.set_value(unit, registers["voltage"], round(230.0 + 2 * math.sin(step / 7), 1))
        await server.set_value(unit, registers["current"], round(load / 230.0, 2))
        await server.set_value(unit, registers["power"], round(load, 1))
        await server.set_value(unit, registers["energy"], round(energy, 3))
        step += 1
        await asyncio.sleep(period_s)


class ModbusDemo:
    """For ``make run``: a simulated meter on a free TCP port and the bus table that polls it."""

    def __init__(self, *, unit: int = 1, poll_interval_s: float = 5.0, period_s: float = 2.0):
        self.unit = unit
        self.device = demo_meter(unit, poll_interval_s=poll_interval_s)
        self.server = SimModbusServer(units=[unit])
        self.period_s = period_s
        self._task: asyncio.Task[None] | None = None

    async def start(self, bus_name: str = "sim") -> dict[str, Any]:
        """Serve the meter; the ``[[modbus.buses]]`` table that reaches it."""
        await self.server.start()
        self._task = asyncio.create_task(
            animate_demo_meter(self.server, self.unit, period_s=self.period_s),
            name="modbus-demo-meter",
        )
        return self.server.bus(bus_name, [self.device], timeout_s=1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.server.stop()
