"""Which LoRa nodes are online: one not heard for ``offline_after_s`` is reported ``offline``
once, and ``online`` again with its next uplink.

Pure: times are passed in (monotonic seconds).
"""

from __future__ import annotations


class Presence:
    def __init__(self, offline_after_s: float) -> None:
        self.offline_after_s = offline_after_s  # 0: never offline
        self._last_heard: dict[str, float] = {}
        self._offline: set[str] = set()

    def heard(self, device: str, now: float) -> bool:
        """Note an uplink (or a join); True if the device had been reported offline."""
        self._last_heard[device] = now
        if device not in self._offline:
            return False
        self._offline.discard(device)
        return True

    def silent(self, now: float) -> list[tuple[str, float]]:
        """Devices to report offline, with the seconds since they were last heard; each stays
        here until ``reported_offline``."""
        if self.offline_after_s <= 0:
            return []
        return [
            (device, now - heard)
            for device, heard in self._last_heard.items()
            if device not in self._offline and now - heard > self.offline_after_s
        ]

    def reported_offline(self, device: str) -> None:
        self._offline.add(device)

    def forget(self, device: str) -> None:
        """Stop watching ``device`` (another gateway of the fleet serves it now)."""
        self._last_heard.pop(device, None)
        self._offline.discard(device)
