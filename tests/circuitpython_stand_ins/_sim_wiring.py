"""The wiring behind the ``board``, ``busio`` and ``digitalio`` stand-ins: one simulated SX127x
served by ``duogate sim`` (``[[sim.external_nodes]]``), reached over ``sim://`` with the
gateway's own client (``drivers.radio.spi_simlink``).

``DUOGATE_SIM_CHIP=sim://HOST:PORT`` names the chip. Its SPI bus is ``board.SCK``/``MOSI``/
``MISO``; its NSS, RESET and DIO0 lines are the board's radio pins (``board.RFM9X_CS``,
``RFM9X_RST``, ``RFM9X_D0``, and the RP2040 Feather's names ``RFM_CS``, ``RFM_RST``, ``RFM_IO0``).

SPI over ``sim://`` carries one whole transaction per message (chip select held throughout),
while ``busio`` hands a driver's transaction over in pieces (the address with ``write``, the
data with ``readinto``). The pieces clocked while NSS is low are therefore gathered: bytes
written are held until the first read (which needs the chip's answer) or until NSS rises.
A transaction that writes again after reading cannot be carried and raises; Adafruit's
drivers never do that.
"""

import os
import sys
import threading

from drivers.radio.spi_simlink import RESET, XFER, SimChipLink

CHIP_ENV = "DUOGATE_SIM_CHIP"


class Pin:
    """A pin of the board (CircuitPython's ``microcontroller.Pin``)."""

    def __init__(self, name: str, role: str = "gpio") -> None:
        self.name = name
        self.role = role  # "gpio", "sck", "mosi", "miso", "cs", "reset", "dio0"

    def __repr__(self) -> str:
        return "board." + self.name


class SimulatedRadio:
    """The simulated chip's SPI transactions and lines."""

    def __init__(self, url: str) -> None:
        host, sep, port = url.removeprefix("sim://").rpartition(":")
        if not url.startswith("sim://") or not sep or not port.isdigit():
            raise RuntimeError(f"{CHIP_ENV} must be sim://HOST:PORT, got {url!r}")
        self.url = url
        self.link = SimChipLink(host, int(port))
        self.selected = False
        self._pending = bytearray()
        self._answered = False
        self._lock = threading.Lock()
        self.transactions = 0
        self.resets = 0

    # --- NSS ---

    def select(self) -> None:
        with self._lock:
            self.selected = True
            self._pending = bytearray()
            self._answered = False

    def deselect(self) -> None:
        with self._lock:
            if self.selected and self._pending and not self._answered:
                self._exchange(bytes(self._pending))
            self.selected = False
            self._pending = bytearray()

    # --- SCK, MOSI, MISO ---

    def clock(self, out: bytes, reply_wanted: bool):
        """Clock ``out`` on MOSI; the bytes read on MISO when ``reply_wanted``."""
        with self._lock:
            if not self.selected:
                return bytes(b"\xff" * len(out)) if reply_wanted else None  # MISO floats
            if self._answered:
                raise RuntimeError(
                    "simulated SX127x: a transaction that goes on after a read cannot be "
                    "carried over sim:// (raise NSS between them)"
                )
            if not reply_wanted:
                self._pending += out
                return None
            reply = self._exchange(bytes(self._pending) + out)
            self._answered = True
            return reply[len(self._pending) :]

    def _exchange(self, data: bytes) -> bytes:
        self.transactions += 1
        reply = self.link.request(XFER, data)
        if len(reply) != len(data):
            raise RuntimeError(f"simulated SX127x answered {len(reply)} bytes to {len(data)}")
        return reply

    # --- RESET, DIO0 ---

    def reset_released(self) -> None:
        """NRESET went high after being held low: the chip resets (SPI silent for 5 ms)."""
        self.resets += 1
        self.link.request(RESET)

    def dio(self, line: int) -> bool:
        return bool(self.link.dio_levels()[line])


_radio = None


def connect(url: str) -> SimulatedRadio:
    """Wire the board to the chip at ``url`` instead of ``DUOGATE_SIM_CHIP`` (tests)."""
    global _radio
    disconnect()
    _radio = SimulatedRadio(url)
    return _radio


def disconnect() -> None:
    global _radio
    if _radio is not None:
        _radio.link.close()
        _radio = None


def radio() -> SimulatedRadio:
    """The one simulated chip of this process, connected on first use."""
    global _radio
    if _radio is None:
        url = os.environ.get(CHIP_ENV)
        if not url:
            raise RuntimeError(
                f"set {CHIP_ENV}=sim://HOST:PORT (a chip of duogate sim's [[sim.external_nodes]])"
            )
        _radio = SimulatedRadio(url)
    return _radio


def pin_changed(pin: Pin, level: bool) -> None:
    """A plain output pin changed: said on stderr, as an LED or a relay would show it."""
    print(f"pin {pin.name} {'high' if level else 'low'}", file=sys.stderr, flush=True)
