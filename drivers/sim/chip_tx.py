"""The transmit path of the simulated SX1276: TX and output power.

Datasheet section numbers refer to the SX1276/77/78/79 datasheet.

* TX: RegPayloadLength bytes from RegFifoTxBaseAddr go on the air for exactly their time on
  air (``gateway.protocol.airtime`` with the RegModemConfig1/2/3 and RegPreamble settings,
  low data rate optimisation as programmed); then TxDone and Standby. Leaving TX early cuts the
  frame short.
* Output power: RegPaConfig, RegPaDac, and RegOcp limiting PA_BOOST (``tx_power_dbm``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.sim.chip_registers import (
    IRQ_TX_DONE,
    REG_FIFO_TX_BASE_ADDR,
    REG_OCP,
    REG_PA_CONFIG,
    REG_PA_DAC,
    REG_PAYLOAD_LENGTH,
    STDBY,
    ocp_limit_ma,
    pa_boost_current_ma,
    pa_boost_power_at_current,
)
from drivers.sim.medium import AirParams, RfMedium

if TYPE_CHECKING:
    import asyncio
    import threading

    from drivers.sim.chip_stats import ChipStats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TxRecord:
    """One transmission the chip made (for tests and the simulator's log)."""

    start: float
    payload: bytes
    params: AirParams
    tx_power_dbm: float
    airtime_s: float


class LoraTransmitter:
    """The transmit half of ``SimulatedSX127x``.

    A base class of the chip: it works on the chip's registers, FIFO, lock and loop, declared
    below, and keeps the transmissions it made (``tx_history``).
    """

    # The chip's, set up by SimulatedSX127x.__init__.
    name: str
    stats: ChipStats
    _loop: asyncio.AbstractEventLoop
    _lock: threading.RLock
    _medium: RfMedium | None
    _common: bytearray
    _lora: bytearray
    _fifo: bytearray
    _generation: int

    if TYPE_CHECKING:

        def air_params(self) -> AirParams: ...
        def _raise_irq(self, flag: int) -> None: ...
        def _set_mode(self, mode: int) -> None: ...
        def _queue(self, work: Callable[[], None]) -> None: ...
        def _settle(self) -> None: ...

    def _init_transmitter(self) -> None:
        self.tx_history: list[TxRecord] = []
        self._transmitting = False

    # --- output power ------------------------------------------------------------------------

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

    # --- TX ----------------------------------------------------------------------------------

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
