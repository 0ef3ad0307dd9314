"""The simulated SX1276 driven with the register access patterns pyLoRa uses."""

import asyncio
import dataclasses

import pytest

from drivers.radio.base import RadioSettings
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.medium import RfMedium
from drivers.sim.node_link import MediumNodeLink
from gateway.protocol.airtime import time_on_air_s

FSK_STANDBY = 0x09
LORA_SLEEP, LORA_STDBY, LORA_TX = 0x80, 0x81, 0x83
LORA_RXCONT, LORA_RXSINGLE, LORA_CAD = 0x85, 0x86, 0x87
REG_OP_MODE, REG_FIFO_ADDR_PTR, REG_IRQ_FLAGS = 0x01, 0x0D, 0x12
TX_DONE, RX_DONE, VALID_HEADER, CRC_ERROR, RX_TIMEOUT = 0x08, 0x40, 0x10, 0x20, 0x80
CAD_DONE, CAD_DETECTED = 0x04, 0x01
DIO0_RX_DONE, DIO0_TX_DONE, DIO0_CAD_DONE = 0x00, 0x40, 0x80
FREQ_868_1 = round(868.1e6 / (32e6 / 2**19))  # Frf register value: 0xD90666
HZ_868_1 = round(FREQ_868_1 * 32e6 / 2**19)  # what that register means: 868.099976 MHz


def write(chip: SimulatedSX127x, address: int, *values: int) -> list[int]:
    return chip.xfer([address | 0x80, *values])[1:]


def read(chip: SimulatedSX127x, address: int, count: int = 1) -> list[int]:
    return chip.xfer([address] + [0] * count)[1:]


def read1(chip: SimulatedSX127x, address: int) -> int:
    return read(chip, address)[0]


def lora_standby(chip: SimulatedSX127x, frf: int = FREQ_868_1) -> None:
    write(chip, REG_OP_MODE, LORA_SLEEP)
    write(chip, 0x06, frf >> 16, (frf >> 8) & 0xFF, frf & 0xFF)
    write(chip, REG_OP_MODE, LORA_STDBY)


def write_payload(chip: SimulatedSX127x, payload: bytes) -> None:
    """pyLoRa's write_payload: length, Standby, pointer to the TX base, burst into the FIFO."""
    write(chip, 0x22, len(payload))
    write(chip, REG_OP_MODE, LORA_STDBY)
    write(chip, REG_FIFO_ADDR_PTR, read1(chip, 0x0E))
    write(chip, 0x00, *payload)


def read_payload(chip: SimulatedSX127x) -> bytes:
    """pyLoRa's read_payload: RxNbBytes, pointer to FifoRxCurrentAddr, burst out of the FIFO."""
    count = read1(chip, 0x13)
    write(chip, REG_FIFO_ADDR_PTR, read1(chip, 0x10))
    return bytes(read(chip, 0x00, count))


@pytest.fixture
async def chip_and_edges():
    chip = SimulatedSX127x(asyncio.get_running_loop())
    edges: list[bool] = []
    chip.on_dio0 = edges.append
    return chip, edges


async def wait_for_dio0(chip: SimulatedSX127x, timeout_s: float = 2.0) -> float:
    """Wait for DIO0 to go high; return the loop time it did."""
    loop = asyncio.get_running_loop()
    risen = loop.create_future()

    def on_edge(level: bool) -> None:
        if level and not risen.done():
            risen.set_result(loop.time())

    chip.on_dio0 = on_edge
    return await asyncio.wait_for(risen, timeout_s)


# --- registers -------------------------------------------------------------------------------


async def test_power_on_state(chip_and_edges):
    chip, _ = chip_and_edges
    assert read1(chip, 0x42) == 0x12
    assert read1(chip, REG_OP_MODE) == FSK_STANDBY
    assert not chip.dio0
    # pyLoRa's get_all_registers: one burst over 0x01..0x3F
    assert len(chip.xfer([0x01] + [0] * 0x3E)) == 0x3F
    write(chip, REG_OP_MODE, LORA_SLEEP)
    defaults = {
        0x06: 0x6C, 0x07: 0x80, 0x08: 0x00, 0x09: 0x4F, 0x0B: 0x2B, 0x0C: 0x20,
        0x0E: 0x80, 0x0F: 0x00, 0x11: 0x00, 0x12: 0x00, 0x1D: 0x72, 0x1E: 0x70,
        0x1F: 0x64, 0x20: 0x00, 0x21: 0x08, 0x22: 0x01, 0x23: 0xFF, 0x26: 0x04,
        0x31: 0xC3, 0x33: 0x27, 0x37: 0x0A, 0x39: 0x12, 0x40: 0x00, 0x41: 0x00,
        0x4D: 0x84,
    }  # fmt: skip
    assert {address: read1(chip, address) for address in defaults} == defaults


@pytest.mark.parametrize(
    ("start", "written", "expected"),
    [
        (FSK_STANDBY, LORA_SLEEP, LORA_SLEEP),  # a write selecting Sleep takes the bit
        (FSK_STANDBY, LORA_STDBY, 0x01),  # any other mode keeps FSK
        (LORA_STDBY, 0x01, LORA_STDBY),  # and keeps LoRa
        (LORA_STDBY, 0x00, 0x00),  # back to FSK through Sleep
        (LORA_SLEEP, LORA_RXCONT, LORA_RXCONT),
    ],
)
async def test_long_range_mode_changes_only_on_writes_selecting_sleep(
    chip_and_edges, start, written, expected
):
    chip, _ = chip_and_edges
    if start & 0x80:
        write(chip, REG_OP_MODE, LORA_SLEEP)
    write(chip, REG_OP_MODE, start)
    assert read1(chip, REG_OP_MODE) == start
    write(chip, REG_OP_MODE, written)
    assert read1(chip, REG_OP_MODE) == expected


async def test_lora_registers_are_a_separate_page_from_fsk(chip_and_edges):
    chip, _ = chip_and_edges
    write(chip, 0x1D, 0x92)  # in FSK mode this is an FSK register
    write(chip, REG_OP_MODE, LORA_SLEEP)
    assert read1(chip, 0x1D) == 0x72
    write(chip, 0x1D, 0x82)
    write(chip, REG_OP_MODE, LORA_SLEEP | 0x40)  # AccessSharedReg: the FSK page again
    assert read1(chip, 0x1D) == 0x92
    write(chip, REG_OP_MODE, LORA_SLEEP)
    assert read1(chip, 0x1D) == 0x82
    assert chip.air_params().bandwidth_hz == 250_000


async def test_burst_access_auto_increments_and_writes_return_previous_contents(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip, frf=0x6C8000)
    assert write(chip, 0x06, 0xD9, 0x06, 0x66) == [0x6C, 0x80, 0x00]
    assert read(chip, 0x06, 3) == [0xD9, 0x06, 0x66]
    assert chip.air_params().frequency_hz == HZ_868_1 == 868_099_976  # 61 Hz steps
    write(chip, 0x20, 0x01, 0x02)  # RegPreambleMsb, RegPreambleLsb in one burst
    assert chip.air_params().preamble_length == 0x0102


async def test_read_only_registers_ignore_writes(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, 0x42, 0x55)
    write(chip, 0x13, 0x20)  # RegRxNbBytes
    write(chip, 0x10, 0x20)  # RegFifoRxCurrentAddr
    assert (read1(chip, 0x42), read1(chip, 0x13), read1(chip, 0x10)) == (0x12, 0, 0)


async def test_fifo_goes_through_the_address_pointer_and_wraps(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, REG_FIFO_ADDR_PTR, 0xFE)
    write(chip, 0x00, 1, 2, 3, 4)
    assert read1(chip, REG_FIFO_ADDR_PTR) == 0x02
    write(chip, REG_FIFO_ADDR_PTR, 0xFE)
    assert read(chip, 0x00, 4) == [1, 2, 3, 4]
    assert chip.fifo_snapshot()[0xFE:] + chip.fifo_snapshot()[:2] == bytes([1, 2, 3, 4])


async def test_sleep_clears_the_fifo_and_makes_it_inaccessible(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, 0x00, 9, 9, 9)
    write(chip, REG_OP_MODE, LORA_SLEEP)
    assert chip.fifo_snapshot() == bytes(256)
    write(chip, REG_FIFO_ADDR_PTR, 0)
    write(chip, 0x00, 7)
    assert read(chip, 0x00, 1) == [0]
    assert chip.fifo_snapshot() == bytes(256)


async def test_irq_flags_clear_by_writing_ones(chip_and_edges):
    chip, edges = chip_and_edges
    lora_standby(chip)
    write(chip, REG_OP_MODE, LORA_RXCONT)
    assert chip.deliver(b"bad", crc_error=True)
    assert read1(chip, REG_IRQ_FLAGS) == VALID_HEADER | CRC_ERROR | RX_DONE
    write(chip, REG_IRQ_FLAGS, CRC_ERROR)
    assert read1(chip, REG_IRQ_FLAGS) == VALID_HEADER | RX_DONE
    assert chip.dio0
    write(chip, REG_IRQ_FLAGS, 0xFF)
    assert read1(chip, REG_IRQ_FLAGS) == 0
    assert edges == [True, False]


async def test_dio0_follows_the_mapping(chip_and_edges):
    chip, edges = chip_and_edges
    lora_standby(chip)
    write(chip, REG_OP_MODE, LORA_RXCONT)
    chip.deliver(b"x")
    assert chip.dio0
    write(chip, 0x40, DIO0_TX_DONE)
    assert not chip.dio0
    write(chip, 0x40, DIO0_RX_DONE)
    assert chip.dio0
    assert edges == [True, False, True]


# --- transmit --------------------------------------------------------------------------------


async def test_transmit_raises_tx_done_after_the_time_on_air(chip_and_edges):
    chip, _ = chip_and_edges
    loop = asyncio.get_running_loop()
    lora_standby(chip)
    write(chip, 0x1E, 0x74)  # SF7, RxPayloadCrcOn
    write(chip, 0x40, DIO0_TX_DONE)
    write_payload(chip, b"0123456789")
    risen = asyncio.ensure_future(wait_for_dio0(chip))
    started = loop.time()
    write(chip, REG_OP_MODE, LORA_TX)
    assert read1(chip, REG_OP_MODE) == LORA_TX
    airtime = time_on_air_s(10, 7, 125_000, crc=True, low_data_rate=False)
    assert await risen - started >= airtime - 0.001
    assert read1(chip, REG_IRQ_FLAGS) == TX_DONE
    assert read1(chip, REG_OP_MODE) == LORA_STDBY
    (record,) = chip.tx_history
    assert (record.payload, record.airtime_s) == (b"0123456789", airtime)
    assert record.params.frequency_hz == HZ_868_1
    assert record.tx_power_dbm == pytest.approx(13.2)  # RFO, MaxPower 4, OutputPower 15
    falls: list[bool] = []
    chip.on_dio0 = falls.append
    write(chip, REG_IRQ_FLAGS, TX_DONE)
    assert falls == [False]


async def test_transmission_follows_the_modem_registers(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, 0x1D, 0x8 << 4 | 4 << 1 | 1)  # 250 kHz, 4/8, implicit header
    write(chip, 0x1E, 0x90)  # SF9, CRC off
    write(chip, 0x26, 0x0C)  # LowDataRateOptimize, AgcAutoOn
    write(chip, 0x20, 0, 12)
    write(chip, 0x09, 0x8F)  # PA_BOOST, OutputPower 15
    write(chip, 0x4D, 0x87)  # +20 dBm
    write(chip, 0x0B, 0x31)  # RegOcp: OcpOn, 140 mA, enough for +20 dBm
    write(chip, 0x0E, 0x10)  # TX base
    write(chip, REG_FIFO_ADDR_PTR, 0x10)
    write(chip, 0x00, *b"abc")
    write(chip, 0x22, 3)
    write(chip, REG_OP_MODE, LORA_TX)
    (record,) = chip.tx_history
    assert record.payload == b"abc"
    assert record.airtime_s == time_on_air_s(
        3, 9, 250_000, 8, 12, explicit_header=False, crc=False, low_data_rate=True
    )
    assert record.tx_power_dbm == 20.0
    write(chip, REG_OP_MODE, LORA_STDBY)  # cut short
    assert chip.stats.tx_aborted == 1
    await asyncio.sleep(record.airtime_s + 0.01)
    assert read1(chip, REG_IRQ_FLAGS) == 0
    assert chip.stats.tx_done == 0


async def test_masked_tx_done_sets_no_flag_and_leaves_dio0_low(chip_and_edges):
    chip, edges = chip_and_edges
    lora_standby(chip)
    write(chip, 0x40, DIO0_TX_DONE)
    write(chip, 0x11, TX_DONE)
    write_payload(chip, b"hi")
    write(chip, REG_OP_MODE, LORA_TX)
    await asyncio.sleep(chip.tx_history[0].airtime_s + 0.02)
    assert read1(chip, REG_OP_MODE) == LORA_STDBY
    assert read1(chip, REG_IRQ_FLAGS) == 0
    assert edges == []


async def test_spi_from_another_thread_hands_radio_work_to_the_loop(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, 0x40, DIO0_TX_DONE)
    risen = asyncio.ensure_future(wait_for_dio0(chip))

    def send() -> None:
        write_payload(chip, b"from a thread")
        write(chip, REG_OP_MODE, LORA_TX)

    await asyncio.to_thread(send)
    await risen
    assert chip.tx_history[0].payload == b"from a thread"
    assert await asyncio.to_thread(read1, chip, REG_IRQ_FLAGS) == TX_DONE


# --- receive ---------------------------------------------------------------------------------


async def test_rx_continuous_stores_packets_one_after_another(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, REG_OP_MODE, LORA_RXCONT)
    assert chip.deliver(b"abc")
    assert chip.deliver(b"defg")
    assert (read1(chip, 0x10), read1(chip, 0x13), read1(chip, 0x25)) == (3, 4, 7)
    assert read_payload(chip) == b"defg"
    assert read(chip, 0x14, 4) == [0, 2, 0, 2]  # header and packet counters
    assert read1(chip, REG_OP_MODE) == LORA_RXCONT


async def test_rx_continuous_wraps_around_the_fifo(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, 0x0F, 0xF8)  # RX base
    write(chip, REG_OP_MODE, LORA_RXCONT)
    payload = bytes(range(1, 13))
    chip.deliver(payload)
    assert read1(chip, 0x10) == 0xF8
    assert read1(chip, 0x25) == 0x04
    assert read_payload(chip) == payload
    chip.deliver(b"next")
    assert read1(chip, 0x10) == 0x04


@pytest.mark.parametrize(
    ("rssi", "snr", "snr_register", "rssi_register"),
    [(-80.0, 7.25, 29, 77), (-118.0, -7.25, 256 - 29, 46)],
)
async def test_packet_rssi_and_snr_registers(
    chip_and_edges, rssi, snr, snr_register, rssi_register
):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, REG_OP_MODE, LORA_RXCONT)
    chip.deliver(b"x", rssi_dbm=rssi, snr_db=snr)
    assert read1(chip, 0x19) == snr_register
    assert read1(chip, 0x1A) == rssi_register
    signed_snr = (snr_register - 256 if snr_register > 127 else snr_register) / 4
    packet_rssi = -157 + rssi_register + (signed_snr if signed_snr < 0 else 0)
    assert packet_rssi == pytest.approx(rssi, abs=0.5)


async def test_low_frequency_port_uses_the_164_offset(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip, frf=0x6C8000)  # 434 MHz
    write(chip, REG_OP_MODE, LORA_RXCONT)
    chip.deliver(b"x", rssi_dbm=-100.0, snr_db=5.0)
    assert read1(chip, 0x1A) == 64


async def test_rx_status_registers_describe_the_packet(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, 0x1D, 0x7 << 4 | 3 << 1)  # 125 kHz, 4/7
    write(chip, 0x1E, 0x74)  # CRC on
    write(chip, REG_OP_MODE, LORA_RXCONT)
    chip.deliver(b"x")
    assert read1(chip, 0x18) == (3 << 5) | 0x10  # coding rate 4/7, modem clear
    assert read1(chip, 0x1C) & 0x40  # CrcOnPayload


async def test_rx_single_returns_to_standby_after_a_packet(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, REG_OP_MODE, LORA_RXSINGLE)
    assert chip.deliver(b"one")
    assert read1(chip, REG_OP_MODE) == LORA_STDBY
    assert not chip.deliver(b"two")
    assert read_payload(chip) == b"one"


async def test_rx_single_times_out_after_the_symbol_timeout(chip_and_edges):
    chip, _ = chip_and_edges
    lora_standby(chip)
    write(chip, 0x1F, 10)  # 10 symbols of 1.024 ms
    write(chip, REG_OP_MODE, LORA_RXSINGLE)
    await asyncio.sleep(0.06)
    assert read1(chip, REG_IRQ_FLAGS) == RX_TIMEOUT
    assert read1(chip, REG_OP_MODE) == LORA_STDBY
    assert chip.stats.rx_timeouts == 1


async def test_packets_outside_rx_or_too_long_are_not_stored(chip_and_edges):
    chip, edges = chip_and_edges
    lora_standby(chip)
    assert not chip.deliver(b"standby")
    write(chip, 0x23, 4)  # RegMaxPayloadLength
    write(chip, REG_OP_MODE, LORA_RXCONT)
    assert chip.deliver(b"too long")
    assert read1(chip, REG_IRQ_FLAGS) == 0
    assert chip.stats.rx_dropped_too_long == 1
    assert edges == []


# --- reset and faults ------------------------------------------------------------------------


async def test_reset_restores_defaults_and_clears_faults(chip_and_edges):
    chip, edges = chip_and_edges
    lora_standby(chip)
    write(chip, 0x1D, 0x92)
    write(chip, 0x39, 0x34)
    write(chip, REG_OP_MODE, LORA_RXCONT)
    chip.deliver(b"x")
    chip.fail_mode = "ones"
    chip.reset()
    assert chip.fail_mode is None
    assert read1(chip, REG_OP_MODE) == 0x00  # not answering yet: 5 ms after the reset pulse
    await asyncio.sleep(0.006)
    assert read1(chip, REG_OP_MODE) == FSK_STANDBY
    assert not chip.dio0
    assert edges == [True, False]
    write(chip, REG_OP_MODE, LORA_SLEEP)
    assert (read1(chip, 0x1D), read1(chip, 0x39), read1(chip, REG_IRQ_FLAGS)) == (0x72, 0x12, 0)


@pytest.mark.parametrize(("mode", "value"), [("zeros", 0x00), ("ones", 0xFF)])
async def test_dead_bus_reads_constant_and_loses_writes(chip_and_edges, mode, value):
    chip, _ = chip_and_edges
    chip.fail_mode = mode
    assert chip.xfer([0x42, 0, 0]) == [value] * 3
    write(chip, REG_OP_MODE, LORA_SLEEP)
    assert chip.peek(REG_OP_MODE) == FSK_STANDBY
    chip.fail_mode = None
    assert read1(chip, 0x42) == 0x12


async def test_stuck_dio0_never_rises_until_the_fault_ends(chip_and_edges):
    chip, edges = chip_and_edges
    lora_standby(chip)
    write(chip, 0x40, DIO0_TX_DONE)
    chip.fail_mode = "stuck_dio0"
    write_payload(chip, b"x")
    write(chip, REG_OP_MODE, LORA_TX)
    await asyncio.sleep(chip.tx_history[0].airtime_s + 0.02)
    assert read1(chip, REG_IRQ_FLAGS) == TX_DONE
    assert not chip.dio0 and edges == []
    chip.fail_mode = None
    assert chip.dio0 and edges == [True]


async def test_bad_input_is_rejected(chip_and_edges):
    chip, _ = chip_and_edges
    assert chip.xfer([]) == []
    for bad in ([0x42, 256], [-1], [0x42, "0"], [True]):
        with pytest.raises(ValueError, match="SPI bytes"):
            chip.xfer(bad)
    with pytest.raises(ValueError, match="fail_mode"):
        chip.fail_mode = "smoke"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="payload"):
        chip.deliver(bytes(256))
    with pytest.raises(ValueError, match="register address"):
        chip.peek(0x80)


async def test_a_failing_dio0_callback_is_counted_and_the_chip_carries_on(chip_and_edges):
    chip, _ = chip_and_edges

    def broken(level: bool) -> None:
        raise RuntimeError("driver bug")

    chip.on_dio0 = broken
    lora_standby(chip)
    write(chip, REG_OP_MODE, LORA_RXCONT)
    assert chip.deliver(b"x")
    assert chip.stats.callback_errors == 1
    assert read_payload(chip) == b"x"


# --- on the medium ---------------------------------------------------------------------------

NODE = RadioSettings(frequency_hz=868_100_000, spreading_factor=7, bandwidth_hz=125_000)


async def test_chip_receives_a_node_frame_through_the_medium():
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop, path_loss_exponent=3.0)
    gateway = SimulatedSX127x(loop, medium, name="gateway")
    node = MediumNodeLink(medium, NODE, distance_m=1000)
    lora_standby(gateway)
    write(gateway, 0x1E, 0x74)
    write(gateway, REG_OP_MODE, LORA_RXCONT)
    assert read1(gateway, 0x1B) - 157 == round(medium.noise_floor_dbm(125_000))
    risen = asyncio.ensure_future(wait_for_dio0(gateway))
    await node.transmit(b"uplink")
    await risen
    assert read_payload(gateway) == b"uplink"
    expected = NODE.tx_power_dbm - medium.path_loss_db(1000, 868_100_000)
    assert read1(gateway, 0x1A) - 157 == round(expected)
    assert medium.stats.delivered == 1


async def test_node_receives_a_chip_frame_and_a_cut_frame_reaches_nobody():
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop)
    gateway = SimulatedSX127x(loop, medium, name="gateway")
    node = MediumNodeLink(medium, NODE, distance_m=300)
    lora_standby(gateway)
    write(gateway, 0x1E, 0x74)
    write(gateway, 0x33, 0x26)  # RegInvertIQ: downlinks go out with inverted I/Q
    window = asyncio.ensure_future(node.receive(1.0))
    await asyncio.sleep(0)
    write_payload(gateway, b"downlink")
    write(gateway, REG_OP_MODE, LORA_TX)
    assert (await window)[0] == b"downlink"

    window = asyncio.ensure_future(node.receive(0.1))
    await asyncio.sleep(0)
    write_payload(gateway, bytes(50))
    write(gateway, REG_OP_MODE, LORA_TX)
    await asyncio.sleep(0.01)
    write(gateway, REG_OP_MODE, LORA_STDBY)
    assert await window is None
    assert medium.stats.lost_aborted == 1


async def test_mismatched_sync_word_is_not_received():
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop)
    gateway = SimulatedSX127x(loop, medium)
    node = MediumNodeLink(medium, dataclasses.replace(NODE, sync_word=0x34), distance_m=100)
    lora_standby(gateway)
    write(gateway, REG_OP_MODE, LORA_RXCONT)
    await node.transmit(b"private")
    assert read1(gateway, REG_IRQ_FLAGS) == 0
    assert medium.stats.delivered == 0


async def test_cad_reports_a_frame_on_the_air():
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop)
    gateway = SimulatedSX127x(loop, medium)
    node = MediumNodeLink(medium, NODE, distance_m=100)
    lora_standby(gateway)
    write(gateway, 0x40, DIO0_CAD_DONE)
    done = asyncio.ensure_future(wait_for_dio0(gateway))
    write(gateway, REG_OP_MODE, LORA_CAD)
    await done
    assert read1(gateway, REG_IRQ_FLAGS) == CAD_DONE
    assert read1(gateway, REG_OP_MODE) == LORA_STDBY
    write(gateway, REG_IRQ_FLAGS, 0xFF)

    tx = asyncio.ensure_future(node.transmit(bytes(60)))  # about 120 ms on the air
    await asyncio.sleep(0)
    done = asyncio.ensure_future(wait_for_dio0(gateway))
    write(gateway, REG_OP_MODE, LORA_CAD)
    await done
    assert read1(gateway, REG_IRQ_FLAGS) == CAD_DONE | CAD_DETECTED
    await tx
