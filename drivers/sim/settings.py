"""What a simulated world is told: the radio settings, which nodes, where, and their timing.

Plain frozen records; the gateway builds them from its checked config (``gateway.driver_settings``:
``[radio]``, ``[sim]``, ``[join]`` and the device registry), tests may build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from drivers.radio.base import RadioSettings
from drivers.sim.node import NodeConfig


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One simulated node: its identity, its root key and its distance from the gateway."""

    eui: int
    root_key: bytes
    distance_m: float


@dataclass(frozen=True, slots=True)
class ExternalChipPlan:
    """A node chip on the medium served on its own ``sim://`` port (``drivers.sim.chip_server``),
    driven by a node program in another process; ``port`` 0 takes any free port."""

    host: str
    port: int
    position: tuple[float, float]  # metres; the gateway's chip is at (0, 0)


@dataclass(frozen=True, slots=True)
class WorldSettings:
    radio: RadioSettings
    nodes: tuple[NodePlan, ...]
    state_dir: Path  # the nodes' saved sessions
    node: NodeConfig = field(default_factory=NodeConfig)  # firmware timing
    seed: int = 1
    loss: float = 0.0  # probability that a frame is lost on the air
    start_spread_s: float = 1.0  # nodes start at random within this long


@dataclass(frozen=True, slots=True)
class SimRadioSettings:
    """``radio.driver = "sim"``: a world in the gateway process, its chip wired like a real one."""

    world: WorldSettings
    dio0_pin: int = 25
    reset_pin: int = 17
