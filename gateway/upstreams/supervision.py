"""How every upstream keeps its connection: one session after another, backed off in between.

An upstream supplies ``session()``: connect, serve until the connection ends, and say whether
it was ever up (True) or the attempt failed (False, or an exception). ``keep_connected`` runs
sessions until cancelled, waiting a capped, jittered, growing delay between them
(``gateway.protocol.backoff``); a session that was up starts the delays over.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from gateway.protocol.backoff import backoff_delay

RECONNECT_JITTER = 0.5  # a reconnect waits between half and all of the current ceiling


class Backoff:
    """The delays of successive reconnect attempts; ``reset()`` after a good session."""

    def __init__(
        self,
        first_s: float,
        max_s: float,
        *,
        jitter: float = RECONNECT_JITTER,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.jitter = jitter
        self._draw = draw
        self.attempt = 0

    def next_delay(self) -> float:
        delay = backoff_delay(
            self.attempt,
            first_s=self.first_s,
            max_s=self.max_s,
            jitter=self.jitter,
            draw=self._draw(),
        )
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


async def keep_connected(
    session: Callable[[], Awaitable[bool]],
    backoff: Backoff,
    *,
    on_error: Callable[[Exception], None],
    before_retry: Callable[[float], None] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Run ``session()`` again and again until cancelled (or ``stopping()``).

    ``on_error(exc)`` is called (inside the ``except``, so ``log.exception`` works) when a
    session raised; ``before_retry(delay)`` before each wait.
    """
    while not stopping():
        try:
            if await session():
                backoff.reset()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            on_error(exc)
        if stopping():
            return
        delay = backoff.next_delay()
        if before_retry is not None:
            before_retry(delay)
        await asyncio.sleep(delay)
