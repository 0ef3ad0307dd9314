"""The gateway's session table: uplink verification, report ids, downlinks, and the facade.

``NetworkCore.receive`` turns one received PHY payload into actions for the LoRa shell, or
raises ``FrameRejected``. The shell stores a report durably and only then lets the downlink
scheduler (``downlink.py``) ack it, with a frame from ``NetworkCore.build_downlink``.

Lease records changed by uplinks and downlinks (``take_dirty``) are not written with the
reports: the shell writes them in their own transaction every second, and before it answers
a join. After a crash the uplink counters of the last second may be lost, so a retransmission
of a report already stored is taken as new and stored again, under the same ``report_id``.
Downlink counters are not at risk: the stored reservation stays at least
``DOWNLINK_RESERVATION // 2`` ahead of use.

Pure: the time (Unix seconds) and the random source are passed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.model import CommandStatus, lora_device_id
from gateway.protocol import frames
from gateway.protocol.frames import (
    AirFrameType,
    CommandResultFrame,
    Downlink,
    DownlinkCommand,
    Flag,
    FrameRejected,
    Header,
    ReportFrame,
    ResultCode,
    SessionFrame,
)
from gateway.protocol.join import (
    DOWNLINK_RESERVATION,
    Accepted,
    DeviceCredentials,
    JoinServer,
    JoinSettings,
    Lease,
    LeaseRecord,
    RandomBytes,
)

_RESULT_STATUS = {
    ResultCode.EXECUTED: CommandStatus.EXECUTED,
    ResultCode.FAILED: CommandStatus.FAILED,
    ResultCode.EXPIRED: CommandStatus.EXPIRED,
}


class SessionExhausted(Exception):
    """The downlink counter reached 2**32: the device has to join again."""


def report_id(device_id: str, session_id: str, counter: int) -> str:
    """Stable id of an uplink: the same for every retransmission and across restarts."""
    return f"{device_id}:{session_id}:{counter}"


def split_report_id(text: str) -> tuple[str, str, int] | None:
    """Device, session and counter of a ``report_id``; None if ``text`` is not one."""
    try:
        device_id, session_id, counter = text.rsplit(":", 2)
        return device_id, session_id, int(counter)
    except ValueError:
        return None


def verify_uplink(
    lease: Lease, phy: bytes, header: Header, now: float, recent_limit: int = 16
) -> tuple[SessionFrame, bool]:
    """Authenticate an uplink of ``lease``; return the frame and whether it is a duplicate.

    A counter above the last accepted one is new; a counter equal to a recently accepted one
    with the same tag is a retransmission (to be acked again, not forwarded again); anything
    else is a replay. State changes only for frames that are accepted.
    """
    device_id = lease.device_id
    if not lease.keys.tag_matches(phy[: -frames.TAG_LEN], header.tag):
        raise FrameRejected("bad_tag", header.type.name.lower(), device_id=device_id)
    assert header.counter is not None
    counter = header.counter
    duplicate = False
    if counter <= lease.up_last:
        seen_tag = lease.up_recent.get(counter)
        if seen_tag is None:
            raise FrameRejected(
                "replayed_counter", f"{counter} <= {lease.up_last}", device_id=device_id
            )
        if seen_tag != header.tag:
            raise FrameRejected(
                "counter_reused", f"{counter} with a different frame", device_id=device_id
            )
        duplicate = True
    if lease.encrypt and not header.flags & Flag.ENCRYPTED:
        raise FrameRejected("unencrypted", "session requires encryption", device_id=device_id)
    try:
        frame = frames.open_session_body(phy, header, lease.keys)
    except FrameRejected as exc:
        exc.device_id = device_id
        raise
    if not duplicate:
        lease.up_last = counter
        lease.up_recent[counter] = header.tag
        while len(lease.up_recent) > recent_limit:
            del lease.up_recent[next(iter(lease.up_recent))]
    lease.last_seen = max(lease.last_seen, now)
    return frame, duplicate


def next_downlink_counter(lease: Lease) -> int:
    """Take the next downlink counter, raising the durable reservation well ahead of use."""
    counter = lease.dl_next
    if counter > frames.MAX_COUNTER:
        raise SessionExhausted(f"{lease.device_id}: downlink counter exhausted")
    lease.dl_next = counter + 1
    if lease.dl_next + DOWNLINK_RESERVATION // 2 > lease.dl_reserved:
        lease.dl_reserved = min(lease.dl_next + DOWNLINK_RESERVATION, frames.MAX_COUNTER + 1)
    return counter


def build_downlink(lease: Lease, ack_counter: int | None, command: DownlinkCommand | None) -> bytes:
    frame = Downlink(
        address=lease.address,
        counter=next_downlink_counter(lease),
        ack_counter=ack_counter,
        command=command,
        encrypted=lease.encrypt,
    )
    return frames.encode_session(frame, lease.keys)


# ----------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    device_id: str
    eui: int
    address: int
    generation: int
    session_id: str
    last_seen: float
    encrypt: bool

    @classmethod
    def of(cls, lease: Lease) -> LeaseInfo:
        return cls(
            device_id=lease.device_id,
            eui=lease.eui,
            address=lease.address,
            generation=lease.generation,
            session_id=lease.session_id,
            last_seen=lease.last_seen,
            encrypt=lease.encrypt,
        )


@dataclass(frozen=True, slots=True)
class JoinAccepted:
    """Send ``frame`` ``send_after_s`` after the join request's end (RxDone)."""

    lease: LeaseInfo
    frame: bytes
    rejoin: bool
    repeated: bool  # a repeated request: same answer as before, no new session
    send_after_s: float


@dataclass(frozen=True, slots=True)
class JoinRefused:
    """Send ``frame`` in the join window and emit a ``join_rejected`` event."""

    eui: int
    device_id: str
    reason: str  # "pool_exhausted" / "device_disabled"
    frame: bytes
    send_after_s: float


@dataclass(frozen=True, slots=True)
class LeaseReclaimed:
    """An inactive device lost its address to a joining one."""

    device_id: str
    eui: int
    address: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class ReportReceived:
    """A report. Duplicates carry the same ``report_id`` and body: ack again, forward once."""

    device_id: str
    counter: int
    confirmed: bool
    report_id: str
    body: dict[str, Any]
    duplicate: bool
    encrypted: bool
    rx_delay_s: float  # the receive window opens this long after the uplink's RxDone


@dataclass(frozen=True, slots=True)
class CommandResultReceived:
    device_id: str
    counter: int
    confirmed: bool
    command_ref: int
    status: CommandStatus
    detail: str | None
    duplicate: bool
    rx_delay_s: float


Action = JoinAccepted | JoinRefused | LeaseReclaimed | ReportReceived | CommandResultReceived


# ------------------------------------------------------------------------------------ facade


class NetworkCore:
    """Joins, leases and sessions of every LoRa node behind one gateway radio."""

    def __init__(
        self,
        settings: JoinSettings,
        registry: Mapping[int, DeviceCredentials],
        *,
        records: Iterable[LeaseRecord] = (),
        random_bytes: RandomBytes = secrets.token_bytes,
    ) -> None:
        self.settings = settings
        self._joins = JoinServer(settings, registry, random_bytes)
        self._joins.restore(records)

    @property
    def rx_delay_s(self) -> float:
        return self.settings.rx_delay_s

    def set_registry(self, registry: Mapping[int, DeviceCredentials]) -> list[str]:
        """Use new credentials for future joins; running sessions keep their keys, except
        those of devices no longer registered (or disabled), whose ids are returned."""
        return [lease.device_id for lease in self._joins.set_registry(registry)]

    def receive(self, phy: bytes, now: float) -> list[Action]:
        """Handle one received frame; raise FrameRejected if it is not accepted."""
        header = frames.peek(phy)
        if header.type not in frames.UPLINK_TYPES:
            raise FrameRejected("wrong_direction", header.type.name.lower())
        if header.type is AirFrameType.JOIN_REQUEST:
            return self._join(phy, header, now)
        assert header.address is not None
        lease = self._joins.by_address.get(header.address)
        if lease is None:
            raise FrameRejected("unknown_address", f"0x{header.address:04x}")
        frame, duplicate = verify_uplink(lease, phy, header, now, self.settings.recent_uplinks)
        self._joins.dirty.add(lease.eui)
        if isinstance(frame, ReportFrame):
            return [
                ReportReceived(
                    device_id=lease.device_id,
                    counter=frame.counter,
                    confirmed=frame.confirmed,
                    report_id=report_id(lease.device_id, lease.session_id, frame.counter),
                    body=frame.body,
                    duplicate=duplicate,
                    encrypted=frame.encrypted,
                    rx_delay_s=lease.rx_delay_ds / 10,
                )
            ]
        assert isinstance(frame, CommandResultFrame)
        return [
            CommandResultReceived(
                device_id=lease.device_id,
                counter=frame.counter,
                confirmed=frame.confirmed,
                command_ref=frame.command_ref,
                status=_RESULT_STATUS[frame.status],
                detail=frame.detail,
                duplicate=duplicate,
                rx_delay_s=lease.rx_delay_ds / 10,
            )
        ]

    def _join(self, phy: bytes, header: Header, now: float) -> list[Action]:
        outcome = self._joins.handle(phy, header, now)
        delay = self.settings.join_rx_delay_s
        if not isinstance(outcome, Accepted):
            return [
                JoinRefused(
                    eui=outcome.eui,
                    device_id=lora_device_id(outcome.eui),
                    reason=outcome.reason.name.lower(),
                    frame=outcome.frame,
                    send_after_s=delay,
                )
            ]
        actions: list[Action] = []
        if outcome.reclaimed is not None:
            old = outcome.reclaimed
            actions.append(LeaseReclaimed(old.device_id, old.eui, old.address, old.last_seen))
        actions.append(
            JoinAccepted(
                lease=LeaseInfo.of(outcome.lease),
                frame=outcome.frame,
                rejoin=outcome.rejoin,
                repeated=outcome.repeated,
                send_after_s=delay,
            )
        )
        return actions

    def build_downlink(
        self, device_id: str, ack_counter: int | None, command: DownlinkCommand | None
    ) -> bytes:
        """A downlink for the device's receive window: an ack, a command, or both.

        KeyError if the device has no lease; FrameTooLarge if the command does not fit.
        """
        lease = self._lease(device_id)
        frame = build_downlink(lease, ack_counter, command)
        self._joins.dirty.add(lease.eui)
        return frame

    def _lease(self, device_id: str) -> Lease:
        eui = _eui_of(device_id)
        lease = self._joins.by_eui.get(eui) if eui is not None else None
        if lease is None:
            raise KeyError(f"{device_id}: no lease")
        return lease

    def lease(self, device_id: str) -> LeaseInfo | None:
        eui = _eui_of(device_id)
        lease = self._joins.by_eui.get(eui) if eui is not None else None
        return LeaseInfo.of(lease) if lease is not None else None

    def leases(self) -> list[LeaseInfo]:
        return [LeaseInfo.of(lease) for lease in self._joins.by_eui.values()]

    @property
    def free_addresses(self) -> int:
        return self._joins.pool.free_count

    def release(self, device_id: str) -> bool:
        """End a device's lease (operator action); it has to join again."""
        eui = _eui_of(device_id)
        return eui is not None and self._joins.drop(eui) is not None

    def adopt(self, record: LeaseRecord, dl_from: int = 0) -> LeaseInfo | None:
        """Take a session record another gateway of the fleet wrote (``JoinServer.adopt``)."""
        lease = self._joins.adopt(record, dl_from)
        return LeaseInfo.of(lease) if lease is not None else None

    def record(self, device_id: str) -> LeaseRecord | None:
        """The record of one device's session, as the store keeps it; None without a lease."""
        eui = _eui_of(device_id)
        if eui is None or eui not in self._joins.by_eui:
            return None
        return self._joins.record(eui)

    def take_dirty(self) -> list[LeaseRecord]:
        """Records changed since the last call, for the store to write."""
        joins = self._joins
        records = [joins.record(eui) for eui in sorted(joins.dirty)]
        joins.dirty.clear()
        return records

    def mark_dirty(self, euis: Iterable[int]) -> None:
        """Put records back after a failed write, so the next take returns them again."""
        self._joins.dirty.update(euis)

    def records(self) -> list[LeaseRecord]:
        """Every record (for a full snapshot)."""
        joins = self._joins
        return [joins.record(eui) for eui in sorted(joins.history.keys() | joins.by_eui.keys())]


def _eui_of(device_id: str) -> int | None:
    if len(device_id) != 21 or not device_id.startswith("lora-"):
        return None
    try:
        eui = int(device_id[5:], 16)
    except ValueError:
        return None
    return eui if lora_device_id(eui) == device_id else None
