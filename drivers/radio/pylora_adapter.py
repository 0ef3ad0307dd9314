"""Run pyLoRa's SX127x register driver, unchanged, on any ``SpiBus``/``Gpio`` backend.

pyLoRa touches hardware at import time: ``SX127x/board_config.py`` does ``import RPi.GPIO`` and
``import spidev`` at module top, and ``SX127x/LoRa.py`` opens SPI in its class bodies
(``spi = BOARD.SpiDev()`` for ``LoRa`` on bus 0 CS 0 and ``LoRa2`` on bus 0 CS 1). Its pins are
class attributes of ``BOARD``.

So, under one lock, this module:

1. imports ``SX127x.LoRa`` once with stand-in ``spidev``, ``RPi`` and ``RPi.GPIO`` modules in
   ``sys.modules`` (exposing just the surface pyLoRa uses), then puts back whatever was there,
   so the real libraries stay importable for the hardware backend;
2. binds the stand-ins to the chosen backend, sets ``BOARD``'s pins from config, and marks the
   lines this board does not wire (DIO1..3, LED) as ``None``, which the GPIO stand-in ignores;
3. builds a ``LoRa`` whose ``spi`` is the chosen bus (an instance attribute, so several radios
   in one process each talk to their own chip) and whose ``on_rx_done``/``on_tx_done`` call the
   driver's handlers.

pyLoRa is AGPL-licensed and optional (extras ``pi`` and ``test``); nothing imports it until a
radio is built.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from drivers.radio import spi as lines
from drivers.radio.base import RadioError
from drivers.radio.spi import EdgeCallback, Gpio, SpiBus


class PyLoRaUnavailable(RadioError, ImportError):
    """pyLoRa (the ``SX127x`` package) is not installed."""


@dataclass(frozen=True, slots=True)
class BoardPins:
    """Where the chip is wired: BCM pin numbers and the SPI bus/chip select."""

    dio0: int
    reset: int
    spi_bus: int = 0
    spi_cs: int = 0


@dataclass(frozen=True, slots=True)
class PyLoRa:
    """The parts of pyLoRa the driver uses."""

    LoRa: type  # subclass of SX127x.LoRa.LoRa taking (spi, on_rx_done, on_tx_done)
    BOARD: type
    MODE: type
    REG: type
    BW: type
    CODING_RATE: type


_lock = threading.RLock()
_loaded: PyLoRa | None = None


class _Binding:
    """The backend the stand-in modules forward to while pyLoRa code runs under ``_lock``."""

    spi: SpiBus | None = None
    spi_address: tuple[int, int] | None = None
    gpio: Gpio | None = None


class _StandInSpiDev:
    """``spidev.SpiDev`` as pyLoRa uses it: ``open``, ``max_speed_hz``, ``xfer``, ``close``."""

    def __init__(self) -> None:
        self.max_speed_hz = 0
        self.mode = 0
        self._address: tuple[int, int] | None = None

    def open(self, bus: int, cs: int) -> None:
        self._address = (bus, cs)

    def xfer(self, data: list[int]) -> list[int]:
        if _Binding.spi is None or self._address != _Binding.spi_address:
            raise RadioError(f"no SPI device is bound at {self._address}")
        return _Binding.spi.xfer(data)

    def close(self) -> None:
        """The backend owns the bus; closing it is the driver's job."""


def _gpio() -> Gpio:
    if _Binding.gpio is None:
        raise RadioError("pyLoRa used GPIO with no backend bound")
    return _Binding.gpio


def _standin_gpio_module() -> ModuleType:
    """``RPi.GPIO`` as pyLoRa uses it; a pin that is ``None`` is not wired and is ignored."""
    module = ModuleType("RPi.GPIO", "Stand-in forwarding pyLoRa's GPIO calls to a backend.")
    for name in ("BCM", "OUT", "IN", "LOW", "HIGH", "PUD_OFF", "PUD_DOWN", "PUD_UP"):
        setattr(module, name, getattr(lines, name))
    for name in ("RISING", "FALLING", "BOTH"):
        setattr(module, name, getattr(lines, name))

    def setmode(mode: int) -> None:
        if mode != lines.BCM:
            raise RadioError("pyLoRa asked for a GPIO numbering other than BCM")

    def setwarnings(flag: bool) -> None:
        pass

    def setup(pin: int | None, direction: int, pull_up_down: int = lines.PUD_OFF, **_: Any) -> None:
        if pin is not None:
            _gpio().setup(pin, direction, pull_up_down)

    def output(pin: int | None, value: int) -> None:
        if pin is not None:
            _gpio().output(pin, value)

    def input(pin: int | None) -> int:
        return 0 if pin is None else _gpio().input(pin)

    def add_event_detect(
        pin: int | None, edge: int, callback: EdgeCallback | None = None, bouncetime: int = 0
    ) -> None:
        if pin is not None and callback is not None:
            _gpio().add_event_detect(pin, edge, callback)

    def remove_event_detect(pin: int | None) -> None:
        if pin is not None:
            _gpio().remove_event_detect(pin)

    def cleanup(*_: Any) -> None:
        """The driver releases its backend itself."""

    for function in (setmode, setwarnings, setup, output, input, add_event_detect):
        setattr(module, function.__name__, function)
    module.remove_event_detect = remove_event_detect  # type: ignore[attr-defined]
    module.cleanup = cleanup  # type: ignore[attr-defined]
    return module


def _standin_modules() -> dict[str, ModuleType]:
    spidev = ModuleType("spidev", "Stand-in forwarding pyLoRa's SPI transfers to a backend.")
    spidev.SpiDev = _StandInSpiDev  # type: ignore[attr-defined]
    gpio = _standin_gpio_module()
    rpi = ModuleType("RPi")
    rpi.GPIO = gpio  # type: ignore[attr-defined]
    rpi.__path__ = []  # a package, so `import RPi.GPIO` resolves the submodule
    return {"spidev": spidev, "RPi": rpi, "RPi.GPIO": gpio}


def _import_pylora() -> PyLoRa:
    global _loaded
    if _loaded is not None:
        return _loaded
    standins = _standin_modules()
    saved = {name: sys.modules.get(name) for name in standins}
    sys.modules.update(standins)
    try:
        from SX127x import LoRa as lora_module
        from SX127x import board_config
    except ImportError as exc:
        raise PyLoRaUnavailable(
            f"pyLoRa is not installed (pip install 'duogate[pi]'): {exc}"
        ) from None
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    # If SX127x had been imported before (with the real libraries), route it through ours too.
    board_config.GPIO = standins["RPi.GPIO"]
    board_config.spidev = standins["spidev"]

    class BoundLoRa(lora_module.LoRa):  # type: ignore[misc, valid-type]
        """pyLoRa's LoRa talking to one bus, with the driver's interrupt handlers."""

        def __init__(
            self,
            spi: SpiBus,
            on_rx_done: Callable[[], None],
            on_tx_done: Callable[[], None],
        ) -> None:
            self.spi = spi
            self._rx_handler = on_rx_done
            self._tx_handler = on_tx_done
            super().__init__(verbose=False)

        def on_rx_done(self) -> None:
            self._rx_handler()

        def on_tx_done(self) -> None:
            self._tx_handler()

        def __del__(self) -> None:
            # pyLoRa's __del__ puts the chip to sleep over a bus that may be closed by now;
            # the driver does that itself when it closes.
            pass

    constants = lora_module
    _loaded = PyLoRa(
        LoRa=BoundLoRa,
        BOARD=board_config.BOARD,
        MODE=constants.MODE,
        REG=constants.REG,
        BW=constants.BW,
        CODING_RATE=constants.CODING_RATE,
    )
    return _loaded


def load_pylora() -> PyLoRa:
    """Import pyLoRa behind the stand-ins (once per process)."""
    with _lock:
        return _import_pylora()


def create_lora(
    spi: SpiBus,
    gpio: Gpio,
    pins: BoardPins,
    *,
    low_band: bool,
    on_rx_done: Callable[[], None],
    on_tx_done: Callable[[], None],
) -> Any:
    """A pyLoRa ``LoRa`` on ``spi``/``gpio`` with DIO0 interrupts wired to the handlers.

    Building it registers the DIO0 edge callback through pyLoRa's ``BOARD.add_events`` and
    reads every register once (pyLoRa's constructor). Handlers run on the GPIO thread.
    """
    with _lock:
        pylora = _import_pylora()
        board = pylora.BOARD
        board.DIO0 = pins.dio0
        board.RST = pins.reset
        board.DIO1 = board.DIO2 = board.DIO3 = None
        board.LED = None
        board.SPI_BUS = pins.spi_bus
        board.SPI_CS = pins.spi_cs
        board.low_band = low_band
        _Binding.spi = spi
        _Binding.spi_address = (pins.spi_bus, pins.spi_cs)
        _Binding.gpio = gpio
        try:
            return pylora.LoRa(spi, on_rx_done, on_tx_done)
        finally:
            _Binding.spi = None
            _Binding.spi_address = None
            _Binding.gpio = None


def pulse_reset(gpio: Gpio, pins: BoardPins) -> None:
    """Reset the chip through its RST line as pyLoRa's ``BOARD.reset`` does (10 ms low)."""
    with _lock:
        pylora = _import_pylora()
        pylora.BOARD.RST = pins.reset
        _Binding.gpio = gpio
        try:
            pylora.BOARD.reset()
        finally:
            _Binding.gpio = None
