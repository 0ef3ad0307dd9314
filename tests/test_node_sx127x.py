"""The node library's SX127x driver (node/sx127x.py) on simulated SX1276 chips, wired as a
board's machine.SPI / machine.Pin (drivers/sim/node_bus.py), against the gateway's own driver
(drivers/radio/sx127x.py) on another chip of the same medium."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from drivers.radio.base import RadioSettings, RxPacket
from drivers.radio.spi import Pins
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio, frf_register
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.medium import RfMedium
from drivers.sim.node_bus import BusError, wire
from node.radio import time_on_air_s
from node.sx127x import ChipNotFound, Sx127x
from tests.micropython_fixtures import CBOR2, NODE_LIBRARY, run_micropython

FREQUENCY_HZ = 869_525_000
SETTINGS = RadioSettings(frequency_hz=FREQUENCY_HZ, spreading_factor=7, bandwidth_hz=125_000)


class Air:
    """A medium, the gateway's driver on its chip at the origin, node chips around it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.medium = RfMedium(self.loop, seed=3)
        self.gateway_chip = SimulatedSX127x(self.loop, self.medium, name="gateway")
        self.heard: list[RxPacket] = []
        chip = self.gateway_chip
        self.gateway = Sx127xRadio(
            SETTINGS,
            dio0_pin=25,
            reset_pin=17,
            open_bus=lambda: open_local_chip(chip, Pins(dio0=25, reset=17)),
        )

    def node(self, distance_m: float = 100.0, name: str = "node") -> tuple[Sx127x, SimulatedSX127x]:
        chip = SimulatedSX127x(self.loop, self.medium, position=(distance_m, 0.0), name=name)
        spi, cs, reset, dio0 = wire(chip)
        radio = Sx127x(spi, cs, reset, dio0, sleep_ms=lambda ms: None)
        radio.begin()
        radio.configure(FREQUENCY_HZ, 7, 125_000, 5, 14)
        return radio, chip


@pytest.fixture
async def air() -> AsyncIterator[Air]:
    air = Air()
    await air.gateway.open(air.heard.append)
    yield air
    await air.gateway.close()


async def until(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.002)


async def test_settings_land_in_the_registers(air: Air) -> None:
    radio, chip = air.node()
    params = chip.air_params()
    frf = (chip.peek(0x06) << 16) | (chip.peek(0x07) << 8) | chip.peek(0x08)
    assert frf == frf_register(FREQUENCY_HZ)  # the step the gateway's driver takes
    assert (params.spreading_factor, params.bandwidth_hz) == (7, 125_000)
    assert (params.coding_rate, params.sync_word, params.preamble_length) == (5, 0x12, 8)
    assert params.explicit_header and params.crc and not params.low_data_rate
    assert chip.tx_power_dbm() == 14.0
    radio.configure(FREQUENCY_HZ, 12, 125_000, 8, 20, preamble=12, sync_word=0x34)
    params = chip.air_params()
    assert (params.spreading_factor, params.coding_rate, params.sync_word) == (12, 8, 0x34)
    assert params.preamble_length == 12 and params.low_data_rate  # 32 ms symbols
    assert chip.tx_power_dbm() == 20.0


async def test_invert_iq_registers_follow_the_protocol_table(air: Air) -> None:
    """docs/protocol.md, Air: node transmitting 0x27 / 0x1D, node receiving 0x67 / 0x19."""
    radio, chip = air.node()
    radio.start_receive()
    assert (chip.peek(0x33), chip.peek(0x3B)) == (0x67, 0x19)
    radio.start_transmit(b"\x01")
    assert (chip.peek(0x33), chip.peek(0x3B)) == (0x27, 0x1D)


async def test_an_uplink_reaches_the_gateway_and_a_downlink_the_node(air: Air) -> None:
    radio, _chip = air.node(distance_m=300.0)
    started = air.loop.time()
    radio.start_transmit(b"uplink frame")
    assert not radio.tx_finished()
    await until(radio.tx_finished)
    assert air.loop.time() - started >= time_on_air_s(12, 7, 125_000, 5, 8)
    await until(lambda: air.heard)
    assert [packet.payload for packet in air.heard] == [b"uplink frame"]

    radio.start_receive()
    await air.gateway.transmit(b"downlink frame")
    packet = radio.received()
    assert packet is not None
    payload, rssi, snr = packet
    assert payload == b"downlink frame"
    assert snr == 10.0  # a strong signal: the SX127x's estimate saturates near +10 dB
    assert -120.0 < rssi < -30.0
    assert radio.received() is None  # once
    assert radio.packets == 1


async def test_nodes_do_not_hear_each_other_and_the_gateway_not_a_downlink(air: Air) -> None:
    talker, _ = air.node(name="talker")
    listener, _ = air.node(distance_m=150.0, name="listener")
    listener.start_receive()
    talker.start_transmit(b"an uplink")
    await until(talker.tx_finished)
    await until(lambda: air.heard)
    assert listener.received() is None and not listener.receiving()
    assert air.medium.stats.delivered == 1  # the gateway alone


async def test_a_weak_downlink_carries_a_negative_snr_in_its_rssi(air: Air) -> None:
    radio, chip = air.node(distance_m=6000.0)
    radio.start_receive()
    await air.gateway.transmit(b"far away")
    packet = radio.received()
    assert packet is not None
    _payload, rssi, snr = packet
    raw_snr = chip.peek(0x19)
    assert snr == (raw_snr - 256) / 4 < 0  # a signed byte in quarter dB
    assert rssi == -157 + chip.peek(0x1A) + snr  # datasheet 5.5.5, above 525 MHz


async def test_a_frame_arriving_reports_receiving_until_it_is_complete(air: Air) -> None:
    radio, _ = air.node()
    radio.start_receive()
    assert not radio.receiving()
    sending = asyncio.create_task(air.gateway.transmit(bytes(60)))
    await until(radio.receiving)
    assert radio.received() is None
    await sending
    assert not radio.receiving()
    assert radio.received() is not None


async def test_a_payload_crc_error_is_dropped_and_counted(air: Air) -> None:
    radio, chip = air.node()
    radio.start_receive()
    assert chip.deliver(b"damaged", crc_error=True)
    assert radio.received() is None
    assert radio.crc_errors == 1 and radio.packets == 0
    assert chip.deliver(b"whole")
    assert radio.received() == (b"whole", -60.0, 9.0)


async def test_dio0_rises_on_tx_done_and_rx_done(air: Air) -> None:
    radio, _ = air.node()
    edges: list[float] = []
    radio.on_dio0(lambda: edges.append(air.loop.time()))
    radio.start_transmit(b"x" * 20)
    await until(lambda: edges)
    assert radio.tx_finished()
    radio.start_receive()
    await air.gateway.transmit(b"answer")
    await until(lambda: len(edges) == 2)
    assert radio.received() is not None


async def test_no_chip_and_a_chip_that_does_not_answer(air: Air) -> None:
    _radio, chip = air.node()
    spi, cs, reset, _dio0 = wire(chip)
    chip.fail_mode = "zeros"
    with pytest.raises(ChipNotFound, match="0x0"):
        Sx127x(spi, cs).begin()
    chip.fail_mode = None
    with pytest.raises(BusError):
        spi.write_readinto(b"\x42\x00", bytearray(2))  # chip select left high
    radio = Sx127x(spi, cs, reset, sleep_ms=lambda ms: None)
    radio.reset()  # SPI reads 0x00 for 5 ms after the pulse on the simulated clock
    with pytest.raises(ChipNotFound):
        radio.begin()
    await asyncio.sleep(0.006)
    radio.begin()
    with pytest.raises(ValueError):
        Sx127x(spi, cs, reset).reset()  # a reset needs a way to wait


# --- the same driver in a real MicroPython ---------------------------------------------------

REPLAY_IN_MICROPYTHON = """
import json
from node.sx127x import Sx127x

class ReplayedSpi:
    '''machine.SPI answering as the simulated chip answered CPython: every byte the driver
    clocks out must be the one CPython's run clocked out.'''

    def __init__(self, transcript):
        self.transcript = transcript
        self.done = 0

    def write_readinto(self, out, into):
        sent, reply = self.transcript[self.done]
        if bytes(out).hex() != sent:
            raise AssertionError("transfer " + str(self.done) + ": " + bytes(out).hex())
        answer = bytes.fromhex(reply)
        for index in range(len(answer)):
            into[index] = answer[index]
        self.done += 1

class Pin:
    def value(self, level=None):
        return 1

spi = ReplayedSpi(INPUTS["transcript"])
radio = Sx127x(spi, Pin())
radio.begin()
radio.configure(869525000, 9, 125000, 5, 17, 8, 0x12)
radio.start_transmit(b"uplink from a board")
finished = radio.tx_finished()
radio.start_receive()
packet = radio.received()
print(json.dumps({"finished": finished, "payload": packet[0].hex(), "rssi": packet[1],
                  "snr": packet[2], "transfers": spi.done, "left": len(spi.transcript)}))
"""


async def test_micropython_clocks_out_the_same_bytes_and_reads_the_same_packet(air: Air) -> None:
    chip = SimulatedSX127x(air.loop, air.medium, position=(800.0, 0.0), name="recorded")
    spi, cs, _reset, _dio0 = wire(chip)
    transcript: list[tuple[str, str]] = []

    class RecordingSpi:
        def write_readinto(self, out: bytes | bytearray, into: bytearray) -> None:
            spi.write_readinto(out, into)
            transcript.append((bytes(out).hex(), bytes(into).hex()))

    radio = Sx127x(RecordingSpi(), cs)
    radio.begin()
    radio.configure(FREQUENCY_HZ, 9, 125_000, 5, 17, 8, 0x12)
    radio.start_transmit(b"uplink from a board")
    await asyncio.sleep(time_on_air_s(19, 9, 125_000, 5, 8) + 0.01)
    assert radio.tx_finished()
    radio.start_receive()
    assert chip.deliver(b"downlink", rssi_dbm=-131.5, snr_db=-6.25)
    packet = radio.received()
    assert packet is not None

    inputs = {"transcript": transcript}
    prelude = "import json\nINPUTS = json.loads(" + repr(json.dumps(inputs)) + ")\n"
    printed = run_micropython(prelude + REPLAY_IN_MICROPYTHON, [NODE_LIBRARY, CBOR2])
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["transfers"] == result["left"] == len(transcript)
    assert result["finished"] is True
    assert (bytes.fromhex(result["payload"]), result["rssi"], result["snr"]) == packet
