"""What a simulated SX1276 hears, at register level: the gateway's driver against the chip, and
other drivers' register sequences written as plain SPI transfers through the simulated bus.

``AdafruitStyleRadio`` writes registers the way adafruit_rfm9x does (one transfer per register,
read-modify-write of bit fields, RxDone polled in RegIrqFlags, the CRC flag checked only with
its CRC on); ``invert_rx_iq`` is Semtech's reference sequence for receiving inverted I/Q.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.radio.base import RadioSettings, RxPacket
from drivers.radio.spi import Pins, SpiBus
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.medium import (
    PACKET_SNR_CEILING_DB,
    SNR_FLOOR_DB,
    AirParams,
    RfMedium,
    sensitivity_dbm,
)
from drivers.sim.node_link import MediumNodeLink
from gateway.config import MetricsSection
from gateway.console.formatting import format_status
from gateway.metrics import MetricsServer
from gateway.state import GatewayState

PINS = Pins(dio0=25, reset=17)
FREQUENCY_HZ = 868_100_000
# adafruit_rfm9x's modem defaults (RadioHead Bw125Cr45Sf128), with its CRC switched on.
SETTINGS = RadioSettings(frequency_hz=FREQUENCY_HZ, spreading_factor=7, bandwidth_hz=125_000)
REG_OP_MODE, REG_IRQ_FLAGS, REG_PAYLOAD_LENGTH = 0x01, 0x12, 0x22
RX_DONE, CRC_ERROR, VALID_HEADER = 0x40, 0x20, 0x10
SLEEP, STANDBY, TX, RX_CONTINUOUS = 0b000, 0b001, 0b011, 0b101


class AdafruitStyleRadio:
    """A second driver's register traffic: adafruit_rfm9x's sequences over the simulated SPI."""

    def __init__(self, chip: SimulatedSX127x) -> None:
        self.chip = chip
        self.spi: SpiBus = open_local_chip(chip, PINS).spi

    def read(self, address: int) -> int:
        return self.spi.xfer([address & 0x7F, 0])[1]

    def write(self, address: int, value: int) -> None:
        self.spi.xfer([address | 0x80, value & 0xFF])

    def write_bits(self, address: int, offset: int, bits: int, value: int) -> None:
        mask = ((1 << bits) - 1) << offset
        self.write(address, (self.read(address) & ~mask) | ((value << offset) & mask))

    def mode(self, mode: int) -> None:
        self.write_bits(REG_OP_MODE, 0, 3, mode)

    async def begin(self, *, crc: bool = True) -> None:
        self.chip.reset()
        await asyncio.sleep(0.006)  # adafruit waits 5 ms after releasing RST
        assert self.read(0x42) == 0x12
        self.mode(SLEEP)
        self.write_bits(REG_OP_MODE, 7, 1, 1)  # LongRangeMode, in Sleep
        self.write_bits(REG_OP_MODE, 3, 1, 0)  # LowFrequencyModeOn off above 525 MHz
        self.write(0x0E, 0x00)
        self.write(0x0F, 0x00)
        self.mode(STANDBY)
        frf = int(FREQUENCY_HZ / (32e6 / 2**19))
        self.write(0x06, frf >> 16)
        self.write(0x07, (frf >> 8) & 0xFF)
        self.write(0x08, frf & 0xFF)
        self.write(0x20, 0)
        self.write(0x21, 8)  # preamble 8
        self.write(0x1D, (self.read(0x1D) & 0x0F) | (7 << 4))  # 125 kHz
        self.write(0x36, 0x03)
        self.write(0x2F, 0x40)
        self.write(0x30, 0)
        self.write(0x1D, (self.read(0x1D) & 0xF1) | (1 << 1))  # coding rate 4/5
        self.write_bits(0x31, 0, 3, 0x3)  # detection optimize, SF7..12
        self.write(0x37, 0x0A)
        self.write(0x1E, (self.read(0x1E) & 0x0F) | (7 << 4))  # SF7
        crc_bit = 0x04 if crc else 0
        self.write(0x1E, (self.read(0x1E) & 0xFB) | crc_bit)
        self.write_bits(0x26, 2, 1, 0)  # AGC off (adafruit's default)
        self.write_bits(0x4D, 0, 3, 0x04)  # PA DAC off
        self.write_bits(0x09, 7, 1, 1)  # PA_BOOST
        self.write_bits(0x09, 0, 4, 13 - 5)  # 13 dBm

    def implicit_header(self, payload_length: int) -> None:
        self.write(0x1D, self.read(0x1D) | 0x01)
        self.write(REG_PAYLOAD_LENGTH, payload_length)

    def invert_rx_iq(self) -> None:
        """Semtech's sequence for receiving downlinks: RX inverted, TX normal, RegInvertIQ2."""
        self.write(0x33, (self.read(0x33) & 0xBF & 0xFE) | 0x40 | 0x01)
        self.write(0x3B, 0x19)

    def send(self, payload: bytes) -> None:
        """Start a transmission (adafruit's send up to TX mode; TxDone is not waited for)."""
        self.mode(STANDBY)
        self.write(0x0D, 0x00)
        self.spi.xfer([0x80, *payload])
        self.write(REG_PAYLOAD_LENGTH, len(payload))
        self.mode(TX)
        self.write_bits(0x40, 6, 2, 0b01)

    def listen(self) -> None:
        self.mode(RX_CONTINUOUS)
        self.write_bits(0x40, 6, 2, 0b00)

    def flags(self) -> int:
        return self.read(REG_IRQ_FLAGS)

    def take_packet(self) -> tuple[bytes, int, float, int]:
        """(FIFO bytes, RegIrqFlags, packet SNR in dB, RegPktRssiValue) of the packet received;
        the flags cleared afterwards, as adafruit's receive does."""
        flags = self.flags()
        raw_snr = self.read(0x19)
        snr = (raw_snr - 256 if raw_snr > 127 else raw_snr) / 4
        raw_rssi = self.read(0x1A)
        length = self.read(0x13)
        self.write(0x0D, self.read(0x10))
        payload = bytes(self.spi.xfer([0x00] + [0] * length)[1:])
        self.write(REG_IRQ_FLAGS, 0xFF)
        return payload, flags, snr, raw_rssi


def frame_s(payload_len: int, params: AirParams | None = None) -> float:
    return (params or AirParams.from_settings(SETTINGS)).time_on_air_s(payload_len)


async def until(condition, timeout_s: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


class Received:
    def __init__(self) -> None:
        self.packets: list[RxPacket] = []

    def __call__(self, packet: RxPacket) -> None:
        self.packets.append(packet)


@pytest.fixture
async def medium() -> RfMedium:
    return RfMedium(asyncio.get_running_loop(), path_loss_exponent=3.0)


@pytest.fixture
async def gateway(medium: RfMedium) -> AsyncIterator[tuple[Sx127xRadio, Received]]:
    """The gateway's own driver on a chip at the origin."""
    chip = SimulatedSX127x(asyncio.get_running_loop(), medium, name="gateway")
    radio = Sx127xRadio(
        SETTINGS, open_bus=lambda: open_local_chip(chip, PINS), probe_interval_s=60.0
    )
    received = Received()
    await radio.open(received)
    try:
        yield radio, received
    finally:
        await radio.close()


async def raw_radio(medium: RfMedium, name: str, position: tuple[float, float]):  # type: ignore[no-untyped-def]
    radio = AdafruitStyleRadio(
        SimulatedSX127x(asyncio.get_running_loop(), medium, position=position, name=name)
    )
    await radio.begin()
    return radio


# --- I/Q polarity ----------------------------------------------------------------------------


async def test_inverted_iq_receiver_hears_no_uplink_and_hears_the_gateways_downlink(
    medium: RfMedium, gateway: tuple[Sx127xRadio, Received]
) -> None:
    radio, received = gateway
    node = await raw_radio(medium, "node", (200.0, 0.0))
    neighbour = await raw_radio(medium, "neighbour", (0.0, 200.0))
    plain = await raw_radio(medium, "plain listener", (-200.0, 0.0))
    neighbour.invert_rx_iq()
    neighbour.listen()
    plain.listen()  # adafruit never touches RegInvertIQ: normal I/Q both ways

    node.send(b"uplink from a node")
    await until(lambda: len(received.packets) == 1)
    assert received.packets[0].payload == b"uplink from a node"
    await asyncio.sleep(0.01)
    assert neighbour.flags() == 0  # inverted I/Q: another node's uplink is not heard
    assert plain.take_packet()[0] == b"uplink from a node"  # normal I/Q hears it

    await radio.transmit(b"downlink")
    await until(lambda: neighbour.flags() & RX_DONE)
    payload, flags, _, _ = neighbour.take_packet()
    assert (payload, flags & CRC_ERROR) == (b"downlink", 0)
    assert plain.flags() == 0  # the gateway's downlink goes out inverted
    assert radio.counters["crc_errors"] == 0


# --- header mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("crc", [False, True])
async def test_implicit_header_receiver_gets_exactly_payload_length_bytes_of_an_explicit_frame(
    medium: RfMedium, crc: bool
) -> None:
    sender = await raw_radio(medium, "sender", (100.0, 0.0))
    receiver = AdafruitStyleRadio(SimulatedSX127x(asyncio.get_running_loop(), medium))
    await receiver.begin(crc=crc)
    receiver.implicit_header(8)
    receiver.listen()
    payload = bytes(range(46))
    sender.send(payload)
    await until(lambda: receiver.flags() & RX_DONE)
    got, flags, _, _ = receiver.take_packet()
    assert len(got) == 8
    assert not flags & VALID_HEADER  # no header is looked for in implicit mode
    assert got != payload[:8]  # the sender's header bits come first
    assert bool(flags & CRC_ERROR) == crc  # checked only with the receiver's CRC on


async def test_implicit_header_both_sides_delivers_the_payload_when_settings_agree(
    medium: RfMedium,
) -> None:
    sender = await raw_radio(medium, "sender", (100.0, 0.0))
    sender.implicit_header(12)
    receiver = await raw_radio(medium, "receiver", (0.0, 0.0))
    receiver.implicit_header(12)
    receiver.listen()
    sender.send(b"twelve bytes")
    await until(lambda: receiver.flags() & RX_DONE)
    got, flags, _, _ = receiver.take_packet()
    assert (got, flags & (CRC_ERROR | VALID_HEADER)) == (b"twelve bytes", 0)

    receiver.write(0x1D, (receiver.read(0x1D) & 0xF1) | (4 << 1))  # 4/8: not the sender's
    receiver.listen()
    sender.send(b"twelve bytes")
    await until(lambda: receiver.flags() & RX_DONE)
    got, flags, _, _ = receiver.take_packet()
    assert len(got) == 12 and got != b"twelve bytes" and flags & CRC_ERROR


async def test_explicit_header_receiver_hears_nothing_of_an_implicit_frame(
    medium: RfMedium,
) -> None:
    sender = await raw_radio(medium, "sender", (100.0, 0.0))
    sender.implicit_header(12)
    receiver = await raw_radio(medium, "receiver", (0.0, 0.0))
    receiver.listen()
    sender.send(b"twelve bytes")
    await asyncio.sleep(frame_s(12) + 0.02)
    assert receiver.flags() == 0
    assert medium.stats.lost_header == 1


# --- CRC errors ------------------------------------------------------------------------------


async def scrape(port: int) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def test_a_frame_hit_after_its_header_is_a_crc_error_the_gateway_counts_and_drops(
    medium: RfMedium, gateway: tuple[Sx127xRadio, Received]
) -> None:
    radio, received = gateway
    state = GatewayState()
    state.radio_counters = lambda: radio.counters  # as the bridge's feeds attach the radio
    server = MetricsServer.from_config(MetricsSection(host="127.0.0.1", port=0), state)
    await server.start()
    try:
        assert server.port is not None
        assert (await scrape(server.port))["duogate_frames_crc_error_total"] == 0
        first = await raw_radio(medium, "first", (150.0, 0.0))
        second = await raw_radio(medium, "second", (0.0, 150.0))  # the same level
        listener = await raw_radio(medium, "adafruit listener", (0.0, -150.0))
        listener.listen()
        first.send(bytes(60))  # about 120 ms on the air
        await asyncio.sleep(AirParams.from_settings(SETTINGS).lock_s() + 0.02)
        second.send(b"late")  # only the payload of the first is hit
        await until(lambda: radio.counters["crc_errors"] == 1)
        await asyncio.sleep(frame_s(60))
        assert received.packets == []  # dropped, the late frame missed (receiver locked)
        assert listener.flags() & (RX_DONE | CRC_ERROR) == RX_DONE | CRC_ERROR
        assert (await scrape(server.port))["duogate_frames_crc_error_total"] == 1
        assert "1 CRC errors" in format_status(state)
    finally:
        await server.stop()
    assert medium.stats.crc_errors == 2  # at the gateway and at the listener


async def test_crc_off_delivers_the_damaged_payload(medium: RfMedium) -> None:
    first = await raw_radio(medium, "first", (150.0, 0.0))
    second = await raw_radio(medium, "second", (0.0, 150.0))
    receiver = AdafruitStyleRadio(SimulatedSX127x(asyncio.get_running_loop(), medium))
    await receiver.begin(crc=True)
    first.write(0x1E, first.read(0x1E) & 0xFB)  # the sender's header says CRC off
    receiver.listen()
    first.send(bytes(60))
    await asyncio.sleep(AirParams.from_settings(SETTINGS).lock_s() + 0.02)
    second.send(b"late")
    await until(lambda: receiver.flags() & RX_DONE)
    got, flags, _, _ = receiver.take_packet()
    assert len(got) == 60 and got != bytes(60) and not flags & CRC_ERROR
    assert medium.stats.corrupted == 1


# --- SNR and RSSI ----------------------------------------------------------------------------


def distance_for(medium: RfMedium, power_dbm: float) -> float:
    reference = medium.path_loss_db(1.0, FREQUENCY_HZ)
    return 10 ** ((SETTINGS.tx_power_dbm - power_dbm - reference) / 30)


async def test_packet_snr_stays_in_the_silicon_range_and_rssi_follows_the_datasheet(
    medium: RfMedium, gateway: tuple[Sx127xRadio, Received]
) -> None:
    """From 1 m to 4 dB above the SNR floor: SNR at most +10 dB, negative SNR still received,
    packet RSSI (datasheet 5.5.5, with the correction below the noise) near the true power."""
    _, received = gateway
    noise = medium.noise_floor_dbm(SETTINGS.bandwidth_hz)
    floor = SNR_FLOOR_DB[SETTINGS.spreading_factor]
    assert sensitivity_dbm(7, 125_000) < noise + floor + 4
    for index, true_snr in enumerate([60.0, 40.0, 20.0, 9.0, 3.0, -2.0, floor + 4]):
        power = noise + true_snr
        link = MediumNodeLink(
            medium, SETTINGS, distance_m=distance_for(medium, power), name=f"node-{index}"
        )
        await link.transmit(f"at {true_snr:+.1f} dB".encode())
        await until(lambda n=index: len(received.packets) == n + 1)
        packet = received.packets[-1]
        assert floor <= packet.snr <= PACKET_SNR_CEILING_DB
        assert packet.snr == pytest.approx(min(true_snr, PACKET_SNR_CEILING_DB), abs=0.25)
        assert packet.rssi == pytest.approx(power, abs=1.0)
        link.close()
    assert [packet.snr < 0 for packet in received.packets].count(True) == 2


async def test_raw_snr_register_never_exceeds_the_ceiling_next_to_the_gateway(
    medium: RfMedium, gateway: tuple[Sx127xRadio, Received]
) -> None:
    radio, _ = gateway
    node = await raw_radio(medium, "node", (0.5, 0.0))
    node.invert_rx_iq()
    node.listen()
    await radio.transmit(b"downlink at half a metre")
    await until(lambda: node.flags() & RX_DONE)
    _, _, snr, raw_rssi = node.take_packet()
    assert snr == PACKET_SNR_CEILING_DB
    true_power = SETTINGS.tx_power_dbm - medium.path_loss_db(0.5, FREQUENCY_HZ)
    assert -157 + raw_rssi == round(true_power)
    assert true_power - medium.noise_floor_dbm(125_000) > 90  # the true SNR: about 100 dB
