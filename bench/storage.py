"""Storage writes per report at a steady rate with part of the reports confirmed (P7).

A confirmed report is acked on air only after its row is committed, so the ack (sent by the
gateway at the receive delay after the uplink) waits for a durable commit. The child runs
the gateway as the other pipeline benchmarks do (``bench.pipeline.joined_gateway``), with a
thread handing frames over at the given rate as a DIO0 handler does; after a warm-up it
reads ``write_bytes`` of ``/proc/self/io`` (every thread of the process) at the start and
the end of a steady window, and reports the window's wall-clock instants so that
``bench.run``, which started this child under strace, counts the sync calls inside it
(``bench.syscalls``).

With ``broker_down`` the parent stops the broker once the nodes joined (event ``broker_off``)
and starts it again after the window (event ``broker_on``): no upstream acknowledges a report
before its ack is due, so every confirmed one waits for a commit, the case where the
ack-after-commit promise sets the floor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.child import Channel
from bench.harness import BenchError, BenchGateway, InterruptPacer
from bench.pipeline import TIMEOUT_FLOOR_S, joined_gateway

TAIL_S = 2.0  # frames keep coming this long after the window, so its end is steady too
DISCONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class IoMark:
    wall: float
    mono: float
    write_bytes: int
    cancelled_write_bytes: int


def io_counters() -> dict[str, int]:
    """``/proc/self/io`` as numbers (the whole process, all threads)."""
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = int(value)
    return fields


def mark() -> IoMark:
    io = io_counters()
    return IoMark(time.time(), time.monotonic(), io["write_bytes"], io["cancelled_write_bytes"])


def spread(fraction: float) -> Callable[[int], bool]:
    """Whether the n-th frame is confirmed, spread evenly: ``fraction`` of every run of frames."""
    return lambda n: int((n + 1) * fraction) > int(n * fraction)


async def until_disconnected(gateway: BenchGateway) -> None:
    deadline = time.monotonic() + DISCONNECT_TIMEOUT_S
    while gateway.upstream.connected:
        if time.monotonic() > deadline:
            raise BenchError("the upstream still looks connected with the broker stopped")
        await asyncio.sleep(0.01)


async def storage_writes(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    rate, fraction = params["rate"], params["confirmed_fraction"]
    seconds, warmup_s = params["seconds"], params["warmup_s"]
    broker_down = bool(params.get("broker_down"))
    async with joined_gateway(params["nodes"], mqtt_port=params["mqtt_port"]) as (gateway, fleet):
        if broker_down:
            channel.announce("broker_off")
            await channel.wait_go()
            await until_disconnected(gateway)
        count = int(rate * (warmup_s + seconds + TAIL_S))
        is_confirmed = spread(fraction)
        frames, confirmed_keys = [], set()
        for n, (node, counter, phy) in enumerate(
            fleet.report_frames(count, confirmed=is_confirmed)
        ):
            frames.append(((node.device, counter), phy))
            if is_confirmed(n):
                confirmed_keys.add((node.device, counter))
        pacer = InterruptPacer(gateway.radio, frames, rate)
        pacer.start()
        await asyncio.sleep(warmup_s)
        start, acks_before = mark(), len(gateway.radio.transmitted)
        await asyncio.sleep(seconds)
        end, acks_after = mark(), len(gateway.radio.transmitted)
        await pacer.wait()
        if broker_down:
            channel.announce("broker_on")
            await channel.wait_go()
        await gateway.acks.wait_for(len(frames), TIMEOUT_FLOOR_S, gateway.not_stored)
        rx_delay_s = gateway.config.radio.rx_delay_s
        lora_counters = dict(gateway.lora.counters)
    in_window = [key for key, t in pacer.stamps.items() if start.mono <= t < end.mono]
    reports = len(in_window)
    return {
        "rate": rate,
        "confirmed_fraction": fraction,
        "broker_down": broker_down,
        "rx_delay_s": rx_delay_s,
        "window_s": end.mono - start.mono,
        "window_wall": [start.wall, end.wall],
        "reports": reports,
        "confirmed": sum(1 for key in in_window if key in confirmed_keys),
        "acks_on_air": acks_after - acks_before,
        "write_bytes": end.write_bytes - start.write_bytes,
        "cancelled_write_bytes": end.cancelled_write_bytes - start.cancelled_write_bytes,
        "bytes_per_report": (end.write_bytes - start.write_bytes) / reports,
        "late_frames": pacer.late,
        "lora_counters": lora_counters,
    }
