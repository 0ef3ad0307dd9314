"""The simulated SX1276's DIO lines and the hand-over of its radio work to the event loop.

DIO0..DIO5 follow RegDioMapping1/2 (datasheet 4.1.6, Table 18; ``chip_registers.DIO_SOURCES``):
each line is high while a flag its mapping selects is set in RegIrqFlags; PllLock, ModeReady
and ClkOut stay low. Every change of level is an edge, delivered to ``on_dio0(level)`` (DIO0
only) and ``on_dio(line, level)`` (every line).

Threads: the chip may be called from any thread, but radio activity (the medium, timers) runs
on the event loop given to the chip; work a call from another thread causes is queued and
handed to the loop. Edges are delivered with no lock held, in order, from whichever thread is
delivering edges at the time (the loop thread for radio events); a callback must not block.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable

from drivers.sim.chip_registers import DIO_LINES, DIO_SOURCES, dio_mapping
from drivers.sim.chip_stats import ChipStats

log = logging.getLogger(__name__)


class DioLines:
    """The levels of DIO0..DIO5, their edges, and the chip's work waiting for the loop.

    ``lock`` is the chip's: ``update`` and ``queue`` are called with it held, ``settle`` without
    it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        lock: threading.RLock,
        stats: ChipStats,
        name: str,
    ) -> None:
        self.on_dio0: Callable[[bool], None] | None = None
        self.on_dio: Callable[[int, bool], None] | None = None
        self._loop = loop
        self._lock = lock
        self._stats = stats
        self._name = name
        self._levels = [False] * DIO_LINES
        self._edges: deque[tuple[int, bool]] = deque()
        self._delivering_edges = False
        self._loop_work: list[Callable[[], None]] = []

    def level(self, line: int) -> bool:
        return self._levels[line]

    def update(self, mapping_1: int, mapping_2: int, irq_flags: int, *, stuck_dio0: bool) -> None:
        """Set every DIO pin from the flags its mapping selects (datasheet 4.1.6, Table 18)."""
        for line in range(DIO_LINES):
            source = DIO_SOURCES[line].get(dio_mapping(mapping_1, mapping_2, line), 0)
            level = bool(irq_flags & source)
            if line == 0 and stuck_dio0:
                level = False
            if level == self._levels[line]:
                continue
            self._levels[line] = level
            self._edges.append((line, level))
            if level and line == 0:
                self._stats.dio0_rises += 1
            elif level and line == 1:
                self._stats.dio1_rises += 1

    def queue(self, work: Callable[[], None]) -> None:
        """Radio work to run on the loop at the next ``settle``."""
        self._loop_work.append(work)

    def settle(self) -> None:
        """Run or hand over queued radio work, then deliver DIO edges (no lock held)."""
        with self._lock:
            pending = bool(self._loop_work)
            if pending and self._loop.is_closed():
                self._loop_work.clear()  # the simulation is over; nothing is on the air
                pending = False
        if pending:
            if self._on_loop_thread() or not self._loop.is_running():
                self._run_loop_work()
            else:
                self._loop.call_soon_threadsafe(self._run_loop_work)
        self._deliver_edges()

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _run_loop_work(self) -> None:
        with self._lock:
            work, self._loop_work = self._loop_work, []
        for item in work:
            item()
        self._deliver_edges()

    def _deliver_edges(self) -> None:
        with self._lock:
            if self._delivering_edges:
                return  # the thread already delivering passes these on, in order
            self._delivering_edges = True
        try:
            while True:
                with self._lock:
                    if not self._edges:
                        self._delivering_edges = False
                        return
                    line, level = self._edges.popleft()
                    on_dio0, on_dio = self.on_dio0, self.on_dio
                try:
                    if line == 0 and on_dio0 is not None:
                        on_dio0(level)
                    if on_dio is not None:
                        on_dio(line, level)
                except Exception:
                    self._stats.callback_errors += 1
                    log.exception("%s: DIO%d callback failed", self._name, line)
        except BaseException:
            with self._lock:
                self._delivering_edges = False
            raise
