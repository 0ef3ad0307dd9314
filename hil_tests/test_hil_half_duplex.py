"""The gateway cannot hear while it transmits (half duplex), through the real driver.

A node's frame that starts while the gateway is sending, or that the gateway was receiving
when it started sending, never becomes an ``RxPacket``; the same node alone on a quiet channel
is heard, so the silence is not a deaf receiver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.radio.base import RxPacket
from drivers.radio.sx127x import Sx127xRadio
from hil_tests.helpers import BENCH_KINDS, Bench, node_board_skip_reason, open_bench, wait_until

LONG = bytes(range(200))  # about 330 ms at SF7 / 125 kHz
SHORT = b"node talks over the gateway"


class Heard:
    def __init__(self) -> None:
        self.packets: list[RxPacket] = []

    def __call__(self, packet: RxPacket) -> None:
        self.packets.append(packet)


@pytest.fixture(params=BENCH_KINDS)
async def bench(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bench]:
    if request.param == "hardware" and (reason := node_board_skip_reason()):
        pytest.skip(reason)
    async with open_bench(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def gateway(bench: Bench) -> AsyncIterator[tuple[Sx127xRadio, Heard]]:
    radio = bench.gateway_radio()
    heard = Heard()
    await asyncio.wait_for(radio.open(heard), 10.0)
    try:
        yield radio, heard
    finally:
        await radio.close()


def half_duplex_losses(bench: Bench) -> int:
    return bench.medium.stats.lost_half_duplex if bench.medium is not None else 0


async def test_frame_starting_while_the_gateway_transmits_is_not_received(
    bench: Bench, gateway: tuple[Sx127xRadio, Heard]
) -> None:
    radio, heard = gateway
    node = await bench.node_link("talker", distance_m=100.0)
    settings = bench.settings
    assert settings.time_on_air_s(len(SHORT)) + 0.1 < settings.time_on_air_s(len(LONG))
    before = half_duplex_losses(bench)
    rx_before = bench.chip.stats.rx_packets if bench.chip is not None else 0

    downlink = asyncio.create_task(radio.transmit(LONG))
    await asyncio.sleep(0.1)  # well inside the gateway's frame
    assert not downlink.done()
    await node.transmit(SHORT)  # ends before the gateway's frame does
    assert not downlink.done()
    await downlink

    if bench.medium is not None and bench.chip is not None:
        assert half_duplex_losses(bench) - before == 1
        assert bench.chip.stats.rx_packets == rx_before
    await node.transmit(b"alone")
    await wait_until(lambda: bool(heard.packets), 3.0, "the lone frame received")
    assert [packet.payload for packet in heard.packets] == [b"alone"]
    assert radio.counters["tx_packets"] == 1


async def test_frame_being_received_when_the_gateway_starts_transmitting_is_lost(
    bench: Bench, gateway: tuple[Sx127xRadio, Heard]
) -> None:
    radio, heard = gateway
    node = await bench.node_link("talker", distance_m=100.0)
    settings = bench.settings
    assert settings.time_on_air_s(len(SHORT)) + 0.1 < settings.time_on_air_s(len(LONG))
    before = half_duplex_losses(bench)
    rx_before = bench.chip.stats.rx_packets if bench.chip is not None else 0

    uplink = asyncio.create_task(node.transmit(LONG))
    await asyncio.sleep(0.05)  # the gateway is receiving the node's frame
    await radio.transmit(SHORT)  # and back in receive before the node's frame ends
    assert not uplink.done()
    await uplink

    if bench.medium is not None and bench.chip is not None:
        # Both ends: the node's frame at the gateway, and the gateway's frame at the node,
        # which was transmitting when it started.
        assert half_duplex_losses(bench) - before == 2
        assert bench.chip.stats.rx_packets == rx_before
    await node.transmit(b"alone")
    await wait_until(lambda: bool(heard.packets), 3.0, "the lone frame received")
    assert [packet.payload for packet in heard.packets] == [b"alone"]
