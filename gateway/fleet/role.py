"""What the LoRa shell asks a fleet before it answers a device on air (docs/FLEET.md)."""

from __future__ import annotations

from typing import Any, Protocol

from drivers.radio.base import RxPacket
from gateway.protocol.session import CommandResultReceived, ReportReceived

Uplink = ReportReceived | CommandResultReceived
# The detail of the commands a gateway of a fleet ends when another gateway takes the device.
SERVED_ELSEWHERE = "served_elsewhere"


class FleetRole(Protocol):
    """What the LoRa shell asks a fleet (gateway.fleet.coordinator) before it answers on air."""

    async def join_heard(self, device: str, request: str, packet: RxPacket) -> bool:
        """A join request of ``device`` was heard; True if this gateway is to answer it."""

    def uplink_heard(self, uplink: Uplink, session: str, packet: RxPacket) -> bool:
        """An authentic uplink was heard; True if this gateway serves the device."""

    def published_before(self, device: str, session: str, counter: int) -> bool:
        """An earlier owner of the device already published this report on the fleet."""

    async def receptions(
        self, uplink: Uplink, session: str, packet: RxPacket, latest: float | None
    ) -> list[dict[str, Any]]:
        """Every gateway's reception of the uplink, gathered until ``latest`` at most."""

    def joined(self, device: str) -> None:
        """This gateway accepted a join (a new session of ``device``)."""
