"""The simulated radio world: an RF medium, N simulated nodes and the gateway's SX127x chip.

Every node is the node library (``node/``) on its own register-level simulated SX127x on the
medium (``drivers.sim.node``), the same code a board runs.

``duogate sim`` (``gateway.sim_command``) runs it as its own process and serves the gateway
chip's SPI bus and DIO0 line on a local socket (``drivers.sim.chip_server``); a gateway with
``radio.spi = "sim://HOST:PORT"`` then runs its real SX127x driver against it. The world keeps
running when the gateway process dies, and the nodes' retransmission queues carry their reports
over the outage.

Tests build ``SimWorld`` in-process and reach every part of it (nodes, chip, medium).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random

from drivers.sim.chip import SimulatedSX127x
from drivers.sim.medium import RfMedium
from drivers.sim.node import SimNode
from drivers.sim.settings import WorldSettings


class SimWorld:
    """Medium + gateway chip + nodes on the running event loop."""

    def __init__(self, settings: WorldSettings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.medium = RfMedium(self.loop, seed=settings.seed, loss_probability=settings.loss)
        self.chip = SimulatedSX127x(self.loop, self.medium, position=(0.0, 0.0), name="gateway")
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[SimNode] = []
        for index, plan in enumerate(settings.nodes):
            angle = 2 * math.pi * index / max(1, len(settings.nodes))
            position = (plan.distance_m * math.cos(angle), plan.distance_m * math.sin(angle))
            node = SimNode.on_medium(
                plan.eui,
                plan.root_key,
                self.medium,
                settings.radio,
                position=position,
                config=settings.node,
                state_path=settings.state_dir / f"node-{plan.eui:016x}.json",
                rng=random.Random(settings.seed * 1_000_003 + plan.eui),
            )
            self.nodes.append(node)
        self._tasks: list[asyncio.Task[None]] = []
        self._start_rng = random.Random(settings.seed)

    def start(self) -> None:
        """Run every node, each after a random delay within ``start_spread_s``.

        Nodes switched on together would collide on their first join requests and all back
        off; a real deployment never powers up in lockstep either.
        """
        spread = self.settings.start_spread_s
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
        for node in self.nodes:
            node.close()

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


async def _run_after(delay: float, node: SimNode) -> None:
    if delay > 0:
        await asyncio.sleep(delay)
    await node.run()
