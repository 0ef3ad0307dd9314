"""node/rfm9x.py on Adafruit's real ``adafruit_rfm9x``, its SPI carried by the CircuitPython
stand-ins to a simulated SX1276 served over ``sim://``, on a medium with the gateway's own
driver (``Sx127xRadio``) at the other end: what goes on air, with which I/Q polarity, and what
comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.radio.base import RadioSettings, RxPacket
from drivers.radio.spi import Pins
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from drivers.sim.medium import RfMedium
from node.radio import time_on_air_s
from node.rfm9x import Rfm9xRadio
from tests.circuitpython_fixtures import circuitpython_board

pytest.importorskip("adafruit_rfm9x")

FREQUENCY_HZ = 869_525_000
SETTINGS = RadioSettings(frequency_hz=FREQUENCY_HZ, spreading_factor=7, bandwidth_hz=125_000)
REG_INVERT_IQ, REG_INVERT_IQ2 = 0x33, 0x3B
FRAME = bytes.fromhex("1400000100000007a1636e756d01") + b"\x5a\x5b\x5c\x5d"


@dataclass
class Air:
    medium: RfMedium
    node_chip: SimulatedSX127x
    node: Rfm9xRadio
    gateway: Sx127xRadio
    heard_by_gateway: list[RxPacket]
    open_radio: Callable[..., Any]


async def blocking(call: Callable[..., Any], *args: Any) -> Any:
    """A call into the adapter: its SPI waits on the chip server, which runs on this loop."""
    return await asyncio.to_thread(call, *args)


async def poll(check: Callable[[], Any], what: str, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await blocking(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        await asyncio.sleep(0.005)


@pytest.fixture
async def air() -> AsyncIterator[Air]:
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop, seed=5)
    gateway_chip = SimulatedSX127x(loop, medium, position=(0.0, 0.0), name="gateway")
    node_chip = SimulatedSX127x(loop, medium, position=(120.0, 0.0), name="feather")
    server = ChipServer(node_chip)
    await server.start()
    radios: list[Sx127xRadio] = []

    async def open_radio(chip: SimulatedSX127x, role: str, heard: list[RxPacket]) -> Sx127xRadio:
        pins = Pins(25, 17)
        radio = Sx127xRadio(SETTINGS, open_bus=lambda: open_local_chip(chip, pins), iq_role=role)
        await radio.open(heard.append)
        radios.append(radio)
        return radio

    heard: list[RxPacket] = []
    gateway = await open_radio(gateway_chip, "gateway", heard)
    with circuitpython_board(server.url) as cp:

        def build() -> Rfm9xRadio:
            spi = cp.busio.SPI(cp.board.SCK, MOSI=cp.board.MOSI, MISO=cp.board.MISO)
            cs = cp.digitalio.DigitalInOut(cp.board.RFM9X_CS)
            reset = cp.digitalio.DigitalInOut(cp.board.RFM9X_RST)
            rfm = cp.adafruit_rfm9x.RFM9x(spi, cs, reset, FREQUENCY_HZ / 1e6)
            radio = Rfm9xRadio(rfm)
            radio.configure(FREQUENCY_HZ, 7, 125_000, 5, 14)
            return radio

        node = await blocking(build)
        try:
            yield Air(medium, node_chip, node, gateway, heard, open_radio)
        finally:
            await blocking(node.sleep)
    for radio in radios:
        await radio.close()
    await server.close()


async def test_configure_reaches_the_chip_through_the_driver_and_its_registers(
    air: Air,
) -> None:
    chip = air.node_chip
    await blocking(air.node.configure, 868_300_000, 12, 125_000, 6, 10, 12, 0x34)
    params = chip.air_params()
    assert params.spreading_factor == 12 and params.bandwidth_hz == 125_000
    assert (params.coding_rate, params.preamble_length) == (6, 12)
    assert params.sync_word == 0x34  # adafruit_rfm9x has no sync word setting
    assert params.explicit_header and params.crc
    assert params.low_data_rate  # a 32 ms symbol needs it; the driver leaves it off
    assert abs(params.frequency_hz - 868_300_000) < 62  # one synthesizer step
    assert chip.programmed_tx_power_dbm() == 10

    await blocking(air.node.configure, FREQUENCY_HZ, 7, 125_000, 5, 14)
    assert chip.air_params().sync_word == 0x12 and not chip.air_params().low_data_rate
    assert chip.programmed_tx_power_dbm() == 14
    await blocking(air.node.configure, FREQUENCY_HZ, 7, 125_000, 5, 20)
    assert chip.programmed_tx_power_dbm() == 20
    assert chip.tx_power_dbm() == 20  # not limited by the over-current protection
    with pytest.raises(ValueError, match=r"2\.\.20 dBm"):
        await blocking(air.node.configure, FREQUENCY_HZ, 7, 125_000, 5, 21)


async def test_an_uplink_goes_out_as_it_is_with_normal_iq(air: Air) -> None:
    node, chip = air.node, air.node_chip
    await blocking(node.start_transmit, FRAME)
    # The transmission is under way when start_transmit returns: it does not wait for TxDone.
    assert chip.tx_history and chip.tx_history[-1].payload == FRAME
    assert chip.peek(REG_INVERT_IQ) == 0x27  # bit 0 set: normal I/Q, bits 5-1 as at reset
    assert chip.peek(REG_INVERT_IQ2) == 0x1D
    await poll(node.tx_finished, "TxDone")
    record = chip.tx_history[-1]
    assert record.airtime_s == pytest.approx(time_on_air_s(len(FRAME), 7, 125_000, 5, 8))
    await poll(lambda: air.heard_by_gateway, "frame at the gateway")
    assert [packet.payload for packet in air.heard_by_gateway] == [FRAME]
    assert await blocking(node.tx_finished)  # and it stays finished


async def test_a_downlink_is_heard_inverted_and_another_nodes_uplink_is_not(air: Air) -> None:
    node, chip = air.node, air.node_chip
    other = await air.open_radio(
        SimulatedSX127x(asyncio.get_running_loop(), air.medium, position=(0.0, 80.0), name="other"),
        "node",
        [],
    )
    await blocking(node.start_receive)
    assert chip.peek(REG_INVERT_IQ) == 0x67  # bit 6 set: receives inverted I/Q
    assert chip.peek(REG_INVERT_IQ2) == 0x19

    await other.transmit(b"an uplink of another node")  # normal I/Q, as every uplink
    await asyncio.sleep(0.05)
    assert await blocking(node.received) is None

    downlink = bytes(range(0x16, 0x16 + 20))
    await air.gateway.transmit(downlink)
    payload, rssi_dbm, snr_db = await poll(node.received, "the downlink")
    assert payload == downlink
    assert -140 < rssi_dbm < -30
    assert snr_db <= 10
    assert node.packets == 1 and node.crc_errors == 0
    assert await blocking(node.received) is None  # each packet once
