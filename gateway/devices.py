"""The interface between device drivers (LoRa bridge, Modbus poller, BLE scanner) and the bridge.

A driver turns readings into reports through a ``DeviceSink`` and executes commands for the
devices it owns. The bridge implements the sink (durable outbox, upstreams) and routes each
command to the driver that owns the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.model import Command, CommandResult, EventKind


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What Home Assistant discovery, the console and the web page need to know of a device."""

    device: str
    kind: str  # "lora" | "modbus" | "ble"
    name: str
    # reading name -> {"unit": ..., "device_class": ..., "writable": bool, "type": ...}
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: tuple[str, ...] = ()


class DeviceSink(Protocol):
    async def report(
        self,
        device: str,
        kind: str,
        data: dict[str, Any],
        *,
        rssi: float | None = None,
        snr: float | None = None,
        seq: int | None = None,
        report_id: str | None = None,
        safe_within_s: float | None = None,
        gateways: list[dict[str, Any]] | None = None,
    ) -> None:
        """Take a reading; it goes to every upstream and is kept until each has it.
        ``gateways``: in a fleet, every gateway that heard it.

        With ``safe_within_s`` (for a reading something acknowledges, such as a LoRa ack),
        return only once it is safe: on disk, or taken by every upstream; the store makes sure
        of that within so many seconds (0: now). Without it, return once it is taken; it is on
        disk within the outbox's commit interval unless every upstream took it first.
        """

    async def event(
        self, device: str, event: EventKind, detail: dict[str, Any] | None = None
    ) -> None:
        """Take a device event (online/offline/...), kept as a reading without a deadline."""


class DeviceDriver(Protocol):
    """A source of devices: owns some device ids and executes their commands."""

    kind: str

    def devices(self) -> list[DeviceInfo]: ...

    def owns(self, device: str) -> bool: ...

    async def start(self, sink: DeviceSink) -> None: ...

    async def stop(self) -> None: ...

    async def execute(self, command: Command) -> CommandResult:
        """Carry out a command, checking ``command.deadline`` (monotonic) right before the
        device is touched: an expired command returns ``expired`` and is never applied."""
