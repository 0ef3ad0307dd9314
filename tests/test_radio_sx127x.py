"""The real pyLoRa-based SX127x driver on the simulated chip, in process and over sim://."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from drivers.radio.base import ChipNotFound, RadioError, RadioSettings, RxPacket, Sx127xSettings
from drivers.radio.pylora_adapter import load_pylora
from drivers.radio.spi import Pins
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio, frf_register, packet_snr_db
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from gateway.config import Config, RadioSection
from gateway.driver_settings import radio_driver_settings
from gateway.protocol.airtime import time_on_air_s

PINS = Pins(dio0=25, reset=17)
LORA_RXCONT = 0x85
LORA_SLEEP = 0x80

SETTINGS = RadioSettings(
    frequency_hz=869_525_000,
    spreading_factor=9,
    bandwidth_hz=250_000,
    coding_rate=7,
    tx_power_dbm=17,
    sync_word=0x34,
    preamble_length=12,
    crc=True,
)


class UnpluggableChip(SimulatedSX127x):
    """A chip whose SPI fault survives RST pulses, like a module that is absent or unpowered.

    (The simulated chip clears every fault on reset, which fits a latched-up chip but not a
    missing one.)
    """

    def reset(self) -> None:
        fault = self.fail_mode
        super().reset()
        if fault in ("zeros", "ones"):
            self.fail_mode = fault


class Received:
    def __init__(self) -> None:
        self.packets: asyncio.Queue[RxPacket] = asyncio.Queue()
        self.threads: set[str] = set()

    def __call__(self, packet: RxPacket) -> None:
        self.threads.add(threading.current_thread().name)
        self.packets.put_nowait(packet)

    async def next(self) -> RxPacket:
        return await asyncio.wait_for(self.packets.get(), 3.0)


MakeRadio = Callable[..., Awaitable[Sx127xRadio]]


@pytest.fixture
async def chip() -> UnpluggableChip:
    return UnpluggableChip(asyncio.get_running_loop(), name="gateway chip")


@pytest.fixture(params=["in_process", "socket"])
async def make_radio(request, chip) -> AsyncIterator[MakeRadio]:
    """Builds radios on ``chip`` through the in-process backend or a ChipServer socket."""
    server: ChipServer | None = None
    radios: list[Sx127xRadio] = []
    if request.param == "socket":
        server = ChipServer(chip)
        await server.start()

    async def make(settings: RadioSettings = SETTINGS, **options) -> Sx127xRadio:
        options.setdefault("tx_margin_s", 0.3)
        options.setdefault("probe_interval_s", 60.0)
        if server is not None:
            radio = Sx127xRadio(
                settings,
                spi_url=server.url,
                dio0_pin=PINS.dio0,
                reset_pin=PINS.reset,
                link_timeout_s=0.5,
                **options,
            )
        else:
            radio = Sx127xRadio(settings, open_bus=lambda: open_local_chip(chip, PINS), **options)
        radios.append(radio)
        return radio

    yield make
    for radio in radios:
        await radio.close()
    if server is not None:
        await server.close()


async def opened(make_radio: MakeRadio, **options) -> tuple[Sx127xRadio, Received]:
    radio = await make_radio(**options)
    received = Received()
    await asyncio.wait_for(radio.open(received), 5.0)
    return radio, received


def assert_registers_hold(chip: SimulatedSX127x, s: RadioSettings) -> None:
    frf = frf_register(s.frequency_hz)
    assert [chip.peek(0x06), chip.peek(0x07), chip.peek(0x08)] == [
        frf >> 16,
        frf >> 8 & 0xFF,
        frf & 0xFF,
    ]
    bw_code = [7800, 10400, 15600, 20800, 31250, 41700, 62500, 125000, 250000, 500000].index(
        s.bandwidth_hz
    )
    assert chip.peek(0x1D) == bw_code << 4 | (s.coding_rate - 4) << 1 | s.implicit_header
    assert chip.peek(0x1E) & 0xFC == s.spreading_factor << 4 | s.crc << 2
    assert chip.peek(0x39) == s.sync_word
    assert (chip.peek(0x20) << 8 | chip.peek(0x21)) == s.preamble_length
    assert chip.op_mode == LORA_RXCONT
    assert chip.peek(0x40) >> 6 == 0b00  # DIO0 = RxDone


async def test_open_programs_every_setting_into_the_chip(make_radio, chip) -> None:
    radio, _ = await opened(make_radio)
    assert radio.healthy()
    assert_registers_hold(chip, SETTINGS)
    assert chip.peek(0x09) == 0x80 | 0x70 | (17 - 2)  # PA_BOOST, 17 dBm
    assert chip.peek(0x4D) == 0x84  # PaDac off
    assert chip.peek(0x26) & 0x08 == 0  # no low data rate optimisation at SF9/250 kHz
    params = chip.air_params()
    assert (params.frequency_hz - SETTINGS.frequency_hz) < 62  # one Frf step
    assert chip.tx_power_dbm() == 17.0


async def test_high_power_and_slow_settings(make_radio, chip) -> None:
    slow = RadioSettings(frequency_hz=868_100_000, spreading_factor=12, tx_power_dbm=20)
    await opened(make_radio, settings=slow)
    assert_registers_hold(chip, slow)
    assert chip.peek(0x09) == 0xFF  # PA_BOOST, OutputPower 15
    assert chip.peek(0x4D) == 0x87  # +20 dBm option
    assert chip.tx_power_dbm() == 20.0
    assert chip.peek(0x26) & 0x08  # low data rate optimisation is mandatory at SF12/125 kHz


async def test_open_resets_the_chip_through_rst(make_radio, chip) -> None:
    chip.xfer([0x0A | 0x80, 0x0F])  # RegPaRamp, which the driver never writes
    await opened(make_radio)
    assert chip.peek(0x0A) == 0x09  # back to its power-on value


async def test_received_packet_has_payload_rssi_and_snr(make_radio, chip) -> None:
    radio, received = await opened(make_radio)
    assert chip.deliver(b"\x01\x02weak", rssi_dbm=-118.0, snr_db=-7.25)
    weak = await received.next()
    assert weak.payload == b"\x01\x02weak"
    assert weak.snr == -7.25
    assert weak.rssi == pytest.approx(-118.0, abs=0.5)  # the register has 1 dB steps
    assert chip.deliver(b"strong", rssi_dbm=-61.0, snr_db=9.5)
    strong = await received.next()
    assert (strong.payload, strong.snr, strong.rssi) == (b"strong", 9.5, -61.0)
    assert received.threads == {threading.main_thread().name}  # handed to the loop's thread
    assert radio.counters["rx_packets"] == 2


class HandOverCountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that counts the callbacks other threads hand it (its wake-ups)."""

    def __init__(self) -> None:
        super().__init__()
        self.handed_over = 0
        self.errors: list[dict[str, Any]] = []
        self.set_exception_handler(lambda loop, context: self.errors.append(context))

    def call_soon_threadsafe(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        self.handed_over += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def burst_payload(index: int) -> bytes:
    return bytes([index]) * (8 + index)  # 20 of them wrap around the 256-byte FIFO


async def burst_while_the_loop_stands_still(
    frames: int, on_receive: Callable[[RxPacket], None]
) -> tuple[list[tuple[float, float]], int]:
    """Open a radio on a chip in this process and let ``frames`` packets arrive back to back
    while the loop is held up; return (before, after) each packet was taken off the chip and
    how many callbacks other threads handed the loop meanwhile."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, HandOverCountingLoop)
    chip = SimulatedSX127x(loop, name="gateway chip")
    radio = Sx127xRadio(
        SETTINGS, open_bus=lambda: open_local_chip(chip, PINS), probe_interval_s=60.0
    )
    await radio.open(on_receive)
    taken_at: list[tuple[float, float]] = []
    burst_over = threading.Event()

    def arrive_back_to_back() -> None:
        try:
            for index in range(frames):
                before = time.monotonic()
                chip.deliver(burst_payload(index), rssi_dbm=-40.0 - index, snr_db=index / 4)
                deadline = before + 5.0
                while radio.counters["rx_packets"] <= index and time.monotonic() < deadline:
                    time.sleep(0.0005)
                taken_at.append((before, time.monotonic()))
        finally:
            burst_over.set()

    try:
        handed_before = loop.handed_over
        sender = threading.Thread(target=arrive_back_to_back, name="burst")
        sender.start()
        burst_over.wait(30.0)  # the loop stands still, as in a long commit, until the burst ends
        sender.join()
        handed_over = loop.handed_over - handed_before
        await asyncio.sleep(0)  # the loop runs what it was handed
        await asyncio.sleep(0)
    finally:
        await radio.close()
    assert radio.counters["rx_packets"] == frames
    return taken_at, handed_over


def run_on_counting_loop(main: Callable[[], Awaitable[None]]) -> None:
    loop = HandOverCountingLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_burst_reaches_the_loop_in_one_wake_up_in_order_with_own_stamps() -> None:
    frames = 20
    packets: list[RxPacket] = []

    async def main() -> None:
        taken_at, handed_over = await burst_while_the_loop_stands_still(frames, packets.append)
        assert [packet.payload for packet in packets] == [burst_payload(i) for i in range(frames)]
        assert [(packet.rssi, packet.snr) for packet in packets] == [
            (-40.0 - i, i / 4) for i in range(frames)
        ]
        for packet, (before, after) in zip(packets, taken_at, strict=True):
            assert before <= packet.t_mono <= after  # stamped at its own RxDone
        assert handed_over == 1  # one wake-up for the whole burst, not one per packet

    run_on_counting_loop(main)


def test_a_failing_receive_handler_loses_no_other_packet_of_the_burst() -> None:
    packets: list[RxPacket] = []

    def on_receive(packet: RxPacket) -> None:
        if packet.payload == burst_payload(1):
            raise ValueError("handler bug")
        packets.append(packet)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, HandOverCountingLoop)
        await burst_while_the_loop_stands_still(4, on_receive)
        assert [packet.payload for packet in packets] == [burst_payload(i) for i in (0, 2, 3)]
        assert [type(error.get("exception")) for error in loop.errors] == [ValueError]

    run_on_counting_loop(main)


async def test_crc_errors_are_counted_and_dropped(make_radio, chip) -> None:
    radio, received = await opened(make_radio)
    assert chip.deliver(b"corrupted", crc_error=True)
    await wait_until(lambda: radio.counters["crc_errors"] == 1)
    assert chip.deliver(b"fine")
    assert (await received.next()).payload == b"fine"
    assert received.packets.empty()
    assert radio.counters["crc_errors"] == 1


async def test_transmit_returns_after_tx_done_and_listens_again(make_radio, chip) -> None:
    radio, received = await opened(make_radio)
    airtime = await radio.transmit(b"downlink")
    expected = time_on_air_s(8, 9, 250_000, 7, 12)
    assert airtime == pytest.approx(expected)
    assert [record.payload for record in chip.tx_history] == [b"downlink"]
    sent = chip.tx_history[0]
    assert (sent.params.spreading_factor, sent.params.sync_word) == (9, 0x34)
    assert sent.airtime_s == pytest.approx(expected)
    assert chip.op_mode == LORA_RXCONT
    assert chip.peek(0x12) == 0  # TxDone cleared
    assert chip.deliver(b"uplink after downlink")
    assert (await received.next()).payload == b"uplink after downlink"
    assert await radio.transmit(b"again") == pytest.approx(time_on_air_s(5, 9, 250_000, 7, 12))


async def test_idle_radio_does_not_poll_the_bus(make_radio, chip) -> None:
    await opened(make_radio)
    before = chip.stats.spi_transfers
    await asyncio.sleep(0.3)
    assert chip.stats.spi_transfers == before


@pytest.mark.parametrize(("fault", "reads"), [("zeros", "0x00"), ("ones", "0xff")])
async def test_missing_chip_is_reported_at_open(make_radio, chip, fault, reads) -> None:
    chip.fail_mode = fault
    radio = await make_radio()
    with pytest.raises(ChipNotFound, match=f"every register reads {reads}"):
        await asyncio.wait_for(radio.open(Received()), 5.0)
    assert not radio.healthy()
    chip.fail_mode = None
    await asyncio.wait_for(radio.open(Received()), 5.0)  # the same radio opens once it is there
    assert radio.healthy()


async def test_stuck_dio0_during_tx_raises_then_resets_and_recovers(make_radio, chip) -> None:
    radio, received = await opened(make_radio)
    chip.fail_mode = "stuck_dio0"
    with pytest.raises(RadioError, match="TxDone did not come"):
        await asyncio.wait_for(radio.transmit(b"lost"), 5.0)
    assert radio.counters["tx_timeouts"] == 1
    assert radio.counters["resets"] == 1
    assert chip.fail_mode is None  # the RST pulse reached the chip
    assert_registers_hold(chip, SETTINGS)  # and the settings were written again
    assert radio.healthy()
    assert await radio.transmit(b"works again") > 0
    assert chip.deliver(b"and receives")
    assert (await received.next()).payload == b"and receives"


async def test_silent_chip_turns_unhealthy_and_recovers(make_radio, chip) -> None:
    radio, received = await opened(make_radio, probe_interval_s=0.05)
    chip.fail_mode = "zeros"
    await wait_until(lambda: not radio.healthy())
    with pytest.raises(ChipNotFound):
        await asyncio.wait_for(radio.transmit(b"x"), 5.0)
    chip.fail_mode = None
    chip.reset()  # it comes back from a brown-out with power-on registers
    await wait_until(radio.healthy)
    assert_registers_hold(chip, SETTINGS)
    assert chip.deliver(b"back")
    assert (await received.next()).payload == b"back"


async def test_reconfigure_at_runtime(make_radio, chip) -> None:
    radio, received = await opened(make_radio)
    new = RadioSettings(frequency_hz=433_175_000, spreading_factor=7, sync_word=0x12, crc=False)
    await radio.reconfigure(new)
    assert radio.settings == new
    assert_registers_hold(chip, new)
    assert chip.deliver(b"on 433", rssi_dbm=-100.0, snr_db=5.0)
    packet = await received.next()
    assert (packet.payload, packet.rssi) == (b"on 433", -100.0)  # LF port offset
    with pytest.raises(RadioError, match="spreading_factor 6 needs implicit_header"):
        await radio.reconfigure(RadioSettings(spreading_factor=6))
    assert radio.settings == new
    assert_registers_hold(chip, new)


async def test_close_puts_the_chip_to_sleep(make_radio, chip) -> None:
    radio, _ = await opened(make_radio)
    await radio.close()
    assert chip.op_mode == LORA_SLEEP
    assert not radio.healthy()
    with pytest.raises(RadioError, match="not open"):
        await radio.transmit(b"x")


async def test_bad_payloads_are_refused(make_radio) -> None:
    radio, _ = await opened(make_radio)
    for payload in (b"", bytes(256)):
        with pytest.raises(RadioError, match="payload must be"):
            await radio.transmit(payload)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


# --- pieces that need no chip ---


def test_pylora_is_imported_behind_stand_ins_that_are_then_removed() -> None:
    pylora = load_pylora()
    from SX127x import board_config

    assert board_config.GPIO.__name__ == "RPi.GPIO"
    assert board_config.GPIO is not sys.modules.get("RPi.GPIO")
    assert "spidev" not in sys.modules or sys.modules["spidev"] is not board_config.spidev
    assert pylora.BOARD is board_config.BOARD


def test_settings_from_config_and_bad_settings() -> None:
    section = RadioSection(driver="sx127x", spi="spidev://1.2", spreading_factor=10)
    settings = radio_driver_settings(Config(radio=section))
    assert isinstance(settings, Sx127xSettings)
    radio = Sx127xRadio.from_settings(settings)
    assert radio.settings.spreading_factor == 10
    assert (radio.pins.spi_bus, radio.pins.spi_cs, radio.pins.dio0) == (1, 2, 25)
    with pytest.raises(RadioError, match=r"coding_rate must be 5\.\.8"):
        Sx127xRadio(RadioSettings(coding_rate=9))
    with pytest.raises(RadioError, match=r"expected spidev://BUS\.CS or sim://HOST:PORT"):
        Sx127xRadio(SETTINGS, spi_url="tcp://x")


def test_snr_register_is_signed_quarter_db() -> None:
    assert [packet_snr_db(v) for v in (0x00, 0x26, 0x7F, 0x80, 0xE3, 0xFF)] == [
        0.0,
        9.5,
        31.75,
        -32.0,
        -7.25,
        -0.25,
    ]


async def test_hardware_backend_needs_its_libraries() -> None:
    radio = Sx127xRadio(SETTINGS, spi_url="spidev://0.0")
    try:
        import spidev  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="spidev is not installed"):
            await radio.open(Received())
        assert not radio.healthy()
    else:
        pytest.skip("spidev is installed here")


async def test_sim_world_going_away_and_coming_back(chip) -> None:
    server = ChipServer(chip)
    await server.start()
    port = server.port
    radio = Sx127xRadio(SETTINGS, spi_url=server.url, link_timeout_s=0.5, tx_margin_s=0.3)
    received = Received()
    try:
        await asyncio.wait_for(radio.open(received), 5.0)
        await server.close()
        with pytest.raises(RadioError, match=r"sim chip at 127\.0\.0\.1:\d+"):
            await asyncio.wait_for(radio.transmit(b"nobody there"), 5.0)
        assert not radio.healthy()
        chip.reset()  # the world restarts with a fresh chip state
        server = ChipServer(chip, port=port)
        await server.start()
        assert await asyncio.wait_for(radio.transmit(b"back"), 5.0) > 0  # resets, sets up, sends
        assert radio.healthy()
        assert_registers_hold(chip, SETTINGS)
        assert chip.deliver(b"uplink")
        assert (await received.next()).payload == b"uplink"
    finally:
        await radio.close()
        await server.close()


class FakeBoard:
    """``spidev`` and ``RPi.GPIO`` modules wired to a simulated chip: the lowest hardware level.

    GPIO edge callbacks run on one thread of the module's own, as RPi.GPIO's do.
    """

    def __init__(self, chip: SimulatedSX127x) -> None:
        self.chip = chip
        self.calls: list[tuple] = []
        self.callbacks: dict[int, Callable[[int], None]] = {}
        self.events: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="fake-rpi-gpio", daemon=True)
        self.thread.start()
        chip.on_dio0 = lambda level: self.events.put(PINS.dio0) if level else None
        board = self

        class SpiDev:
            def open(self, bus: int, cs: int) -> None:
                board.calls.append(("spi_open", bus, cs))

            def xfer(self, data: list[int]) -> list[int]:
                return board.chip.xfer(data)

            def close(self) -> None:
                board.calls.append(("spi_close",))

        self.spidev = types.ModuleType("spidev")
        self.spidev.SpiDev = SpiDev
        gpio = types.ModuleType("RPi.GPIO")
        gpio.BCM, gpio.OUT, gpio.IN, gpio.RISING, gpio.PUD_OFF, gpio.PUD_DOWN = 11, 0, 1, 31, 20, 21
        gpio.setwarnings = lambda flag: None
        gpio.setmode = lambda mode: self.calls.append(("setmode", mode))
        gpio.setup = lambda pin, direction, pull_up_down=20: self.calls.append(
            ("setup", pin, direction, pull_up_down)
        )
        gpio.output = self._output
        gpio.input = lambda pin: int(chip.dio0) if pin == PINS.dio0 else 0
        gpio.add_event_detect = self._add_event_detect
        gpio.remove_event_detect = lambda pin: self.callbacks.pop(pin, None)
        gpio.cleanup = lambda pins=None: self.calls.append(("cleanup", pins))
        self.gpio = gpio
        self.rpi = types.ModuleType("RPi")
        self.rpi.GPIO = gpio
        self.rpi.__path__ = []

    def _output(self, pin: int, value: int) -> None:
        self.calls.append(("output", pin, value))
        if pin == PINS.reset and value and ("output", pin, 0) == self.calls[-2]:
            self.chip.reset()

    def _add_event_detect(self, pin: int, edge: int, callback=None) -> None:
        assert edge == 31
        self.callbacks[pin] = callback

    def _run(self) -> None:
        while (pin := self.events.get()) is not None:
            if (callback := self.callbacks.get(pin)) is not None:
                callback(pin)

    def stop(self) -> None:
        self.events.put(None)
        self.thread.join(2.0)


async def test_hardware_backend_on_fake_spidev_and_rpi_gpio(chip, monkeypatch) -> None:
    board = FakeBoard(chip)
    monkeypatch.setitem(sys.modules, "spidev", board.spidev)
    monkeypatch.setitem(sys.modules, "RPi", board.rpi)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", board.gpio)
    radio = Sx127xRadio(SETTINGS, spi_url="spidev://0.1", dio0_pin=PINS.dio0, reset_pin=PINS.reset)
    received = Received()
    try:
        await asyncio.wait_for(radio.open(received), 5.0)
        assert ("spi_open", 0, 1) in board.calls
        assert ("setmode", 11) in board.calls
        assert ("setup", PINS.dio0, 1, 21) in board.calls  # input, pulled down
        assert ("output", PINS.reset, 0) in board.calls  # the reset pulse
        assert_registers_hold(chip, SETTINGS)
        assert chip.deliver(b"over real-style GPIO", rssi_dbm=-70.0, snr_db=6.0)
        assert (await received.next()).payload == b"over real-style GPIO"
        assert await radio.transmit(b"tx") > 0
        assert sys.modules["RPi.GPIO"] is board.gpio  # the adapter put back what it found
    finally:
        await radio.close()
        board.stop()
    assert ("cleanup", [PINS.reset, PINS.dio0]) in board.calls
    assert ("spi_close",) in board.calls
    assert PINS.dio0 not in board.callbacks
