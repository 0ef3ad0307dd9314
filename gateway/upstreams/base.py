"""The interface between the bridge and an upstream (MQTT broker, XMPP server).

The bridge owns the durable outbox. It calls ``publish_report``/``publish_event`` and removes
the entry only when the call returns, which an upstream does only once the server acknowledged
the message (MQTT PUBACK/PUBCOMP, XEP-0198 ack). A raised ``UpstreamUnavailable`` leaves the
entry in the outbox for a later retry. Commands arriving from upstream are handed to the
bridge as raw envelopes; their results go back through ``publish_result`` to the upstream
they came from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.model import CommandResult, DeviceEvent, IncomingCommand, Report


class UpstreamError(Exception):
    """Root of upstream errors."""


class UpstreamUnavailable(UpstreamError):
    """Not connected, or the server did not acknowledge in time: keep the entry, retry later."""


class UnpublishableItem(UpstreamError, ValueError):
    """A record that cannot be sent (not plain JSON); retrying will not help."""


CommandHandler = Callable[[IncomingCommand], Awaitable[None]]
# callback(topic, payload, arrival): arrival is the monotonic time the message reached the
# gateway (``arrival.ArrivalClock``), for subscriptions that carry commands.
MessageCallback = Callable[[str, bytes, float], Awaitable[None] | None]
ReadyCallback = Callable[[], Awaitable[None] | None]


class MqttExtras(Protocol):
    """What only an MQTT upstream offers beyond the Upstream interface: messages on any topic
    (retained or not) and subscriptions beyond the command topics. Home Assistant discovery,
    device availability and the gateway's health message go through it."""

    async def publish_raw(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish on ``topic``; waits for the broker's ack when ``qos`` > 0.

        ValueError for a topic that cannot be published to (wildcards) or a bad qos;
        UpstreamUnavailable when not connected or not acknowledged.
        """

    def subscribe_extra(
        self, topic_filter: str, callback: MessageCallback, qos: int = 0, *, commands: bool = False
    ) -> None:
        """Also subscribe to ``topic_filter``, now and after every reconnect. With
        ``commands``, the topics carry commands: retained messages are dropped."""

    def add_ready_listener(self, callback: ReadyCallback) -> None:
        """Call ``callback()`` after every (re)connection, once the gateway is announced."""


class Upstream(Protocol):
    name: str
    window: int  # how many publishes may wait for the server's ack at once
    # Kinds ("report", "event") sent without a delivery guarantee (MQTT QoS 0): the outbox
    # drops them first when it is full.
    droppable_kinds: frozenset[str]

    @property
    def extras(self) -> MqttExtras | None:
        """The MQTT extras, for an upstream that has them; None for any other."""

    @property
    def connected(self) -> bool: ...

    async def start(self, on_command: CommandHandler) -> None:
        """Connect in the background (reconnecting with backoff) and start taking commands."""

    async def stop(self) -> None: ...

    async def publish_report(self, report: Report) -> None:
        """Deliver and wait for the server's acknowledgement, or raise UpstreamUnavailable."""

    async def publish_event(self, event: DeviceEvent) -> None:
        """As publish_report, for device events."""

    async def publish_result(self, result: CommandResult, reply_to: dict[str, Any]) -> None:
        """Send a command result back; ``reply_to`` is the IncomingCommand's."""
