"""What the Modbus driver is told: buses, the devices on them and their register maps.

Plain frozen records; the gateway builds them from its checked ``[modbus]`` config section
(``gateway.driver_settings``), tests and the simulated meter may build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Table = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
Order = Literal["big", "little"]


@dataclass(frozen=True, slots=True)
class RegisterSettings:
    """One named value in a device's register map."""

    name: str
    table: Table
    address: int
    type: ValueType = "uint16"
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False
    min: float | None = None
    max: float | None = None
    deadband: float | None = None  # overrides the device's deadband
    device_class: str | None = None
    state_class: Literal["measurement", "total", "total_increasing"] | None = None


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """One slave (unit id) polled on a bus."""

    unit: int
    name: str | None = None
    poll_interval_s: float = 10.0
    publish: Literal["on_change", "every_poll"] = "on_change"
    deadband: float = 0.0
    offline_after_failures: int = 3
    registers: tuple[RegisterSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class BusSettings:
    """One RTU line or TCP endpoint and the devices on it."""

    name: str
    transport: Literal["rtu", "tcp"] = "rtu"
    port: str | None = None  # serial device for rtu
    host: str | None = None  # for tcp
    tcp_port: int = 502
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = 1.0
    retries: int = 2
    retry_backoff_s: float = 0.1  # doubles per retry
    devices: tuple[DeviceSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class ModbusSettings:
    buses: tuple[BusSettings, ...] = ()
