"""When did a message reach the gateway? The earliest instant it could have, after a stall.

A command's ``ttl_s`` counts from its arrival at the gateway. Arrival is normally the moment
the event loop reads the message from the socket, a few milliseconds after the kernel got it.
But when the whole gateway stood still (SIGSTOP, a swap storm, a frozen SD card), messages
wait in the socket buffer meanwhile and are read only afterwards: stamping them at that read
would give them the stall's length as extra life. A command must never live longer than its
sender allowed, so a message read just after a stall is stamped at the stall's start.

A timer ticks every ``period_s``; a tick that comes more than ``stall_s`` after the previous
one marks a stall. Stalls shorter than ``stall_s`` are not accounted for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_PERIOD_S = 0.5
DEFAULT_STALL_S = 2.0


class ArrivalClock:
    """``arrival()`` gives the monotonic time to stamp a message read now with."""

    def __init__(
        self,
        *,
        period_s: float = DEFAULT_PERIOD_S,
        stall_s: float = DEFAULT_STALL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._period = period_s
        self._stall_s = stall_s
        self._mono = monotonic
        self._last_tick = monotonic()
        self._stall: tuple[float, float] | None = None  # (start, end) of the last stall
        self._drained = self._last_tick  # the socket was last read empty at this instant
        self._timer: asyncio.TimerHandle | None = None
        self.stalls = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._last_tick = self._mono()
        self._timer = loop.call_later(self._period, self._scheduled_tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def tick(self) -> None:
        now = self._mono()
        if now - self._last_tick > self._stall_s:
            self._stall = (self._last_tick, now)
            self.stalls += 1
        self._last_tick = now

    def arrival(self) -> float:
        """When a message read now reached us at the earliest (never before the last drain)."""
        now = self._mono()
        if now - self._last_tick > self._stall_s:  # stalled, and the tick has not run yet
            return max(self._last_tick, self._drained)
        stall = self._stall
        if stall is not None and stall[1] > self._drained and now - stall[1] <= self._stall_s:
            return max(stall[0], self._drained)  # nothing was read since that stall ended
        return now

    def drained(self) -> None:
        """The caller has read everything that was waiting."""
        self._drained = self._mono()

    def _scheduled_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tick()
        self._timer = loop.call_later(self._period, self._scheduled_tick, loop)
