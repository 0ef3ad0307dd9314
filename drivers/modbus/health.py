"""Per-device state kept between polls (pure): availability and publish-on-change.

``Availability`` turns poll outcomes into online/offline transitions: the first answer makes
a device online, ``offline_after`` consecutive failures make it offline, and the next answer
brings it back. ``ChangeFilter`` decides whether a poll's values are worth a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from gateway.model import EventKind

State = Literal["unknown", "online", "offline"]


class Availability:
    def __init__(self, offline_after: int) -> None:
        if offline_after < 1:
            raise ValueError("offline_after must be at least 1")
        self.offline_after = offline_after
        self.state: State = "unknown"
        self.failures = 0  # consecutive

    def success(self) -> EventKind | None:
        """Record an answer; ONLINE when this changes the state."""
        self.failures = 0
        if self.state == "online":
            return None
        self.state = "online"
        return EventKind.ONLINE

    def failure(self) -> EventKind | None:
        """Record a failed poll; OFFLINE on the failure that reaches the threshold."""
        self.failures += 1
        if self.state != "offline" and self.failures >= self.offline_after:
            self.state = "offline"
            return EventKind.OFFLINE
        return None


class ChangeFilter:
    """Publish every poll, or only when some value moved by more than its deadband.

    The comparison is against the values last *published* (``commit``), so slow drift still
    gets reported once it adds up past the deadband.
    """

    def __init__(
        self,
        mode: Literal["on_change", "every_poll"],
        deadband: float = 0.0,
        per_field: Mapping[str, float] | None = None,
    ) -> None:
        self.mode = mode
        self.deadband = deadband
        self.per_field = dict(per_field or {})
        self.last: dict[str, Any] | None = None

    def should_publish(self, values: Mapping[str, Any]) -> bool:
        if self.mode == "every_poll" or self.last is None:
            return True
        if values.keys() != self.last.keys():
            return True
        return any(self._moved(name, self.last[name], value) for name, value in values.items())

    def commit(self, values: Mapping[str, Any]) -> None:
        self.last = dict(values)

    def reset(self) -> None:
        """Forget what was published: the next poll is reported whatever it holds."""
        self.last = None

    def _moved(self, name: str, old: Any, new: Any) -> bool:
        numbers = (int, float)
        if (
            isinstance(old, numbers)
            and isinstance(new, numbers)
            and not isinstance(old, bool)
            and not isinstance(new, bool)
        ):
            return abs(new - old) > self.per_field.get(name, self.deadband)
        return bool(old != new)
