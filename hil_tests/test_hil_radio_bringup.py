"""The gateway's radio comes up, transmits and retunes: the first check on any bench.

On the real bench this needs only the gateway board (no node board): the chip identifies
itself, keeps its settings (the driver reads them back), sends frames whose TxDone arrives
within their time on air, and goes back to receiving after each one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.radio.base import RxPacket
from drivers.radio.sx127x import Sx127xRadio
from hil_tests.helpers import BENCH_KINDS, Bench, open_bench

LORA_RXCONT = 0x85


@pytest.fixture(params=BENCH_KINDS)
async def bench(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bench]:
    async with open_bench(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def radio(bench: Bench) -> AsyncIterator[Sx127xRadio]:
    radio = bench.gateway_radio()
    heard: list[RxPacket] = []
    await asyncio.wait_for(radio.open(heard.append), 10.0)
    try:
        yield radio
    finally:
        await radio.close()


async def test_radio_transmits_and_returns_to_receive(bench: Bench, radio: Sx127xRadio) -> None:
    assert radio.healthy()
    payloads = [b"\x01" * 10, bytes(range(64)), b"\xff" * 255]
    for payload in payloads:
        airtime = await asyncio.wait_for(radio.transmit(payload), 5.0)
        assert airtime == bench.settings.time_on_air_s(len(payload))
        assert radio.healthy()
    assert radio.counters["tx_packets"] == len(payloads)
    assert radio.counters["tx_timeouts"] == 0
    if bench.chip is not None:
        assert [record.payload for record in bench.chip.tx_history] == payloads
        assert bench.chip.tx_history[-1].params.spreading_factor == bench.settings.spreading_factor
        await asyncio.sleep(0.05)  # TxDone handling puts the chip back into RX continuous
        assert bench.chip.op_mode == LORA_RXCONT


async def test_radio_retunes_at_runtime(bench: Bench, radio: Sx127xRadio) -> None:
    original = radio.settings
    slower = dataclasses.replace(original, spreading_factor=9)
    await asyncio.wait_for(radio.reconfigure(slower), 5.0)
    airtime = await asyncio.wait_for(radio.transmit(b"retuned"), 5.0)
    assert airtime == slower.time_on_air_s(len(b"retuned"))
    if bench.chip is not None:
        assert bench.chip.air_params().spreading_factor == 9
        assert bench.chip.tx_history[-1].params.spreading_factor == 9
    await asyncio.wait_for(radio.reconfigure(original), 5.0)
    assert radio.settings == original
    assert radio.healthy()
