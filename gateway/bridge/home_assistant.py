"""Retained status for Home Assistant and operators, over the MQTT extras.

* Discovery configs (``homeassistant/<platform>/.../config``) for every device, published
  again after every reconnect and when Home Assistant announces itself ``online``; entities'
  command topics (plain ``ON``, ``21.5``, ``PRESS``) taken as commands.
* ``<prefix>/devices/<device>/availability``: ``online``/``offline`` after device events,
  brought up to date after every reconnect.
* ``<prefix>/status/health``: ``{"state": "ok"|"degraded", "problems", "warnings"}``;
  ``warnings`` are the settings that expose the gateway (open join with the public key,
  metrics beyond loopback, ...), the lines ``run`` logs at start. ``<prefix>/status`` itself
  stays ``online``/``offline`` (the birth and Last Will, Home Assistant's availability).

Everything here is published quietly: a message the broker does not take now is logged at
debug level and sent again after the next reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable

from gateway.bridge.directory import DriverDirectory
from gateway.bridge.results import ResultSender
from gateway.bridge.router import CommandRouter
from gateway.config import Config
from gateway.discovery import (
    HA_COMMAND_QOS,
    HA_STATUS_QOS,
    DiscoveryMessage,
    DiscoveryPublisher,
    availability_for_event,
    availability_topic,
)
from gateway.ha_commands import HaCommands
from gateway.model import DeviceEvent, EventKind, IncomingCommand
from gateway.state import GatewayState
from gateway.tasks import TaskSet
from gateway.upstreams.base import MqttExtras, UpstreamError

log = logging.getLogger("duogate.bridge")

# A BLE sensor becomes a device when first heard (ONLINE), a LoRa node when it joins.
APPEARED = (EventKind.JOINED, EventKind.REJOINED, EventKind.ONLINE)


class HomeAssistantPublisher:
    def __init__(
        self,
        config: Config,
        state: GatewayState,
        mqtt: MqttExtras,
        *,
        drivers: DriverDirectory,
        router: CommandRouter,
        results: ResultSender,
        tasks: TaskSet,
        warnings: list[str],
        wall: Callable[[], float],
    ) -> None:
        self.config = config
        self.state = state
        self.mqtt = mqtt
        self.drivers = drivers
        self.router = router
        self.results = results
        self.warnings = warnings
        self._tasks = tasks
        self._wall = wall
        self._discovery: DiscoveryPublisher | None = None
        self._ha_commands: HaCommands | None = None
        self._availability: dict[str, str] = {}  # device -> last "online"/"offline" published
        self._health_unsent = False  # the retained health message is out of date
        self._ha_commands_in_order = asyncio.Lock()  # ON then OFF is never OFF, ON

    def start(self) -> None:
        """Subscribe (before the upstream connects) and publish after every connection."""
        if self.config.mqtt.discovery:
            self._setup_discovery()
        self.mqtt.add_ready_listener(self._on_ready)

    def device_event(self, event: DeviceEvent) -> None:
        """A stored device event: new discovery configs, availability."""
        if event.event in APPEARED and self._discovery is not None:
            self._tasks.spawn(self._publish_discovery(changed_only=True))
        availability = availability_for_event(event)
        if availability is not None:
            self._availability[event.device] = availability
            topic = availability_topic(self.config.topic_prefix, event.device)
            self._tasks.spawn(self._publish_quietly(topic, availability))

    def health_changed(self) -> None:
        self._tasks.spawn(self.publish_health())

    async def publish_health(self) -> None:
        problems = dict(self.state.problems)
        body = {
            "state": "degraded" if problems else "ok",
            "problems": problems,
            "warnings": self.warnings,
        }
        topic = f"{self.config.topic_prefix}/status/health"
        try:
            await self.mqtt.publish_raw(topic, json.dumps(body, sort_keys=True), qos=1, retain=True)
        except (UpstreamError, ValueError) as exc:
            self._health_unsent = True
            log.debug("not published to %s: %s", topic, exc)
            return
        self._health_unsent = False

    async def _on_ready(self) -> None:
        """After every (re)connection: health, discovery configs, then device availability.

        Availability changes while the broker was unreachable were not published; the
        retained topics are brought up to date here.
        """
        if self.state.problems or self._health_unsent or self.warnings:
            await self.publish_health()
        await self._publish_discovery(changed_only=False)
        for device, availability in list(self._availability.items()):
            topic = availability_topic(self.config.topic_prefix, device)
            await self._publish_quietly(topic, availability)

    def _setup_discovery(self) -> None:
        config = self.config
        self._discovery = DiscoveryPublisher(
            topic_prefix=config.topic_prefix,
            gateway_id=config.gateway.id,
            discovery_prefix=config.mqtt.discovery_prefix,
        )
        self._ha_commands = HaCommands(
            topic_prefix=config.topic_prefix,
            ttl_s=config.commands.default_ttl_s,
            devices=self.drivers.devices,
        )
        self.mqtt.subscribe_extra(
            self._discovery.status_topic, self._on_ha_status, qos=HA_STATUS_QOS
        )
        self.mqtt.subscribe_extra(
            self._ha_commands.topic_filter, self._on_ha_command, qos=HA_COMMAND_QOS, commands=True
        )

    async def _on_ha_status(self, _topic: str, payload: bytes, _arrival: float) -> None:
        assert self._discovery is not None
        messages = self._discovery.on_ha_status(
            payload.decode(errors="replace"), self.drivers.devices()
        )
        await self._publish_messages(messages)

    async def _on_ha_command(self, topic: str, payload: bytes, arrival: float) -> None:
        """Home Assistant's plain payload on an entity's command topic: a command as any
        other from MQTT, or ``rejected`` on the device's result topic."""
        async with self._ha_commands_in_order:
            ha_commands = self._ha_commands
            assert ha_commands is not None
            outcome = ha_commands.incoming(
                topic, payload, received_mono=arrival, now_wall=self._wall()
            )
            if isinstance(outcome, IncomingCommand):
                await self.router.on_command(outcome)
            elif outcome is not None:
                self.router.count_rejection()
                log.info("home assistant command on %s rejected: %s", topic, outcome.detail)
                await self.results.send(ha_commands.origin, {}, outcome)

    async def _publish_discovery(self, *, changed_only: bool) -> None:
        if self._discovery is None:
            return
        devices = self.drivers.devices()
        messages = (
            self._discovery.changed(devices) if changed_only else self._discovery.messages(devices)
        )
        await self._publish_messages(messages)

    async def _publish_messages(self, messages: Iterable[DiscoveryMessage]) -> None:
        for message in messages:
            await self._publish_quietly(message.topic, message.payload, retain=message.retain)

    async def _publish_quietly(
        self, topic: str, payload: str | bytes, *, retain: bool = True
    ) -> None:
        try:
            await self.mqtt.publish_raw(topic, payload, qos=1, retain=retain)
        except (UpstreamError, ValueError) as exc:
            log.debug("not published to %s: %s", topic, exc)
