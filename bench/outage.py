"""Memory with 1,000 leases and 100,000 buffered reports, then the drain when the broker returns.

The process is the gateway as ``duogate run`` assembles it (``gateway.daemon.Gateway``: bridge,
LoRa network, MQTT upstream, console and metrics server) with the injecting radio in place of
the SX127x driver. ``bench.run`` stops the shared mosquitto before starting this child, so
every report stays in the outbox; once the figures of memory are taken (event ``buffered``)
it starts the same mosquitto again on the same port and the drain is timed from the moment
the upstream is connected to the last PUBACK.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import time
from typing import Any

from bench.child import Channel
from bench.harness import (
    BenchError,
    cpu_seconds,
    daemon_gateway,
    until_outbox_empty,
    vm_kib,
)
from gateway.store.outbox import Outbox

DAEMON_MODULES = (
    "gateway.daemon",
    "gateway.console.server",
    "gateway.metrics",
    "gateway.upstreams.mqtt",
)
CHUNK = 1000  # frames built and injected at a time (the benchmark keeps no more than that)
SETTLE_S = 2.0
RECONNECT_TIMEOUT_S = 30.0
POLL_S = 0.01


async def until_stored(outbox: Outbox, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while outbox.size < count:
        if time.monotonic() > deadline:
            raise BenchError(f"outbox holds {outbox.size} entries, expected {count}")
        await asyncio.sleep(POLL_S)


async def memory_and_drain(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    nodes, reports = params["nodes"], params["reports"]
    for module in DAEMON_MODULES:  # what Gateway.start imports, so the first figure is all code
        importlib.import_module(module)
    gc.collect()
    rss_imported = vm_kib("VmRSS")
    async with daemon_gateway(nodes, params["mqtt_port"]) as (gateway, radio, fleet, config):
        assert gateway.bridge is not None and gateway.bridge.outbox is not None
        assert gateway.lora is not None
        outbox = gateway.bridge.outbox
        upstream: Any = gateway.bridge.upstreams["mqtt"]
        if upstream.connected:
            raise BenchError("the broker is up: the reports would not stay in the outbox")
        rss_started = vm_kib("VmRSS")
        await fleet.join_all(radio, config)
        await asyncio.sleep(0.3)
        await outbox.flush()
        events = outbox.size  # one "joined" event per node (more if a join was repeated)
        rss_joined = vm_kib("VmRSS")
        for start in range(0, reports, CHUNK):
            count = min(CHUNK, reports - start)
            for _, _, phy in fleet.report_frames(count, start=start):
                radio.receive(phy)
                await asyncio.sleep(0)
            await until_stored(outbox, events + start + count)
            # Written before the next chunk, as a channel's pace would allow: a burst of
            # 100,000 rows taken at once would overrun the rows allowed to wait for a commit.
            await outbox.flush()
        if gateway.lora.counters["report_not_stored"]:
            raise BenchError("reports refused by the outbox")
        gc.collect()
        await asyncio.sleep(SETTLE_S)
        rss, hwm = vm_kib("VmRSS"), vm_kib("VmHWM")
        channel.announce("buffered", {"entries": outbox.size, "rss_kib": rss})
        await channel.wait_go()

        entries = outbox.size
        deadline = time.monotonic() + RECONNECT_TIMEOUT_S
        while not upstream.connected:
            if time.monotonic() > deadline:
                raise BenchError("the upstream did not reconnect to the broker")
            await asyncio.sleep(POLL_S / 2)
        start_mono, cpu0 = time.monotonic(), cpu_seconds()
        target = upstream.stats["published"] + entries
        deadline = start_mono + 60 + entries / 100
        while upstream.stats["published"] < target:
            if time.monotonic() > deadline:
                raise BenchError(f"drain: {upstream.stats['published']} of {target}")
            await asyncio.sleep(POLL_S)
        drained = time.monotonic() - start_mono
        cpu = cpu_seconds() - cpu0
        await until_outbox_empty(outbox, None, POLL_S)
        empty = time.monotonic() - start_mono
    return {
        "nodes": nodes,
        "reports": reports,
        "events": events,
        "rss_imported_kib": rss_imported,
        "rss_started_kib": rss_started,
        "rss_joined_kib": rss_joined,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "drain_entries": entries,
        "drain_seconds": drained,
        "drain_rate": entries / drained,
        "drain_cpu_us_per_entry": cpu / entries * 1e6,
        "outbox_empty_seconds": empty,
    }
