"""GPIO lines that follow a simulated chip, and a backend on a chip object in this process.

Edge callbacks run on one GPIO thread, as with RPi.GPIO, never on the chip's own call stack.
``sim://`` (``spi_simlink``) uses the same lines with the chip on the far side of a socket.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from drivers.radio.base import RadioError
from drivers.radio.spi import (
    BOTH,
    FALLING,
    HIGH,
    LOW,
    OUT,
    PUD_OFF,
    RISING,
    Backend,
    EdgeCallback,
    Pins,
)

log = logging.getLogger(__name__)


class EdgeDispatcher:
    """Runs edge callbacks on one GPIO thread, as RPi.GPIO does, fed from any thread."""

    def __init__(self, name: str = "gpio-events") -> None:
        self._events: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._callbacks: dict[int, tuple[int, EdgeCallback]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def register(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        if edge not in (RISING, FALLING, BOTH):
            raise RadioError(f"GPIO {pin}: unknown edge {edge}")
        with self._lock:
            if pin in self._callbacks:
                raise RadioError(f"GPIO {pin}: edge detection is already on")
            self._callbacks[pin] = (edge, callback)

    def unregister(self, pin: int) -> None:
        with self._lock:
            self._callbacks.pop(pin, None)

    def post(self, pin: int, level: int) -> None:
        """The line ``pin`` changed to ``level``; safe to call from any thread.

        An edge no callback is waiting for (DIO0 falling when the driver clears RxDone) does
        not wake the GPIO thread.
        """
        with self._lock:
            entry = self._callbacks.get(pin)
        if entry is not None and _wanted(entry[0], level):
            self._events.put((pin, level))

    def close(self) -> None:
        with self._lock:
            self._callbacks.clear()
        self._events.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while (event := self._events.get()) is not None:
            pin, level = event
            with self._lock:
                entry = self._callbacks.get(pin)
            if entry is None:
                continue
            edge, callback = entry
            if _wanted(edge, level):
                try:
                    callback(pin)
                except Exception as exc:
                    log.error("GPIO %d edge callback failed: %s: %s", pin, type(exc).__name__, exc)


def _wanted(edge: int, level: int) -> bool:
    return edge == BOTH or (edge == RISING) == bool(level)


class SimulatedLines:
    """GPIO lines where the wired DIO pins follow a simulated chip and RST pulses reset it.

    ``read_dio(line)`` reads DIO ``line`` of the chip; ``post_dio(line, level)`` (called from
    any thread) turns a DIO edge of the chip into an edge on the pin wired to it.
    """

    def __init__(self, pins: Pins, read_dio: Callable[[int], int], reset: Callable[[], None]):
        self._pins = pins
        self._dio_lines = pins.dio_lines()
        self._pin_of_line = {line: pin for pin, line in self._dio_lines.items()}
        self._read_dio = read_dio
        self._reset = reset
        self._levels: dict[int, int] = {}
        self.dispatcher = EdgeDispatcher()

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF) -> None:
        if direction == OUT:
            self._levels.setdefault(pin, LOW)

    def output(self, pin: int, value: int) -> None:
        before = self._levels.get(pin, HIGH)
        self._levels[pin] = HIGH if value else LOW
        if pin == self._pins.reset and before == LOW and value:
            self._reset()

    def input(self, pin: int) -> int:
        line = self._dio_lines.get(pin)
        if line is not None:
            return self._read_dio(line)
        return self._levels.get(pin, LOW)

    def post_dio(self, line: int, level: int) -> None:
        pin = self._pin_of_line.get(line)
        if pin is not None:
            self.dispatcher.post(pin, int(level))

    def add_event_detect(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        self.dispatcher.register(pin, edge, callback)

    def remove_event_detect(self, pin: int) -> None:
        self.dispatcher.unregister(pin)

    def cleanup(self) -> None:
        self.dispatcher.close()


class LocalChip(Protocol):
    """What the in-process backend needs from a simulated chip (``drivers.sim.chip``)."""

    on_dio: Callable[[int, bool], None] | None

    def dio(self, line: int) -> bool: ...

    def xfer(self, data: list[int]) -> list[int]: ...

    def reset(self) -> None: ...


class LocalChipBus:
    """SPI transfers straight into a chip object in this process."""

    def __init__(self, chip: LocalChip) -> None:
        self._chip = chip
        self._closed = False

    def xfer(self, data: list[int]) -> list[int]:
        if self._closed:
            raise RadioError("SPI bus is closed")
        return list(self._chip.xfer(list(data)))

    def close(self) -> None:
        self._closed = True
        self._chip.on_dio = None


def open_local_chip(chip: LocalChip, pins: Pins) -> Backend:
    """A backend on a chip object in this process (the chip must be safe to call from threads).

    The chip's DIO edges (DIO0, and DIO1 when ``pins.dio1`` is wired) reach the driver from a
    GPIO thread, never from the chip's own call stack, as they would from RPi.GPIO.
    """
    lines = SimulatedLines(pins, lambda line: int(chip.dio(line)), chip.reset)
    chip.on_dio = lines.post_dio
    return Backend(LocalChipBus(chip), lines, "in-process simulated chip")
