"""MQTT upstream: the gateway's topics over ``mqtt_client.MqttClient``.

Topics under ``<prefix>`` (``duogate/<gateway id>`` by default):

* ``devices/<device>/report`` and ``/event``: the outbox, published at the configured QoS;
* ``devices/<device>/command``: commands in; ``devices/<device>/command/result``: results out;
* ``status``: a retained ``online`` birth and ``offline`` Last Will.

The session is persistent (fixed client id, clean start off, MQTT 5 session expiry); the
connection is kept up by ``supervision.keep_connected`` (jittered, capped backoff).

The command subscription is QoS 0 on purpose: a broker then does not queue commands for the
gateway while it is offline (mosquitto's default), so a command sent during an outage is not
executed minutes later when the gateway returns; its sender sees no ``accepted`` result and
the gateway's ``offline`` status instead. Retained commands are never executed (MQTT 5 retain
handling 2, and any message with the retain flag is dropped and counted).

A command message longer than ``commands.max_message_bytes`` is not decoded: the bridge
answers it ``too_large``. Over MQTT 5 the gateway also tells the broker the largest packet it
takes (``MAX_PACKET_FACTOR`` times that limit), so a huge message never reaches its memory.
A Response Topic is used only when ``response_topics.ResponseTopicPolicy`` allows it; results
go to the canonical ``command/result`` topic first and to the Response Topic once, after.

Beyond the Upstream interface it offers the ``MqttExtras`` (any topic, extra subscriptions,
a call after every reconnect) that Home Assistant discovery and the status messages use.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import Config, MqttSection
from gateway.model import CommandResult, DeviceEvent, IncomingCommand, Report
from gateway.store.outbox import droppable_kinds_for_mqtt
from gateway.tasks import TaskSet, cancel_and_wait, describe
from gateway.upstreams.base import (
    CommandHandler,
    MessageCallback,
    MqttExtras,
    ReadyCallback,
    UnpublishableItem,
    UpstreamError,
    UpstreamUnavailable,
)
from gateway.upstreams.mqtt_client import (
    DEFAULT_INBOX_SIZE,
    ClientOptions,
    ConnectRefused,
    Message,
    MqttClient,
    MqttError,
    PublishRejected,
    Will,
)
from gateway.upstreams.response_topics import ResponseTopicPolicy
from gateway.upstreams.supervision import Backoff, keep_connected

log = logging.getLogger(__name__)

ORIGIN = "mqtt"
COMMAND_QOS = 0
NO_RETAINED = 2  # MQTT 5 retain handling: the broker never sends retained messages
STOP_TIMEOUT_S = 3.0
MAX_PACKET_FACTOR = 16  # MQTT 5 Maximum Packet Size = this x commands.max_message_bytes
MIN_MAX_PACKET_BYTES = 65_536

__all__ = [
    "ConnectRefused",
    "MqttError",
    "MqttSetupError",
    "MqttUpstream",
    "PublishRejected",
]


class MqttSetupError(MqttError):
    """The configured secret or certificates cannot be used (raised by ``start``)."""


@dataclass(frozen=True, slots=True)
class _ExtraSubscription:
    topic_filter: str
    qos: int
    callback: MessageCallback
    commands: bool  # retained messages are dropped, as on the command topics
    retained: bool = False  # the broker sends the retained messages at each subscription


class MqttUpstream:
    """The gateway's MQTT connection. ``start()``, then publish; ``stop()`` at the end."""

    name = ORIGIN

    def __init__(self, config: Config, *, inbox_size: int = DEFAULT_INBOX_SIZE) -> None:
        self.settings: MqttSection = config.mqtt
        self.prefix = config.topic_prefix
        self.client_id = self.settings.client_id or f"duogate-{config.gateway.id}"
        self.status_topic = f"{self.prefix}/status"
        self.command_filter = f"{self.prefix}/devices/+/command"
        self.mqtt5 = self.settings.protocol == "5"
        self.max_command_bytes = config.commands.max_message_bytes
        self.window = self.settings.inflight
        self.droppable_kinds = droppable_kinds_for_mqtt(
            self.settings.qos_reports, self.settings.qos_events
        )
        self.response_topics = ResponseTopicPolicy.of(
            self.prefix, self.settings.response_topic_prefixes
        )
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "connect_failures",
                "commands_received",
                "retained_commands_dropped",
                "oversized_commands",
                "response_topics_refused",
                "response_publishes_failed",
                "handler_errors",
                "extra_messages",
            ),
            0,
        )
        self._inbox_size = inbox_size
        self._extras: list[_ExtraSubscription] = []
        self._ready_listeners: list[ReadyCallback] = []
        self._online = asyncio.Event()  # connected, subscribed and ``online`` announced
        self._tasks = TaskSet(log, "mqtt: callback failed")
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.client: MqttClient | None = None

    # -- Upstream interface -----------------------------------------------------------------

    @property
    def extras(self) -> MqttExtras:
        return self

    @property
    def connected(self) -> bool:
        """True once connected, subscribed and ``online`` announced; False while reconnecting."""
        return self._online.is_set() and self.client is not None and self.client.connected

    @property
    def stats(self) -> dict[str, int]:
        """The upstream's counters and its client's (connects, published, inbox_dropped...)."""
        client_stats = self.client.stats if self.client is not None else {}
        return {**self._counters, **client_stats}

    @property
    def session_present(self) -> bool | None:
        """Did the broker keep our session at the last connect?"""
        return self.client.session_present if self.client is not None else None

    async def start(self, on_command: CommandHandler) -> None:
        """Connect in the background; MqttSetupError if the secret or certificates are bad."""
        if self.client is not None:
            raise RuntimeError("MqttUpstream already started")
        self.client = MqttClient(self._client_options())
        self._tasks.spawn(self._consume(self.client, on_command), name="mqtt-commands")
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        self._supervisor = asyncio.create_task(
            keep_connected(
                self._session,
                backoff,
                on_error=self._connect_failed,
                stopping=lambda: self._stopping,
            ),
            name="mqtt-connection",
        )

    async def stop(self) -> None:
        """Announce ``offline``, disconnect cleanly and stop every task."""
        client = self.client
        if self._stopping or client is None:
            return
        self._stopping = True
        if self._online.is_set():
            with contextlib.suppress(UpstreamError):  # a lost broker publishes the Last Will
                await client.publish(
                    self.status_topic, b"offline", 1, retain=True, timeout=STOP_TIMEOUT_S
                )
            self._online.clear()
            await client.disconnect(STOP_TIMEOUT_S)
        await cancel_and_wait(self._supervisor)
        await self._tasks.cancel_all()
        await client.close()

    async def publish_report(self, report: Report) -> None:
        topic = f"{self.prefix}/devices/{report.device}/report"
        await self._publish(topic, _json(report.to_wire()), self.settings.qos_reports)

    async def publish_event(self, event: DeviceEvent) -> None:
        topic = f"{self.prefix}/devices/{event.device}/event"
        await self._publish(topic, _json(event.to_wire()), self.settings.qos_events)

    async def publish_result(self, result: CommandResult, reply_to: dict[str, Any]) -> None:
        """Publish on ``<prefix>/devices/<device>/command/result`` and then, when the command
        gave one, once on its MQTT 5 Response Topic, both carrying its Correlation Data.

        Raises when the canonical topic did not take the result (the bridge retries that);
        a Response Topic that fails is logged, counted and given up, never retried.
        """
        payload = _json(result.to_wire())
        properties = None
        correlation = _correlation_data(reply_to)
        if self.mqtt5 and correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        qos = self.settings.qos_results
        topic = f"{self.prefix}/devices/{result.device}/command/result"
        await self._publish(topic, payload, qos, properties=properties)
        response_topic = reply_to.get("response_topic")
        if not (self.mqtt5 and isinstance(response_topic, str) and response_topic != topic):
            return
        if self.response_topics.refusal(response_topic) is not None:
            return  # stored before the policy changed: never published there now
        try:
            await self._publish(response_topic, payload, qos, properties=properties)
        except UpstreamError as exc:
            if failed := self._count("response_publishes_failed", log_every=100):
                log.warning(
                    "mqtt: %s result of %r not published to its response topic, given up: %s "
                    "(%d so far)",
                    result.status,
                    result.id,
                    exc,
                    failed,
                )

    # -- MqttExtras -------------------------------------------------------------------------

    async def publish_raw(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish anything (e.g. Home Assistant discovery); waits for PUBACK when qos > 0.

        ValueError for a topic with wildcards or a bad qos; UpstreamUnavailable as usual.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        await self._publish(topic, data, qos, retain=retain)

    def subscribe_extra(
        self,
        topic_filter: str,
        callback: MessageCallback,
        qos: int = 0,
        *,
        commands: bool = False,
        retained: bool = False,
    ) -> None:
        """Also subscribe to ``topic_filter`` (now and after every reconnect).

        ``callback(topic, payload, arrival)`` runs on the event loop; it may be a coroutine
        function. ``arrival`` is the monotonic time the message reached the gateway (the start
        of a stall it waited through). With ``commands``, the topics carry commands: a message
        with the retain flag (possible under MQTT 3.1.1) is dropped, counted and logged. With
        ``retained``, the broker's retained messages on the topics are delivered at each
        subscription (otherwise only new messages are, under MQTT 5).
        """
        extra = _ExtraSubscription(topic_filter, qos, callback, commands, retained)
        self._extras.append(extra)
        if self.connected and self.client is not None:
            handling = 0 if retained else NO_RETAINED
            self._tasks.spawn(
                self.client.subscribe([(topic_filter, qos)], retain_handling=handling)
            )

    def add_ready_listener(self, callback: ReadyCallback) -> None:
        """Call ``callback()`` after every (re)connection, once ``online`` is published."""
        self._ready_listeners.append(callback)

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until ``connected``; False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._online.wait()
        except TimeoutError:
            return False
        return True

    # -- the connection ---------------------------------------------------------------------

    def _client_options(self) -> ClientOptions:
        settings = self.settings
        password = None
        if settings.username is not None and settings.password is not None:
            try:
                password = settings.password.read()
            except (OSError, KeyError, UnicodeDecodeError) as exc:
                raise MqttSetupError(f"mqtt.password: cannot read the secret: {exc}") from None
        tls = None
        if settings.tls is not None:
            try:
                tls = _tls_context(settings)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttSetupError(f"mqtt.tls: cannot load certificates: {exc}") from None
        return ClientOptions(
            host=settings.host,
            port=settings.port,
            client_id=self.client_id,
            mqtt5=self.mqtt5,
            keepalive_s=settings.keepalive_s,
            connect_timeout_s=settings.connect_timeout_s,
            ack_timeout_s=settings.publish_timeout_s,
            inflight=settings.inflight,
            username=settings.username,
            password=password,
            tls=tls,
            tls_insecure=settings.tls is not None and settings.tls.insecure_skip_verify,
            will=Will(self.status_topic, b"offline", qos=1, retain=True),
            session_expiry_s=settings.session_expiry_s,
            max_packet_bytes=max(MIN_MAX_PACKET_BYTES, MAX_PACKET_FACTOR * self.max_command_bytes),
            inbox_size=self._inbox_size,
        )

    async def _session(self) -> bool:
        """One connection: subscribe, announce ``online``, serve until it is lost."""
        client = self.client
        assert client is not None
        async with client:
            settings = self.settings
            log.info(
                "mqtt: connected to %s:%d as %s (MQTT %s, session %s)",
                settings.host,
                settings.port,
                self.client_id,
                settings.protocol,
                "resumed" if client.session_present else "new",
            )
            topics = [(self.command_filter, COMMAND_QOS)]
            topics += [(e.topic_filter, e.qos) for e in self._extras if not e.retained]
            await client.subscribe(topics, retain_handling=NO_RETAINED)
            if retained := [(e.topic_filter, e.qos) for e in self._extras if e.retained]:
                await client.subscribe(retained)
            await client.publish(self.status_topic, b"online", 1, retain=True)
            self._online.set()
            for listener in self._ready_listeners:
                self._tasks.spawn(_call(listener))
            try:
                await client.wait_lost()
            finally:
                self._online.clear()
        return True

    def _connect_failed(self, exc: Exception) -> None:
        self._counters["connect_failures"] += 1
        log.warning(
            "mqtt: cannot connect to %s:%d: %s",
            self.settings.host,
            self.settings.port,
            describe(exc),
        )

    async def _publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        if not self.connected or self.client is None:
            raise UpstreamUnavailable("not connected to the MQTT broker")
        await self.client.publish(topic, payload, qos, retain=retain, properties=properties)

    # -- messages in ------------------------------------------------------------------------

    async def _consume(self, client: MqttClient, on_command: CommandHandler) -> None:
        while True:
            message = await client.next_message()
            device = self._command_device(message.topic)
            if device is not None:
                incoming = self._take_command(device, message)
                if incoming is not None:
                    await self._hand_over(incoming, on_command)
            for extra in self._extras:
                if paho.topic_matches_sub(extra.topic_filter, message.topic):
                    self._counters["extra_messages"] += 1
                    if extra.commands and message.retain:
                        self._drop_retained_command(message.topic)
                        continue
                    self._tasks.spawn(
                        _call(extra.callback, message.topic, message.payload, message.arrival)
                    )

    async def _hand_over(self, incoming: IncomingCommand, on_command: CommandHandler) -> None:
        try:
            await on_command(incoming)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._counters["handler_errors"] += 1
            log.exception("mqtt: command handler failed for %s", incoming.device)

    def _command_device(self, topic: str) -> str | None:
        head = f"{self.prefix}/devices/"
        if not (topic.startswith(head) and topic.endswith("/command")):
            return None
        device = topic[len(head) : -len("/command")]
        return None if "/" in device else device

    def _take_command(self, device: str, message: Message) -> IncomingCommand | None:
        if message.retain:
            self._drop_retained_command(message.topic)
            return None
        reply_to: dict[str, Any] = {}
        if message.response_topic is not None:
            self._take_response_topic(message.response_topic, device, reply_to)
        if message.correlation_data is not None:
            reply_to["correlation_data_hex"] = message.correlation_data.hex()
        size = len(message.payload)
        if size > self.max_command_bytes:
            self._counters["oversized_commands"] += 1
            body: dict[str, Any] | str | bytes = b""  # not decoded: answered too_large
        else:
            body = _decode_body(message.payload)
        self._counters["commands_received"] += 1
        return IncomingCommand(
            origin=ORIGIN,
            device=device,
            body=body,
            received_mono=message.arrival,
            expiry_s=message.expiry_s,
            reply_to=reply_to,
            size_bytes=size,
        )

    def _drop_retained_command(self, topic: str) -> None:
        self._counters["retained_commands_dropped"] += 1
        log.warning(
            "mqtt: retained command on %s ignored (%d so far); clear it with an empty "
            "retained message",
            topic,
            self._counters["retained_commands_dropped"],
        )

    def _count(self, counter: str, *, log_every: int) -> int:
        """Count one more; the new count when it is worth a log line (the first, then every
        ``log_every``-th: a hostile client must not flood the log), else 0."""
        self._counters[counter] += 1
        count = self._counters[counter]
        return count if count == 1 or count % log_every == 0 else 0

    def _take_response_topic(self, topic: str, device: str, reply_to: dict[str, Any]) -> None:
        refusal = self.response_topics.refusal(topic)
        if refusal is None:
            reply_to["response_topic"] = topic
            return
        if refused := self._count("response_topics_refused", log_every=1000):
            log.warning(
                "mqtt: response topic %r of a command for %s not used (%s); results go to the "
                "device's command/result topic only (%d refused so far)",
                topic[:200],
                device,
                refusal,
                refused,
            )


async def _call(callback: Callable[..., Any], *args: Any) -> None:
    outcome = callback(*args)
    if inspect.isawaitable(outcome):
        await outcome


# One encoder for every payload: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json(wire: dict[str, Any]) -> bytes:
    try:
        return _ENCODER.encode(wire).encode()
    except (TypeError, ValueError) as exc:
        raise UnpublishableItem(f"not plain JSON: {exc}") from None


def _decode_body(payload: bytes) -> dict[str, Any] | str | bytes:
    """The JSON object, else the raw text (or bytes if not UTF-8) for the bridge to reject."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(payload)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return value if isinstance(value, dict) else text


def _correlation_data(reply_to: dict[str, Any]) -> bytes | None:
    value = reply_to.get("correlation_data_hex")
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _tls_context(settings: MqttSection) -> ssl.SSLContext:
    tls = settings.tls
    assert tls is not None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
