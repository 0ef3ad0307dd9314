"""A gateway stand-in for node tests: the gateway's own SX127x driver on a simulated chip of a
medium, doing what the bridge does with the real network core (receive, keep each report once
by report id, answer in the node's receive window with an ack and, when one waits, a command),
and nodes of the node library on chips of their own around it (``SimNode.on_medium``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from drivers.radio.base import RadioSettings, RxPacket
from drivers.radio.spi import Pins
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.medium import RfMedium
from drivers.sim.node import NodeConfig, SimNode
from gateway.protocol.frames import DownlinkCommand, FrameRejected
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    NetworkCore,
    ReportReceived,
)

FAST = NodeConfig(
    report_interval_s=0.2,
    join_rx_delay_s=0.1,
    rx_early_s=0.03,
    rx_window_s=0.15,
    join_backoff_min_s=0.1,
    join_backoff_max_s=0.4,
    retry_min_s=0.1,
    retry_max_s=0.4,
    next_uplink_gap_s=0.02,
    rejoin_after_unacked=1000,
)
SETTINGS = JoinSettings(rx_delay_s=0.1, join_rx_delay_s=0.1)
# 500 kHz, SF7: a report frame lasts about 15 ms.
RADIO = RadioSettings(frequency_hz=869_525_000, spreading_factor=7, bandwidth_hz=500_000)
SPI_MARGIN_S = 0.005  # the gateway starts a downlink this much early, as gateway/lora.py does


def root_key_of(eui: int) -> bytes:
    return bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")[:8] + eui.to_bytes(8, "big")


class Gateway:
    """The bridge's part on a simulated gateway chip: receive, keep once, answer in the window."""

    def __init__(self, euis: list[int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.medium = RfMedium(self.loop, seed=7)
        chip = SimulatedSX127x(self.loop, self.medium, name="gateway")
        self.radio = Sx127xRadio(
            RADIO, dio0_pin=25, reset_pin=17, open_bus=lambda: open_local_chip(chip, PINS)
        )
        registry = {eui: DeviceCredentials(root_key_of(eui)) for eui in euis}
        self.core = NetworkCore(SETTINGS, registry)
        self.online = True
        self.drop_downlinks = 0  # answers to lose on air, next first
        self.reports: dict[str, ReportReceived] = {}  # by report id: forwarded once
        self.duplicates = 0
        self.results: list[CommandResultReceived] = []
        self.rejected: list[str] = []
        self.joins: list[JoinAccepted] = []
        self.commands: dict[str, deque[DownlinkCommand]] = {}
        self._sending: set[asyncio.Task[float]] = set()
        self._placed = 0

    def reports_of(self, device_id: str) -> list[dict[str, Any]]:
        return [r.body for r in self.reports.values() if r.device_id == device_id]

    def on_uplink(self, packet: RxPacket) -> None:
        if not self.online:
            return
        try:
            actions = self.core.receive(packet.payload, time.time())
        except FrameRejected as exc:
            self.rejected.append(exc.reason)
            return
        for action in actions:
            if isinstance(action, JoinAccepted):
                self.joins.append(action)
                self.answer_after(packet, action.send_after_s, action.frame)
            elif isinstance(action, (ReportReceived, CommandResultReceived)):
                if isinstance(action, ReportReceived):
                    if action.duplicate:
                        self.duplicates += 1
                    self.reports.setdefault(action.report_id, action)
                elif not action.duplicate:
                    self.results.append(action)
                queue = self.commands.get(action.device_id)
                command = queue.popleft() if queue else None
                ack = action.counter if action.confirmed else None
                frame = self.core.build_downlink(action.device_id, ack, command)
                self.answer_after(packet, action.rx_delay_s, frame)

    def answer_after(self, packet: RxPacket, delay_s: float, frame: bytes) -> None:
        if self.drop_downlinks:
            self.drop_downlinks -= 1
            return
        at = packet.t_mono + delay_s - SPI_MARGIN_S
        self.loop.call_at(at, self._transmit, frame)

    def _transmit(self, frame: bytes) -> None:
        task = self.loop.create_task(self.radio.transmit(frame))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def send_command(self, device_id: str, command: DownlinkCommand) -> None:
        self.commands.setdefault(device_id, deque()).append(command)

    def node(self, eui: int, state_path: Path | None = None, config: NodeConfig = FAST) -> SimNode:
        """A node on its own chip, 50..300 m away."""
        self._placed += 1
        angle = self._placed * 2.399963  # golden angle: neighbours spread out
        distance = 50.0 + (self._placed * 37.0) % 250.0
        return SimNode.on_medium(
            eui,
            root_key_of(eui),
            self.medium,
            RADIO,
            position=(distance * math.cos(angle), distance * math.sin(angle)),
            config=config,
            state_path=state_path,
        )


PINS = Pins(dio0=25, reset=17)


@contextlib.asynccontextmanager
async def gateways() -> AsyncIterator[Callable[[list[int]], Awaitable[Gateway]]]:
    """``build(euis)`` opens a Gateway for these registered EUIs; all are closed at the end."""
    opened: list[Gateway] = []

    async def build(euis: list[int]) -> Gateway:
        gateway = Gateway(euis)
        await gateway.radio.open(gateway.on_uplink)
        opened.append(gateway)
        return gateway

    try:
        yield build
    finally:
        for gateway in opened:
            await gateway.radio.close()
