"""SerialRadio against the simulated modem over a real pty pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from cobs import cobs

from drivers.radio.base import RadioError, RadioSettings, RxPacket, SerialRadioSettings
from drivers.radio.serial_frames import RxPacketFrame, _crc, encode_frame
from drivers.radio.serial_radio import SerialRadio
from drivers.sim.serial_modem import SerialModemTwin
from gateway.config import Config, RadioSection
from gateway.driver_settings import radio_driver_settings
from gateway.protocol.airtime import time_on_air_s

SETTINGS = RadioSettings(frequency_hz=868_300_000, spreading_factor=7, sync_word=0x34)


class Received:
    def __init__(self) -> None:
        self.packets: asyncio.Queue[RxPacket] = asyncio.Queue()

    def __call__(self, packet: RxPacket) -> None:
        self.packets.put_nowait(packet)

    async def next(self) -> RxPacket:
        return await asyncio.wait_for(self.packets.get(), 2.0)


@pytest.fixture
async def twin() -> AsyncIterator[SerialModemTwin]:
    modem = SerialModemTwin.on_pty()
    await modem.start()
    yield modem
    await modem.close()


@pytest.fixture
async def radio(twin: SerialModemTwin) -> AsyncIterator[tuple[SerialRadio, Received]]:
    assert twin.port is not None
    link = SerialRadio(SETTINGS, twin.port, reply_timeout_s=0.5, reopen_interval_s=0.05)
    received = Received()
    await link.open(received)
    yield link, received
    await link.close()


async def test_open_applies_settings_on_the_modem(radio, twin) -> None:
    link, _ = radio
    assert twin.settings == SETTINGS
    assert link.healthy()


async def test_transmit_returns_time_on_air_after_tx_done(radio, twin) -> None:
    link, _ = radio
    airtime = await link.transmit(b"\x01hello")
    assert twin.transmitted == [b"\x01hello"]
    assert airtime == pytest.approx(time_on_air_s(6, 7, 125_000, 5, 8), abs=1e-6)


async def test_received_packet_carries_rssi_and_snr(radio, twin) -> None:
    _, received = radio
    twin.inject_rx(b"\xaa\xbb", rssi=-97, snr=-7.25)
    packet = await received.next()
    assert (packet.payload, packet.rssi, packet.snr) == (b"\xaa\xbb", -97.0, -7.25)


async def test_garbage_on_the_line_is_counted_and_loses_nothing_else(radio, twin) -> None:
    link, received = radio
    good = encode_frame(RxPacketFrame(-50, 20, b"first"))
    corrupted = bytearray(encode_frame(RxPacketFrame(-50, 20, b"xxxxx")))
    corrupted[5] ^= 0x01 if corrupted[5] != 0x01 else 0x02
    body = bytes([0x7E, 1, 2, 3])
    unknown_type = b"\x00" + cobs.encode(body + _crc(body)) + b"\x00"
    bad_length = b"\x00" + cobs.encode(b"\x03\x01" + _crc(b"\x03\x01")) + b"\x00"

    twin.send_raw(b"line noise without a delimiter" + good)
    twin.send_raw(bytes(corrupted))
    twin.send_raw(b"\x05\x01\x00")  # COBS code runs past the chunk
    twin.send_raw(unknown_type + bad_length)
    twin.send_raw(b"\x55" * 700 + b"\x00")  # far longer than any frame
    twin.send_raw(good[: len(good) // 2])  # cut short, then the next frame resynchronises
    twin.inject_rx(b"second")

    assert (await received.next()).payload == b"first"
    assert (await received.next()).payload == b"second"
    assert received.packets.empty()
    for reason in ("bad_cobs", "bad_crc", "unknown_type", "bad_length", "oversize"):
        assert link.counters[reason] >= 1, reason
    assert await link.transmit(b"still works") > 0
    assert twin.transmitted == [b"still works"]


async def test_packets_of_one_read_arrive_in_order_past_a_failing_handler(twin) -> None:
    assert twin.port is not None
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    delivered: asyncio.Queue[bytes] = asyncio.Queue()

    def on_receive(packet: RxPacket) -> None:
        if packet.payload == b"two":
            raise ValueError("handler bug")
        delivered.put_nowait(packet.payload)

    link = SerialRadio(SETTINGS, twin.port, reply_timeout_s=0.5)
    await link.open(on_receive)
    try:
        payloads = [b"one", b"two", b"three", b"four"]
        twin.send_raw(b"".join(encode_frame(RxPacketFrame(-50, 20, p)) for p in payloads))
        got = [await asyncio.wait_for(delivered.get(), 2.0) for _ in range(3)]
    finally:
        await link.close()
        loop.set_exception_handler(None)
    assert got == [b"one", b"three", b"four"]
    assert [type(error.get("exception")) for error in errors] == [ValueError]
    assert link.counters["rx_packets"] == 4


async def test_modem_refusal_is_a_radio_error(radio, twin) -> None:
    link, _ = radio
    twin.behaviour.refuse_tx.append("channel busy")
    with pytest.raises(RadioError, match="channel busy"):
        await link.transmit(b"x")
    assert link.healthy()
    await link.transmit(b"y")
    assert twin.transmitted == [b"y"]


async def test_silent_modem_times_out_and_recovers(radio, twin) -> None:
    link, _ = radio
    twin.behaviour.silent = True
    with pytest.raises(RadioError, match="did not answer"):
        await asyncio.wait_for(link.transmit(b"x"), 5.0)
    assert not link.healthy()
    twin.behaviour.silent = False
    await wait_until(link.healthy)  # settings are sent again until the modem answers
    await link.transmit(b"y")
    assert link.counters["timeouts"] == 1


async def test_late_reply_after_timeout_is_counted_not_mistaken(radio, twin) -> None:
    link, _ = radio
    twin.behaviour.airtime_scale = 40.0  # TX_DONE arrives long after the radio gave up
    with pytest.raises(RadioError):
        await link.transmit(b"slow")
    twin.behaviour.airtime_scale = 1.0
    await wait_until(lambda: link.counters["unexpected_reply"] == 1)
    await wait_until(link.healthy)
    await link.transmit(b"next")
    assert twin.transmitted == [b"slow", b"next"]


async def test_reconfigure_reaches_the_modem(radio, twin) -> None:
    link, _ = radio
    new = RadioSettings(frequency_hz=869_525_000, spreading_factor=9, bandwidth_hz=250_000)
    await link.reconfigure(new)
    assert twin.settings == new
    assert link.settings == new
    with pytest.raises(RadioError, match=r"spreading_factor must be 6\.\.12, got 13"):
        await link.reconfigure(RadioSettings(spreading_factor=13))
    assert link.settings == new


async def test_lost_port_turns_unhealthy_and_fails_fast(radio, twin) -> None:
    link, _ = radio
    await twin.close()
    await wait_until(lambda: not link.healthy())
    with pytest.raises(RadioError):
        await asyncio.wait_for(link.transmit(b"x"), 2.0)
    assert link.counters["port_lost"] == 1


async def test_open_without_an_answering_modem_fails(twin) -> None:
    twin.behaviour.silent = True
    link = SerialRadio(SETTINGS, twin.port, reply_timeout_s=0.2)
    with pytest.raises(RadioError, match="did not answer"):
        await link.open(lambda packet: None)
    assert not link.healthy()
    with pytest.raises(RadioError, match="cannot open serial port"):
        await SerialRadio(SETTINGS, "/dev/nonexistent-tty").open(lambda packet: None)


def test_settings_from_config() -> None:
    radio = RadioSection(driver="serial", serial_port="/dev/ttyUSB0", spreading_factor=10)
    settings = radio_driver_settings(Config(radio=radio))
    assert isinstance(settings, SerialRadioSettings)
    link = SerialRadio.from_settings(settings)
    assert (link.port, link.baud, link.settings.spreading_factor) == ("/dev/ttyUSB0", 115_200, 10)


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_modem_unplugged_and_plugged_back_in(tmp_path) -> None:
    port = tmp_path / "ttyLORA"  # a stable name, like a udev symlink, for a changing pty
    first = SerialModemTwin.on_pty()
    await first.start()
    port.symlink_to(first.port)
    link = SerialRadio(SETTINGS, str(port), reply_timeout_s=0.5, reopen_interval_s=0.05)
    received = Received()
    second = None
    try:
        await link.open(received)
        await first.close()  # unplugged
        await wait_until(lambda: not link.healthy())
        second = SerialModemTwin.on_pty()
        await second.start()
        port.unlink()
        port.symlink_to(second.port)  # plugged back in
        await wait_until(link.healthy)
        assert second.settings == SETTINGS  # settings sent again on reopen
        second.inject_rx(b"hello again")
        assert (await received.next()).payload == b"hello again"
        await link.transmit(b"reply")
        assert second.transmitted == [b"reply"]
    finally:
        await link.close()
        if second is not None:
            await second.close()
