"""Command deadline rules: when a command stops being worth executing.

A command may carry up to three expiry hints: ``expires_at`` (a wall-clock time chosen by the
sender), ``ttl_s`` (seconds from arrival at the gateway) and a transport expiry (MQTT 5
Message Expiry Interval, already reduced by the broker for the time it held the message). The
deadline is the earliest of those given, ``default_ttl_s`` when none is, and never later than
``max_ttl_s`` after arrival.

Deadlines live on the monotonic clock from the moment of arrival, so a wall-clock jump (NTP
finally synchronising a Raspberry Pi that booted in 1970) can neither revive nor kill an
accepted command. ``expires_at`` is converted once, at arrival, using the wall and monotonic
clocks read together. A wall clock earlier than ``CLOCK_SYNC_EPOCH`` is taken as not yet
synchronised: ``expires_at`` is then ignored when another hint exists, and the command is
rejected with ``clock_unsynchronised`` when it is the only hint.

Pure: every clock value is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

# A wall clock before this instant has not been set (no RTC, no NTP yet).
CLOCK_SYNC_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

CLOCK_UNSYNCHRONISED = "clock_unsynchronised"


class ExpiryRejected(ValueError):
    """The expiry hints cannot give a deadline; ``reason`` is the rejection reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stage(StrEnum):
    """Where in its life a command is being checked."""

    ARRIVAL = "arrival"
    QUEUE = "queue"
    TRANSMISSION = "transmission"


EXPIRED_REASONS: dict[Stage, str] = {
    Stage.ARRIVAL: "expired_on_arrival",
    Stage.QUEUE: "expired_in_queue",
    Stage.TRANSMISSION: "expired_before_transmission",
}


class TtlBounds(Protocol):
    """What the policy takes from the ``[commands]`` config section."""

    @property
    def default_ttl_s(self) -> float: ...

    @property
    def max_ttl_s(self) -> float: ...


class HasDeadline(Protocol):
    @property
    def deadline(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    default_ttl_s: float = 60.0
    max_ttl_s: float = 3600.0
    clock_sync_epoch: float = CLOCK_SYNC_EPOCH

    @classmethod
    def from_config(cls, commands: TtlBounds) -> ExpiryPolicy:
        return cls(default_ttl_s=commands.default_ttl_s, max_ttl_s=commands.max_ttl_s)

    def wall_clock_synchronised(self, now_wall: float) -> bool:
        return now_wall >= self.clock_sync_epoch


def compute_deadline(
    policy: ExpiryPolicy,
    *,
    arrival_mono: float,
    arrival_wall: float,
    expires_at: float | None = None,
    ttl_s: float | None = None,
    transport_expiry_s: float | None = None,
) -> float:
    """Monotonic deadline for a command that arrived at ``arrival_mono``/``arrival_wall``.

    ``expires_at`` is a Unix time, ``ttl_s`` and ``transport_expiry_s`` are seconds from
    arrival. Raises ExpiryRejected(``clock_unsynchronised``) when only ``expires_at`` is given
    and the wall clock is not set. A deadline already in the past is returned as is: the
    caller reports it as ``expired_on_arrival`` rather than rejecting it.
    """
    for value in (expires_at, ttl_s, transport_expiry_s):
        if value is not None and math.isnan(value):
            raise ExpiryRejected("invalid_expiry")
    candidates: list[float] = []
    if ttl_s is not None:
        candidates.append(arrival_mono + ttl_s)
    if transport_expiry_s is not None:
        candidates.append(arrival_mono + max(transport_expiry_s, 0.0))
    if expires_at is not None:
        if policy.wall_clock_synchronised(arrival_wall):
            candidates.append(arrival_mono + (expires_at - arrival_wall))
        elif not candidates:
            raise ExpiryRejected(CLOCK_UNSYNCHRONISED)
    if not candidates:
        candidates.append(arrival_mono + policy.default_ttl_s)
    return min(*candidates, arrival_mono + policy.max_ttl_s)


def seconds_left_for_node(command: HasDeadline, now_mono: float, airtime_s: float = 0.0) -> int:
    """Whole seconds the command still has when it reaches the node, rounded down, >= 0."""
    left = command.deadline - now_mono - airtime_s
    if not left > 0:  # also catches NaN
        return 0
    return math.floor(left)


def check(
    command: HasDeadline,
    now_mono: float,
    airtime_s: float = 0.0,
    *,
    stage: Stage = Stage.QUEUE,
) -> str | None:
    """None while the command is alive at ``stage``, else the expiry reason.

    At arrival and in the queue a command is alive while any time is left after ``airtime_s``.
    Right before transmission it must reach the node with at least one whole second left,
    because the node is told whole seconds (``seconds_left_for_node``) and drops a command
    that arrives with zero.
    """
    if stage is Stage.TRANSMISSION:
        alive = seconds_left_for_node(command, now_mono, airtime_s) >= 1
    else:
        alive = command.deadline - now_mono - airtime_s > 0
    return None if alive else EXPIRED_REASONS[stage]
