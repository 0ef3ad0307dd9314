"""Per-sub-band duty-cycle accounting for the gateway's own transmissions.

In EU868 each sub-band allows a fraction of any one-hour window on air. Every transmission is
counted in full against the window it started in, and a transmission is allowed only if it
fits in what the last hour left, so the limit holds for every sliding hour (slightly
conservative: a transmission that started just inside the window counts whole). A frequency
outside the listed sub-bands of a regulated region is never allowed. US915 and ``none`` have
no duty-cycle limit (US915 uses dwell time and channel hopping instead).

Pure: the (monotonic) time is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW_S = 3600.0
# Rounding slack so that a transmission exactly filling the budget is allowed.
_EPSILON_S = 1e-9


@dataclass(frozen=True, slots=True)
class SubBand:
    low_hz: int
    high_hz: int
    limit: float  # fraction of the window, e.g. 0.01 for 1 %

    def contains(self, freq_hz: int) -> bool:
        return self.low_hz <= freq_hz <= self.high_hz

    @property
    def budget_s(self) -> float:
        return self.limit * WINDOW_S


EU868_SUB_BANDS = (
    SubBand(868_000_000, 868_600_000, 0.01),
    SubBand(868_700_000, 869_200_000, 0.001),
    SubBand(869_400_000, 869_650_000, 0.10),
    SubBand(869_700_000, 870_000_000, 0.01),
)

# None: no duty-cycle limit in that region.
REGIONS: dict[str, tuple[SubBand, ...] | None] = {
    "EU868": EU868_SUB_BANDS,
    "US915": None,
    "none": None,
}


class DutyCycle:
    """Airtime used per sub-band over the last hour; ``now`` is a monotonic time in seconds."""

    def __init__(self, region: str = "EU868", window_s: float = WINDOW_S) -> None:
        if region not in REGIONS:
            raise ValueError(f"unknown region {region!r}; known: {', '.join(REGIONS)}")
        if not window_s > 0:
            raise ValueError(f"window must be positive, got {window_s!r}")
        self.region = region
        self.window_s = window_s
        self._bands = REGIONS[region]
        # Per sub-band: (start time, airtime) of each transmission still inside the window.
        self._sent: dict[SubBand, deque[tuple[float, float]]] = {}
        self._used: dict[SubBand, float] = {}

    @property
    def limited(self) -> bool:
        return self._bands is not None

    def sub_band(self, freq_hz: int) -> SubBand | None:
        for band in self._bands or ():
            if band.contains(freq_hz):
                return band
        return None

    def can_transmit(self, freq_hz: int, airtime_s: float, now: float) -> bool:
        if not _valid_airtime(airtime_s):
            return False
        if self._bands is None:
            return True
        band = self.sub_band(freq_hz)
        if band is None:
            return False
        used = self._used_in_window(band, now)
        return used + airtime_s <= band.limit * self.window_s + _EPSILON_S

    def record(self, freq_hz: int, airtime_s: float, now: float) -> None:
        """Count a transmission that started at ``now``."""
        if not _valid_airtime(airtime_s):
            raise ValueError(f"airtime must be a finite number >= 0, got {airtime_s!r}")
        if self._bands is None:
            return
        band = self.sub_band(freq_hz)
        if band is None:
            raise ValueError(f"{freq_hz} Hz is outside every {self.region} sub-band")
        self._used_in_window(band, now)
        self._sent.setdefault(band, deque()).append((now, airtime_s))
        self._used[band] = self._used.get(band, 0.0) + airtime_s

    def used_fraction(self, freq_hz: int, now: float) -> float:
        """Airtime used in the last window as a fraction of the window (0.0 if unlimited)."""
        band = self.sub_band(freq_hz)
        if band is None:
            return 0.0
        return self._used_in_window(band, now) / self.window_s

    def used_by_band(self, freq_hz: int, now: float) -> dict[str, float]:
        """``used_fraction`` named by the sub-band, e.g. ``{"868.0-868.60MHz": 0.002}``
        (``"none"`` outside every sub-band)."""
        band = self.sub_band(freq_hz)
        name = "none" if band is None else f"{band.low_hz / 1e6:.1f}-{band.high_hz / 1e6:.2f}MHz"
        return {name: self.used_fraction(freq_hz, now)}

    def wait_s(self, freq_hz: int, airtime_s: float, now: float) -> float | None:
        """Seconds until ``can_transmit`` would be true, or None if it never will be."""
        if not _valid_airtime(airtime_s):
            return None
        if self._bands is None:
            return 0.0
        band = self.sub_band(freq_hz)
        if band is None or airtime_s > band.limit * self.window_s + _EPSILON_S:
            return None
        used = self._used_in_window(band, now)
        excess = used + airtime_s - band.limit * self.window_s - _EPSILON_S
        if excess <= 0:
            return 0.0
        for start, airtime in self._sent.get(band, ()):
            excess -= airtime
            if excess <= 0:
                return max(start + self.window_s - now, 0.0)
        return None  # not reached: the window's own entries cover the excess

    def _used_in_window(self, band: SubBand, now: float) -> float:
        sent = self._sent.get(band)
        if not sent:
            return 0.0
        horizon = now - self.window_s
        while sent and sent[0][0] <= horizon:
            _, airtime = sent.popleft()
            self._used[band] -= airtime
        if not sent:
            self._used[band] = 0.0  # clear accumulated float error
        return max(self._used[band], 0.0)


def _valid_airtime(airtime_s: float) -> bool:
    return isinstance(airtime_s, int | float) and math.isfinite(airtime_s) and airtime_s >= 0
