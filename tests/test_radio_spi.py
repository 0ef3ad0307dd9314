"""The sim:// socket protocol: SimChipLink and SimGpio against ChipServer, and bad peers."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import AsyncIterator

import pytest

from drivers.radio.base import RadioError
from drivers.radio.spi import OUT, RISING, Pins
from drivers.radio.spi_backends import open_backend, parse_spi_url
from drivers.radio.spi_simlink import (
    DIO0_EDGE,
    ERROR,
    HELLO,
    HELLO_OK,
    PROTOCOL_HELLO,
    XFER,
    XFER_REPLY,
    LinkError,
    SimChipLink,
    SimGpio,
    SimSpiBus,
    encode_message,
    split_messages,
)
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer

PINS = Pins(dio0=25, reset=17)


@pytest.fixture
async def chip() -> SimulatedSX127x:
    return SimulatedSX127x(asyncio.get_running_loop())


@pytest.fixture
async def server(chip) -> AsyncIterator[ChipServer]:
    chip_server = ChipServer(chip)
    await chip_server.start()
    yield chip_server
    await chip_server.close()


@pytest.fixture
async def link(server) -> AsyncIterator[SimChipLink]:
    client = SimChipLink("127.0.0.1", server.port, reply_timeout_s=0.5)
    yield client
    await asyncio.to_thread(client.close)


def xfer(link: SimChipLink, data: list[int]):
    """A blocking transfer run off the loop (the server lives on the loop)."""
    return asyncio.to_thread(SimSpiBus(link).xfer, data)


async def test_transfers_reach_the_chip(link, chip) -> None:
    assert await xfer(link, [0x42, 0x00]) == [0x00, 0x12]  # RegVersion
    await xfer(link, [0x39 | 0x80, 0x80])  # RegOpMode comes first at 0x01; sync word at 0x39
    await xfer(link, [0x01 | 0x80, 0x80])  # LoRa sleep
    await xfer(link, [0x39 | 0x80, 0x34])
    assert chip.peek(0x39) == 0x34
    assert await xfer(link, [0x39, 0x00]) == [0x00, 0x34]
    assert link.connects == 1


async def test_dio0_edges_arrive_as_gpio_callbacks_on_a_gpio_thread(link, chip) -> None:
    gpio = SimGpio(link, PINS)
    calls: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def on_edge(pin: int) -> None:
        loop.call_soon_threadsafe(calls.put_nowait, (pin, threading.current_thread().name))

    gpio.add_event_detect(PINS.dio0, RISING, on_edge)
    await xfer(link, [0x01 | 0x80, 0x80])  # LoRa sleep
    await xfer(link, [0x01 | 0x80, 0x85])  # RX continuous; DIO0 maps RxDone
    assert chip.deliver(b"ping")
    assert await asyncio.wait_for(calls.get(), 3.0) == (PINS.dio0, "gpio-events")
    assert await asyncio.to_thread(gpio.input, PINS.dio0) == 1
    await xfer(link, [0x12 | 0x80, 0xFF])  # clear the flags: DIO0 falls, no callback
    assert await asyncio.to_thread(gpio.input, PINS.dio0) == 0
    assert chip.deliver(b"pong")
    assert await asyncio.wait_for(calls.get(), 3.0) == (PINS.dio0, "gpio-events")
    gpio.remove_event_detect(PINS.dio0)
    await asyncio.to_thread(gpio.cleanup)


async def test_rst_pulse_resets_the_chip(link, chip) -> None:
    gpio = SimGpio(link, PINS)
    gpio.setup(PINS.reset, OUT)  # an output starts low, holding the chip in reset
    await asyncio.to_thread(gpio.output, PINS.reset, 1)
    await asyncio.sleep(0.006)  # the chip answers 5 ms after the reset pulse
    await xfer(link, [0x0A | 0x80, 0x0F])  # RegPaRamp
    await asyncio.to_thread(gpio.output, PINS.reset, 1)
    assert chip.peek(0x0A) == 0x0F
    await asyncio.to_thread(gpio.output, PINS.reset, 0)
    await asyncio.to_thread(gpio.output, PINS.reset, 1)
    assert chip.peek(0x0A) == 0x09
    await asyncio.to_thread(gpio.cleanup)


async def test_link_reconnects_after_the_server_drops_it(link, server) -> None:
    assert await xfer(link, [0x42, 0]) == [0, 0x12]
    server.disconnect_client()
    await asyncio.sleep(0.05)
    assert await xfer(link, [0x42, 0]) == [0, 0x12]
    assert link.connects == 2


async def test_a_second_client_is_refused_and_the_first_goes_on(link, server, caplog) -> None:
    assert await xfer(link, [0x42, 0]) == [0, 0x12]
    other = SimChipLink("127.0.0.1", server.port, reply_timeout_s=2.0)
    try:
        with pytest.raises(LinkError) as refused:
            await xfer(other, [0x42, 0])
        assert str(refused.value) == (
            f"sim chip at 127.0.0.1:{server.port}: chip server busy: another client holds the chip"
        )
        assert server.counters["refused"] == 1
        assert "refused" in caplog.text and "another client holds the chip" in caplog.text
        assert await xfer(link, [0x42, 0]) == [0, 0x12]  # the first client is undisturbed
        assert link.connects == 1
    finally:
        await asyncio.to_thread(other.close)


async def test_a_client_that_is_gone_frees_the_chip(link, server) -> None:
    assert await xfer(link, [0x42, 0]) == [0, 0x12]
    await asyncio.to_thread(link.close)  # as a killed process: the kernel closes the socket
    other = SimChipLink("127.0.0.1", server.port, reply_timeout_s=2.0)
    try:
        assert await xfer(other, [0x42, 0]) == [0, 0x12]
        assert server.counters["refused"] == 0
    finally:
        await asyncio.to_thread(other.close)


async def test_server_gone_fails_fast_and_comes_back(chip, server, link) -> None:
    port = server.port
    assert await xfer(link, [0x42, 0]) == [0, 0x12]
    await server.close()
    with pytest.raises(LinkError, match=r"closed the connection|unreachable"):
        await asyncio.wait_for(xfer(link, [0x42, 0]), 5.0)
    with pytest.raises(LinkError, match="unreachable"):
        await asyncio.wait_for(xfer(link, [0x42, 0]), 5.0)
    assert not link.connected
    again = ChipServer(chip, port=port)
    await again.start()
    try:
        assert await xfer(link, [0x42, 0]) == [0, 0x12]
    finally:
        await again.close()


async def test_nothing_listening_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RadioError, match=f"sim chip at 127.0.0.1:{port} unreachable"):
        await asyncio.wait_for(asyncio.to_thread(open_backend, f"sim://127.0.0.1:{port}", PINS), 5)


async def test_a_server_that_never_answers_times_out() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts into the backlog, never reads or answers
    link = SimChipLink("127.0.0.1", silent.getsockname()[1], reply_timeout_s=0.3)
    try:
        with pytest.raises(LinkError, match=r"did not answer within 0\.3 s"):
            await asyncio.wait_for(asyncio.to_thread(link.connect), 5.0)
    finally:
        await asyncio.to_thread(link.close)
        silent.close()


async def test_a_server_of_another_protocol_is_refused() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(http, "127.0.0.1", 0)
    link = SimChipLink("127.0.0.1", other.sockets[0].getsockname()[1], reply_timeout_s=0.5)
    try:
        with pytest.raises(LinkError):
            await asyncio.wait_for(asyncio.to_thread(link.connect), 5.0)
    finally:
        await asyncio.to_thread(link.close)
        other.close()
        await other.wait_closed()


async def test_server_answers_bad_requests_with_errors_and_carries_on(server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def ask(kind: int, body: bytes = b"") -> tuple[int, bytes]:
        writer.write(encode_message(kind, body))
        while True:
            (length,) = struct.unpack(">H", await reader.readexactly(2))
            message = await reader.readexactly(length)
            if message[0] != DIO0_EDGE:
                return message[0], message[1:]

    assert (await ask(XFER, b"\x42\x00"))[0] == ERROR  # no HELLO yet
    assert await ask(HELLO, b"other-protocol/9") == (
        ERROR,
        b"unsupported protocol b'other-protocol/9'",
    )
    assert await ask(HELLO, PROTOCOL_HELLO) == (HELLO_OK, PROTOCOL_HELLO)
    assert (await ask(0x55))[0] == ERROR
    assert (await ask(XFER))[0] == ERROR  # empty transfer
    assert await ask(XFER, b"\x42\x00") == (XFER_REPLY, b"\x00\x12")
    writer.write(b"\x00\x00")  # a zero length: the server hangs up
    assert await asyncio.wait_for(reader.read(), 3.0) == b""
    writer.close()
    assert server.counters["bad_messages"] == 1


def test_split_messages_keeps_partial_messages() -> None:
    stream = encode_message(XFER_REPLY, b"\x01\x02") + encode_message(DIO0_EDGE, b"\x01")
    buffer = bytearray(stream[:3])
    assert split_messages(buffer) == []
    buffer += stream[3:7]
    assert split_messages(buffer) == [(XFER_REPLY, b"\x01\x02")]
    buffer += stream[7:]
    assert split_messages(buffer) == [(DIO0_EDGE, b"\x01")]
    assert buffer == b""
    with pytest.raises(LinkError, match="bad message length 0"):
        split_messages(bytearray(b"\x00\x00\x01"))


def test_spi_urls() -> None:
    assert parse_spi_url("spidev://0.1") == ("spidev", 0, 1)
    assert parse_spi_url("sim://localhost:7000") == ("sim", "localhost", 7000)
    for bad in ("sim://h:0", "sim://h:70000", "spidev://0", "http://x"):
        with pytest.raises(RadioError):
            parse_spi_url(bad)
