"""Collisions on the simulated medium and the capture effect, seen through the real driver.

Two node radios transmit overlapping frames on the gateway's channel and spreading factor. If
one arrives at least 6 dB stronger than the other at the gateway, the gateway's chip receives
it (capture) and the weaker one is lost; closer than that, both are lost. What the driver
hands to the gateway and what the medium counted must agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.radio.base import RxPacket
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.node_link import MediumNodeLink
from hil_tests.helpers import SimBench, sim_config, wait_until

OVERLAP_DELAY_S = 0.010  # the second frame starts 10 ms into the first (both ~60 ms long)


class Heard:
    """The gateway's receive callback: every ``RxPacket`` the driver delivered."""

    def __init__(self) -> None:
        self.packets: list[RxPacket] = []

    def __call__(self, packet: RxPacket) -> None:
        self.packets.append(packet)

    @property
    def payloads(self) -> list[bytes]:
        return [packet.payload for packet in self.packets]


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[SimBench]:
    bench = SimBench(sim_config(tmp_path / "gateway"))
    try:
        yield bench
    finally:
        await bench.close()


@pytest.fixture
async def gateway(bench: SimBench) -> AsyncIterator[tuple[Sx127xRadio, Heard]]:
    radio = bench.gateway_radio()
    heard = Heard()
    await asyncio.wait_for(radio.open(heard), 5.0)
    try:
        yield radio, heard
    finally:
        await radio.close()


def node_at(bench: SimBench, name: str, position: tuple[float, float]) -> MediumNodeLink:
    assert bench.medium is not None
    return MediumNodeLink(bench.medium, bench.settings, position=position, name=name)


def power_at_gateway(bench: SimBench, link: MediumNodeLink) -> float:
    assert bench.medium is not None and bench.chip is not None
    settings = bench.settings
    return bench.medium.received_power_dbm(
        link, bench.chip, settings.tx_power_dbm, settings.frequency_hz
    )


async def overlapping(first: MediumNodeLink, second: MediumNodeLink, a: bytes, b: bytes) -> None:
    async def later() -> None:
        await asyncio.sleep(OVERLAP_DELAY_S)
        await second.transmit(b)

    await asyncio.gather(first.transmit(a), later())


async def then_alone(link: MediumNodeLink, heard: Heard, payload: bytes) -> None:
    """A frame on a quiet channel: once the driver delivered it, anything sent earlier that was
    going to be delivered has been (the chip raises RxDone in order)."""
    await link.transmit(payload)
    await wait_until(lambda: payload in heard.payloads, 3.0, "lone frame received")


async def test_stronger_frame_by_6_db_or_more_is_captured_weaker_is_lost(
    bench: SimBench, gateway: tuple[Sx127xRadio, Heard]
) -> None:
    radio, heard = gateway
    strong = node_at(bench, "strong", (100.0, 0.0))
    weak = node_at(bench, "weak", (0.0, 400.0))
    margin = power_at_gateway(bench, strong) - power_at_gateway(bench, weak)
    assert margin >= 6.0, f"set-up: only {margin:.1f} dB between the nodes"
    assert bench.medium is not None and bench.chip is not None
    before = bench.medium.stats.as_dict()
    strong_frame, weak_frame = b"S" * 24, b"W" * 24

    await overlapping(strong, weak, strong_frame, weak_frame)
    await then_alone(weak, heard, b"weak alone")

    after = bench.medium.stats.as_dict()
    assert after["captured"] - before["captured"] == 1
    assert after["lost_collision"] - before["lost_collision"] == 1
    assert after["delivered"] - before["delivered"] == 2  # the captured frame and the lone one
    assert heard.payloads == [strong_frame, b"weak alone"]
    captured = heard.packets[0]
    assert abs(captured.rssi - power_at_gateway(bench, strong)) <= 1.0
    assert radio.counters["rx_packets"] == 2
    assert radio.counters["crc_errors"] == 0


async def test_frames_closer_than_6_db_are_both_lost(
    bench: SimBench, gateway: tuple[Sx127xRadio, Heard]
) -> None:
    radio, heard = gateway
    one = node_at(bench, "one", (100.0, 0.0))
    other = node_at(bench, "other", (-110.0, 0.0))
    margin = abs(power_at_gateway(bench, one) - power_at_gateway(bench, other))
    assert margin < 6.0, f"set-up: {margin:.1f} dB between the nodes"
    assert bench.medium is not None
    before = bench.medium.stats.as_dict()

    await overlapping(one, other, b"1" * 24, b"2" * 24)
    await then_alone(other, heard, b"other alone")

    after = bench.medium.stats.as_dict()
    assert after["lost_collision"] - before["lost_collision"] == 2
    assert after["captured"] - before["captured"] == 0
    assert after["delivered"] - before["delivered"] == 1  # only the lone frame
    assert heard.payloads == [b"other alone"]
    assert radio.counters["rx_packets"] == 1


async def test_frames_that_do_not_overlap_are_both_received(
    bench: SimBench, gateway: tuple[Sx127xRadio, Heard]
) -> None:
    """The same two nodes as above, one after the other: both frames arrive."""
    _, heard = gateway
    one = node_at(bench, "one", (100.0, 0.0))
    other = node_at(bench, "other", (-110.0, 0.0))
    await one.transmit(b"1" * 24)
    await other.transmit(b"2" * 24)
    await wait_until(lambda: len(heard.packets) == 2, 3.0, "both frames received")
    assert heard.payloads == [b"1" * 24, b"2" * 24]
