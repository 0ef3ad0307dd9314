"""Stand-in for CircuitPython's ``busio``: ``SPI`` on ``board.SCK``/``MOSI``/``MISO`` clocks bytes
into the simulated chip (``_sim_wiring``) while its NSS pin is low, as the bus of a Feather
clocks them into its RFM95. Locking and argument rules as CircuitPython's."""

import sys

import _sim_wiring


class SPI:
    def __init__(self, clock, MOSI=None, MISO=None, half_duplex: bool = False) -> None:
        if getattr(clock, "role", None) != "sck":
            raise ValueError(f"{clock!r} is not the SPI clock of this board (board.SCK)")
        if (MOSI is not None and MOSI.role != "mosi") or (MISO is not None and MISO.role != "miso"):
            raise ValueError("MOSI and MISO must be board.MOSI and board.MISO")
        if half_duplex:
            raise NotImplementedError("half duplex is not supported")
        self._radio = _sim_wiring.radio()
        self._mosi = MOSI
        self._miso = MISO
        self._locked = False
        self._deinited = False
        self._baudrate = 250_000

    # --- lifetime and locking ---

    def deinit(self) -> None:
        self._deinited = True

    def __enter__(self) -> "SPI":
        return self

    def __exit__(self, *exc_info) -> None:
        self.deinit()

    def try_lock(self) -> bool:
        self._check_alive()
        if self._locked:
            return False
        self._locked = True
        return True

    def unlock(self) -> None:
        self._locked = False

    def configure(
        self, *, baudrate: int = 100_000, polarity: int = 0, phase: int = 0, bits: int = 8
    ) -> None:
        self._check_lock()
        if polarity not in (0, 1) or phase not in (0, 1):
            raise ValueError("polarity and phase must be 0 or 1")
        if bits != 8:
            raise ValueError("only 8-bit words are supported")
        if polarity or phase:
            # The SX127x samples on the rising edge with SCK idle low (datasheet 4.3).
            raise ValueError("the SX127x speaks SPI mode 0 (polarity 0, phase 0)")
        self._baudrate = baudrate

    @property
    def frequency(self) -> int:
        return self._baudrate

    # --- transfers ---

    def write(self, buffer, *, start: int = 0, end: int = sys.maxsize) -> None:
        self._check_lock()
        if self._mosi is None:
            raise ValueError("no MOSI pin")
        data = bytes(memoryview(buffer)[start:end])
        if data:
            self._radio.clock(data, reply_wanted=False)

    def readinto(
        self, buffer, *, start: int = 0, end: int = sys.maxsize, write_value: int = 0
    ) -> None:
        self._check_lock()
        if self._miso is None:
            raise ValueError("no MISO pin")
        view = memoryview(buffer)[start:end]
        if len(view):
            view[:] = self._radio.clock(bytes([write_value & 0xFF]) * len(view), reply_wanted=True)

    def write_readinto(
        self,
        out_buffer,
        in_buffer,
        *,
        out_start: int = 0,
        out_end: int = sys.maxsize,
        in_start: int = 0,
        in_end: int = sys.maxsize,
    ) -> None:
        self._check_lock()
        out = bytes(memoryview(out_buffer)[out_start:out_end])
        view = memoryview(in_buffer)[in_start:in_end]
        if len(out) != len(view):
            raise ValueError("buffer slices must be of equal length")
        if out:
            view[:] = self._radio.clock(out, reply_wanted=True)

    def _check_alive(self) -> None:
        if self._deinited:
            raise ValueError("Object has been deinitialized and can no longer be used.")

    def _check_lock(self) -> None:
        self._check_alive()
        if not self._locked:
            raise RuntimeError("Function requires lock")
