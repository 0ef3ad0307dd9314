"""The SPI bus and GPIO lines an SX127x driver needs, and the backends that provide them.

The surface is exactly what pyLoRa (``SX127x/board_config.py`` and ``SX127x/LoRa.py``) uses:
``SpiBus.xfer(list[int]) -> list[int]`` and ``close()``; GPIO ``setup``/``output``/``input``/
``add_event_detect(pin, RISING, callback)``/``remove_event_detect``/``cleanup``. Edge callbacks
run on a GPIO thread and receive the pin number, as with RPi.GPIO.

Backends, chosen by ``radio.spi``:

``spidev://B.C``
    The real chip: ``spidev`` for /dev/spidevB.C and ``RPi.GPIO`` (or rpi-lgpio, which installs
    under the same name) for the pins. Both are imported only when this backend is built.

``sim://HOST:PORT``
    A simulated chip served by ``duogate sim`` (``drivers.sim.chip_server``), reached over TCP.

In process (``open_local_chip``)
    A simulated chip object in this process; its DIO0 edges are delivered from a GPIO thread.

Modules: ``spi_backends`` (choosing one from ``radio.spi``), ``spi_hardware``, ``spi_simlink``
(``sim://``), ``spi_simulated`` (GPIO lines following a simulated chip; a chip in this process).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.radio.base import RadioError

# Values as RPi.GPIO defines them, so stand-ins and the real module agree.
BCM = 11
OUT = 0
IN = 1
LOW = 0
HIGH = 1
PUD_OFF = 20
PUD_DOWN = 21
PUD_UP = 22
RISING = 31
FALLING = 32
BOTH = 33

EdgeCallback = Callable[[int], None]


class SpiBus(Protocol):
    """One SPI device: chip select is held for the whole of each ``xfer``."""

    def xfer(self, data: list[int]) -> list[int]:
        """Clock ``data`` out and return the bytes clocked in (same length)."""

    def close(self) -> None: ...


class Gpio(Protocol):
    """The GPIO calls pyLoRa makes, with RPi.GPIO's BCM numbering and constants."""

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF) -> None: ...

    def output(self, pin: int, value: int) -> None: ...

    def input(self, pin: int) -> int: ...

    def add_event_detect(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        """Call ``callback(pin)`` on a GPIO thread for each ``edge`` (RISING/FALLING/BOTH)."""

    def remove_event_detect(self, pin: int) -> None: ...

    def cleanup(self) -> None:
        """Release the pins this backend set up; no more callbacks after it returns."""


class BackendUnavailable(RadioError, ImportError):
    """The hardware backend's library (spidev, RPi.GPIO) is not installed."""


@dataclass(frozen=True, slots=True)
class Pins:
    """BCM numbers of the lines the driver uses (DIO1 optional: RxTimeout, CadDetected)."""

    dio0: int
    reset: int
    dio1: int | None = None

    def dio_lines(self) -> dict[int, int]:
        """Pin number -> DIO line number, for the DIO pins that are wired."""
        wired = {self.dio0: 0}
        if self.dio1 is not None:
            wired[self.dio1] = 1
        return wired


@dataclass(slots=True)
class Backend:
    """An SPI bus and GPIO lines for one chip; ``close()`` releases both."""

    spi: SpiBus
    gpio: Gpio
    description: str

    def close(self) -> None:
        try:
            self.gpio.cleanup()
        finally:
            self.spi.close()
