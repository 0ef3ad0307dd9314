"""The receive path of the simulated SX1276: RX continuous and single, and CAD.

Datasheet section numbers refer to the SX1276/77/78/79 datasheet.

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
* ValidHeader (explicit header) rises when the header ends on the air: preamble + 4.25 + 8
  symbols after the frame starts, with RegRxHeaderCnt and RegModemStat's header-info-valid.
* RegPktRssiValue per datasheet 5.5.5: RSSI = -157 + value (HF port, above 525 MHz; -164 on
  the LF port) when SNR >= 0, and RSSI = -157 + value + SNR when SNR < 0.
* CAD: after (2^SF + 32) / BW, CadDone (and CadDetected when a receivable frame is on the air).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.sim.chip_registers import (
    HEADER_SYMBOLS,
    IRQ_CAD_DETECTED,
    IRQ_CAD_DONE,
    IRQ_PAYLOAD_CRC_ERROR,
    IRQ_RX_DONE,
    IRQ_RX_TIMEOUT,
    IRQ_VALID_HEADER,
    LF_PORT_MAX_HZ,
    MODEM_CLEAR,
    MODEM_HEADER_VALID,
    MODEM_RECEIVING,
    PREAMBLE_EXTRA_SYMBOLS,
    REG_FIFO_RX_BASE_ADDR,
    REG_FIFO_RX_BYTE_ADDR,
    REG_FIFO_RX_CURRENT_ADDR,
    REG_HOP_CHANNEL,
    REG_MAX_PAYLOAD_LENGTH,
    REG_MODEM_CONFIG_2,
    REG_MODEM_STAT,
    REG_PKT_RSSI_VALUE,
    REG_PKT_SNR_VALUE,
    REG_RSSI_VALUE,
    REG_RX_HEADER_CNT_MSB,
    REG_RX_NB_BYTES,
    REG_RX_PACKET_CNT_MSB,
    REG_SYMB_TIMEOUT_LSB,
    STDBY,
)
from drivers.sim.medium import AirParams, Frame, ReceivedPacket, RfMedium, reported_snr_db
from gateway.protocol.airtime import exact_bandwidth_hz

if TYPE_CHECKING:
    import asyncio
    import threading

    from drivers.sim.chip_stats import ChipStats


def _signed_byte(value: int) -> int:
    return max(-128, min(127, value)) & 0xFF


class LoraReceiver:
    """The receive half of ``SimulatedSX127x``, and its face to the medium (``RadioEndpoint``).

    A base class of the chip: it works on the chip's registers, FIFO, lock and loop, declared
    below, and keeps the state of the receive session. Every mode change bumps the chip's
    generation; timers of an older generation lapse.
    """

    # The chip's, set up by SimulatedSX127x.__init__.
    name: str
    stats: ChipStats
    _loop: asyncio.AbstractEventLoop
    _lock: threading.RLock
    _medium: RfMedium | None
    _lora: bytearray
    _fifo: bytearray
    _generation: int

    if TYPE_CHECKING:

        def air_params(self) -> AirParams: ...
        def _raise_irq(self, flag: int) -> None: ...
        def _set_mode(self, mode: int) -> None: ...
        def _queue(self, work: Callable[[], None]) -> None: ...
        def _settle(self) -> None: ...

    def _init_receiver(self) -> None:
        self._sessions = 0
        self._rx_session: int | None = None
        self._rx_single = False
        self._rx_in_progress: set[int] = set()
        self._headers_announced: set[int] = set()  # frames whose ValidHeader has risen
        self._rx_write_ptr = 0

    # --- test hook ---------------------------------------------------------------------------

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

    # --- RX continuous and single ------------------------------------------------------------

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

    # --- RSSI --------------------------------------------------------------------------------

    def _refresh_rssi(self) -> None:
        if self._rx_session is None or self._medium is None:
            return
        params = self.air_params()
        power = self._medium.channel_power_dbm(self, params)
        self._lora[REG_RSSI_VALUE] = max(0, min(255, round(power + self._rssi_offset(params))))

    @staticmethod
    def _rssi_offset(params: AirParams) -> int:
        return 164 if params.frequency_hz <= LF_PORT_MAX_HZ else 157

    # --- CAD ---------------------------------------------------------------------------------

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
