"""A whole gateway (simulated world, real LoRa shell, real bridge and stores) whose upstream
is the in-memory twin (``gateway.upstreams.memory``): bridge logic without a broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from drivers.sim.node import SimNode
from gateway.config import Config, parse_config
from gateway.daemon import Gateway
from gateway.model import Report
from gateway.upstreams.memory import MemoryUpstream
from tests.bridge_fixtures import fast_settings, world_of

UNUSED_PORT = 1  # the config names a broker; the twin stands in for it


def twin_config(tmp_path: Path, *, nodes: int = 1, **sections: dict[str, Any]) -> Config:
    settings = fast_settings(tmp_path / "data", UNUSED_PORT, nodes=nodes)
    for name, values in sections.items():
        settings.setdefault(name, {}).update(values)
    return parse_config(settings)


@contextlib.asynccontextmanager
async def twin_gateway(
    config: Config, *twins: MemoryUpstream
) -> AsyncIterator[tuple[Gateway, MemoryUpstream]]:
    """The gateway with ``twins`` as its upstreams (one MQTT-like twin if none given)."""
    upstreams = list(twins) or [MemoryUpstream("mqtt")]
    gateway = Gateway.build(config, upstreams=upstreams)
    await gateway.start()
    try:
        yield gateway, upstreams[0]
    finally:
        await gateway.stop()


def wire_reports(twin: MemoryUpstream) -> dict[str, list[dict[str, Any]]]:
    """The reports the twin took, per device, as they would be on the wire."""
    found: dict[str, list[dict[str, Any]]] = {}
    for report in twin.reports:
        found.setdefault(report.device, []).append(report.to_wire())
    return found


def counters_of(reports: list[Report], device: str) -> list[int]:
    return [r.data["counter"] for r in reports if r.device == device]


async def wait_for_counter(twin: MemoryUpstream, devices: list[str], counter: int) -> None:
    """Until every device has reported counters up to at least ``counter``."""

    def reached() -> bool:
        return all(max(counters_of(twin.reports, d), default=0) >= counter for d in devices)

    await twin.wait_for(reached, f"counter {counter} from {devices}")


async def wait_for_final(twin: MemoryUpstream, command_id: str) -> str:
    finals = {"executed", "failed", "expired", "rejected", "timeout"}
    await twin.wait_for(
        lambda: any(s in finals for s in twin.statuses(command_id)),
        f"a final result of {command_id!r}",
    )
    return next(s for s in twin.statuses(command_id) if s in finals)


async def reporting_node(gateway: Gateway, twin: MemoryUpstream) -> SimNode:
    """The world's first node, once its first report has come through the twin."""
    node = world_of(gateway).nodes[0]
    await wait_for_counter(twin, [node.device_id], 1)
    return node
