"""A small asyncio MQTT client over paho-mqtt 2.x, driven from the event loop (no paho thread).

It knows MQTT, not the gateway's topics (those are in ``gateway.upstreams.mqtt``):

* ``async with client:`` is one connection (reusable, not reentrant). Leaving the block
  normally disconnects cleanly; leaving it by an exception abandons the connection (the
  socket is no longer watched, pending calls fail; the next connect closes it). A clean
  ``disconnect()`` suppresses the Last Will; a lost or abandoned connection does not.
* ``publish`` waits on a future keyed by the message id, resolved from ``on_publish`` when
  the PUBACK/PUBCOMP arrives (also when it arrives before paho's ``publish()`` returned).
* Messages go to a bounded inbox (``next_message``); when it is full they are dropped, counted
  and logged. Each carries its arrival time (``gateway.upstreams.arrival``).
* Errors have one root, ``MqttError``, itself an ``UpstreamError``.

paho's socket is driven from the event loop (``mqtt_socket.LoopSocket``); only the blocking
TCP/TLS connect runs in an executor thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.tasks import describe
from gateway.upstreams.arrival import ArrivalClock
from gateway.upstreams.base import UpstreamError, UpstreamUnavailable
from gateway.upstreams.mqtt_socket import BufferedClient, LoopSocket

log = logging.getLogger("gateway.upstreams.mqtt")

DEFAULT_INBOX_SIZE = 256
DISCONNECT_TIMEOUT_S = 3.0


class MqttError(UpstreamError):
    """Root of the MQTT client's errors."""


class MqttUnavailable(MqttError, UpstreamUnavailable):
    """Not connected, the connection was lost, or the broker did not answer in time."""


class PublishRejected(MqttUnavailable):
    """The broker answered with a failure reason code (e.g. not authorised)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"broker refused publish to {topic}: {reason}")
        self.reason = reason


class ConnectRefused(MqttError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"broker refused the connection: {reason}")
        self.reason = reason


class MqttReentrantError(MqttError):
    """``async with client`` while the client is already connected through another block."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class ClientOptions:
    host: str
    port: int
    client_id: str
    mqtt5: bool = True
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0  # PUBACK/PUBCOMP and SUBACK
    inflight: int = 20
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    tls_insecure: bool = False
    will: Will | None = None
    session_expiry_s: int | None = None  # MQTT 5; with a fixed client id: persistent session
    max_packet_bytes: int | None = None  # MQTT 5 Maximum Packet Size we accept
    inbox_size: int = DEFAULT_INBOX_SIZE


@dataclass(frozen=True, slots=True)
class Message:
    """A message as it arrived. ``arrival`` is the monotonic time it reached us at the
    earliest (the start of a stall it waited through)."""

    topic: str
    payload: bytes
    retain: bool
    arrival: float
    expiry_s: float | None = None  # MQTT 5 Message Expiry Interval
    response_topic: str | None = None
    correlation_data: bytes | None = None


class MqttClient:
    """One broker, one persistent paho client, connected by ``async with``."""

    def __init__(self, options: ClientOptions, *, arrival: ArrivalClock | None = None) -> None:
        self.options = options
        self.arrival = arrival or ArrivalClock()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "disconnects",
                "published",
                "publish_failures",
                "messages_received",
                "inbox_dropped",
            ),
            0,
        )
        self.session_present: bool | None = None  # did the broker keep our session?
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=options.inbox_size)
        self._pending_publishes: dict[int, asyncio.Future[ReasonCode]] = {}
        self._pending_subscribes: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._early_acks: dict[int, ReasonCode] = {}
        self._inside_publish = False
        self._connected = False
        self._closing = False  # a clean disconnect is under way: not a loss
        self._lost = asyncio.Event()
        self._in_use = False
        self._connack: asyncio.Future[bool] | None = None
        self._connect_job: asyncio.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket = LoopSocket(self.arrival, on_broken=self._socket_broken)
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        """True from the CONNACK until the connection is lost, abandoned or closed."""
        return self._connected

    def socket(self) -> Any:
        return self._client.socket()

    # -- one connection -----------------------------------------------------------------------

    async def __aenter__(self) -> MqttClient:
        """Connect; ``MqttError`` (or ``OSError`` from the TCP/TLS connect) if that fails."""
        if self._in_use:
            raise MqttReentrantError("the client is reusable, but not reentrant")
        self._in_use = True
        try:
            await self._connect()
        except BaseException:
            self._in_use = False
            self._abandon("connection attempt failed")
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.disconnect()
            else:
                self._abandon(f"connection abandoned: {describe(exc)}")
        finally:
            self._in_use = False

    async def wait_lost(self) -> None:
        """Until the connection ends (lost, abandoned or disconnected)."""
        await self._lost.wait()

    async def disconnect(self, timeout: float = DISCONNECT_TIMEOUT_S) -> None:
        """Disconnect cleanly (no Last Will) and wait up to ``timeout`` for the socket to close."""
        if not self._connected:
            return
        self._closing = True
        self._connected = False
        if self._client.disconnect() == paho.MQTT_ERR_SUCCESS:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._lost.wait()

    async def close(self) -> None:
        """The end: no connection, no timers, no socket. The client is not used again."""
        self._closing = True
        self._connected = False
        job = self._connect_job
        if job is not None:
            # A blocking connect still running in its thread ends within connect_timeout_s;
            # wait for it so its socket is not registered after we are gone.
            await asyncio.wait([job])
            if not job.cancelled():
                job.exception()  # retrieved: a failed last attempt is not worth a warning
        await self._socket.close()
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._fail_pending("client closed")

    async def _connect(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._socket.bind(self._loop)
        loop = self._loop
        options = self.options
        client = self._client
        self._closing = False
        self._lost.clear()
        self._connack = loop.create_future()
        kwargs: dict[str, Any] = {}
        if options.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            if options.session_expiry_s is not None:
                properties.SessionExpiryInterval = options.session_expiry_s
            if options.max_packet_bytes is not None:
                properties.MaximumPacketSize = options.max_packet_bytes
            kwargs = {"clean_start": False, "properties": properties}
        # connect() blocks on the TCP (and TLS) handshake: run it off the loop.
        self._connect_job = loop.run_in_executor(
            None,
            lambda: client.connect(options.host, options.port, options.keepalive_s, **kwargs),
        )
        await asyncio.shield(self._connect_job)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the awaited future completes, and the stop would wait forever.
        async with asyncio.timeout(options.connect_timeout_s):
            self.session_present = await self._connack
        self._connected = True
        self.stats["connects"] += 1

    def _abandon(self, why: str) -> None:
        """Stop watching the socket and fail what waits on it; the next connect() closes it."""
        self._connected = False
        self._socket.unwatch()
        self._fail_pending(why)

    # -- calls that wait for the broker -------------------------------------------------------

    async def subscribe(self, topics: list[tuple[str, int]], *, retain_handling: int = 0) -> None:
        """Subscribe and wait for each SUBACK. ``retain_handling`` (MQTT 5): 2 asks the broker
        never to send retained messages. A refused subscription is logged, not raised."""
        loop = self._need_connection()
        for topic_filter, qos in topics:
            if self.options.mqtt5:
                options = SubscribeOptions(qos=qos, retainHandling=retain_handling)
                rc, mid = self._client.subscribe(topic_filter, options=options)
            else:
                rc, mid = self._client.subscribe(topic_filter, qos)
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                raise MqttUnavailable(f"subscribe to {topic_filter} failed: {rc}")
            future: asyncio.Future[list[ReasonCode]] = loop.create_future()
            self._pending_subscribes[mid] = future
            try:
                async with asyncio.timeout(self.options.ack_timeout_s):
                    codes = await future
            except TimeoutError:
                raise MqttUnavailable(f"no SUBACK for {topic_filter}") from None
            finally:
                self._pending_subscribes.pop(mid, None)
            for code in codes:
                if code.is_failure:
                    log.error("mqtt: broker refused subscription to %s: %s", topic_filter, code)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish; with qos > 0, return only once the broker acknowledged the message.

        ``MqttUnavailable`` when not connected or not acknowledged in time, ``PublishRejected``
        for a failure reason code, ``ValueError`` for a topic paho refuses (wildcards)."""
        loop = self._need_connection()
        self._inside_publish = True
        try:
            info = self._client.publish(topic, payload, qos, retain, properties)
        finally:
            self._inside_publish = False
        early = self._early_acks.pop(info.mid, None)
        self._early_acks.clear()
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.stats["publish_failures"] += 1
            raise MqttUnavailable(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if early is None and info.is_published():
            early = ReasonCode(PacketTypes.PUBACK, identifier=0)
        if early is None:
            future: asyncio.Future[ReasonCode] = loop.create_future()
            self._pending_publishes[info.mid] = future
            # A plain timer rather than asyncio.wait_for, which costs twice as much per report.
            timer = loop.call_later(timeout or self.options.ack_timeout_s, _time_out, future)
            try:
                early = await future
            except TimeoutError:
                self.stats["publish_failures"] += 1
                raise MqttUnavailable(f"no acknowledgement for {topic} in time") from None
            finally:
                timer.cancel()
                self._pending_publishes.pop(info.mid, None)
        if early.is_failure:
            self.stats["publish_failures"] += 1
            raise PublishRejected(topic, str(early))
        self.stats["published"] += 1

    async def next_message(self) -> Message:
        """The oldest message in the inbox (waits for one)."""
        return await self._inbox.get()

    def _need_connection(self) -> asyncio.AbstractEventLoop:
        if not self._connected or self._lost.is_set() or self._loop is None:
            raise MqttUnavailable("not connected to the MQTT broker")
        return self._loop

    def _fail_pending(self, why: str) -> None:
        for pending in (self._pending_publishes, self._pending_subscribes):
            for future in pending.values():
                if not future.done():
                    future.set_exception(MqttUnavailable(why))
            pending.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttUnavailable(why))
            self._connack.exception()  # nobody may be waiting for it any more

    # -- paho --------------------------------------------------------------------------------

    def _make_client(self) -> BufferedClient:
        options = self.options
        client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=paho.MQTTv5 if options.mqtt5 else paho.MQTTv311,
            clean_session=None if options.mqtt5 else False,
            reconnect_on_failure=False,
        )
        client.enable_logger(logging.getLogger("paho"))
        client.max_inflight_messages_set(options.inflight)
        client.connect_timeout = options.connect_timeout_s
        if options.will is not None:
            will = options.will
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        if options.tls is not None:
            client.tls_set_context(options.tls)
            if options.tls_insecure:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._socket.install(client)
        return client

    def _socket_broken(self) -> None:
        """paho failed on the socket in a way it does not handle itself: connection lost."""
        if not self._lost.is_set():
            self._on_disconnect(
                self._client,
                None,
                paho.DisconnectFlags(False),
                ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"),
                None,
            )

    # paho callbacks run on the event loop thread (socket ones may come from the connect thread).

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
        was_connected = self._connected
        self._connected = False
        self._lost.set()
        self._fail_pending(f"connection lost: {reason_code}")
        if was_connected and not self._closing:
            self.stats["disconnects"] += 1
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
            # Acknowledged before publish() returned; publish picks it up.
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
        self.stats["messages_received"] += 1
        try:
            self._inbox.put_nowait(_message_of(message, self._socket.read_arrival))
        except asyncio.QueueFull:
            self.stats["inbox_dropped"] += 1
            log.warning(
                "mqtt: inbox full (%d); message on %s dropped (%d dropped so far)",
                self._inbox.maxsize,
                message.topic,
                self.stats["inbox_dropped"],
            )


def _message_of(message: paho.MQTTMessage, arrival: float) -> Message:
    properties = getattr(message, "properties", None)
    expiry_s: float | None = None
    response_topic: str | None = None
    correlation: bytes | None = None
    if properties is not None:
        if hasattr(properties, "MessageExpiryInterval"):
            expiry_s = float(properties.MessageExpiryInterval)
        topic = getattr(properties, "ResponseTopic", None)
        response_topic = topic if isinstance(topic, str) else None
        data = getattr(properties, "CorrelationData", None)
        correlation = bytes(data) if isinstance(data, bytes | bytearray) else None
    return Message(
        message.topic,
        bytes(message.payload),
        bool(message.retain),
        arrival,
        expiry_s,
        response_topic,
        correlation,
    )


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
