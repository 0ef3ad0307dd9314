"""What a simulated world is told: the radio settings, which nodes, where, and their timing.

Plain frozen records; the gateway builds them from its checked config (``gateway.driver_settings``:
``[radio]``, ``[sim]``, ``[join]`` and the device registry), tests may build them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drivers.radio.base import RadioSettings
from drivers.sim.node import NodeConfig

Point = tuple[float, float]  # metres


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One simulated node: its identity, its root key and where it stands: ``position``, or
    ``distance_m`` from the origin on a circle shared with the other nodes."""

    eui: int
    root_key: bytes
    distance_m: float
    position: Point | None = None


@dataclass(frozen=True, slots=True)
class ExternalChipPlan:
    """A node chip on the medium served on its own ``sim://`` port (``drivers.sim.chip_server``),
    driven by a node program in another process; ``port`` 0 takes any free port."""

    host: str
    port: int
    position: Point  # metres; the default gateway chip is at (0, 0)


@dataclass(frozen=True, slots=True)
class GatewayChipPlan:
    """A gateway chip of a site, served on its own ``sim://`` port; ``off`` holds its
    power-off periods, (from, to) in seconds of the world's schedule (``to`` may be inf)."""

    name: str
    host: str
    port: int
    position: Point
    off: tuple[tuple[float, float], ...] = ()

    def powered_at(self, t: float) -> bool:
        return not any(start <= t < end for start, end in self.off)


@dataclass(frozen=True, slots=True)
class NodeMove:
    """Node number ``node`` (0-based, in plan order) goes to ``to`` at ``at_s`` seconds."""

    node: int
    at_s: float
    to: Point


@dataclass(frozen=True, slots=True)
class PathLoss:
    """The medium's log-distance model: loss at 1 m (None: free space at the frequency), its
    growth per decade of distance (``10 * exponent`` dB), and per-frame shadowing."""

    exponent: float = 2.7
    reference_loss_db: float | None = None
    shadowing_sigma_db: float = 0.0


@dataclass(frozen=True, slots=True)
class WorldSettings:
    radio: RadioSettings
    nodes: tuple[NodePlan, ...]
    state_dir: Path  # the nodes' saved sessions
    node: NodeConfig = field(default_factory=NodeConfig)  # firmware timing
    seed: int = 1
    loss: float = 0.0  # probability that a frame is lost on the air
    start_spread_s: float = 1.0  # nodes start at random within this long
    # A site: gateway chips at positions (none: one chip at the origin, "gateway").
    gateways: tuple[GatewayChipPlan, ...] = ()
    moves: tuple[NodeMove, ...] = ()
    path_loss: PathLoss = field(default_factory=PathLoss)
    ledger: Path | None = None  # JSON Lines of what the nodes and the site did
    # When the schedule's second 0 is: the world's start, or the moment every gateway chip
    # has been taken by a gateway (``SimWorld.start_schedule``, called by ``duogate sim``).
    schedule_from: Literal["start", "gateways"] = "start"

    def __post_init__(self) -> None:
        for move in self.moves:
            if not 0 <= move.node < len(self.nodes):
                raise ValueError(f"a move names node {move.node} of {len(self.nodes)}")
        for plan in self.gateways:
            if any(not (0 <= a < b) or math.isnan(b) for a, b in plan.off):
                raise ValueError(f"gateway {plan.name}: off periods must run from 0 <= a < b")


@dataclass(frozen=True, slots=True)
class SimRadioSettings:
    """``radio.driver = "sim"``: a world in the gateway process, its chip wired like a real one."""

    world: WorldSettings
    dio0_pin: int = 25
    reset_pin: int = 17
