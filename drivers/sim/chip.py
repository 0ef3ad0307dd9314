"""A register-level SX1276 in LoRa mode, for running the real driver against a simulated chip.

The SPI surface is spidev's: ``xfer(list[int]) -> list[int]``. The first byte is the address
(bit 7 set for a write); every further byte accesses the next register (auto-increment), except
at address 0x00 (RegFifo), where every byte goes through RegFifoAddrPtr. On a write the chip
clocks out the previous contents. The GPIO surface is the level of each DIO line (``dio(line)``,
``dio0``) with edge callbacks (``on_dio(line, level)`` for every line, ``on_dio0(level)`` for
DIO0), and ``reset()`` for a pulse on the RST line (SPI reads 0x00 for 5 ms after it).

The chip is this module (SPI, registers, operating modes) with its transmit path (TX, output
power: ``chip_tx``), its receive path (RX, CAD, what the medium delivers: ``chip_rx``), its
DIO lines and the hand-over of its work to the event loop (``chip_dio``), its register map and
reset values (``chip_registers``) and its counters (``chip_stats``).

What is modelled here (datasheet section numbers refer to the SX1276/77/78/79 datasheet):

* RegOpMode: LongRangeMode changes only on a write that selects Sleep; AccessSharedReg maps the
  FSK page (plain storage) at 0x0D..0x3F. Sleep clears the FIFO, makes it inaccessible and
  clears the header/packet counters.
* RegIrqFlags: write 1 to clear; RegIrqFlagsMask stops a flag from being set.
* Reset values of every register it stores, LoRa and FSK pages: ``chip_registers``. RegLna,
  RegPaRamp, RegHopPeriod and RegTcxo are stored; their effect is not modelled (logged once per
  chip).

Threads: ``xfer`` and ``reset`` may be called from any thread; register effects are immediate.
Radio activity (the medium, timers) runs on the event loop given at construction; how work and
DIO edges cross threads is ``chip_dio``'s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Literal

from drivers.sim.chip_dio import DioLines
from drivers.sim.chip_registers import (
    ACCESS_SHARED_REG,
    BANDWIDTH_CODES,
    CAD,
    COMMON_DEFAULTS,
    COMMON_READ_ONLY,
    DIO_LINES,
    FIFO_SIZE,
    FSK_DEFAULTS,
    FXOSC_HZ,
    LONG_RANGE_MODE,
    LORA_DEFAULTS,
    LORA_READ_ONLY,
    MANUAL_RESET_S,
    MODE_MASK,
    NOT_MODELLED,
    PAGED,
    REG_DIO_MAPPING_1,
    REG_DIO_MAPPING_2,
    REG_FIFO,
    REG_FIFO_ADDR_PTR,
    REG_FRF_LSB,
    REG_FRF_MID,
    REG_FRF_MSB,
    REG_HOP_PERIOD,
    REG_IRQ_FLAGS,
    REG_IRQ_FLAGS_MASK,
    REG_MODEM_CONFIG_1,
    REG_MODEM_CONFIG_2,
    REG_MODEM_CONFIG_3,
    REG_OP_MODE,
    REG_PAYLOAD_LENGTH,
    REG_PREAMBLE_LSB,
    REG_PREAMBLE_MSB,
    REG_RSSI_VALUE,
    REG_RX_HEADER_CNT_MSB,
    REG_RX_PACKET_CNT_MSB,
    REG_SYNC_WORD,
    RXCONT,
    RXSINGLE,
    SLEEP,
    TX,
)
from drivers.sim.chip_rx import LoraReceiver
from drivers.sim.chip_stats import ChipStats
from drivers.sim.chip_tx import LoraTransmitter, TxRecord
from drivers.sim.medium import AirParams, Position, RfMedium

__all__ = ["FAIL_MODES", "ChipStats", "FailMode", "SimulatedSX127x", "TxRecord"]

log = logging.getLogger(__name__)


# RegInvertIQ (0x33): bit 6 receives inverted I/Q, bit 0 transmits normal I/Q when set (clear:
# inverted, as Semtech's reference driver writes it). RegInvertIQ2 (0x3B, 0x19 with inverted
# I/Q, 0x1D normal) is kept but not consulted: LMIC receives downlinks on silicon with bit 6 alone.
REG_INVERT_IQ = 0x33
INVERT_IQ_RX = 0x40
INVERT_IQ_TX_NORMAL = 0x01

FailMode = Literal["zeros", "ones", "stuck_dio0"]
FAIL_MODES: tuple[FailMode, ...] = ("zeros", "ones", "stuck_dio0")


class SimulatedSX127x(LoraTransmitter, LoraReceiver):
    """One SX1276 on an SPI bus, optionally attached to an ``RfMedium``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        medium: RfMedium | None = None,
        *,
        position: Position = (0.0, 0.0),
        name: str = "sx127x",
    ) -> None:
        self.name = name
        self.stats = ChipStats()
        self._loop = loop
        self._lock = threading.RLock()
        self._dio_lines = DioLines(loop, self._lock, self.stats, name)
        self._medium: RfMedium | None = None
        self._common = bytearray(0x80)
        self._lora = bytearray(0x40)
        self._fsk = bytearray(0x40)
        self._fifo = bytearray(FIFO_SIZE)
        self._ready_at = 0.0  # loop time from which SPI answers again after a reset
        self._noted: set[int] = set()  # registers whose "not modelled" note was logged
        self._fail_mode: FailMode | None = None
        # Every mode change bumps the generation; timers and queued work of an older one lapse.
        self._generation = 0
        self._init_transmitter()
        self._init_receiver()
        self._restore_defaults()
        if medium is not None:
            self.attach(medium, position=position)

    # --- wiring ------------------------------------------------------------------------------

    def attach(self, medium: RfMedium, *, position: Position = (0.0, 0.0)) -> None:
        """Put the chip's antenna on ``medium`` at ``position`` (metres)."""
        self.detach()
        medium.attach(self, position=position, name=self.name)
        self._medium = medium

    def detach(self) -> None:
        if self._medium is not None:
            self._medium.detach(self)
            self._medium = None

    # --- SPI and GPIO ------------------------------------------------------------------------

    def xfer(self, data: list[int]) -> list[int]:
        """One SPI transaction with chip select held throughout, as ``spidev.SpiDev.xfer``."""
        message = list(data)
        for byte in message:
            if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 0xFF:
                raise ValueError(f"SPI bytes must be integers 0..255, got {byte!r}")
        with self._lock:
            self.stats.spi_transfers += 1
            if self._loop.time() < self._ready_at:
                # Still starting up after a reset (datasheet 7.2): MISO low, writes lost.
                self.stats.spi_during_reset += 1
                return [0x00] * len(message)
            reply = self._transfer(message)
        self._settle()
        return reply

    @property
    def on_dio0(self) -> Callable[[bool], None] | None:
        """Called with DIO0's level on each of its edges (``chip_dio``)."""
        return self._dio_lines.on_dio0

    @on_dio0.setter
    def on_dio0(self, callback: Callable[[bool], None] | None) -> None:
        self._dio_lines.on_dio0 = callback

    @property
    def on_dio(self) -> Callable[[int, bool], None] | None:
        """Called with the line and its level on each edge of every DIO line (``chip_dio``)."""
        return self._dio_lines.on_dio

    @on_dio.setter
    def on_dio(self, callback: Callable[[int, bool], None] | None) -> None:
        self._dio_lines.on_dio = callback

    @property
    def dio0(self) -> bool:
        return self._dio_lines.level(0)

    def dio(self, line: int) -> bool:
        """The level of DIO ``line`` (0..5)."""
        if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line < DIO_LINES:
            raise ValueError(f"DIO line must be 0..{DIO_LINES - 1}, got {line!r}")
        return self._dio_lines.level(line)

    def reset(self) -> None:
        """NRESET released after a pulse: every register back to its reset value, faults
        cleared; SPI reads 0x00 and writes are lost for the next 5 ms (datasheet 7.2)."""
        with self._lock:
            self._ready_at = self._loop.time() + MANUAL_RESET_S
            self._generation += 1
            self._queue(self._stop_transmitting)
            self._end_rx()
            self._fail_mode = None
            self._restore_defaults()
            self._fifo[:] = bytes(FIFO_SIZE)
            self._update_dio()
        self._settle()

    @property
    def fail_mode(self) -> FailMode | None:
        return self._fail_mode

    @fail_mode.setter
    def fail_mode(self, mode: FailMode | None) -> None:
        """``zeros``/``ones``: every SPI byte reads 0x00/0xFF and writes are lost;
        ``stuck_dio0``: DIO0 stays low. ``None`` or ``reset()`` ends the fault."""
        if mode is not None and mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be None or one of {FAIL_MODES}, got {mode!r}")
        with self._lock:
            self._fail_mode = mode
            self._update_dio()
        self._settle()

    # --- test hooks --------------------------------------------------------------------------

    @property
    def op_mode(self) -> int:
        """RegOpMode as the driver would read it."""
        return self._common[REG_OP_MODE]

    def peek(self, address: int) -> int:
        """A register as an SPI read would return it now, without side effects or faults."""
        if isinstance(address, bool) or not isinstance(address, int) or not 0 < address < 0x80:
            raise ValueError(f"register address must be 0x01..0x7F, got {address!r}")
        with self._lock:
            return self._page(address)[address]

    def fifo_snapshot(self) -> bytes:
        with self._lock:
            return bytes(self._fifo)

    def air_params(self) -> AirParams:
        """The LoRa modem settings now in the registers (reserved codes read as the nearest)."""
        common, lora = self._common, self._lora
        frf = (common[REG_FRF_MSB] << 16) | (common[REG_FRF_MID] << 8) | common[REG_FRF_LSB]
        config1, config2 = lora[REG_MODEM_CONFIG_1], lora[REG_MODEM_CONFIG_2]
        return AirParams(
            frequency_hz=round(frf * FXOSC_HZ / 2**19),
            spreading_factor=min(max(config2 >> 4, 6), 12),
            bandwidth_hz=BANDWIDTH_CODES[min(config1 >> 4, len(BANDWIDTH_CODES) - 1)],
            coding_rate=min(max((config1 >> 1) & 0x07, 1), 4) + 4,
            sync_word=lora[REG_SYNC_WORD],
            preamble_length=max((lora[REG_PREAMBLE_MSB] << 8) | lora[REG_PREAMBLE_LSB], 6),
            explicit_header=not config1 & 0x01,
            crc=bool(config2 & 0x04),
            low_data_rate=bool(lora[REG_MODEM_CONFIG_3] & 0x08),
            invert_iq_tx=not lora[REG_INVERT_IQ] & INVERT_IQ_TX_NORMAL,
            invert_iq_rx=bool(lora[REG_INVERT_IQ] & INVERT_IQ_RX),
            payload_length=lora[REG_PAYLOAD_LENGTH],
        )

    # --- registers ---------------------------------------------------------------------------

    def _restore_defaults(self) -> None:
        self._common[:] = bytes(len(self._common))
        self._lora[:] = bytes(len(self._lora))
        self._fsk[:] = bytes(len(self._fsk))
        for address, value in COMMON_DEFAULTS.items():
            self._common[address] = value
        for address, value in LORA_DEFAULTS.items():
            self._lora[address] = value
        for address, value in FSK_DEFAULTS.items():
            self._fsk[address] = value

    def _page(self, address: int) -> bytearray:
        if address in PAGED:
            op_mode = self._common[REG_OP_MODE]
            lora_page = op_mode & LONG_RANGE_MODE and not op_mode & ACCESS_SHARED_REG
            return self._lora if lora_page else self._fsk
        return self._common

    def _transfer(self, message: list[int]) -> list[int]:
        if not message:
            return []
        if self._fail_mode == "zeros":
            return [0x00] * len(message)
        if self._fail_mode == "ones":
            return [0xFF] * len(message)
        address = message[0] & 0x7F
        write = bool(message[0] & 0x80)
        reply = [0x00]
        for value in message[1:]:
            if address == REG_FIFO:
                reply.append(self._fifo_access(write, value))
                continue
            reply.append(self._read(address))
            if write:
                self._write(address, value)
            address = (address + 1) & 0x7F
        return reply

    def _fifo_access(self, write: bool, value: int) -> int:
        op_mode = self._common[REG_OP_MODE]
        if not op_mode & LONG_RANGE_MODE or op_mode & MODE_MASK == SLEEP:
            return 0x00  # no FIFO in Sleep; the FSK packet engine is not modelled
        pointer = self._lora[REG_FIFO_ADDR_PTR]
        previous = self._fifo[pointer]
        if write:
            self._fifo[pointer] = value
        self._lora[REG_FIFO_ADDR_PTR] = (pointer + 1) & 0xFF
        return previous

    def _read(self, address: int) -> int:
        page = self._page(address)
        if page is self._lora and address == REG_RSSI_VALUE:
            self._refresh_rssi()
        return page[address]

    def _write(self, address: int, value: int) -> None:
        if address == REG_OP_MODE:
            self._write_op_mode(value)
            return
        page = self._page(address)
        if page is self._lora:
            if address in LORA_READ_ONLY:
                return
            if address == REG_IRQ_FLAGS:
                page[address] &= ~value & 0xFF
                self._update_dio()
                return
        elif page is self._common and address in COMMON_READ_ONLY:
            return
        page[address] = value
        if address in (REG_DIO_MAPPING_1, REG_DIO_MAPPING_2):
            self._update_dio()
        elif address in NOT_MODELLED and address not in self._noted:
            # RegHopPeriod is the one paged register with a note: only on the LoRa page.
            on_its_page = (page is self._lora) == (address == REG_HOP_PERIOD)
            reset_value = COMMON_DEFAULTS.get(address, LORA_DEFAULTS.get(address, 0))
            if on_its_page and value != reset_value:
                self._noted.add(address)
                log.info("%s: %s (written %#04x)", self.name, NOT_MODELLED[address], value)

    # --- operating modes ---------------------------------------------------------------------

    def _write_op_mode(self, value: int) -> None:
        before = self._common[REG_OP_MODE]
        # LongRangeMode can only be changed by a write that selects Sleep.
        long_range = value if value & MODE_MASK == SLEEP else before
        after = (long_range & LONG_RANGE_MODE) | (value & ~LONG_RANGE_MODE & 0xFF)
        self._common[REG_OP_MODE] = after
        if (before & (LONG_RANGE_MODE | MODE_MASK)) != (after & (LONG_RANGE_MODE | MODE_MASK)):
            self._mode_changed(before, after)

    def _set_mode(self, mode: int) -> None:
        """A mode change made by the chip itself (TxDone, RxDone in RX single, timeouts)."""
        self._common[REG_OP_MODE] = (self._common[REG_OP_MODE] & ~MODE_MASK) | mode
        self._generation += 1

    def _mode_changed(self, before: int, after: int) -> None:
        self._generation += 1
        generation = self._generation
        was_lora, was = bool(before & LONG_RANGE_MODE), before & MODE_MASK
        is_lora, mode = bool(after & LONG_RANGE_MODE), after & MODE_MASK
        if was_lora and was == TX:
            self._queue(self._stop_transmitting)
        if was_lora and was in (RXCONT, RXSINGLE):
            self._end_rx()
        if mode == SLEEP:
            self._fifo[:] = bytes(FIFO_SIZE)
            self._lora[REG_RX_HEADER_CNT_MSB : REG_RX_PACKET_CNT_MSB + 2] = bytes(4)
        if not is_lora:
            return
        if mode == TX:
            self._begin_tx(generation)
        elif mode in (RXCONT, RXSINGLE):
            self._begin_rx(generation, single=mode == RXSINGLE)
        elif mode == CAD:
            self._begin_cad(generation)

    # --- interrupts and hand-over ------------------------------------------------------------

    def _raise_irq(self, flag: int) -> None:
        if self._lora[REG_IRQ_FLAGS_MASK] & flag:
            return
        self._lora[REG_IRQ_FLAGS] |= flag
        self._update_dio()

    def _update_dio(self) -> None:
        self._dio_lines.update(
            self._common[REG_DIO_MAPPING_1],
            self._common[REG_DIO_MAPPING_2],
            self._lora[REG_IRQ_FLAGS],
            stuck_dio0=self._fail_mode == "stuck_dio0",
        )

    def _queue(self, work: Callable[[], None]) -> None:
        self._dio_lines.queue(work)

    def _settle(self) -> None:
        self._dio_lines.settle()
