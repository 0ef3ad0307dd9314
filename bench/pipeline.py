"""Radio to PUBACK: throughput against raw paho, latency at 20 frames/s, CPU per report, and
the same steady rate and burst again inside windows a profiler samples.

Each function runs in its own child process (``bench.child``) against the mosquitto that
``bench.run`` started; see docs/PERFORMANCE.md for what exactly each figure measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from bench.child import Channel
from bench.harness import (
    BenchGateway,
    InterruptPacer,
    NodeFleet,
    bench_config,
    cpu_seconds,
    percentile,
    tcp_counters,
)
from gateway.store import outbox as outbox_module

TIMEOUT_FLOOR_S = 60.0
# Frames handed over but not yet acknowledged by the broker, at most: half of the rows the
# outbox queues before it refuses (OutboxBusy), so a burst never loses a report, and far
# more than the upstream's in-flight window, so the publisher never waits for frames.
MAX_AHEAD_OF_ACKS = getattr(outbox_module, "DEFAULT_MAX_QUEUED_ROWS", 10_000) // 2
AHEAD_POLL_S = 0.001


@contextlib.asynccontextmanager
async def joined_gateway(
    nodes: int, *, keep_times: bool = False, **config: Any
) -> AsyncIterator[tuple[BenchGateway, NodeFleet]]:
    """A started gateway on a private data directory with ``nodes`` nodes joined through it
    and its outbox drained of their ``joined`` events."""
    with tempfile.TemporaryDirectory(prefix="duogate-bench-") as tmp:
        fleet = NodeFleet(nodes)
        registry = fleet.write_registry(Path(tmp) / "registry.toml")
        settings = bench_config(Path(tmp) / "data", registry, **config)
        gateway = BenchGateway.build(settings, keep_times=keep_times)
        await gateway.start()
        try:
            await gateway.wait_connected()
            await fleet.join_all(gateway.radio, settings)
            await gateway.wait_drained()
            yield gateway, fleet
        finally:
            await gateway.stop()


async def inject_burst(gateway: BenchGateway, frames: list[bytes]) -> dict[str, float]:
    """Hand every frame to the radio interface as fast as the loop takes them (one per turn
    of the event loop) and wait for the last PUBACK; figures of that interval."""
    acks, count = gateway.acks, len(frames)
    target = acks.count + count
    sock = gateway.upstream.wire_socket()
    sent0, received0 = tcp_counters(sock)
    cpu0 = cpu_seconds()
    start = time.monotonic()
    acked_before = acks.count
    for injected, phy in enumerate(frames):
        while injected - (acks.count - acked_before) > MAX_AHEAD_OF_ACKS:
            await asyncio.sleep(AHEAD_POLL_S)  # the gateway is behind: as a node would wait
        gateway.radio.receive(phy)
        await asyncio.sleep(0)
    await acks.wait_for(target, TIMEOUT_FLOOR_S + count / 100, gateway.not_stored)
    elapsed = acks.last - start
    cpu = cpu_seconds() - cpu0
    sent1, received1 = tcp_counters(sock)
    return {
        "reports": count,
        "start_mono": start,
        "seconds": elapsed,
        "rate": count / elapsed,
        "cpu_us_per_report": cpu / count * 1e6,
        "bytes_per_report": (sent1 - sent0 + received1 - received0) / count,
        "bytes_out_per_report": (sent1 - sent0) / count,
    }


def frames_of(fleet: NodeFleet, count: int, start: int) -> list[bytes]:
    return [phy for _, _, phy in fleet.report_frames(count, start=start)]


async def throughput(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Rounds of: the parent runs raw paho (event ``baseline``), then the gateway's burst."""
    nodes, reports, rounds = params["nodes"], params["reports"], params["rounds"]
    async with joined_gateway(nodes, mqtt_port=params["mqtt_port"]) as (gateway, fleet):
        await inject_burst(gateway, frames_of(fleet, nodes, 0))  # warm-up: one per node
        await gateway.wait_drained()
        assert gateway.upstream.sample is not None
        topic, payload_size = gateway.upstream.sample
        counter = nodes
        results: list[dict[str, float]] = []
        for _ in range(rounds):
            frames = frames_of(fleet, reports, counter)
            counter += reports
            channel.announce("baseline", {"topic": topic, "payload_size": payload_size})
            await channel.wait_go()
            results.append(await inject_burst(gateway, frames))
            await gateway.wait_drained()
    return {
        "nodes": nodes,
        "reports": reports,
        "topic_length": len(topic),
        "payload_size": payload_size,
        "rounds": results,
        "rate": statistics.median(r["rate"] for r in results),
        "cpu_us_per_report": statistics.median(r["cpu_us_per_report"] for r in results),
        "bytes_per_report": statistics.median(r["bytes_per_report"] for r in results),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
    }


def frames_with_keys(fleet: NodeFleet, count: int) -> list[tuple[Any, bytes]]:
    return [((node.device, counter), phy) for node, counter, phy in fleet.report_frames(count)]


async def latency(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """DIO0 (``RxPacket.t_mono``) to PUBACK at a steady rate, once per commit interval."""
    rate, seconds, warmup_s = params["rate"], params["seconds"], params["warmup_s"]
    figures: dict[str, Any] = {"rate": rate, "seconds": seconds}
    for label, interval in params["commit_intervals"].items():
        if interval is not None:
            try:
                bench_config(Path("data"), Path("registry.toml"), commit_interval_s=interval)
            except ValueError as exc:  # the setting's bounds (or the setting) changed
                reason = " ".join(str(exc).split())[:300]
                figures[label] = {"commit_interval_s": interval, "not_accepted": reason}
                continue
        async with joined_gateway(
            params["nodes"],
            keep_times=True,
            mqtt_port=params["mqtt_port"],
            commit_interval_s=interval,
        ) as (gateway, fleet):
            frames = frames_with_keys(fleet, int(rate * (warmup_s + seconds)))
            pacer = InterruptPacer(gateway.radio, frames, rate)
            pacer.start()
            await pacer.wait()
            await gateway.acks.wait_for(len(frames), TIMEOUT_FLOOR_S, gateway.not_stored)
            times = gateway.acks.times
            assert times is not None
            skip = int(rate * warmup_s)
            keys = [key for key, _ in frames[skip:]]
            samples = [(times[key] - pacer.stamps[key]) * 1000 for key in keys]
            acks = gateway.acks
            stages = {
                "stored": [(acks.stored[k] - pacer.stamps[k]) * 1000 for k in keys],
                "to_publish": [(acks.sent[k] - acks.stored[k]) * 1000 for k in keys],
                "publish_to_puback": [(times[k] - acks.sent[k]) * 1000 for k in keys],
            }
            figures[label] = {
                "p50_split_ms": {name: percentile(v, 0.5) for name, v in stages.items()},
                "p99_split_ms": {name: percentile(v, 0.99) for name, v in stages.items()},
                "commit_interval_s": getattr(gateway.config.outbox, "commit_interval_s", None),
                "samples": len(samples),
                "p50_ms": percentile(samples, 0.50),
                "p99_ms": percentile(samples, 0.99),
                "max_ms": max(samples),
                "late_frames": pacer.late,
            }
    return figures


async def steady_case(
    gateway: BenchGateway, frames: list[tuple[Any, bytes]], rate: float, idle_cpu_per_s: float
) -> dict[str, Any]:
    """A thread hands the frames over at ``rate`` as a DIO0 handler does; process CPU time
    (all threads) from the first frame to the last PUBACK, per report."""
    acked_before = gateway.acks.count
    pacer = InterruptPacer(gateway.radio, frames, rate)
    cpu0, start = cpu_seconds(), time.monotonic()
    pacer.start()
    await pacer.wait()
    await gateway.acks.wait_for(acked_before + len(frames), TIMEOUT_FLOOR_S, gateway.not_stored)
    cpu, wall = cpu_seconds() - cpu0, gateway.acks.last - start
    count = len(frames)
    return {
        "rate": rate,
        "reports": count,
        "seconds": wall,
        "cpu_us_per_report": cpu / count * 1e6,
        "cpu_us_per_report_above_idle": (cpu - idle_cpu_per_s * wall) / count * 1e6,
        "late_frames": pacer.late,
    }


async def idle_cpu_per_s(idle_s: float) -> float:
    cpu0 = cpu_seconds()
    await asyncio.sleep(idle_s)
    return (cpu_seconds() - cpu0) / idle_s


async def cpu_per_report(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Process CPU time (all threads) over a run at a steady rate, divided by the reports; one
    run per ``(rate, seconds)`` of ``params["cases"]``, one after the other in the same gateway,
    each after the previous one's reports were all acknowledged and the outbox drained."""
    cases: dict[str, Any] = {}
    async with joined_gateway(params["nodes"], mqtt_port=params["mqtt_port"]) as (gateway, fleet):
        idle = await idle_cpu_per_s(params["idle_s"])
        for rate, seconds in params["cases"]:
            frames = frames_with_keys(fleet, int(rate * seconds))
            cases[f"{rate:g}"] = await steady_case(gateway, frames, rate, idle)
            await gateway.wait_drained()
    return {
        "idle_cpu_ms_per_s": idle * 1000,
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cases": cases,
    }


async def profiled(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """The P4 steady rate, then a P1 burst, in one gateway, each inside a window the parent
    samples with a profiler (events ``profile_start`` and ``profile_stop`` around it, with
    this process's id); the figures of each window as the unprofiled benchmarks give them."""
    allow_any_tracer()
    figures: dict[str, Any] = {"cpus_allowed": sorted(os.sched_getaffinity(0))}
    async with joined_gateway(params["nodes"], mqtt_port=params["mqtt_port"]) as (gateway, fleet):
        await inject_burst(gateway, frames_of(fleet, params["nodes"], 0))  # warm-up, as P1
        await gateway.wait_drained()
        idle = await idle_cpu_per_s(params["idle_s"])
        figures["idle_cpu_ms_per_s"] = idle * 1000

        async def window(phase: str, run: Awaitable[dict[str, Any]]) -> dict[str, Any]:
            channel.announce("profile_start", {"phase": phase, "pid": os.getpid()})
            await channel.wait_go()
            try:
                return await run
            finally:
                channel.announce("profile_stop", {"phase": phase})
                await channel.wait_go()

        rate, seconds = params["steady"]
        frames = frames_with_keys(fleet, int(rate * seconds))  # built before the window
        figures["steady"] = await window("steady", steady_case(gateway, frames, rate, idle))
        await gateway.wait_drained()
        burst = frames_of(fleet, params["burst_reports"], params["nodes"])
        figures["burst"] = await window("burst", inject_burst(gateway, burst))
        await gateway.wait_drained()
    return figures


PR_SET_PTRACER = 0x59616D61  # linux/prctl.h
PR_SET_PTRACER_ANY = -1


def allow_any_tracer() -> None:
    """Let a profiler that is not this process's ancestor read it where the Yama module
    restricts that to ancestors (ptrace_scope 1, e.g. Ubuntu); harmless elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(PR_SET_PTRACER_ANY), 0, 0, 0)
