"""Which advertisements become reports (pure; times are passed in).

``MacFilter``: the deny list always wins; a non-empty allow list admits only its MACs.
``RateLimiter``: at most one report per device per ``min_interval_s``; the rest are counted.
``Presence``: a device is online from its first report and offline once nothing was heard
from it for ``offline_after_s``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal

from drivers.ble.advert import normalize_mac
from gateway.model import EventKind

Verdict = Literal["pass", "denied", "not_allowed"]


class MacFilter:
    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = frozenset(normalize_mac(mac) for mac in allow)
        self.deny = frozenset(normalize_mac(mac) for mac in deny)

    def check(self, mac: str) -> Verdict:
        if mac in self.deny:
            return "denied"
        if self.allow and mac not in self.allow:
            return "not_allowed"
        return "pass"

    def listed(self, mac: str) -> bool:
        """True when ``mac`` is named in the allow list (raw adverts need that)."""
        return mac in self.allow


class RateLimiter:
    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._last: dict[str, float] = {}
        self.suppressed: Counter[str] = Counter()

    def allow(self, device: str, now: float) -> bool:
        last = self._last.get(device)
        if last is not None and now - last < self.min_interval_s:
            self.suppressed[device] += 1
            return False
        self._last[device] = now
        return True


class Presence:
    def __init__(self, offline_after_s: float) -> None:
        self.offline_after_s = offline_after_s
        self._last_seen: dict[str, float] = {}
        self._online: set[str] = set()

    def seen(self, device: str, now: float) -> EventKind | None:
        """Record a report; ONLINE when the device was not online before."""
        self._last_seen[device] = now
        if device in self._online:
            return None
        self._online.add(device)
        return EventKind.ONLINE

    def expired(self, now: float) -> list[tuple[str, float]]:
        """Devices that just went silent for too long, with seconds since last heard."""
        if self.offline_after_s <= 0:
            return []
        gone = []
        for device in sorted(self._online):
            silent_for = now - self._last_seen[device]
            if silent_for >= self.offline_after_s:
                gone.append((device, silent_for))
        for device, _ in gone:
            self._online.discard(device)
        return gone
