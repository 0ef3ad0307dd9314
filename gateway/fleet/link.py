"""The fleet's broker connection: an MQTT upstream under ``<fleet>/``, filtered by ownership.

Reports, events and command results of the devices this gateway serves go out on the fleet
topics (``<fleet>/devices/<device>/...``) exactly as on the gateway's own topics; those of
devices another gateway serves now are dropped here (the owner publishes them). Commands on
``<fleet>/devices/+/command`` reach every gateway; only the owner's bridge takes one, the
others keep it in case the device comes to them before it has an outcome.

The gateway's presence in the fleet is ``<fleet>/gateways/<id>/status`` (``online``, and the
will message ``offline``); the messages gateways share go through the same connection.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any, Protocol

import msgspec

from gateway.config import Config, FleetSection
from gateway.fleet.role import SERVED_ELSEWHERE
from gateway.model import CommandResult, DeviceEvent, IncomingCommand, Report
from gateway.store.commands import RESTART_DETAIL
from gateway.upstreams.base import CommandHandler, MqttExtras, UpstreamUnavailable
from gateway.upstreams.mqtt import MqttUpstream

log = logging.getLogger("duogate.fleet")


class FleetGate(Protocol):
    """Ownership, as the fleet coordinator knows it."""

    def publishes(self, device: str) -> bool:
        """True if this gateway publishes the device's messages on the fleet topics."""

    def publishes_report(self, device: str, report_id: str) -> bool:
        """True if this gateway publishes this report of the device on the fleet topics."""

    def command_arrived(self, incoming: IncomingCommand) -> bool:
        """A fleet command arrived; True if this gateway's bridge is to take it."""


class FleetTopics:
    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self.all_sessions = f"{fleet}/sessions/+"
        self.all_sightings = f"{fleet}/devices/+/heard"
        self.all_reports = f"{fleet}/devices/+/report"
        self.all_results = f"{fleet}/devices/+/command/result"
        self.all_status = f"{fleet}/gateways/+/status"

    def session(self, device: str) -> str:
        return f"{self.fleet}/sessions/{device}"

    def sightings(self, device: str) -> str:
        return f"{self.fleet}/devices/{device}/heard"

    def status(self, gateway: str) -> str:
        return f"{self.fleet}/gateways/{gateway}/status"

    def sync(self, gateway: str) -> str:
        return f"{self.fleet}/gateways/{gateway}/sync"

    def device_of(self, topic: str) -> str | None:
        """The device a ``<fleet>/devices/<device>/...`` or ``<fleet>/sessions/<device>`` topic
        names."""
        parts = topic.split("/")
        if len(parts) >= 3 and parts[1] in ("devices", "sessions"):
            return parts[2]
        return None

    def gateway_of(self, topic: str) -> str | None:
        parts = topic.split("/")
        return parts[2] if len(parts) == 4 and parts[1] == "gateways" else None


class FleetLink(MqttUpstream):
    """The fleet broker connection, an upstream named ``fleet`` beside the gateway's own."""

    name = "fleet"

    def __init__(self, config: Config, fleet: FleetSection) -> None:
        gateway = config.gateway.id
        broker = msgspec.structs.replace(
            fleet.broker,
            topic_prefix=fleet.name,
            client_id=fleet.broker.client_id or f"duogate-fleet-{gateway}",
            discovery=False,
        )
        super().__init__(msgspec.structs.replace(config, mqtt=broker))
        self.topics = FleetTopics(fleet.name)
        self.status_topic = self.topics.status(gateway)
        self.gate: FleetGate | None = None
        self.dropped: Counter[str] = Counter()
        self._on_command: CommandHandler | None = None
        # Reports and results wait after each (re)connection until the retained session
        # records are in (the coordinator says so): a gateway cut off for a while must learn
        # which of its devices were taken over before it publishes what it kept for them.
        self.synced = False

    @property
    def connected(self) -> bool:
        return self.link_up and self.synced

    @property
    def link_up(self) -> bool:
        """Connected, subscribed and ``online`` announced (whether synced or not)."""
        return MqttUpstream.connected.fget(self)  # type: ignore[attr-defined,no-any-return]

    async def publish_raw(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> None:
        """The messages gateways share: sent as soon as the link is up."""
        if not self.link_up or self.client is None:
            raise UpstreamUnavailable("not connected to the fleet broker")
        data = payload.encode() if isinstance(payload, str) else payload
        await self.client.publish(topic, data, qos, retain=retain)

    async def _session(self) -> bool:
        self.synced = False
        return await super()._session()

    @property
    def extras(self) -> MqttExtras | None:
        # Home Assistant's discovery and availability stay on the gateway's own broker.
        return None

    async def start(self, on_command: CommandHandler) -> None:
        self._on_command = on_command
        await super().start(on_command)

    async def publish_report(self, report: Report) -> None:
        if self.gate is None or self.gate.publishes_report(report.device, report.id):
            await super().publish_report(report)
            log.debug("fleet: report %s published", report.id)
        else:
            self.dropped["reports"] += 1
            log.debug("fleet: report %s left to its owner", report.id)

    async def publish_event(self, event: DeviceEvent) -> None:
        if self._publishes(event.device, "events"):
            await super().publish_event(event)

    async def publish_result(self, result: CommandResult, reply_to: dict[str, Any]) -> None:
        if result.detail == SERVED_ELSEWHERE or (
            result.detail == RESTART_DETAIL
            and self.gate is not None
            and not self.gate.publishes(result.device)
        ):
            self.dropped["results"] += 1  # the device's new owner answers it
            return
        await super().publish_result(result, reply_to)

    async def deliver(self, incoming: IncomingCommand) -> None:
        """Hand a command kept for a device that came to this gateway to the bridge (its
        previous gateway may have sent it on air: ``carried``)."""
        if self._on_command is not None:
            carried = dataclasses.replace(incoming, carried=True)
            await super()._hand_over(carried, self._on_command)

    def _publishes(self, device: str, kind: str) -> bool:
        if self.gate is None or self.gate.publishes(device):
            return True
        self.dropped[kind] += 1
        return False

    def _take_command(self, device: str, message: Any) -> IncomingCommand | None:
        incoming = super()._take_command(device, message)
        return None if incoming is None else dataclasses.replace(incoming, origin=self.name)

    async def _hand_over(self, incoming: IncomingCommand, on_command: CommandHandler) -> None:
        if self.gate is None or self.gate.command_arrived(incoming):
            await super()._hand_over(incoming, on_command)
