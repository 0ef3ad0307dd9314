"""The simulated radio world: an RF medium, N simulated nodes and the gateway's SX127x chip,
or a site of several gateway chips.

Every node is the node library (``node/``) on its own register-level simulated SX127x on the
medium (``drivers.sim.node``), the same code a board runs.

``duogate sim`` (``gateway.sim_command``) runs it as its own process and serves each gateway
chip's SPI bus and DIO lines on a local socket (``drivers.sim.chip_server``); a gateway with
``radio.spi = "sim://HOST:PORT"`` then runs its real SX127x driver against it. The world keeps
running when a gateway process dies, and the nodes' retransmission queues carry their reports
over the outage.

A site (``WorldSettings.gateways``) puts named gateway chips at positions; the schedule moves
nodes (``moves``) and powers gateway chips off and on (``GatewayChipPlan.off``): a chip that
is off is taken off the medium, so it neither hears nor transmits, while its socket stays
served. The schedule counts from ``start_schedule``. What happened goes to the ledger
(``drivers.sim.ledger``) when ``WorldSettings.ledger`` names a file.

Tests build ``SimWorld`` in-process and reach every part of it (nodes, chips, medium).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable
from typing import Any

from drivers.radio.base import RadioSettings
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.ledger import Ledger
from drivers.sim.medium import (
    SNR_FLOOR_DB,
    Position,
    RfMedium,
    sensitivity_dbm,
)
from drivers.sim.node import SimNode
from drivers.sim.settings import GatewayChipPlan, WorldSettings
from gateway.model import lora_device_id

# The one chip of a world without a site: at the origin, as the nodes' circle assumes.
DEFAULT_GATEWAY = GatewayChipPlan("gateway", "127.0.0.1", 0, (0.0, 0.0))


class SimWorld:
    """Medium + gateway chips + nodes on the running event loop."""

    def __init__(self, settings: WorldSettings, *, ledger: Ledger | None = None) -> None:
        """``ledger``: one already open (else the world opens ``settings.ledger``)."""
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        loss = settings.path_loss
        self.medium = RfMedium(
            self.loop,
            seed=settings.seed,
            loss_probability=settings.loss,
            path_loss_exponent=loss.exponent,
            reference_loss_db=loss.reference_loss_db,
            shadowing_sigma_db=loss.shadowing_sigma_db,
        )
        self.gateway_plans = settings.gateways or (DEFAULT_GATEWAY,)
        self.gateways: dict[str, SimulatedSX127x] = {
            plan.name: SimulatedSX127x(
                self.loop, self.medium, position=plan.position, name=plan.name
            )
            for plan in self.gateway_plans
        }
        self.powered = dict.fromkeys(self.gateways, True)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = ledger if ledger is not None else Ledger(settings.ledger)
        self.nodes: list[SimNode] = []
        try:
            for index, plan in enumerate(settings.nodes):
                position = plan.position
                if position is None:
                    angle = 2 * math.pi * index / max(1, len(settings.nodes))
                    position = (
                        plan.distance_m * math.cos(angle),
                        plan.distance_m * math.sin(angle),
                    )
                node = SimNode.on_medium(
                    plan.eui,
                    plan.root_key,
                    self.medium,
                    settings.radio,
                    position=position,
                    config=settings.node,
                    state_path=settings.state_dir / f"node-{plan.eui:016x}.json",
                    rng=random.Random(settings.seed * 1_000_003 + plan.eui),
                    ledger=self.ledger.for_node(index, lora_device_id(plan.eui)),
                )
                self.nodes.append(node)
        except BaseException:
            self.ledger.close()
            raise
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._start_rng = random.Random(settings.seed)
        self.schedule_started_at: float | None = None  # loop time of the schedule's second 0

    @property
    def chip(self) -> SimulatedSX127x:
        """The first gateway chip (the only one without a site)."""
        return self.gateways[self.gateway_plans[0].name]

    @chip.setter
    def chip(self, chip: SimulatedSX127x) -> None:
        """Put another chip in the first one's place (a chip with faults, for tests)."""
        self.gateways[self.gateway_plans[0].name] = chip

    def start(self, *, schedule: bool | None = None) -> None:
        """Run every node, each after a random delay within ``start_spread_s``; start the
        schedule too unless ``schedule_from = "gateways"`` (None) or ``schedule`` is False.

        Nodes switched on together would collide on their first join requests and all back
        off; a real deployment never powers up in lockstep either.
        """
        spread = self.settings.start_spread_s
        for node in self.nodes:
            delay = self._start_rng.uniform(0, spread) if spread > 0 else 0.0
            self._tasks.append(
                self.loop.create_task(_run_after(delay, node), name=f"sim-{node.device_id}")
            )
        if schedule is None:
            schedule = self.settings.schedule_from == "start"
        if schedule:
            self.start_schedule()

    def start_schedule(self) -> None:
        """Second 0 of the moves and power periods is now (once; later calls do nothing)."""
        if self.schedule_started_at is not None:
            return
        now = self.schedule_started_at = self.loop.time()
        self.ledger.write("schedule", **{"from": self.settings.schedule_from})
        for plan in self.gateway_plans:
            if not plan.powered_at(0.0):
                self.set_power(plan.name, False)
            for start, end in plan.off:
                if start > 0:
                    self._at(now + start, self.set_power, plan.name, False)
                if math.isfinite(end):
                    self._at(now + end, self.set_power, plan.name, True)
        for move in self.settings.moves:
            self._at(now + move.at_s, self.move, move.node, move.to)

    def _at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        self._timers.append(self.loop.call_at(when, callback, *args))

    def set_power(self, gateway: str, on: bool) -> None:
        """Power a gateway chip on (back on the medium at its place) or off (off the medium:
        it hears nothing and what it sends reaches nobody; its frame on air ends now)."""
        if self.powered[gateway] == on:
            return
        chip = self.gateways[gateway]
        if on:
            plan = next(plan for plan in self.gateway_plans if plan.name == gateway)
            chip.attach(self.medium, position=plan.position)
        else:
            self.medium.abort(chip)
            chip.detach()
        self.powered[gateway] = on
        self.ledger.write("power", gateway=gateway, on=on)

    def move(self, index: int, to: Position) -> None:
        """Move node number ``index``: it keeps running, heard from its new place."""
        node = self.nodes[index]
        if node.chip is None:
            return
        with contextlib.suppress(ValueError):  # a node that was closed stays off the medium
            self.medium.move(node.chip, to)
            self.ledger.write("moved", node=index, device=node.device_id, to=list(to))

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
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
        self.ledger.close()

    def node(self, device_id: str) -> SimNode:
        for node in self.nodes:
            if node.device_id == device_id:
                return node
        raise KeyError(device_id)

    def range_m(self, radio: RadioSettings | None = None) -> float:
        """How far a frame sent at ``radio``'s power (the world's) is received: where the
        mean path loss brings it down to the sensitivity or the SNR floor."""
        return coverage_m(self.medium, radio or self.settings.radio)

    def summary(self) -> str:
        joined = sum(node.joined for node in self.nodes)
        sent = sum(node.stats.reports_sent for node in self.nodes)
        acked = sum(node.stats.acks_received for node in self.nodes)
        medium = self.medium.stats
        line = (
            f"{joined}/{len(self.nodes)} nodes joined, {sent} reports sent, {acked} acks; "
            f"air: {medium.frames_sent} frames, {medium.delivered} delivered, "
            f"{medium.lost_collision} collided"
        )
        if self.settings.gateways:
            chips = ", ".join(
                f"{name} {'on' if self.powered[name] else 'off'} "
                f"(rx {chip.stats.rx_packets}, tx {chip.stats.tx_done})"
                for name, chip in self.gateways.items()
            )
            line += f"; gateways: {chips}"
        return line


def coverage_m(medium: RfMedium, radio: RadioSettings) -> float:
    """The distance at which ``medium``'s mean path loss leaves a frame sent with ``radio``
    just receivable with the same settings (beyond it: lost for sensitivity)."""
    sf, bw = radio.spreading_factor, radio.bandwidth_hz
    limit = max(sensitivity_dbm(sf, bw), medium.noise_floor_dbm(bw) + SNR_FLOOR_DB[sf])
    budget = radio.tx_power_dbm - limit
    d0 = medium.reference_distance_m
    at_d0 = medium.path_loss_db(d0, radio.frequency_hz)
    if budget <= at_d0:
        return 0.0
    return d0 * 10 ** ((budget - at_d0) / (10 * medium.path_loss_exponent))


async def _run_after(delay: float, node: SimNode) -> None:
    if delay > 0:
        await asyncio.sleep(delay)
    await node.run()
