"""The real chip's bus and lines: ``spidev`` for /dev/spidevB.C and ``RPi.GPIO`` (or rpi-lgpio,
which installs under the same name) for the pins, both imported only when a backend is built.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from drivers.radio.base import RadioError
from drivers.radio.spi import PUD_OFF, BackendUnavailable, EdgeCallback


def _import_hardware(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"{name} is not installed (pip install 'duogate[pi]' or {package}): {exc}"
        ) from None


class SpidevBus:
    """/dev/spidevB.C through the ``spidev`` module."""

    def __init__(self, bus: int, cs: int, max_speed_hz: int = 5_000_000) -> None:
        spidev = _import_hardware("spidev", "spidev")
        self._dev: Any = spidev.SpiDev()
        try:
            self._dev.open(bus, cs)
        except OSError as exc:
            raise RadioError(f"cannot open /dev/spidev{bus}.{cs}: {exc.strerror}") from None
        self._dev.max_speed_hz = max_speed_hz
        self._dev.mode = 0

    def xfer(self, data: list[int]) -> list[int]:
        try:
            return list(self._dev.xfer(list(data)))
        except OSError as exc:
            raise RadioError(f"SPI transfer failed: {exc.strerror}") from None

    def close(self) -> None:
        self._dev.close()


class RpiGpio:
    """RPi.GPIO (or rpi-lgpio, a drop-in under the same module name) in BCM numbering."""

    def __init__(self) -> None:
        self._gpio: Any = _import_hardware("RPi.GPIO", "RPi.GPIO or rpi-lgpio")
        self._pins: set[int] = set()
        with self._errors("setup"):
            self._gpio.setwarnings(False)
            self._gpio.setmode(self._gpio.BCM)

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF) -> None:
        with self._errors(f"GPIO {pin}"):
            self._gpio.setup(pin, direction, pull_up_down=pull_up_down)
        self._pins.add(pin)

    def output(self, pin: int, value: int) -> None:
        with self._errors(f"GPIO {pin}"):
            self._gpio.output(pin, value)

    def input(self, pin: int) -> int:
        with self._errors(f"GPIO {pin}"):
            return int(self._gpio.input(pin))

    def add_event_detect(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        with self._errors(f"GPIO {pin} edge detection"):
            self._gpio.add_event_detect(pin, edge, callback=callback)

    def remove_event_detect(self, pin: int) -> None:
        with self._errors(f"GPIO {pin}"):
            self._gpio.remove_event_detect(pin)

    def cleanup(self) -> None:
        if self._pins:
            with self._errors("GPIO cleanup"):
                self._gpio.cleanup(sorted(self._pins))
            self._pins.clear()

    @staticmethod
    @contextlib.contextmanager
    def _errors(what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, ValueError) as exc:
            # RPi.GPIO cannot drive the Pi 5's GPIO chip nor add edge detection on recent
            # kernels; rpi-lgpio can.
            raise RadioError(
                f"{what}: {exc} (on a Raspberry Pi 5 or a recent kernel install rpi-lgpio: "
                "pip install 'duogate[pi5]')"
            ) from None
