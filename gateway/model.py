"""Records shared by every part of the gateway: reports, events, commands and their results.

These are plain data with no I/O. Drivers produce reports and events, the bridge stores them,
upstreams carry them; commands travel the other way and end in exactly one final result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.timefmt import rfc3339

LORA_ID = re.compile(r"^lora-[0-9a-f]{16}$")
MODBUS_ID = re.compile(r"^modbus-[a-z0-9_]+-\d{1,3}$")
BLE_ID = re.compile(r"^ble-[0-9a-f]{12}$")


def lora_device_id(eui: bytes | int) -> str:
    value = eui if isinstance(eui, int) else int.from_bytes(eui, "big")
    return f"lora-{value:016x}"


def modbus_device_id(bus: str, unit: int) -> str:
    return f"modbus-{bus}-{unit}"


def ble_device_id(mac: str) -> str:
    return "ble-" + mac.replace(":", "").replace("-", "").lower()


def device_kind(device_id: str) -> str:
    """``lora`` / ``modbus`` / ``ble`` for a well-formed device id, else ValueError."""
    for kind, pattern in (("lora", LORA_ID), ("modbus", MODBUS_ID), ("ble", BLE_ID)):
        if pattern.match(device_id):
            return kind
    raise ValueError(f"not a device id: {device_id!r}")


@dataclass(frozen=True, slots=True)
class Report:
    """One reading from a device. ``id`` is stable across retransmissions of the same report."""

    id: str
    device: str
    kind: str
    ts: float  # Unix time the gateway received it
    seq: int
    data: dict[str, Any]
    rssi: float | None = None
    snr: float | None = None
    # In a fleet: every gateway that heard the uplink ({"gateway", "rssi", "snr"}), best first.
    gateways: list[dict[str, Any]] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "id": self.id,
            "device": self.device,
            "kind": self.kind,
            "ts": rfc3339(self.ts),
            "seq": self.seq,
            "rssi": self.rssi,
            "snr": self.snr,
            "data": self.data,
        }
        if self.gateways is not None:
            wire["gateways"] = self.gateways
        return wire


class EventKind(StrEnum):
    JOINED = "joined"
    REJOINED = "rejoined"
    ONLINE = "online"
    OFFLINE = "offline"
    JOIN_REJECTED = "join_rejected"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    device: str
    event: EventKind
    ts: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"event": str(self.event), "ts": rfc3339(self.ts), **self.detail}


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"
    SENT = "sent"
    EXECUTED = "executed"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"
    TIMEOUT = "timeout"

    @property
    def final(self) -> bool:
        return self not in (CommandStatus.ACCEPTED, CommandStatus.SENT)


@dataclass(frozen=True, slots=True)
class CommandResult:
    id: str
    device: str
    status: CommandStatus
    ts: float
    detail: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"id": self.id, "status": str(self.status), "ts": rfc3339(self.ts)}
        if self.detail is not None:
            wire["detail"] = self.detail
        return wire


@dataclass(frozen=True, slots=True)
class IncomingCommand:
    """A command as it arrived, before validation.

    ``body`` is the decoded envelope (``id``, ``action``, ``params``, ``expires_at``,
    ``ttl_s``) or the raw text if it was not a JSON object. ``expiry_s`` is a transport-level
    expiry (MQTT 5 Message Expiry Interval, XEP-0079) when one was given. ``reply_to`` is
    what the upstream needs to route the result back (response topic, correlation data, IQ).
    ``size_bytes`` is the length of the message as it arrived, when ``body`` was decoded from
    it, so the envelope check can refuse an oversized command (``too_large``). ``carried``:
    the command may have reached its node through another gateway of the fleet already (see
    ``Command.carried``).
    """

    origin: str
    device: str
    body: dict[str, Any] | str | bytes
    received_mono: float
    expiry_s: float | None = None
    reply_to: dict[str, Any] = field(default_factory=dict)
    size_bytes: int | None = None
    carried: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command. ``deadline`` is on the monotonic clock (``time.monotonic()``).

    ``carried``: another gateway of the fleet served the device when the command arrived and
    may have sent it on air; past its deadline it is not expired here but its node is asked
    (a downlink with no time left: the node answers with what it did, or ``expired`` and never
    runs it).
    """

    id: str
    device: str
    action: str
    params: dict[str, Any]
    deadline: float
    origin: str  # name of the upstream it came from: "mqtt", "xmpp", "console", "web"
    reply_to: dict[str, Any] = field(default_factory=dict)  # upstream-specific return address
    carried: bool = False

    def seconds_left(self, now: float) -> float:
        return self.deadline - now
