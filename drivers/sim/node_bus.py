"""A simulated SX127x wired like a board's: MicroPython-style ``machine.SPI`` and ``machine.Pin``
objects on a chip object in this process, for the node library (node/sx127x.py).

``wire(chip)`` gives ``(spi, cs, reset, dio0)``. One ``write_readinto`` while CS is low is one
SPI transaction of the chip (``SimulatedSX127x.xfer``); a transfer with CS high is refused as a
board's chip would ignore it. Pulling RST low and releasing it resets the chip. DIO0 reads the
chip's line and takes an edge handler (``irq(handler, trigger)``), called on the chip's rising
edges with the pin, as MicroPython calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drivers.sim.chip import SimulatedSX127x

IRQ_FALLING = 1
IRQ_RISING = 2


class BusError(OSError):
    """The bus was used in a way a board's wiring would not allow."""


class ChipSelectPin:
    def __init__(self) -> None:
        self.level = 1

    def value(self, level: int | None = None) -> int | None:
        if level is None:
            return self.level
        self.level = 1 if level else 0
        return None

    __call__ = value


class ChipSpi:
    """``machine.SPI``'s ``write_readinto`` (and ``write``, ``read``) on the chip."""

    def __init__(self, chip: SimulatedSX127x, cs: ChipSelectPin) -> None:
        self.chip = chip
        self.cs = cs
        self.transfers = 0

    def write_readinto(self, out: bytes | bytearray, into: bytearray) -> None:
        if len(out) != len(into):
            raise ValueError("write_readinto needs buffers of the same length")
        if self.cs.level:
            raise BusError("SPI transfer with chip select high: the chip does not listen")
        self.transfers += 1
        into[:] = bytes(self.chip.xfer(list(out)))

    def write(self, out: bytes | bytearray) -> None:
        self.write_readinto(out, bytearray(len(out)))


class ResetPin:
    """RST: a low pulse resets the chip when the line is released."""

    def __init__(self, chip: SimulatedSX127x) -> None:
        self.chip = chip
        self.level = 1

    def value(self, level: int | None = None) -> int | None:
        if level is None:
            return self.level
        before, self.level = self.level, 1 if level else 0
        if before == 0 and self.level == 1:
            self.chip.reset()
        return None

    __call__ = value


class Dio0Pin:
    IRQ_FALLING = IRQ_FALLING
    IRQ_RISING = IRQ_RISING

    def __init__(self, chip: SimulatedSX127x) -> None:
        self.chip = chip

    def value(self) -> int:
        return int(self.chip.dio0)

    __call__ = value

    def irq(self, handler: Callable[[Any], None] | None = None, trigger: int = IRQ_RISING) -> None:
        if handler is None:
            self.chip.on_dio0 = None
            return

        def edge(level: bool) -> None:
            if (trigger & IRQ_RISING and level) or (trigger & IRQ_FALLING and not level):
                handler(self)

        self.chip.on_dio0 = edge


def wire(chip: SimulatedSX127x) -> tuple[ChipSpi, ChipSelectPin, ResetPin, Dio0Pin]:
    """SPI, CS, RST and DIO0 of ``chip``, as a board's pins."""
    cs = ChipSelectPin()
    return ChipSpi(chip, cs), cs, ResetPin(chip), Dio0Pin(chip)
