"""SX1276/77/78/79 on SPI: pyLoRa's register driver, DIO0 interrupts, the asyncio loop.

Threads: the event loop calls in; every SPI sequence runs on one worker thread or on the GPIO
thread (DIO0 callbacks), always under ``_spi_lock``, so the loop never waits on the bus and
pyLoRa's read-modify-write sequences never interleave. Results reach the loop through
``loop.call_soon_threadsafe``.

Receive is continuous (RXCONT, DIO0 = RxDone). On RxDone the GPIO thread reads RegFifoRxCurrentAddr
through RegPktRssiValue in one burst (flags, length, start, SNR and RSSI of the same packet),
clears the flags, drops and counts a packet with PayloadCrcError, else reads the FIFO: four SPI
transfers per packet. Received packets wait in a queue for the loop; the first one into an empty
queue wakes the loop, which takes every packet queued by then, so packets arriving while the loop
is busy cost one wake-up between them, not one each. ``on_receive`` still runs once per packet,
in order. ``transmit()`` switches DIO0 to TxDone, writes the FIFO and starts TX;
the TxDone callback clears the flag and goes straight back to RXCONT.

I/Q polarity as the air protocol wants it (docs/protocol.md, "Air"): a gateway transmits its
downlinks with inverted I/Q and receives uplinks normal, so nodes never take each other's
uplinks for a downlink; ``iq_role="node"`` is the node's side (a bench's node board). Before
each transmission and each return to receive, RegInvertIQ (bit 6 RX, bit 0 TX, set when TX is
normal; the reserved bits kept) and RegInvertIQ2 (0x19 inverted, 0x1D normal) are written as
Semtech's reference driver does. A TxDone that does not
come within the time on air plus a margin raises RadioError after the chip has been reset
through RST and set up again.

At open the chip is reset and must read RegVersion 0x12; a bus that reads 0x00 or 0xFF
everywhere, or another version, is ``ChipNotFound``. While open, a probe checks every
``probe_interval_s`` that the chip still answers and is still receiving (a brown-out resets it
silently); ``healthy()`` is false from a failed probe or transfer until a reset and setup
succeed again.

pyLoRa's receive helpers are not used: ``get_pkt_snr_value`` computes ``(256 - v) / 4``, which
is wrong for the signed register; ``get_pkt_rssi_value`` omits the datasheet's correction for
packets below the noise floor (this module applies the formulas of SX1276 datasheet 5.5.5);
``read_payload`` and ``clear_irq_flags`` take three transfers and an ``eval`` per bit where the
burst above needs none. ``set_detect_optimize`` overwrites the reserved upper bits of
RegDetectOptimize, so it is written read-modify-write instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from drivers.radio.base import (
    ChipNotFound,
    RadioError,
    RadioSettings,
    RxHandler,
    RxPacket,
    Sx127xSettings,
)
from drivers.radio.pylora_adapter import BoardPins, create_lora, load_pylora, pulse_reset
from drivers.radio.spi import IN, OUT, PUD_DOWN, Backend, Pins
from drivers.radio.spi_backends import open_backend, parse_spi_url
from gateway.protocol.airtime import BANDWIDTHS_HZ, low_data_rate_required

log = logging.getLogger(__name__)

T = TypeVar("T")

VERSION = 0x12
REG_VERSION = 0x42
# pyLoRa's BW codes (RegModemConfig1 bits 7-4) by nominal bandwidth.
BW_CODES = {bw: code for code, bw in enumerate(sorted(BANDWIDTHS_HZ))}
IRQ_ALL = 0xFF
SPI_WRITE = 0x80
REG_FIFO = 0x00
REG_FIFO_ADDR_PTR = 0x0D
# Read in one burst on RxDone (addresses auto-increment): RegFifoRxCurrentAddr .. RegPktRssiValue.
REG_FIFO_RX_CURRENT_ADDR = 0x10
REG_IRQ_FLAGS = 0x12
REG_RX_NB_BYTES = 0x13
REG_PKT_SNR_VALUE = 0x19
REG_PKT_RSSI_VALUE = 0x1A
RX_STATUS_FIRST = REG_FIFO_RX_CURRENT_ADDR
RX_STATUS_LENGTH = REG_PKT_RSSI_VALUE - RX_STATUS_FIRST + 1
IRQ_RX_DONE = 0x40
IRQ_PAYLOAD_CRC_ERROR = 0x20
IRQ_VALID_HEADER = 0x10
REG_INVERT_IQ = 0x33
REG_INVERT_IQ2 = 0x3B
INVERT_IQ_RX = 0x40  # RegInvertIQ bit 6: receive inverted
INVERT_IQ_TX_NORMAL = 0x01  # RegInvertIQ bit 0: set transmits normal, clear inverted
INVERT_IQ2_INVERTED = 0x19
INVERT_IQ2_NORMAL = 0x1D
LF_PORT_MAX_HZ = 525_000_000  # up to here the LF port (bands 2 and 3): RSSI offset -164
MAX_PAYLOAD = 255


def check_settings(s: RadioSettings) -> None:
    """RadioError naming every setting the SX127x cannot take."""
    problems = s.problems()
    if s.spreading_factor == 6 and not s.implicit_header:
        problems.append("spreading_factor 6 needs implicit_header")
    if problems:
        raise RadioError("; ".join(problems))


def frf_register(frequency_hz: int) -> int:
    """RegFrf for a carrier frequency: Frf = f * 2^19 / 32 MHz, rounded down."""
    return frequency_hz * 2**19 // 32_000_000


def packet_rssi_dbm(raw_rssi: int, snr_db: float, *, low_band: bool) -> float:
    """Packet RSSI from RegPktRssiValue (datasheet 5.5.5), corrected below the noise floor."""
    rssi = raw_rssi - (164 if low_band else 157)
    return rssi + snr_db if snr_db < 0 else float(rssi)


def packet_snr_db(raw_snr: int) -> float:
    """RegPktSnrValue is a signed byte in quarter dB."""
    return (raw_snr - 256 if raw_snr >= 128 else raw_snr) / 4


class Sx127xRadio:
    """The ``Radio`` interface on an SX127x wired to SPI and two GPIO lines (DIO0, RST).

    ``open_bus`` builds the SPI/GPIO backend; by default from ``spi_url`` (``spidev://B.C`` or
    ``sim://HOST:PORT``). Tests pass one that drives an in-process simulated chip.
    """

    def __init__(
        self,
        settings: RadioSettings,
        *,
        spi_url: str = "spidev://0.0",
        dio0_pin: int = 25,
        reset_pin: int = 17,
        open_bus: Callable[[], Backend] | None = None,
        tx_margin_s: float = 0.5,
        probe_interval_s: float = 5.0,
        link_timeout_s: float = 1.0,
        iq_role: Literal["gateway", "node"] = "gateway",
    ) -> None:
        check_settings(settings)
        kind, first, second = parse_spi_url(spi_url)
        self.settings = settings
        self.spi_url = spi_url
        self.pins = BoardPins(
            dio0=dio0_pin,
            reset=reset_pin,
            spi_bus=first if kind == "spidev" and isinstance(first, int) else 0,
            spi_cs=second if kind == "spidev" else 0,
        )
        self.counters: Counter[str] = Counter()
        self.iq_role = iq_role
        self._invert_iq_reserved = 0x26  # RegInvertIQ bits 5-1 at reset, read again at setup
        self._open_bus = open_bus or (
            lambda: open_backend(spi_url, Pins(dio0_pin, reset_pin), reply_timeout_s=link_timeout_s)
        )
        self._tx_margin_s = tx_margin_s
        self._probe_interval_s = probe_interval_s
        self._spi_lock = threading.Lock()
        self._tx_lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend: Backend | None = None
        self._lora: Any = None
        self._on_receive: RxHandler | None = None
        self._tx_waiter: asyncio.Future[None] | None = None
        # Packets from the GPIO thread waiting for the loop; a drain is scheduled while the
        # queue is not empty, so only the packet that finds it empty wakes the loop.
        self._rx_queue: deque[RxPacket] = deque()
        self._rx_queue_lock = threading.Lock()
        self._rx_drain_scheduled = False
        self._healthy = False
        self._recovery_failing = False
        self._closed = True
        self._supervisor: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Sx127xSettings, **options: Any) -> Sx127xRadio:
        """Build for ``radio.driver = "sx127x"`` (``options``: tuning and test hooks)."""
        return cls(
            settings.radio,
            spi_url=settings.spi_url,
            dio0_pin=settings.dio0_pin,
            reset_pin=settings.reset_pin,
            **options,
        )

    # --- the Radio interface ---

    def healthy(self) -> bool:
        return self._healthy and not self._closed

    async def open(self, on_receive: RxHandler) -> None:
        if not self._closed:
            raise RadioError("radio is already open")
        load_pylora()  # fail early and clearly when pyLoRa is missing
        self._loop = asyncio.get_running_loop()
        self._on_receive = on_receive
        with self._rx_queue_lock:
            self._rx_queue.clear()
            self._rx_drain_scheduled = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sx127x")
        self._closed = False
        try:
            await self._run(self._bring_up)
        except BaseException:
            await self._shut_down()
            raise
        self._healthy = True
        self._supervisor = self._loop.create_task(self._supervise(), name="sx127x-probe")
        log.info("SX127x on %s up: %s", self._backend_name(), self.settings.describe())

    async def close(self) -> None:
        if self._closed:
            return
        self._tx_finished(RadioError("radio closed"))
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._shut_down()

    async def transmit(self, payload: bytes) -> float:
        if not 1 <= len(payload) <= MAX_PAYLOAD:
            raise RadioError(f"payload must be 1..{MAX_PAYLOAD} bytes, got {len(payload)}")
        self._require_open()
        async with self._tx_lock:
            if not self._healthy:
                await self._recover("chip was not answering")
            settings = self.settings
            airtime = settings.time_on_air_s(len(payload))
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._tx_waiter = waiter
            limit = airtime + self._tx_margin_s
            try:
                await self._run(self._start_tx, bytes(payload))
                await asyncio.wait_for(waiter, limit)
            except TimeoutError:
                self.counters["tx_timeouts"] += 1
                self._healthy = False
                log.error("SX127x: no TxDone within %.3f s; resetting the chip", limit)
                with contextlib.suppress(RadioError):
                    await self._recover("TxDone never came")
                raise RadioError(
                    f"TxDone did not come within {limit:.3f} s (time on air {airtime:.3f} s); "
                    "the chip was reset"
                ) from None
            except RadioError:
                self._healthy = False
                raise
            finally:
                self._tx_waiter = None
            self.counters["tx_packets"] += 1
            return airtime

    async def reconfigure(self, settings: RadioSettings) -> None:
        check_settings(settings)
        self._require_open()
        async with self._tx_lock:
            try:
                await self._run(self._configure_and_listen, settings)
            except RadioError:
                self._healthy = False
                raise
            self.settings = settings
        log.info("SX127x reconfigured: %s", settings.describe())

    async def recover(self) -> None:
        """Reset the chip through RST and set it up again (the watchdog's lever)."""
        self._require_open()
        async with self._tx_lock:
            await self._recover("asked to")

    # --- loop side ---

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None or self._loop is None:
            raise RadioError("radio is not open")
        return await self._loop.run_in_executor(self._executor, function, *args)

    def _require_open(self) -> None:
        if self._closed:
            raise RadioError("radio is not open")

    async def _recover(self, why: str) -> None:
        self.counters["resets"] += 1
        try:
            await self._run(self._reset_and_listen)
        except RadioError as exc:
            self._healthy = False
            # One line per outage, not one per retry.
            level = logging.DEBUG if self._recovery_failing else logging.ERROR
            log.log(level, "SX127x: reset after %s failed: %s", why, exc)
            self._recovery_failing = True
            raise
        self._healthy = True
        self._recovery_failing = False
        log.warning("SX127x: chip reset and set up again after %s", why)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            if self._tx_lock.locked():
                continue
            async with self._tx_lock:
                try:
                    await self._run(self._probe)
                    self._healthy = True
                    continue
                except RadioError as exc:
                    if self._healthy:
                        log.error("SX127x: probe failed: %s", exc)
                    self._healthy = False
                with contextlib.suppress(RadioError):
                    await self._recover("a failed probe")

    async def _shut_down(self) -> None:
        self._healthy = False
        if self._executor is not None:
            with contextlib.suppress(RadioError):
                await self._run(self._release)
            self._executor.shutdown(wait=True)
            self._executor = None
        self._closed = True

    def _deliver_received(self) -> None:
        """Hand every packet queued so far to ``on_receive``, oldest first."""
        with self._rx_queue_lock:
            packets, self._rx_queue = self._rx_queue, deque()
            self._rx_drain_scheduled = False
        for packet in packets:
            on_receive = self._on_receive
            if on_receive is None or self._closed:
                return
            try:
                on_receive(packet)
            except Exception as exc:  # as if each packet had its own loop callback
                assert self._loop is not None
                self._loop.call_exception_handler(
                    {"message": "SX127x on_receive failed", "exception": exc}
                )

    def _tx_finished(self, error: RadioError | None) -> None:
        waiter = self._tx_waiter
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed under us
            return False
        return True

    def _backend_name(self) -> str:
        return self._backend.description if self._backend is not None else self.spi_url

    # --- worker thread: every method below runs off the loop ---

    def _bring_up(self) -> None:
        backend = self._open_bus()
        self._backend = backend
        gpio = backend.gpio
        gpio.setup(self.pins.reset, OUT)
        gpio.output(self.pins.reset, 1)
        gpio.setup(self.pins.dio0, IN, PUD_DOWN)
        with self._spi_lock:
            pulse_reset(gpio, self.pins)
            self._identify()
            self._lora = create_lora(
                backend.spi,
                gpio,
                self.pins,
                low_band=self.settings.frequency_hz <= LF_PORT_MAX_HZ,
                on_rx_done=self._on_rx_done,
                on_tx_done=self._on_tx_done,
            )
            self._configure_locked(self.settings)
            self._listen_locked()

    def _identify(self) -> None:
        """ChipNotFound unless RegVersion reads 0x12 (called with the SPI lock held)."""
        assert self._backend is not None
        spi = self._backend.spi
        version = spi.xfer([REG_VERSION, 0])[1]
        if version == VERSION:
            return
        registers = spi.xfer([0x01] + [0] * 0x70)[1:]
        where = self._backend.description
        if version in (0x00, 0xFF) and all(value == version for value in registers):
            raise ChipNotFound(
                f"no SX127x on {where}: every register reads {version:#04x} "
                f"({'not powered or not wired' if version == 0 else 'MISO floating'}?)"
            )
        raise ChipNotFound(f"no SX127x on {where}: RegVersion reads {version:#04x}, not 0x12")

    def _configure_locked(self, s: RadioSettings) -> None:
        """Write every setting through pyLoRa, then read back the key registers."""
        lora = self._lora
        pylora = load_pylora()
        mode, reg = pylora.MODE, pylora.REG
        # LongRangeMode only changes in sleep: FSK sleep first, then LoRa sleep.
        lora.set_register(reg.LORA.OP_MODE, 0x00)
        lora.mode = None
        lora.set_mode(mode.SLEEP)
        lora.set_mode(mode.STDBY)
        frf = frf_register(s.frequency_hz)
        # pyLoRa takes MHz and rounds f * 16384 down; pass the middle of the wanted step so
        # float error cannot land on the neighbouring one.
        lora.set_freq((frf + 0.5) / 16384)
        lora.set_modem_config_1(
            bw=BW_CODES[s.bandwidth_hz],
            coding_rate=s.coding_rate - 4,
            implicit_header_mode=int(s.implicit_header),
        )
        lora.set_modem_config_2(
            spreading_factor=s.spreading_factor, tx_cont_mode=0, rx_crc=int(s.crc)
        )
        lora.set_modem_config_3(
            low_data_rate_optim=int(low_data_rate_required(s.spreading_factor, s.bandwidth_hz)),
            agc_auto_on=1,
        )
        sf6 = s.spreading_factor == 6
        # pyLoRa's set_detect_optimize overwrites the whole register; keep bits 7-3.
        detect = lora.get_register(reg.LORA.DETECT_OPTIMIZE) & 0xF8
        lora.set_register(reg.LORA.DETECT_OPTIMIZE, detect | (0x05 if sf6 else 0x03))
        lora.set_detection_threshold(0x0C if sf6 else 0x0A)
        lora.set_preamble(s.preamble_length)
        lora.set_sync_word(s.sync_word)
        high_power = s.tx_power_dbm > 17
        # PA_BOOST: Pout = 17 - (15 - OutputPower), or 20 - (15 - OutputPower) with PaDac on.
        lora.set_pa_config(
            pa_select=1,
            max_power=7,
            output_power=s.tx_power_dbm - (5 if high_power else 2),
        )
        lora.set_pa_dac(high_power)
        lora.set_ocp_trim(140 if high_power else 100)
        invert_iq = lora.get_register(REG_INVERT_IQ)
        self._invert_iq_reserved = invert_iq & ~(INVERT_IQ_RX | INVERT_IQ_TX_NORMAL) & 0xFF
        lora.set_fifo_tx_base_addr(0x00)
        lora.set_fifo_rx_base_addr(0x00)
        lora.set_max_payload_length(MAX_PAYLOAD)
        lora.set_register(reg.LORA.IRQ_FLAGS_MASK, 0x00)
        self._verify_locked(s)

    def _verify_locked(self, s: RadioSettings) -> None:
        lora = self._lora
        reg = load_pylora().REG.LORA
        expected = {
            "RegFrf": (frf_register(s.frequency_hz), round(lora.get_freq() * 16384)),
            "RegModemConfig1": (
                BW_CODES[s.bandwidth_hz] << 4 | (s.coding_rate - 4) << 1 | int(s.implicit_header),
                lora.get_register(reg.MODEM_CONFIG_1),
            ),
            "RegModemConfig2": (
                s.spreading_factor << 4 | int(s.crc) << 2,
                lora.get_register(reg.MODEM_CONFIG_2) & 0xFC,
            ),
            "RegSyncWord": (s.sync_word, lora.get_sync_word()),
            "RegVersion": (VERSION, lora.get_version()),
        }
        wrong = [
            f"{name} {got:#x} != {want:#x}" for name, (want, got) in expected.items() if want != got
        ]
        if wrong:
            raise RadioError("chip did not keep its settings: " + ", ".join(wrong))

    def _listen_locked(self) -> None:
        """Continuous receive with DIO0 = RxDone (called with the SPI lock held)."""
        lora = self._lora
        pylora = load_pylora()
        lora.set_mode(pylora.MODE.STDBY)
        lora.set_register(pylora.REG.LORA.IRQ_FLAGS, IRQ_ALL)
        lora.set_dio_mapping([0] * 6)
        self._set_iq_locked(transmitting=False)
        lora.reset_ptr_rx()
        lora.set_mode(pylora.MODE.RXCONT)

    def _set_iq_locked(self, *, transmitting: bool) -> None:
        """RegInvertIQ and RegInvertIQ2 for the next transmission or reception."""
        inverted = (self.iq_role == "gateway") == transmitting
        value = self._invert_iq_reserved
        if transmitting:
            value |= 0 if inverted else INVERT_IQ_TX_NORMAL
        else:
            value |= INVERT_IQ_TX_NORMAL | (INVERT_IQ_RX if inverted else 0)
        spi = self._lora.spi
        spi.xfer([REG_INVERT_IQ | SPI_WRITE, value])
        spi.xfer(
            [REG_INVERT_IQ2 | SPI_WRITE, INVERT_IQ2_INVERTED if inverted else INVERT_IQ2_NORMAL]
        )

    def _configure_and_listen(self, settings: RadioSettings) -> None:
        with self._spi_lock:
            self._configure_locked(settings)
            self._listen_locked()

    def _reset_and_listen(self) -> None:
        assert self._backend is not None
        with self._spi_lock:
            pulse_reset(self._backend.gpio, self.pins)
            self._identify()
            self._configure_locked(self.settings)
            self._listen_locked()

    def _start_tx(self, payload: bytes) -> None:
        lora = self._lora
        pylora = load_pylora()
        with self._spi_lock:
            lora.set_mode(pylora.MODE.STDBY)
            lora.set_register(pylora.REG.LORA.IRQ_FLAGS, IRQ_ALL)
            lora.set_dio_mapping([1, 0, 0, 0, 0, 0])
            self._set_iq_locked(transmitting=True)
            lora.write_payload(list(payload))
            lora.set_mode(pylora.MODE.TX)

    def _probe(self) -> None:
        lora = self._lora
        pylora = load_pylora()
        with self._spi_lock:
            version = lora.get_version()
            if version != VERSION:
                raise RadioError(f"chip stopped answering (RegVersion reads {version:#04x})")
            mode = lora.get_mode()
            if mode != pylora.MODE.RXCONT:
                raise RadioError(f"chip left receive mode (RegOpMode reads {mode:#04x})")
            # While listening DIO0 is mapped to RxDone, so the line must be high whenever the
            # flag is set; a flag with a low line means received packets never interrupt us.
            backend = self._backend
            if (
                backend is not None
                and lora.get_irq_flags()["rx_done"]
                and not backend.gpio.input(self.pins.dio0)
            ):
                raise RadioError("DIO0 stays low while RxDone is set (interrupt line stuck)")

    def _release(self) -> None:
        backend, self._backend = self._backend, None
        if backend is None:
            return
        with self._spi_lock:
            if self._lora is not None:
                with contextlib.suppress(RadioError):
                    self._lora.set_mode(load_pylora().MODE.SLEEP)
            with contextlib.suppress(RadioError):
                backend.gpio.remove_event_detect(self.pins.dio0)
            backend.close()
            self._lora = None

    # --- GPIO thread: DIO0 interrupts, dispatched by pyLoRa's _dio0 ---

    def _on_rx_done(self) -> None:
        t_mono = time.monotonic()
        lora = self._lora
        if lora is None:
            return
        spi = lora.spi
        try:
            with self._spi_lock:
                status = spi.xfer([REG_FIFO_RX_CURRENT_ADDR] + [0] * RX_STATUS_LENGTH)[1:]
                flags = status[REG_IRQ_FLAGS - RX_STATUS_FIRST]
                if not flags & IRQ_RX_DONE:
                    self.counters["spurious_irq"] += 1
                    return
                spi.xfer(
                    [
                        REG_IRQ_FLAGS | SPI_WRITE,
                        IRQ_RX_DONE | IRQ_PAYLOAD_CRC_ERROR | IRQ_VALID_HEADER,
                    ]
                )
                if flags & IRQ_PAYLOAD_CRC_ERROR:
                    self.counters["crc_errors"] += 1
                    log.warning("SX127x: dropped a packet with a payload CRC error")
                    return
                spi.xfer([REG_FIFO_ADDR_PTR | SPI_WRITE, status[0]])  # RegFifoRxCurrentAddr
                length = status[REG_RX_NB_BYTES - RX_STATUS_FIRST]
                payload = bytes(spi.xfer([REG_FIFO] + [0] * length)[1:])
        except RadioError as exc:
            self._bus_failed(exc)
            return
        snr = packet_snr_db(status[REG_PKT_SNR_VALUE - RX_STATUS_FIRST])
        raw_rssi = status[REG_PKT_RSSI_VALUE - RX_STATUS_FIRST]
        low_band = self.settings.frequency_hz <= LF_PORT_MAX_HZ
        packet = RxPacket(payload, packet_rssi_dbm(raw_rssi, snr, low_band=low_band), snr, t_mono)
        self.counters["rx_packets"] += 1
        self._queue_for_loop(packet)

    def _queue_for_loop(self, packet: RxPacket) -> None:
        with self._rx_queue_lock:
            self._rx_queue.append(packet)
            if self._rx_drain_scheduled:
                return
            self._rx_drain_scheduled = True
        if not self._to_loop(self._deliver_received):
            with self._rx_queue_lock:
                self._rx_drain_scheduled = False

    def _on_tx_done(self) -> None:
        lora = self._lora
        if lora is None:
            return
        try:
            with self._spi_lock:
                if not lora.get_irq_flags()["tx_done"]:
                    self.counters["spurious_irq"] += 1
                    return
                lora.clear_irq_flags(TxDone=1)
                self._listen_locked()
        except RadioError as exc:
            self._bus_failed(exc)
            self._to_loop(self._tx_finished, RadioError(f"after TxDone: {exc}"))
            return
        self._to_loop(self._tx_finished, None)

    def _bus_failed(self, exc: RadioError) -> None:
        if self._closed:
            return
        self._healthy = False
        self.counters["bus_errors"] += 1
        log.error("SX127x: SPI failed in an interrupt: %s", exc)
