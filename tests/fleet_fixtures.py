"""A fleet in one process: real gateways (``Gateway.build``, their SX127x driver on simulated
chips) at positions on one RF medium, a real broker, and nodes of the node library around them.

Radio: 869.525 MHz, SF7, 500 kHz (a report lasts about 15 ms on air); the medium's path loss
exponent of 3.5 gives a range of roughly 500 m, so gateways 600 m apart overlap in the middle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from drivers.radio.base import RadioSettings
from drivers.radio.spi import Pins
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.medium import RfMedium
from drivers.sim.node import NodeConfig, SimNode
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.protocol import crypto
from gateway.protocol.join import PUBLIC_LAB_KEY

FLEET = "fleet1"
FLEET_KEY_HEX = "000102030405060708090a0b0c0d0e0f"
RADIO = RadioSettings(frequency_hz=869_525_000, spreading_factor=7, bandwidth_hz=500_000)
PATH_LOSS_EXPONENT = 3.5
NODE = NodeConfig(
    report_interval_s=2.0,
    join_rx_delay_s=1.0,
    join_backoff_min_s=0.5,
    join_backoff_max_s=3.0,
    retry_min_s=0.5,
    retry_max_s=2.0,
    next_uplink_gap_s=0.2,
    rejoin_after_unacked=8,
)


def gateway_settings(
    name: str, data_dir: Path, broker_port: int, key_file: Path, pool_start: int
) -> dict[str, Any]:
    return {
        "gateway": {"id": name, "data_dir": str(data_dir), "log_level": "info"},
        "radio": {
            "driver": "sim",
            "frequency_hz": RADIO.frequency_hz,
            "spreading_factor": RADIO.spreading_factor,
            "bandwidth_hz": RADIO.bandwidth_hz,
            "rx_delay_s": 1.0,
        },
        "join": {
            "open_join": True,
            "join_rx_delay_s": 1.0,
            "address_pool_start": pool_start,
            "address_pool_end": pool_start + 0xFF,
        },
        "mqtt": {"enabled": False},
        "fleet": {
            "name": FLEET,
            "key": {"file": str(key_file)},
            "broker": {
                "host": "127.0.0.1",
                "port": broker_port,
                "keepalive_s": 5,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                "publish_timeout_s": 3.0,
                "connect_timeout_s": 3.0,
            },
        },
        "commands": {"node_answer_timeout_s": 8.0},
        "outbox": {"commit_interval_s": 0.05},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
    }


class Site:
    """Gateways and nodes on one medium; ``gateway(name, x)`` and ``node(eui, x)`` add them."""

    def __init__(self, workdir: Path, broker_port: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.workdir = workdir
        self.broker_port = broker_port
        self.medium = RfMedium(self.loop, seed=11, path_loss_exponent=PATH_LOSS_EXPONENT)
        self.key_file = workdir / "fleet.key"
        self.key_file.write_text(FLEET_KEY_HEX + "\n")
        self.gateways: dict[str, Gateway] = {}
        self.chips: dict[str, SimulatedSX127x] = {}
        self.nodes: dict[str, SimNode] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def gateway(self, name: str, x: float, *, pool_start: int) -> Gateway:
        chip = SimulatedSX127x(self.loop, self.medium, position=(x, 0.0), name=name)
        radio = Sx127xRadio(
            RADIO, dio0_pin=25, reset_pin=17, open_bus=lambda: open_local_chip(chip, PINS)
        )
        data_dir = self.workdir / name
        config = parse_config(
            gateway_settings(name, data_dir, self.broker_port, self.key_file, pool_start)
        )
        gateway = Gateway.build(config, radio=radio)
        await gateway.start()
        self.gateways[name] = gateway
        self.chips[name] = chip
        return gateway

    async def stop_gateway(self, name: str) -> None:
        gateway = self.gateways.pop(name)
        await gateway.stop()

    def node(self, eui: int, x: float, y: float = 0.0) -> SimNode:
        node = SimNode.on_medium(
            eui,
            crypto.lab_root_key(PUBLIC_LAB_KEY, eui),
            self.medium,
            RADIO,
            position=(x, y),
            config=NODE,
        )
        self.nodes[node.device_id] = node
        self._tasks.append(self.loop.create_task(node.run(), name=f"node-{eui:x}"))
        return node

    def move(self, node: SimNode, x: float, y: float = 0.0) -> None:
        self.medium.move(node.chip, (x, y))

    async def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for node in self.nodes.values():
            node.close()
        for gateway in list(self.gateways.values()):
            await gateway.stop()


PINS = Pins(dio0=25, reset=17)


@contextlib.asynccontextmanager
async def site(workdir: Path, broker_port: int) -> AsyncIterator[Site]:
    built = Site(workdir, broker_port)
    try:
        yield built
    finally:
        await built.close()


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait for ``check()`` to be truthy (a liveness bound, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.1)
