"""A register-level SX1276 in LoRa mode, for running the real driver against a simulated chip.

The SPI surface is spidev's: ``xfer(list[int]) -> list[int]``. The first byte is the address
(bit 7 set for a write); every further byte accesses the next register (auto-increment), except
at address 0x00 (RegFifo), where every byte goes through RegFifoAddrPtr. On a write the chip
clocks out the previous contents. The GPIO surface is the level of each DIO line (``dio(line)``,
``dio0``) with edge callbacks (``on_dio(line, level)`` for every line, ``on_dio0(level)`` for
DIO0), and ``reset()`` for a pulse on the RST line (SPI reads 0x00 for 5 ms after it).

What is modelled (datasheet section numbers refer to the SX1276/77/78/79 datasheet):

* RegOpMode: LongRangeMode changes only on a write that selects Sleep; AccessSharedReg maps the
  FSK page (plain storage) at 0x0D..0x3F. Sleep clears the FIFO, makes it inaccessible and
  clears the header/packet counters.
* TX: RegPayloadLength bytes from RegFifoTxBaseAddr go on the air for exactly their time on
  air (``gateway.protocol.airtime`` with the RegModemConfig1/2/3 and RegPreamble settings,
  low data rate optimisation as programmed); then TxDone and Standby. Leaving TX early cuts the
  frame short.
* RX continuous / single: packets are written at the receive pointer, which starts at
  RegFifoRxBaseAddr on entering RX and wraps around the 256-byte FIFO in RX continuous;
  RegFifoRxCurrentAddr, RegRxNbBytes, RegFifoRxByteAddr, RegPktSnrValue, RegPktRssiValue,
  RegModemStat, RegHopChannel (CrcOnPayload) and the counters are updated; ValidHeader (explicit
  header) and RxDone are raised. RX single returns to Standby after a packet or on RxTimeout
  (RegSymbTimeout symbols without a preamble, or a detected frame that is lost).
* What a packet holds is the medium's decision (``medium.demodulate``) from both sides'
  registers: I/Q polarity (RegInvertIQ), header mode, RegPayloadLength and coding rate in
  implicit mode, CRC on/off; a damaged frame raises PayloadCrcError with RxDone when the CRC is
  checked. RegPktSnrValue saturates at +10 dB (``medium.PACKET_SNR_CEILING_DB``).
* CAD: after (2^SF + 32) / BW, CadDone (and CadDetected when a receivable frame is on the air).
* RegIrqFlags: write 1 to clear; RegIrqFlagsMask stops a flag from being set. DIO0..DIO5
  follow RegDioMapping1/2 (``chip_registers.DIO_SOURCES``; PllLock, ModeReady, ClkOut stay low).
* ValidHeader (explicit header) rises when the header ends on the air: preamble + 4.25 + 8
  symbols after the frame starts, with RegRxHeaderCnt and RegModemStat's header-info-valid.
* Output power: RegPaConfig, RegPaDac, and RegOcp limiting PA_BOOST (``tx_power_dbm``).
  RegLna, RegPaRamp, RegHopPeriod and RegTcxo are stored; their effect is not modelled (logged
  once per chip).
* Reset values of every register it stores, LoRa and FSK pages: ``chip_registers``.
* RegPktRssiValue per datasheet 5.5.5: RSSI = -157 + value (HF port, above 525 MHz; -164 on
  the LF port) when SNR >= 0, and RSSI = -157 + value + SNR when SNR < 0.

Threads: ``xfer`` and ``reset`` may be called from any thread; register effects are immediate.
Radio activity (the medium, timers) runs on the event loop given at construction; work caused
by a call from another thread is handed to the loop. ``on_dio0`` is called with no lock held,
in order, from whichever thread is delivering edges at the time (the loop thread for radio
events); it must not block.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

from drivers.sim.chip_registers import (
    ACCESS_SHARED_REG,
    BANDWIDTH_CODES,
    CAD,
    COMMON_DEFAULTS,
    COMMON_READ_ONLY,
    DIO_LINES,
    DIO_SOURCES,
    FIFO_SIZE,
    FSK_DEFAULTS,
    FXOSC_HZ,
    HEADER_SYMBOLS,
    IRQ_CAD_DETECTED,
    IRQ_CAD_DONE,
    IRQ_PAYLOAD_CRC_ERROR,
    IRQ_RX_DONE,
    IRQ_RX_TIMEOUT,
    IRQ_TX_DONE,
    IRQ_VALID_HEADER,
    LF_PORT_MAX_HZ,
    LONG_RANGE_MODE,
    LORA_DEFAULTS,
    LORA_READ_ONLY,
    MANUAL_RESET_S,
    MODE_MASK,
    MODEM_CLEAR,
    MODEM_HEADER_VALID,
    MODEM_RECEIVING,
    NOT_MODELLED,
    PAGED,
    PREAMBLE_EXTRA_SYMBOLS,
    REG_DIO_MAPPING_1,
    REG_DIO_MAPPING_2,
    REG_FIFO,
    REG_FIFO_ADDR_PTR,
    REG_FIFO_RX_BASE_ADDR,
    REG_FIFO_RX_BYTE_ADDR,
    REG_FIFO_RX_CURRENT_ADDR,
    REG_FIFO_TX_BASE_ADDR,
    REG_FRF_LSB,
    REG_FRF_MID,
    REG_FRF_MSB,
    REG_HOP_CHANNEL,
    REG_HOP_PERIOD,
    REG_IRQ_FLAGS,
    REG_IRQ_FLAGS_MASK,
    REG_MAX_PAYLOAD_LENGTH,
    REG_MODEM_CONFIG_1,
    REG_MODEM_CONFIG_2,
    REG_MODEM_CONFIG_3,
    REG_MODEM_STAT,
    REG_OCP,
    REG_OP_MODE,
    REG_PA_CONFIG,
    REG_PA_DAC,
    REG_PAYLOAD_LENGTH,
    REG_PKT_RSSI_VALUE,
    REG_PKT_SNR_VALUE,
    REG_PREAMBLE_LSB,
    REG_PREAMBLE_MSB,
    REG_RSSI_VALUE,
    REG_RX_HEADER_CNT_MSB,
    REG_RX_NB_BYTES,
    REG_RX_PACKET_CNT_MSB,
    REG_SYMB_TIMEOUT_LSB,
    REG_SYNC_WORD,
    RXCONT,
    RXSINGLE,
    SLEEP,
    STDBY,
    TX,
    dio_mapping,
    ocp_limit_ma,
    pa_boost_current_ma,
    pa_boost_power_at_current,
)
from drivers.sim.medium import (
    AirParams,
    Frame,
    Position,
    ReceivedPacket,
    RfMedium,
    reported_snr_db,
)
from gateway.protocol.airtime import exact_bandwidth_hz

log = logging.getLogger(__name__)

# RegInvertIQ (0x33): bit 6 receives inverted I/Q, bit 0 transmits normal I/Q when set (clear:
# inverted, as Semtech's reference driver writes it). RegInvertIQ2 (0x3B, 0x19 with inverted
# I/Q, 0x1D normal) is kept but not consulted: LMIC receives downlinks on silicon with bit 6 alone.
REG_INVERT_IQ = 0x33
INVERT_IQ_RX = 0x40
INVERT_IQ_TX_NORMAL = 0x01

FailMode = Literal["zeros", "ones", "stuck_dio0"]
FAIL_MODES: tuple[FailMode, ...] = ("zeros", "ones", "stuck_dio0")


@dataclass(frozen=True, slots=True)
class TxRecord:
    """One transmission the chip made (for tests and the simulator's log)."""

    start: float
    payload: bytes
    params: AirParams
    tx_power_dbm: float
    airtime_s: float


@dataclass(slots=True)
class ChipStats:
    spi_transfers: int = 0
    tx_started: int = 0
    tx_done: int = 0
    tx_aborted: int = 0
    rx_packets: int = 0
    rx_dropped_too_long: int = 0
    rx_timeouts: int = 0
    tx_ocp_limited: int = 0
    spi_during_reset: int = 0
    dio0_rises: int = 0
    dio1_rises: int = 0
    callback_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _signed_byte(value: int) -> int:
    return max(-128, min(127, value)) & 0xFF


class SimulatedSX127x:
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
        self.on_dio0: Callable[[bool], None] | None = None
        self.on_dio: Callable[[int, bool], None] | None = None
        self.tx_history: list[TxRecord] = []
        self.stats = ChipStats()
        self._loop = loop
        self._lock = threading.RLock()
        self._medium: RfMedium | None = None
        self._common = bytearray(0x80)
        self._lora = bytearray(0x40)
        self._fsk = bytearray(0x40)
        self._fifo = bytearray(FIFO_SIZE)
        self._dio = [False] * DIO_LINES
        self._ready_at = 0.0  # loop time from which SPI answers again after a reset
        self._noted: set[int] = set()  # registers whose "not modelled" note was logged
        self._fail_mode: FailMode | None = None
        self._edges: deque[tuple[int, bool]] = deque()
        self._delivering_edges = False
        self._loop_work: list[Callable[[], None]] = []
        # Every mode change bumps the generation; timers and queued work of an older one lapse.
        self._generation = 0
        self._transmitting = False
        self._sessions = 0
        self._rx_session: int | None = None
        self._rx_single = False
        self._rx_in_progress: set[int] = set()
        self._headers_announced: set[int] = set()  # frames whose ValidHeader has risen
        self._rx_write_ptr = 0
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
    def dio0(self) -> bool:
        return self._dio[0]

    def dio(self, line: int) -> bool:
        """The level of DIO ``line`` (0..5)."""
        if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line < DIO_LINES:
            raise ValueError(f"DIO line must be 0..{DIO_LINES - 1}, got {line!r}")
        return self._dio[line]

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

    def deliver(
        self,
        payload: bytes,
        rssi_dbm: float = -60.0,
        snr_db: float = 9.0,
        *,
        crc_error: bool = False,
    ) -> bool:
        """Receive ``payload`` now as if its frame just ended, bypassing the medium.

        Returns False (nothing happens) unless the chip is in LoRa RX continuous or RX single.
        With ``crc_error`` the packet is stored and PayloadCrcError is raised with RxDone.
        """
        if not isinstance(payload, bytes | bytearray) or len(payload) > 255:
            raise ValueError("payload must be at most 255 bytes")
        with self._lock:
            if self._rx_session is None:
                return False
            params = self.air_params()
            self._store_packet(bytes(payload), rssi_dbm, snr_db, params, crc_error=crc_error)
        self._settle()
        return True

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

    def tx_power_dbm(self) -> float:
        """The power a transmission goes out with: ``programmed_tx_power_dbm()`` limited on
        PA_BOOST by the over-current protection of RegOcp (datasheet 5.4.4). The medium uses it.

        The RFO path draws at most 29 mA (+13 dBm), below the lowest OCP trim (45 mA), so only
        PA_BOOST is limited: to the power whose supply current, interpolated through the
        datasheet's 87 mA at +17 dBm and 120 mA at +20 dBm, equals Imax.
        """
        programmed = self.programmed_tx_power_dbm()
        imax = ocp_limit_ma(self._common[REG_OCP])
        if not self._common[REG_PA_CONFIG] & 0x80 or imax is None:
            return programmed
        if pa_boost_current_ma(programmed) <= imax:
            return programmed
        return round(pa_boost_power_at_current(imax), 1)

    def ocp_limit_ma(self) -> float | None:
        """Imax of RegOcp in mA, or None with the over-current protection off."""
        return ocp_limit_ma(self._common[REG_OCP])

    def programmed_tx_power_dbm(self) -> float:
        """Output power from RegPaConfig and RegPaDac (datasheet 5.4.2, 5.4.3), before OCP."""
        pa_config = self._common[REG_PA_CONFIG]
        output_power = pa_config & 0x0F
        if pa_config & 0x80:  # PA_BOOST
            high_power = self._common[REG_PA_DAC] & 0x07 == 0x07
            return float((5 if high_power else 2) + output_power)
        max_power = 10.8 + 0.6 * ((pa_config >> 4) & 0x07)
        return max_power - (15 - output_power)

    # --- medium endpoint ---------------------------------------------------------------------

    def rx_session(self) -> int | None:
        with self._lock:
            return self._rx_session

    def on_frame_detected(self, session: int, frame: Frame) -> None:
        with self._lock:
            if session != self._rx_session:
                return
            self._rx_in_progress.add(frame.id)
            self._lora[REG_MODEM_STAT] = (self._lora[REG_MODEM_STAT] & 0xE0) | MODEM_RECEIVING
            if self.air_params().explicit_header:
                params = frame.params
                symbol_s = 2**params.spreading_factor / exact_bandwidth_hz(params.bandwidth_hz)
                symbols = params.preamble_length + PREAMBLE_EXTRA_SYMBOLS + HEADER_SYMBOLS
                header_end = frame.start + float(symbols * symbol_s)
                self._loop.call_at(header_end, self._header_received, session, frame.id)

    def _header_received(self, session: int, frame_id: int) -> None:
        """The explicit header of a frame still being received has been demodulated."""
        with self._lock:
            if session != self._rx_session or frame_id not in self._rx_in_progress:
                return
            self._headers_announced.add(frame_id)
            self._bump_counter(REG_RX_HEADER_CNT_MSB)
            self._lora[REG_MODEM_STAT] |= MODEM_HEADER_VALID
            self._raise_irq(IRQ_VALID_HEADER)
        self._settle()

    def on_frame_received(self, session: int, frame: Frame, rssi_dbm: float, snr_db: float) -> bool:
        params = frame.params
        packet = ReceivedPacket(
            frame.payload, rssi_dbm, snr_db, True, params.coding_rate, params.crc, False
        )
        return self.on_packet(session, frame, packet)

    def on_packet(self, session: int, frame: Frame, packet: ReceivedPacket) -> bool:
        """RxDone for what the medium says this modem made of ``frame`` (``demodulate``): the
        bytes, PayloadCrcError, and the coding rate and CRC-on of the header in explicit mode."""
        with self._lock:
            if session != self._rx_session:
                return False
            self._rx_in_progress.discard(frame.id)
            announced = frame.id in self._headers_announced
            self._headers_announced.discard(frame.id)
            params = dataclasses.replace(
                self.air_params(),
                explicit_header=packet.explicit_header,
                coding_rate=packet.coding_rate,
                crc=packet.crc_on,
            )
            self._store_packet(
                packet.payload,
                packet.rssi_dbm,
                packet.snr_db,
                params,
                crc_error=packet.crc_error,
                header_announced=announced,
            )
        self._settle()
        return True

    def on_frame_failed(self, session: int, frame: Frame) -> None:
        with self._lock:
            if session != self._rx_session:
                return
            self._rx_in_progress.discard(frame.id)
            if self._rx_single:
                # The modem lost track of the packet: RxTimeout and back to Standby.
                self._rx_timed_out()
            elif not self._rx_in_progress:
                self._lora[REG_MODEM_STAT] = (self._lora[REG_MODEM_STAT] & 0xE0) | MODEM_CLEAR
        self._settle()

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

    def _refresh_rssi(self) -> None:
        if self._rx_session is None or self._medium is None:
            return
        params = self.air_params()
        power = self._medium.channel_power_dbm(self, params)
        self._lora[REG_RSSI_VALUE] = max(0, min(255, round(power + self._rssi_offset(params))))

    @staticmethod
    def _rssi_offset(params: AirParams) -> int:
        return 164 if params.frequency_hz <= LF_PORT_MAX_HZ else 157

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

    def _begin_tx(self, generation: int) -> None:
        base = self._lora[REG_FIFO_TX_BASE_ADDR]
        length = self._lora[REG_PAYLOAD_LENGTH]
        payload = bytes(self._fifo[(base + i) & 0xFF] for i in range(length))
        params = self.air_params()
        power = self.tx_power_dbm()
        self.stats.tx_started += 1
        if power < self.programmed_tx_power_dbm():
            if not self.stats.tx_ocp_limited:
                log.warning(
                    "%s: PA_BOOST %+.1f dBm limited to %+.1f dBm by RegOcp %#04x (Imax %.0f mA)",
                    self.name,
                    self.programmed_tx_power_dbm(),
                    power,
                    self._common[REG_OCP],
                    self.ocp_limit_ma(),
                )
            self.stats.tx_ocp_limited += 1
        self._queue(lambda: self._start_transmitting(generation, payload, params, power))

    def _start_transmitting(
        self, generation: int, payload: bytes, params: AirParams, power: float
    ) -> None:
        with self._lock:
            if generation != self._generation:
                return
            start = self._loop.time()
            if self._medium is not None:
                frame = self._medium.transmit(self, payload, params, power)
                airtime, end = frame.airtime_s, frame.end
            else:
                airtime = params.time_on_air_s(len(payload))
                end = start + airtime
            self._transmitting = True
            self.tx_history.append(TxRecord(start, payload, params, power, airtime))
            self._loop.call_at(end, self._tx_done, generation)

    def _tx_done(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._transmitting = False
            self.stats.tx_done += 1
            self._raise_irq(IRQ_TX_DONE)
            self._set_mode(STDBY)
        self._settle()

    def _stop_transmitting(self) -> None:
        with self._lock:
            if not self._transmitting:
                return
            self._transmitting = False
            self.stats.tx_aborted += 1
            if self._medium is not None:
                self._medium.abort(self)

    def _begin_rx(self, generation: int, *, single: bool) -> None:
        self._sessions += 1
        self._rx_session = self._sessions
        self._rx_single = single
        self._rx_in_progress.clear()
        self._headers_announced.clear()
        self._rx_write_ptr = self._lora[REG_FIFO_RX_BASE_ADDR]
        if single:
            config2 = self._lora[REG_MODEM_CONFIG_2]
            symbols = ((config2 & 0x03) << 8) | self._lora[REG_SYMB_TIMEOUT_LSB]
            params = self.air_params()
            bandwidth = exact_bandwidth_hz(params.bandwidth_hz)
            timeout_s = float(symbols * 2**params.spreading_factor / bandwidth)
            self._queue(
                lambda: self._loop.call_later(timeout_s, self._rx_single_timeout, generation)
            )

    def _rx_single_timeout(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._rx_in_progress:
                return
            self._rx_timed_out()
        self._settle()

    def _rx_timed_out(self) -> None:
        self.stats.rx_timeouts += 1
        self._raise_irq(IRQ_RX_TIMEOUT)
        self._end_rx()
        self._set_mode(STDBY)

    def _end_rx(self) -> None:
        self._rx_session = None
        self._rx_in_progress.clear()
        self._lora[REG_MODEM_STAT] = (self._lora[REG_MODEM_STAT] & 0xE0) | MODEM_CLEAR

    def _store_packet(
        self,
        payload: bytes,
        rssi_dbm: float,
        snr_db: float,
        params: AirParams,
        *,
        crc_error: bool,
        header_announced: bool = False,
    ) -> None:
        """Store a received packet and raise RxDone; ValidHeader and the header counter too
        unless ``header_announced`` (they rose when the header ended)."""
        lora = self._lora
        if params.explicit_header and len(payload) > lora[REG_MAX_PAYLOAD_LENGTH]:
            # The header announces more than RegMaxPayloadLength: header CRC error, no RxDone.
            self.stats.rx_dropped_too_long += 1
            if self._rx_single:
                self._rx_timed_out()
            return
        start = self._rx_write_ptr
        for offset, byte in enumerate(payload):
            self._fifo[(start + offset) & 0xFF] = byte
        self._rx_write_ptr = (start + len(payload)) & 0xFF
        lora[REG_FIFO_RX_CURRENT_ADDR] = start
        lora[REG_FIFO_RX_BYTE_ADDR] = self._rx_write_ptr
        lora[REG_RX_NB_BYTES] = len(payload)
        snr_register = _signed_byte(round(reported_snr_db(snr_db) * 4))
        snr_quantised = (snr_register - 256 if snr_register > 127 else snr_register) / 4
        rssi_register = rssi_dbm + self._rssi_offset(params)
        if snr_quantised < 0:
            rssi_register -= snr_quantised
        lora[REG_PKT_SNR_VALUE] = snr_register
        lora[REG_PKT_RSSI_VALUE] = max(0, min(255, round(rssi_register)))
        if params.explicit_header and not header_announced:
            self._bump_counter(REG_RX_HEADER_CNT_MSB)
        if not crc_error:
            self._bump_counter(REG_RX_PACKET_CNT_MSB)
        self._lora[REG_MODEM_STAT] = ((params.coding_rate - 4) << 5) | MODEM_CLEAR
        if params.explicit_header:  # CrcOnPayload comes from the header only
            lora[REG_HOP_CHANNEL] = (lora[REG_HOP_CHANNEL] & ~0x40 & 0xFF) | (0x40 * params.crc)
        self.stats.rx_packets += 1
        if params.explicit_header and not header_announced:
            self._raise_irq(IRQ_VALID_HEADER)
        if crc_error:
            self._raise_irq(IRQ_PAYLOAD_CRC_ERROR)
        self._raise_irq(IRQ_RX_DONE)
        if self._rx_single:
            self._end_rx()
            self._set_mode(STDBY)

    def _bump_counter(self, msb_address: int) -> None:
        value = ((self._lora[msb_address] << 8) | self._lora[msb_address + 1]) + 1
        self._lora[msb_address] = (value >> 8) & 0xFF
        self._lora[msb_address + 1] = value & 0xFF

    def _begin_cad(self, generation: int) -> None:
        params = self.air_params()
        bandwidth = exact_bandwidth_hz(params.bandwidth_hz)
        duration_s = float((2**params.spreading_factor + 32) / bandwidth)
        self._queue(lambda: self._loop.call_later(duration_s, self._cad_done, generation))

    def _cad_done(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            params = self.air_params()
            if self._medium is not None and self._medium.channel_busy(self, params):
                self._raise_irq(IRQ_CAD_DETECTED)
            self._raise_irq(IRQ_CAD_DONE)
            self._set_mode(STDBY)
        self._settle()

    # --- interrupts and hand-over ------------------------------------------------------------

    def _raise_irq(self, flag: int) -> None:
        if self._lora[REG_IRQ_FLAGS_MASK] & flag:
            return
        self._lora[REG_IRQ_FLAGS] |= flag
        self._update_dio()

    def _update_dio(self) -> None:
        """Set every DIO pin from the flags its mapping selects (datasheet 4.1.6, Table 18)."""
        mapping_1, mapping_2 = self._common[REG_DIO_MAPPING_1], self._common[REG_DIO_MAPPING_2]
        flags = self._lora[REG_IRQ_FLAGS]
        for line in range(DIO_LINES):
            source = DIO_SOURCES[line].get(dio_mapping(mapping_1, mapping_2, line), 0)
            level = bool(flags & source)
            if line == 0 and self._fail_mode == "stuck_dio0":
                level = False
            if level == self._dio[line]:
                continue
            self._dio[line] = level
            self._edges.append((line, level))
            if level and line == 0:
                self.stats.dio0_rises += 1
            elif level and line == 1:
                self.stats.dio1_rises += 1

    def _queue(self, work: Callable[[], None]) -> None:
        self._loop_work.append(work)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _settle(self) -> None:
        """Run or hand over queued radio work, then deliver DIO0 edges (no lock held)."""
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
                    self.stats.callback_errors += 1
                    log.exception("%s: DIO%d callback failed", self.name, line)
        except BaseException:
            with self._lock:
                self._delivering_edges = False
            raise
