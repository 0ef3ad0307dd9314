"""The simulated SX1276 at register level: reset values, reset timing, OCP, ValidHeader, DIO1.

Two kinds of client: the gateway's own driver (``Sx127xRadio``) and plain register sequences
written the way another driver writes them (``RawSx1276``: Adafruit's RFM9x access pattern),
both through the simulated SPI (a chip in this process, or ``sim://``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest

import drivers.sim.chip
from drivers.radio.base import RadioError, RadioSettings
from drivers.radio.spi import RISING, Backend, Pins
from drivers.radio.spi_simlink import (
    DIO0_EDGE,
    DIO_EDGE,
    HELLO,
    PROTOCOL_HELLO_V1,
    XFER,
    SimChipLink,
    SimGpio,
    SimSpiBus,
    encode_message,
)
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from drivers.sim.medium import RfMedium
from drivers.sim.node_link import MediumNodeLink
from tests.sx1276_raw_fixtures import (
    CAD,
    REG_DIO_MAPPING_1,
    REG_IRQ_FLAGS,
    REG_OCP,
    RX_CONTINUOUS,
    RX_SINGLE,
    STANDBY,
    RawSx1276,
)

PINS = Pins(dio0=25, reset=17, dio1=24)
FREQUENCY_HZ = 868_100_000

# The SX1276 datasheet's register tables (6.1, 6.2, 6.4; "Reset" values of Table 41), as read
# over SPI after power-on or a reset. Addresses not listed read 0x00.
COMMON = {
    0x01: 0x09, 0x02: 0x1A, 0x03: 0x0B, 0x04: 0x00, 0x05: 0x52, 0x06: 0x6C, 0x07: 0x80,
    0x08: 0x00, 0x09: 0x4F, 0x0A: 0x09, 0x0B: 0x2B, 0x0C: 0x20, 0x40: 0x00, 0x41: 0x00,
    0x42: 0x12, 0x44: 0x2D, 0x4B: 0x09, 0x4D: 0x84, 0x61: 0x13, 0x62: 0x0E, 0x63: 0x5B,
    0x64: 0xDB, 0x70: 0xD0,
}  # fmt: skip
FSK_PAGE = {
    0x0D: 0x08, 0x0E: 0x02, 0x0F: 0x0A, 0x10: 0xFF, 0x12: 0x15, 0x13: 0x0B, 0x14: 0x28,
    0x15: 0x0C, 0x16: 0x12, 0x17: 0x47, 0x18: 0x32, 0x19: 0x3E, 0x1F: 0x40, 0x24: 0x05,
    0x26: 0x03, 0x27: 0x93, 0x28: 0x55, 0x29: 0x55, 0x2A: 0x55, 0x2B: 0x55, 0x2C: 0x55,
    0x2D: 0x55, 0x2E: 0x55, 0x2F: 0x55, 0x30: 0x90, 0x31: 0x40, 0x32: 0x40, 0x35: 0x0F,
    0x39: 0xF5, 0x3A: 0x20, 0x3B: 0x82, 0x3D: 0x02, 0x3E: 0x80, 0x3F: 0x40,
}  # fmt: skip
LORA_PAGE = {
    0x0E: 0x80, 0x18: 0x10, 0x1D: 0x72, 0x1E: 0x70, 0x1F: 0x64, 0x21: 0x08, 0x22: 0x01,
    0x23: 0xFF, 0x26: 0x04, 0x31: 0xC3, 0x33: 0x27, 0x37: 0x0A, 0x39: 0x12, 0x3B: 0x1D,
}  # fmt: skip


def fsk_mode_image() -> list[int]:
    """0x01..0x7F read in one burst in FSK mode: common registers and the FSK page."""
    image = {**COMMON, **FSK_PAGE}
    return [image.get(address, 0x00) for address in range(0x01, 0x80)]


def lora_page_image() -> list[int]:
    return [LORA_PAGE.get(address, 0x00) for address in range(0x0D, 0x40)]


OpenBackend = Callable[[], Backend]


@pytest.fixture
async def chip() -> SimulatedSX127x:
    return SimulatedSX127x(asyncio.get_running_loop(), name="chip")


@pytest.fixture(params=["in_process", "sim"])
async def open_bus(request, chip) -> AsyncIterator[OpenBackend]:
    """Opens a backend on ``chip``: in this process, or over ``sim://`` (blocking: thread)."""
    server: ChipServer | None = None
    backends: list[Backend] = []
    if request.param == "sim":
        server = ChipServer(chip)
        await server.start()

    def open_backend() -> Backend:
        if server is None:
            backend = open_local_chip(chip, PINS)
        else:
            link = SimChipLink("127.0.0.1", server.port, reply_timeout_s=2.0)
            backend = Backend(SimSpiBus(link), SimGpio(link, PINS), "sim")
        backends.append(backend)
        return backend

    yield open_backend
    for backend in backends:
        await asyncio.to_thread(backend.close)
    if server is not None:
        await server.close()


# --- reset values and reset timing ------------------------------------------------------------


def read_images(raw: RawSx1276) -> tuple[list[int], list[int]]:
    fsk = raw.read_burst(0x01, 0x7F)
    raw.lora_sleep()
    lora = raw.read_burst(0x0D, 0x40 - 0x0D)
    return fsk, lora


async def test_power_on_values_match_the_datasheet_table(open_bus) -> None:
    raw = await asyncio.to_thread(RawSx1276, await asyncio.to_thread(open_bus), PINS)
    fsk, lora = await asyncio.to_thread(read_images, raw)
    assert fsk == fsk_mode_image()
    assert lora == lora_page_image()


def scribble_then_reset(raw: RawSx1276) -> tuple[list[int], list[int]]:
    """Write every writable register of both pages, reset as Adafruit does, read back."""
    raw.lora_sleep()
    for address in range(0x0D, 0x40):
        if address != 0x12:  # RegIrqFlags clears on write
            raw.write_u8(address, 0xA5)
    raw.write_u8(0x01, 0x00)  # back to FSK through Sleep
    for address in (*range(0x02, 0x0D), *range(0x0D, 0x40), 0x40, 0x41, 0x4D, 0x61, 0x70):
        raw.write_u8(address, 0x5A)
    raw.reset()
    return read_images(raw)


async def test_reset_restores_the_datasheet_table_on_both_pages(open_bus) -> None:
    raw = await asyncio.to_thread(RawSx1276, await asyncio.to_thread(open_bus), PINS)
    await asyncio.to_thread(raw.reset)
    fsk, lora = await asyncio.to_thread(scribble_then_reset, raw)
    assert fsk == fsk_mode_image()
    assert lora == lora_page_image()


STRETCHED_START_S = 0.5


def access_right_after_the_pulse(raw: RawSx1276) -> tuple[int, int, int]:
    raw.pulse_reset()
    version = raw.read_u8(0x42)  # no wait at all: the chip is still starting
    raw.write_u8(0x39, 0x34)  # lost
    time.sleep(STRETCHED_START_S)
    return version, raw.read_u8(0x42), raw.read_u8(0x39)


async def test_spi_is_silent_while_the_chip_starts_after_a_reset_pulse(
    open_bus, chip, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert drivers.sim.chip.MANUAL_RESET_S == 0.005  # datasheet 7.2
    # Stretched, so that both accesses fall inside it however slow the round trip over sim://.
    monkeypatch.setattr(drivers.sim.chip, "MANUAL_RESET_S", STRETCHED_START_S)
    raw = await asyncio.to_thread(RawSx1276, await asyncio.to_thread(open_bus), PINS)
    version_during, version_after, sync_word_fsk_page = await asyncio.to_thread(
        access_right_after_the_pulse, raw
    )
    assert version_during == 0x00
    assert version_after == 0x12
    assert sync_word_fsk_page == 0xF5  # RegTimer1Coef in FSK mode: the write was lost
    assert chip.stats.spi_during_reset >= 2


async def test_the_driver_waits_out_the_reset_time(open_bus, chip) -> None:
    settings = RadioSettings(frequency_hz=FREQUENCY_HZ, tx_power_dbm=14)
    radio = Sx127xRadio(settings, open_bus=open_bus, probe_interval_s=60.0, tx_margin_s=0.3)
    await asyncio.wait_for(radio.open(lambda packet: None), 5.0)
    try:
        await asyncio.wait_for(radio.recover(), 5.0)
        assert radio.healthy()
        assert chip.stats.spi_during_reset == 0
        assert chip.peek(0x39) == settings.sync_word
    finally:
        await radio.close()


# --- over-current protection and PA registers -------------------------------------------------


@pytest.mark.parametrize(
    ("reg_ocp", "imax_ma"),
    [(0x2B, 100.0), (0x20, 45.0), (0x2F, 120.0), (0x30, 130.0), (0x3B, 240.0), (0x3F, 240.0),
     (0x0B, None)],
)  # fmt: skip
async def test_ocp_trim_gives_the_datasheet_current_limit(chip, reg_ocp, imax_ma) -> None:
    chip.xfer([REG_OCP | 0x80, reg_ocp])
    assert chip.ocp_limit_ma() == imax_ma


def adafruit_send_at(raw: RawSx1276, power_dbm: int, ocp: int | None, payload: bytes) -> None:
    raw.reset()
    raw.lora_sleep()
    raw.set_frequency(FREQUENCY_HZ)
    raw.set_mode(STANDBY)
    raw.set_tx_power(power_dbm)
    if ocp is not None:
        raw.write_u8(REG_OCP, ocp)
    raw.send(payload)


def listening_chip(medium: RfMedium, distance_m: float) -> SimulatedSX127x:
    """A second chip in LoRa RX continuous on the same channel, CRC off (the reset value)."""
    listener = SimulatedSX127x(medium.loop, medium, position=(distance_m, 0.0), name="listener")
    frf = int(FREQUENCY_HZ / (32_000_000 / 2**19))
    listener.xfer([0x01 | 0x80, 0x80])
    listener.xfer([0x06 | 0x80, frf >> 16, (frf >> 8) & 0xFF, frf & 0xFF])
    listener.xfer([0x01 | 0x80, 0x85])
    return listener


async def received_power(
    open_bus: OpenBackend, chip: SimulatedSX127x, power_dbm: int, ocp: int | None
) -> tuple[float, float]:
    """Power the chip transmitted with, and that power as a chip 100 m away measured it
    (packet RSSI plus the path loss)."""
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop)
    chip.attach(medium, position=(0.0, 0.0))
    listener = listening_chip(medium, 100.0)
    received: asyncio.Future[None] = loop.create_future()
    listener.on_dio0 = lambda level: level and not received.done() and received.set_result(None)
    raw = await asyncio.to_thread(RawSx1276, await asyncio.to_thread(open_bus), PINS)
    await asyncio.to_thread(adafruit_send_at, raw, power_dbm, ocp, b"power")
    await asyncio.wait_for(received, 3.0)
    packet_rssi = listener.peek(0x1A) - 157  # HF port, SNR >= 0 (datasheet 5.5.5)
    path_loss = medium.path_loss_db(100, listener.air_params().frequency_hz)
    return chip.tx_history[-1].tx_power_dbm, packet_rssi + path_loss


async def test_plus_20_dbm_with_the_reset_ocp_goes_out_limited(open_bus, chip) -> None:
    # Adafruit's driver never writes RegOcp: +20 dBm on PA_BOOST against 100 mA.
    sent, heard = await received_power(open_bus, chip, 23, None)
    assert chip.programmed_tx_power_dbm() == 20.0
    assert sent == pytest.approx(18.3, abs=0.1)
    assert heard == pytest.approx(sent, abs=0.5)  # the medium carried the limited power
    assert chip.stats.tx_ocp_limited == 1


async def test_plus_20_dbm_with_ocp_raised_goes_out_at_20(open_bus, chip) -> None:
    sent, heard = await received_power(open_bus, chip, 23, 0x20 | 17)  # 140 mA
    assert sent == 20.0
    assert heard == pytest.approx(20.0, abs=0.5)
    assert chip.stats.tx_ocp_limited == 0


async def test_pa_boost_without_pa_dac_follows_the_datasheet_formula(open_bus, chip) -> None:
    # Adafruit writes OutputPower = power - 5 with PaDac off too; the datasheet's PA_BOOST
    # formula without PaDac is Pout = 17 - (15 - OutputPower): "+17" comes out at +14 dBm.
    sent, heard = await received_power(open_bus, chip, 17, None)
    assert chip.peek(0x09) & 0x0F == 12 and chip.peek(0x4D) == 0x84
    assert sent == 14.0
    assert heard == pytest.approx(14.0, abs=0.5)
    assert chip.stats.tx_ocp_limited == 0


async def test_the_gateway_driver_raises_ocp_for_20_dbm(chip) -> None:
    settings = RadioSettings(frequency_hz=FREQUENCY_HZ, tx_power_dbm=20)
    radio = Sx127xRadio(settings, open_bus=lambda: open_local_chip(chip, PINS))
    await asyncio.wait_for(radio.open(lambda packet: None), 5.0)
    try:
        await asyncio.wait_for(radio.transmit(b"full power"), 5.0)
        assert chip.tx_history[-1].tx_power_dbm == 20.0
        assert chip.ocp_limit_ma() == 140.0
    finally:
        await radio.close()


async def test_registers_not_modelled_are_noted_once(chip, caplog) -> None:
    caplog.set_level(logging.INFO, logger="drivers.sim.chip")
    chip.xfer([0x0C | 0x80, 0x20])  # RegLna at its reset value: nothing to note
    for value in (0x23, 0x21, 0x23):  # LnaBoostHf on and off
        chip.xfer([0x0C | 0x80, value])
    chip.xfer([0x0A | 0x80, 0x08])  # RegPaRamp
    notes = [record.getMessage() for record in caplog.records]
    assert [note for note in notes if "RegLna" in note] == [
        "chip: RegLna: LNA gain and boost do not change what the simulated receiver hears "
        "(written 0x23)"
    ]
    assert len([note for note in notes if "RegPaRamp" in note]) == 1
    assert chip.peek(0x0C) == 0x23  # accepted and read back
    chip.xfer([0x4D | 0x80, 0x87])  # RegPaDac is modelled: no note
    assert not [note for note in notes if "RegPaDac" in note]


# --- ValidHeader ------------------------------------------------------------------------------


async def test_valid_header_rises_at_the_end_of_the_header_not_at_rx_done(chip) -> None:
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop)
    chip.attach(medium)
    node_settings = RadioSettings(frequency_hz=FREQUENCY_HZ, spreading_factor=9)
    node = MediumNodeLink(medium, node_settings, distance_m=100)
    raw = await asyncio.to_thread(RawSx1276, open_local_chip(chip, PINS), PINS)

    def listen() -> None:
        raw.reset()
        raw.lora_sleep()
        raw.set_frequency(FREQUENCY_HZ)
        raw.write_u8(0x1E, 0x94)  # SF9, CRC on
        raw.write_u8(REG_DIO_MAPPING_1, 0x01)  # DIO0 RxDone, DIO3 ValidHeader
        raw.set_mode(RX_CONTINUOUS)

    await asyncio.to_thread(listen)
    seen: list[tuple[int, float, int, int]] = []

    def on_dio(line: int, level: bool) -> None:
        if level:
            seen.append((line, loop.time(), chip.peek(REG_IRQ_FLAGS), chip.peek(0x18)))

    chip.on_dio = on_dio
    started = loop.time()
    await node.transmit(bytes(40))
    symbol_s = 2**9 / 125_000
    header_at = started + (8 + 4.25 + 8) * symbol_s
    assert [entry[0] for entry in seen] == [3, 0]  # DIO3 (ValidHeader), then DIO0 (RxDone)
    (_, header_time, header_flags, modem_stat), (_, done_time, done_flags, _) = seen
    assert header_flags == 0x10  # ValidHeader alone: RxDone has not come yet
    assert modem_stat & 0x08  # RegModemStat: header info valid
    assert header_at <= header_time < done_time
    assert done_flags == 0x10 | 0x40
    assert raw.read_burst(0x14, 2) == [0, 1]  # RegRxHeaderCnt counted once


# --- DIO1 over sim:// -------------------------------------------------------------------------


@pytest.fixture
async def served(chip) -> AsyncIterator[ChipServer]:
    server = ChipServer(chip)
    await server.start()
    yield server
    await server.close()


async def wait_for_dio1_edge(open_bus: OpenBackend, start: Callable[[RawSx1276], None]) -> int:
    backend = await asyncio.to_thread(open_bus)
    loop = asyncio.get_running_loop()
    edge: asyncio.Future[int] = loop.create_future()

    def on_edge(pin: int) -> None:
        loop.call_soon_threadsafe(lambda: edge.done() or edge.set_result(pin))

    backend.gpio.add_event_detect(PINS.dio1, RISING, on_edge)
    raw = await asyncio.to_thread(RawSx1276, backend, PINS)
    await asyncio.to_thread(start, raw)
    pin = await asyncio.wait_for(edge, 3.0)
    assert await asyncio.to_thread(backend.gpio.input, PINS.dio1) == 1
    return pin


async def test_rx_timeout_arrives_as_a_dio1_edge(open_bus) -> None:
    def rx_single(raw: RawSx1276) -> None:
        raw.reset()
        raw.lora_sleep()
        raw.write_u8(0x1F, 8)  # 8 symbols
        raw.write_u8(REG_DIO_MAPPING_1, 0x00)  # DIO1 RxTimeout
        raw.set_mode(RX_SINGLE)

    assert await wait_for_dio1_edge(open_bus, rx_single) == PINS.dio1


async def test_cad_detected_arrives_as_a_dio1_edge(open_bus, chip) -> None:
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop)
    chip.attach(medium)
    node = MediumNodeLink(medium, RadioSettings(frequency_hz=FREQUENCY_HZ), distance_m=100)
    on_air = asyncio.ensure_future(node.transmit(bytes(60)))
    await asyncio.sleep(0)

    def cad(raw: RawSx1276) -> None:
        raw.reset()
        raw.lora_sleep()
        raw.set_frequency(FREQUENCY_HZ)
        raw.write_u8(REG_DIO_MAPPING_1, 0x80 | 0x20)  # DIO0 CadDone, DIO1 CadDetected
        raw.set_mode(CAD)

    assert await wait_for_dio1_edge(open_bus, cad) == PINS.dio1
    assert chip.peek(REG_IRQ_FLAGS) == 0x04 | 0x01
    await on_air


async def test_a_version_1_client_gets_dio0_edges_only(served, chip) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)

    async def ask(kind: int, body: bytes = b"") -> list[int]:
        """Send one request; the kinds of every message up to and including its reply."""
        writer.write(encode_message(kind, body))
        kinds = []
        while not kinds or kinds[-1] in (DIO0_EDGE, DIO_EDGE):
            (length,) = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), 3.0))
            kinds.append((await reader.readexactly(length))[0])
        return kinds

    assert await ask(HELLO, PROTOCOL_HELLO_V1) == [0x80]
    await ask(XFER, bytes([0x01 | 0x80, 0x80]))  # LoRa sleep
    await ask(XFER, bytes([0x1F | 0x80, 4]))  # RegSymbTimeoutLsb: 4 symbols
    await ask(XFER, bytes([0x01 | 0x80, 0x86]))  # RX single
    while not chip.dio(1):  # RxTimeout on DIO1 (4 ms)
        await asyncio.sleep(0.005)
    # An edge pushed for it would come before the reply to the next request.
    assert await ask(XFER, bytes([0x12, 0])) == [0x81]
    writer.close()


async def test_a_second_driver_on_the_same_chip_is_refused(served, chip) -> None:
    settings = RadioSettings(frequency_hz=FREQUENCY_HZ)
    first = Sx127xRadio(settings, spi_url=served.url, link_timeout_s=2.0)
    second = Sx127xRadio(settings, spi_url=served.url, link_timeout_s=2.0)
    await asyncio.wait_for(first.open(lambda packet: None), 5.0)
    try:
        with pytest.raises(RadioError, match=r"^sim chip at .*: chip server busy: another client"):
            await asyncio.wait_for(second.open(lambda packet: None), 5.0)
        assert first.healthy()
        await asyncio.wait_for(first.transmit(b"still mine"), 5.0)
        assert served.counters["refused"] == 1
    finally:
        await first.close()
