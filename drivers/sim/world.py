"""The simulated radio world: an RF medium, N simulated nodes and the gateway's SX127x chip.

``duogate sim`` runs it as its own process and serves the gateway chip's SPI bus and DIO0 line
on a local socket (``drivers.sim.chip_server``); a gateway with ``radio.spi = "sim://HOST:PORT"``
then runs its real SX127x driver against it. The world keeps running when the gateway process
dies, and the nodes' retransmission queues carry their reports over the outage.

Tests build ``SimWorld`` in-process and reach every part of it (nodes, chip, medium).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
from dataclasses import dataclass
from pathlib import Path

from drivers.radio.serial_link import settings_from_config
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from drivers.sim.medium import RfMedium
from drivers.sim.node import NodeConfig, SimNode
from drivers.sim.node_link import MediumNodeLink
from gateway.config import Config, ConfigError
from gateway.config_checks import parse_listen
from gateway.protocol import crypto
from gateway.registry import load_join

log = logging.getLogger("duogate.sim")

# EUIs of simulated nodes: a private-use OUI block, numbered from 1.
SIM_EUI_BASE = 0x00_16_C0_01_00_00_00_00


@dataclass(frozen=True, slots=True)
class NodePlan:
    eui: int
    root_key: bytes
    distance_m: float


def plan_nodes(config: Config, count: int | None = None) -> list[NodePlan]:
    """Which nodes the world runs: registry devices first, else open-join lab nodes.

    Distances spread from 50 m to 2 km on a log scale, reproducibly from ``sim.seed``.
    """
    count = config.sim.nodes if count is None else count
    rng = random.Random(config.sim.seed)
    settings, registry = load_join(config)
    keys = [(eui, cred.root_key) for eui, cred in sorted(registry.items())][:count]
    if len(keys) < count:
        if not settings.open_join:
            raise ConfigError(
                [
                    f"sim.nodes: {count} nodes but the registry has {len(keys)} devices "
                    "and join.open_join is off"
                ]
            )
        known = {eui for eui, _ in keys}
        eui = SIM_EUI_BASE
        while len(keys) < count:
            eui += 1
            if eui not in known:
                keys.append((eui, crypto.lab_root_key(settings.lab_key, eui)))
    return [
        NodePlan(eui, key, round(math.exp(rng.uniform(math.log(50), math.log(2000))), 1))
        for eui, key in keys
    ]


class SimWorld:
    """Medium + gateway chip + nodes on the running event loop."""

    def __init__(
        self,
        config: Config,
        *,
        node_config: NodeConfig | None = None,
        state_dir: Path | None = None,
        nodes: int | None = None,
    ) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.medium = RfMedium(self.loop, seed=config.sim.seed, loss_probability=config.sim.loss)
        self.chip = SimulatedSX127x(self.loop, self.medium, position=(0.0, 0.0), name="gateway")
        self.state_dir = state_dir or config.sim.state_dir or config.gateway.data_dir / "sim"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        base = node_config or node_config_from(config)
        settings = settings_from_config(config.radio)
        self.nodes: list[SimNode] = []
        self.links: list[MediumNodeLink] = []
        for index, plan in enumerate(plan_nodes(config, nodes)):
            angle = 2 * math.pi * index / max(1, config.sim.nodes)
            position = (plan.distance_m * math.cos(angle), plan.distance_m * math.sin(angle))
            link = MediumNodeLink(
                self.medium, settings, position=position, name=f"node-{plan.eui:016x}"
            )
            node = SimNode(
                plan.eui,
                plan.root_key,
                link,
                config=base,
                state_path=self.state_dir / f"node-{plan.eui:016x}.json",
                rng=random.Random(config.sim.seed * 1_000_003 + plan.eui),
            )
            self.links.append(link)
            self.nodes.append(node)
        self._tasks: list[asyncio.Task[None]] = []
        self._start_rng = random.Random(config.sim.seed)

    def start(self) -> None:
        """Run every node, each after a random delay within ``sim.start_spread_s``.

        Nodes switched on together would collide on their first join requests and all back
        off; a real deployment never powers up in lockstep either.
        """
        spread = self.config.sim.start_spread_s
        for node in self.nodes:
            delay = self._start_rng.uniform(0, spread) if spread > 0 else 0.0
            self._tasks.append(
                self.loop.create_task(_run_after(delay, node), name=f"sim-{node.device_id}")
            )

    async def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for link in self.links:
            link.close()

    def node(self, device_id: str) -> SimNode:
        for node in self.nodes:
            if node.device_id == device_id:
                return node
        raise KeyError(device_id)

    def summary(self) -> str:
        joined = sum(node.joined for node in self.nodes)
        sent = sum(node.stats.reports_sent for node in self.nodes)
        acked = sum(node.stats.acks_received for node in self.nodes)
        medium = self.medium.stats
        return (
            f"{joined}/{len(self.nodes)} nodes joined, {sent} reports sent, {acked} acks; "
            f"air: {medium.frames_sent} frames, {medium.delivered} delivered, "
            f"{medium.lost_collision} collided"
        )


def node_config_from(config: Config) -> NodeConfig:
    """Node firmware timing from ``[sim]`` (and the join window from ``[join]``)."""
    sim = config.sim
    return NodeConfig(
        report_interval_s=sim.report_interval_s,
        join_rx_delay_s=config.join.join_rx_delay_s,
        join_backoff_min_s=sim.join_backoff_min_s,
        join_backoff_max_s=sim.join_backoff_max_s,
        retry_min_s=sim.retry_min_s,
        retry_max_s=sim.retry_max_s,
        next_uplink_gap_s=sim.next_uplink_gap_s,
    )


async def _run_after(delay: float, node: SimNode) -> None:
    if delay > 0:
        await asyncio.sleep(delay)
    await node.run()


async def run_world(config: Config, listen: str | None = None) -> int:
    """``duogate sim``: serve the gateway chip on a socket and run the nodes until stopped."""
    try:
        host, port = parse_listen(listen or config.sim.listen)
    except ValueError as exc:
        raise ConfigError([f"{'--listen' if listen else 'sim.listen'}: {exc}"]) from None
    world = SimWorld(config)
    server = ChipServer(world.chip, host=host, port=port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    world.start()
    log.info(
        "simulated world up: %d nodes, gateway chip at %s (radio.spi = %r)",
        len(world.nodes),
        server.url,
        server.url,
    )
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=30)
            log.info("%s", world.summary())
    finally:
        await world.stop()
        await server.close()
    return 0
