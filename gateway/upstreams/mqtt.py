"""MQTT upstream: paho-mqtt 2.x driven from the asyncio event loop (no paho thread).

paho's socket is watched with ``loop.add_reader``/``add_writer`` and ``loop_misc`` runs once a
second for keepalive; only the blocking TCP/TLS connect runs in an executor thread. Each QoS
1/2 publish waits on a future keyed by its message id, resolved from ``on_publish`` when the
PUBACK/PUBCOMP arrives, so ``publish_report`` returns only after the broker took the message.

The session is persistent (fixed client id, clean start off, MQTT 5 session expiry), with a
retained ``online`` birth and ``offline`` Last Will on ``<prefix>/status``. The connection
is kept up by a supervisor task with jittered, capped exponential backoff.

Commands arrive on ``<prefix>/devices/+/command``. The subscription is QoS 0 on purpose: a
broker then does not queue commands for the gateway while it is offline (mosquitto's default),
so a command sent during an outage is not executed minutes later when the gateway returns;
its sender sees no ``accepted`` result and the gateway's ``offline`` status instead. Retained
commands are never executed (MQTT 5 retain handling 2, and any message with the retain flag
is dropped and counted).

A command message longer than ``commands.max_message_bytes`` is not decoded: the bridge
answers it ``too_large``. Over MQTT 5 the gateway also tells the broker the largest packet it
takes (``MAX_PACKET_FACTOR`` times that limit), so a huge message never reaches its memory.
A Response Topic is used only when ``response_topics.ResponseTopicPolicy`` allows it; results
go to the canonical ``command/result`` topic first and to the Response Topic once, after.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import json
import logging
import random
import ssl
import struct
import termios
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import Config, MqttSection
from gateway.model import CommandResult, DeviceEvent, Report
from gateway.upstreams.arrival import ArrivalClock
from gateway.upstreams.base import (
    CommandHandler,
    IncomingCommand,
    UpstreamError,
    UpstreamUnavailable,
)
from gateway.upstreams.response_topics import ResponseTopicPolicy

log = logging.getLogger(__name__)

ORIGIN = "mqtt"
DEFAULT_INBOX_SIZE = 256
COMMAND_QOS = 0
STOP_TIMEOUT_S = 3.0
MAX_PACKET_FACTOR = 16  # MQTT 5 Maximum Packet Size = this x commands.max_message_bytes
MIN_MAX_PACKET_BYTES = 65_536
_MAX_BUFFERED_READS = 1000

# callback(topic, payload, arrival): arrival is the monotonic time the message reached us
# (``arrival.ArrivalClock``), for subscriptions that carry commands.
ExtraCallback = Callable[[str, bytes, float], Awaitable[None] | None]
ReadyCallback = Callable[[], Awaitable[None] | None]


class PublishRejected(UpstreamUnavailable):
    """The broker answered with a failure reason code (e.g. not authorised)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"broker refused publish to {topic}: {reason}")
        self.reason = reason


class UnpublishableItem(UpstreamError, ValueError):
    """A record that cannot be sent (not plain JSON); retrying will not help."""


class MqttSetupError(UpstreamError):
    """The configured secret or certificates cannot be used (raised by ``start``)."""


class ConnectRefused(UpstreamError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"broker refused the connection: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _ExtraSubscription:
    topic_filter: str
    qos: int
    callback: ExtraCallback
    commands: bool  # retained messages are dropped, as on the command topics


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
        self.response_topics = ResponseTopicPolicy.of(
            self.prefix, self.settings.response_topic_prefixes
        )
        self.arrival = ArrivalClock()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "connect_failures",
                "disconnects",
                "published",
                "publish_failures",
                "commands_received",
                "inbox_dropped",
                "retained_commands_dropped",
                "oversized_commands",
                "response_topics_refused",
                "response_publishes_failed",
                "handler_errors",
                "extra_messages",
            ),
            0,
        )
        self._inbox: asyncio.Queue[IncomingCommand] = asyncio.Queue(maxsize=inbox_size)
        self._extras: list[_ExtraSubscription] = []
        self._ready_listeners: list[ReadyCallback] = []
        self._pending_publishes: dict[int, asyncio.Future[ReasonCode]] = {}
        self._pending_subscribes: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._early_acks: dict[int, ReasonCode] = {}
        self._inside_publish = False
        self._read_arrival = time.monotonic()  # stamp of the messages being read now
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._connack: asyncio.Future[bool] | None = None
        self._connect_job: asyncio.Future[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._watched_fd: int | None = None
        self._stopping = False
        self.session_present: bool | None = None  # did the broker keep our session?
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._client: paho.Client | None = None

    # -- Upstream interface -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True once connected, subscribed and ``online`` announced; False while reconnecting."""
        return self._ready.is_set()

    async def start(self, on_command: CommandHandler) -> None:
        """Connect in the background; MqttSetupError if the secret or certificates are bad."""
        if self._supervisor is not None:
            raise RuntimeError("MqttUpstream already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._client = self._make_client()
        self.arrival.start(self._loop)
        self._consumer = asyncio.create_task(self._consume(on_command), name="mqtt-commands")
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-connection")

    async def stop(self) -> None:
        """Announce ``offline``, disconnect cleanly and stop every task."""
        if self._stopping or self._client is None:
            return
        self._stopping = True
        client = self._client
        if self._ready.is_set():
            with contextlib.suppress(UpstreamError, asyncio.TimeoutError):
                await self._publish(
                    self.status_topic, b"offline", 1, retain=True, timeout=STOP_TIMEOUT_S
                )
            self._ready.clear()
            self._lost.clear()
            if client.disconnect() == paho.MQTT_ERR_SUCCESS:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), STOP_TIMEOUT_S)
        await _cancel(self._supervisor)
        job = self._connect_job
        if job is not None:
            # A blocking connect still running in its thread ends within connect_timeout_s;
            # wait for it so its socket is not registered after we are gone.
            await asyncio.wait([job])
            if not job.cancelled():
                job.exception()  # retrieved: a failed last attempt is not worth a warning
        for task in (self._consumer, self._misc, *self._tasks):
            await _cancel(task)
        self.arrival.stop()
        self._unwatch_socket()
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._fail_pending("upstream stopped")

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
            self.stats["response_publishes_failed"] += 1
            failed = self.stats["response_publishes_failed"]
            if failed == 1 or failed % 100 == 0:
                log.warning(
                    "mqtt: %s result of %r not published to its response topic, given up: %s "
                    "(%d so far)",
                    result.status,
                    result.id,
                    exc,
                    failed,
                )

    # -- extras for other parts of the gateway ----------------------------------------------

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
        self, topic_filter: str, callback: ExtraCallback, qos: int = 0, *, commands: bool = False
    ) -> None:
        """Also subscribe to ``topic_filter`` (now and after every reconnect).

        ``callback(topic, payload, arrival)`` runs on the event loop; it may be a coroutine
        function. ``arrival`` is the monotonic time the message reached the gateway (the start
        of a stall it waited through). With ``commands``, the topics carry commands: a message
        with the retain flag (possible under MQTT 3.1.1) is dropped, counted and logged.
        """
        extra = _ExtraSubscription(topic_filter, qos, callback, commands)
        self._extras.append(extra)
        if self._ready.is_set():
            self._spawn(self._subscribe([(topic_filter, qos)]))

    def add_ready_listener(self, callback: ReadyCallback) -> None:
        """Call ``callback()`` after every (re)connection, once ``online`` is published."""
        self._ready_listeners.append(callback)

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until ``connected``; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- connection supervision -------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        settings = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self.mqtt5 else paho.MQTTv311,
            clean_session=None if self.mqtt5 else False,
            reconnect_on_failure=False,
        )
        client.enable_logger(logging.getLogger("paho"))
        client.max_inflight_messages_set(settings.inflight)
        client.connect_timeout = settings.connect_timeout_s
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        if settings.username is not None:
            try:
                password = settings.password.read() if settings.password is not None else None
            except (OSError, KeyError, UnicodeDecodeError) as exc:
                raise MqttSetupError(f"mqtt.password: cannot read the secret: {exc}") from None
            client.username_pw_set(settings.username, password)
        if settings.tls is not None:
            try:
                client.tls_set_context(_tls_context(settings))
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttSetupError(f"mqtt.tls: cannot load certificates: {exc}") from None
            if settings.tls.insecure_skip_verify:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats["connect_failures"] += 1
                log.warning(
                    "mqtt: cannot connect to %s:%d: %s",
                    self.settings.host,
                    self.settings.port,
                    _describe(exc),
                )
                self._abandon_connection()
            else:
                attempt = 0
                await self._lost.wait()
                if self._stopping:
                    return
            delay = _backoff(attempt, self.settings.reconnect_min_s, self.settings.reconnect_max_s)
            attempt += 1
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        client = self._client
        assert client is not None and self._loop is not None
        settings = self.settings
        self._lost.clear()
        self._connack = self._loop.create_future()
        kwargs: dict[str, Any] = {}
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = settings.session_expiry_s
            properties.MaximumPacketSize = max(
                MIN_MAX_PACKET_BYTES, MAX_PACKET_FACTOR * self.max_command_bytes
            )
            kwargs = {"clean_start": False, "properties": properties}
        # connect() blocks on the TCP (and TLS) handshake: run it off the loop.
        self._connect_job = self._loop.run_in_executor(
            None,
            lambda: client.connect(settings.host, settings.port, settings.keepalive_s, **kwargs),
        )
        await asyncio.shield(self._connect_job)
        session_present = await asyncio.wait_for(self._connack, settings.connect_timeout_s)
        self.session_present = session_present
        self.stats["connects"] += 1
        log.info(
            "mqtt: connected to %s:%d as %s (MQTT %s, session %s)",
            settings.host,
            settings.port,
            self.client_id,
            settings.protocol,
            "resumed" if session_present else "new",
        )
        topics = [(self.command_filter, COMMAND_QOS)]
        topics += [(extra.topic_filter, extra.qos) for extra in self._extras]
        await self._subscribe(topics)
        await self._publish(self.status_topic, b"online", 1, retain=True, require_ready=False)
        self._ready.set()
        for listener in self._ready_listeners:
            self._spawn(_call(listener))

    def _abandon_connection(self) -> None:
        """After a failed attempt: stop watching the socket; the next connect() closes it."""
        self._unwatch_socket()
        self._ready.clear()
        self._fail_pending("connection attempt failed")

    async def _subscribe(self, topics: list[tuple[str, int]]) -> None:
        client = self._client
        assert client is not None and self._loop is not None
        for topic_filter, qos in topics:
            if self.mqtt5:
                # Retain handling 2: never send retained messages (no replayed commands).
                options = SubscribeOptions(qos=qos, retainHandling=2)
                rc, mid = client.subscribe(topic_filter, options=options)
            else:
                rc, mid = client.subscribe(topic_filter, qos)
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                raise UpstreamUnavailable(f"subscribe to {topic_filter} failed: {rc}")
            future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
            self._pending_subscribes[mid] = future
            try:
                codes = await asyncio.wait_for(future, self.settings.publish_timeout_s)
            except TimeoutError:
                raise UpstreamUnavailable(f"no SUBACK for {topic_filter}") from None
            finally:
                self._pending_subscribes.pop(mid, None)
            for code in codes:
                if code.is_failure:
                    log.error("mqtt: broker refused subscription to %s: %s", topic_filter, code)

    # -- publishing -------------------------------------------------------------------------

    async def _publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = None,
        require_ready: bool = True,
    ) -> None:
        client = self._client
        if client is None or (require_ready and not self._ready.is_set()) or self._lost.is_set():
            raise UpstreamUnavailable("not connected to the MQTT broker")
        assert self._loop is not None
        self._inside_publish = True
        try:
            info = client.publish(topic, payload, qos, retain, properties)
        finally:
            self._inside_publish = False
        early = self._early_acks.pop(info.mid, None)
        self._early_acks.clear()
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.stats["publish_failures"] += 1
            raise UpstreamUnavailable(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if early is None and info.is_published():
            early = ReasonCode(PacketTypes.PUBACK, identifier=0)
        if early is None:
            future: asyncio.Future[ReasonCode] = self._loop.create_future()
            self._pending_publishes[info.mid] = future
            # A plain timer rather than asyncio.wait_for, which costs twice as much per report.
            timer = self._loop.call_later(
                timeout or self.settings.publish_timeout_s, _time_out, future
            )
            try:
                early = await future
            except TimeoutError:
                self.stats["publish_failures"] += 1
                raise UpstreamUnavailable(f"no acknowledgement for {topic} in time") from None
            finally:
                timer.cancel()
                self._pending_publishes.pop(info.mid, None)
        if early.is_failure:
            self.stats["publish_failures"] += 1
            raise PublishRejected(topic, str(early))
        self.stats["published"] += 1

    def _fail_pending(self, why: str) -> None:
        for pending in (self._pending_publishes, self._pending_subscribes):
            for future in pending.values():
                if not future.done():
                    future.set_exception(UpstreamUnavailable(why))
            pending.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(UpstreamUnavailable(why))
            self._connack.exception()  # nobody may be waiting for it any more

    # -- paho callbacks (run on the event loop thread) --------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        future = self._connack
        if future is None or future.done():
            return
        if reason_code.is_failure:
            future.set_exception(ConnectRefused(str(reason_code)))
        else:
            future.set_result(bool(flags.session_present))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        self._lost.set()
        self._fail_pending(f"connection lost: {reason_code}")
        if was_ready:
            self.stats["disconnects"] += 1
            if not self._stopping:
                log.warning("mqtt: connection to the broker lost: %s", reason_code)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        future = self._pending_publishes.pop(mid, None)
        if future is not None:
            if not future.done():
                future.set_result(reason_code)
        elif self._inside_publish:
            # Acknowledged before publish() returned; _publish picks it up.
            self._early_acks[mid] = reason_code

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        future = self._pending_subscribes.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason_codes)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic = message.topic
        device = self._command_device(topic)
        if device is not None:
            self._take_command(device, message)
        for extra in self._extras:
            if paho.topic_matches_sub(extra.topic_filter, topic):
                self.stats["extra_messages"] += 1
                if extra.commands and message.retain:
                    self._drop_retained_command(topic)
                    continue
                arrival = self._read_arrival
                self._spawn(_call(extra.callback, topic, bytes(message.payload), arrival))

    def _command_device(self, topic: str) -> str | None:
        head = f"{self.prefix}/devices/"
        if not (topic.startswith(head) and topic.endswith("/command")):
            return None
        device = topic[len(head) : -len("/command")]
        return None if "/" in device else device

    def _take_command(self, device: str, message: paho.MQTTMessage) -> None:
        if message.retain:
            self._drop_retained_command(message.topic)
            return
        properties = getattr(message, "properties", None)
        expiry_s: float | None = None
        reply_to: dict[str, Any] = {}
        if properties is not None:
            if hasattr(properties, "MessageExpiryInterval"):
                expiry_s = float(properties.MessageExpiryInterval)
            response_topic = getattr(properties, "ResponseTopic", None)
            if isinstance(response_topic, str):
                self._take_response_topic(response_topic, device, reply_to)
            correlation = getattr(properties, "CorrelationData", None)
            if isinstance(correlation, bytes | bytearray):
                reply_to["correlation_data_hex"] = bytes(correlation).hex()
        size = len(message.payload)
        if size > self.max_command_bytes:
            self.stats["oversized_commands"] += 1
            body: dict[str, Any] | str | bytes = b""  # not decoded: answered too_large
        else:
            body = _decode_body(message.payload)
        incoming = IncomingCommand(
            origin=ORIGIN,
            device=device,
            body=body,
            received_mono=self._read_arrival,
            expiry_s=expiry_s,
            reply_to=reply_to,
            size_bytes=size,
        )
        self.stats["commands_received"] += 1
        try:
            self._inbox.put_nowait(incoming)
        except asyncio.QueueFull:
            self.stats["inbox_dropped"] += 1
            log.warning(
                "mqtt: command inbox full (%d); command for %s dropped (%d dropped so far)",
                self._inbox.maxsize,
                device,
                self.stats["inbox_dropped"],
            )

    def _drop_retained_command(self, topic: str) -> None:
        self.stats["retained_commands_dropped"] += 1
        log.warning(
            "mqtt: retained command on %s ignored (%d so far); clear it with an empty "
            "retained message",
            topic,
            self.stats["retained_commands_dropped"],
        )

    def _take_response_topic(self, topic: str, device: str, reply_to: dict[str, Any]) -> None:
        refusal = self.response_topics.refusal(topic)
        if refusal is None:
            reply_to["response_topic"] = topic
            return
        self.stats["response_topics_refused"] += 1
        refused = self.stats["response_topics_refused"]
        if refused == 1 or refused % 1000 == 0:
            log.warning(
                "mqtt: response topic %r of a command for %s not used (%s); results go to the "
                "device's command/result topic only (%d refused so far)",
                topic[:200],
                device,
                refusal,
                refused,
            )

    async def _consume(self, on_command: CommandHandler) -> None:
        while True:
            incoming = await self._inbox.get()
            try:
                await on_command(incoming)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("mqtt: command handler failed for %s", incoming.device)

    # -- socket plumbing (the aiomqtt pattern) ----------------------------------------------

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop: directly there, else scheduled from another thread."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._watch_socket, sock.fileno())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._unwatch_socket, sock.fileno())

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._watch_writable, sock.fileno())

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._unwatch_writable, sock.fileno())

    def _watch_socket(self, fd: int) -> None:
        assert self._loop is not None
        self._watched_fd = fd
        self._loop.add_reader(fd, self._readable)
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(self._misc_loop(), name="mqtt-misc")

    def _unwatch_socket(self, fd: int | None = None) -> None:
        assert self._loop is not None
        fd = self._watched_fd if fd is None else fd
        if fd is None or fd < 0:
            return
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        if fd == self._watched_fd:
            self._watched_fd = None

    def _watch_writable(self, fd: int) -> None:
        assert self._loop is not None
        if fd == self._watched_fd:
            self._loop.add_writer(fd, self._writable)

    def _unwatch_writable(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_writer(fd)

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        self._read_arrival = self.arrival.arrival()
        self._drive(client.loop_read)
        # TLS may hold decrypted bytes the socket no longer signals: read them out now.
        sock = client.socket()
        for _ in range(_MAX_BUFFERED_READS):
            if not isinstance(sock, ssl.SSLSocket) or client.socket() is not sock:
                break
            if sock.pending() <= 0:
                break
            self._drive(client.loop_read)
        if sock is not None and client.socket() is sock and _unread_bytes(sock) == 0:
            self.arrival.drained()

    def _writable(self) -> None:
        self._drive(self._client.loop_write if self._client else None)

    def _drive(self, step: Callable[[], Any] | None) -> None:
        if step is None:
            return
        try:
            step()
        except Exception as exc:
            # paho handles ordinary socket errors itself; anything else: drop the connection.
            log.warning("mqtt: socket error: %s", _describe(exc))
            self._unwatch_socket()
            if not self._lost.is_set():
                self._on_disconnect(
                    self._client,  # type: ignore[arg-type]
                    None,
                    paho.DisconnectFlags(False),
                    ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"),
                    None,
                )

    async def _misc_loop(self) -> None:
        assert self._client is not None
        while self._client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mqtt: callback failed: %s", _describe(task.exception()))


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _cancel(task: asyncio.Future[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _call(callback: Callable[..., Any], *args: Any) -> None:
    outcome = callback(*args)
    if inspect.isawaitable(outcome):
        await outcome


def _unread_bytes(sock: Any) -> int:
    """Bytes waiting to be read on ``sock`` (decrypted TLS bytes included); -1 if unknown."""
    try:
        waiting = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    except (OSError, ValueError):
        return -1
    if isinstance(sock, ssl.SSLSocket):
        waiting += sock.pending()
    return waiting


def _json(wire: dict[str, Any]) -> bytes:
    try:
        return json.dumps(wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
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


def _backoff(attempt: int, low: float, high: float) -> float:
    """Capped exponential backoff with jitter: between half and all of min(high, low * 2^n)."""
    ceiling = min(high, low * 2 ** min(attempt, 32))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
