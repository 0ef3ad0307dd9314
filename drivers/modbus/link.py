"""One Modbus bus (RTU serial line or TCP connection) through a pymodbus async client.

pymodbus does the framing, CRCs and transaction ids. This module turns its outcomes into
values or one ``ModbusFailure`` with a one-line reason, and owns the bus lock: every request
on a bus, poll or write, runs while holding ``BusLink.lock``, so requests on one bus never
overlap while different buses run concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.modbus.codec import WritePayload, is_bit
from drivers.modbus.plan import ReadBlock
from drivers.modbus.settings import BusSettings, RegisterSettings

_READ_METHODS = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "holding": "read_holding_registers",
    "input": "read_input_registers",
}


class ModbusFailure(Exception):
    """A request that got no usable answer. ``answered`` is True for exception responses."""

    def __init__(self, reason: str, *, answered: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answered = answered


def exception_reason(code: int) -> str:
    try:
        name = ExcCodes(code).name.lower()
    except ValueError:
        name = "unknown"
    return f"exception response {code:#04x} ({name})"


class BusLink:
    def __init__(self, bus: BusSettings) -> None:
        self.bus = bus
        self.lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        # pymodbus enforces timeout_s per request; this outer guard only catches a hang.
        self._guard_s = 2 * bus.timeout_s + 1.0

    @property
    def endpoint(self) -> str:
        if self.bus.transport == "tcp":
            return f"{self.bus.host}:{self.bus.tcp_port}"
        return str(self.bus.port)

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        name = f"modbus-{self.bus.name}"
        if self.bus.transport == "tcp":
            assert self.bus.host is not None
            return AsyncModbusTcpClient(
                self.bus.host,
                port=self.bus.tcp_port,
                name=name,
                timeout=self.bus.timeout_s,
                retries=0,  # retries and their backoff are the poller's
                reconnect_delay=0,  # reconnects happen on the next request
            )
        assert self.bus.port is not None
        return AsyncModbusSerialClient(
            self.bus.port,
            name=name,
            baudrate=self.bus.baudrate,
            bytesize=self.bus.bytesize,
            parity=self.bus.parity,
            stopbits=self.bus.stopbits,
            timeout=self.bus.timeout_s,
            retries=0,
            reconnect_delay=0,
        )

    async def ensure_connected(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        if self._client.connected:
            return
        try:
            async with asyncio.timeout(self._guard_s):
                ok = await self._client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            raise ModbusFailure(f"cannot open {self.endpoint}: {exc}") from None
        if not ok:
            raise ModbusFailure(f"cannot open {self.endpoint}")

    async def read(self, unit: int, block: ReadBlock) -> list[int] | list[bool]:
        """Read one block from one slave; the caller holds ``lock``."""
        await self.ensure_connected()
        assert self._client is not None
        method = getattr(self._client, _READ_METHODS[block.table])
        response = await self._call(method, block.address, count=block.count, device_id=unit)
        if block.table in ("coil", "discrete"):
            bits = list(response.bits[: block.count])
            if len(bits) != block.count:
                raise ModbusFailure(f"short answer: {len(bits)} of {block.count} bits")
            return bits
        words = list(response.registers)
        if len(words) != block.count:
            raise ModbusFailure(f"short answer: {len(words)} of {block.count} registers")
        return words

    async def write(self, unit: int, register: RegisterSettings, payload: WritePayload) -> None:
        """Write one register; returns once the slave confirmed. The caller holds ``lock``."""
        await self.ensure_connected()
        client = self._client
        assert client is not None
        if is_bit(register):
            assert isinstance(payload, bool)
            await self._call(client.write_coil, register.address, payload, device_id=unit)
        elif isinstance(payload, list) and len(payload) == 1:
            await self._call(client.write_register, register.address, payload[0], device_id=unit)
        else:
            assert isinstance(payload, list)
            await self._call(client.write_registers, register.address, payload, device_id=unit)

    async def _call(
        self, method: Callable[..., Awaitable[ModbusPDU]], *args: Any, **kw: Any
    ) -> Any:
        try:
            async with asyncio.timeout(self._guard_s):
                response = await method(*args, **kw)
        except TimeoutError:
            raise ModbusFailure("no answer (timeout)") from None
        except ModbusIOException:
            raise ModbusFailure("no answer (timeout)") from None
        except ConnectionException as exc:
            raise ModbusFailure(f"connection lost: {exc}") from None
        except ModbusException as exc:
            raise ModbusFailure(f"bad answer: {exc}") from None
        except OSError as exc:  # includes serial.SerialException
            raise ModbusFailure(f"{self.endpoint}: {exc}") from None
        if response is None:
            raise ModbusFailure("no answer")
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise ModbusFailure(exception_reason(code), answered=True)
        return response

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
