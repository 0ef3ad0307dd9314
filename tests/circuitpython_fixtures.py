"""CircuitPython's modules in this process: the stand-ins of ``tests/circuitpython_stand_ins``
(``board``, ``busio``, ``digitalio``, ``microcontroller``) wired to a ``sim://`` chip, and
Adafruit's real ``adafruit_rfm9x`` and ``adafruit_bus_device`` on top of them.

The stand-ins take the names of CircuitPython's built-in modules, which Adafruit Blinka also
installs: ``circuitpython_board`` imports them first on the path and forgets them afterwards,
so no other test sees them.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

STAND_INS = Path(__file__).resolve().parent / "circuitpython_stand_ins"
_NAMES = ("_sim_wiring", "board", "busio", "digitalio", "microcontroller")
_DRIVERS = ("adafruit_rfm9x", "adafruit_bus_device", "adafruit_bus_device.spi_device")


@contextlib.contextmanager
def circuitpython_board(chip_url: str) -> Iterator[types.SimpleNamespace]:
    """The stand-ins and Adafruit's driver modules, the board's radio wired to ``chip_url``."""
    saved = {name: sys.modules.pop(name) for name in (*_NAMES, *_DRIVERS) if name in sys.modules}
    sys.path.insert(0, str(STAND_INS))
    try:
        import _sim_wiring
        import adafruit_rfm9x
        import board
        import busio
        import digitalio

        wiring = _sim_wiring.connect(chip_url)
        try:
            yield types.SimpleNamespace(
                board=board,
                busio=busio,
                digitalio=digitalio,
                adafruit_rfm9x=adafruit_rfm9x,
                wiring=wiring,
            )
        finally:
            _sim_wiring.disconnect()
    finally:
        sys.path.remove(str(STAND_INS))
        for name in (*_NAMES, *_DRIVERS):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
