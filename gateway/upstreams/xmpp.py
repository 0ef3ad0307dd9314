"""XMPP upstream: slixmpp client; reports out as messages, commands in as IQs.

Delivery is confirmed by XEP-0198 stream management: every report message gets a unique
stanza id, and ``publish_report`` waits until the server's ``<a h=.../>`` count covers it
(slixmpp's ``stanza_acked`` event). A lost connection fails every waiting publish with
UpstreamUnavailable; the bridge keeps the outbox entry and sends it again (the report id
is stable, so a receiver can drop the duplicate). A server without XEP-0198 gets an XEP-0199
ping after the messages instead: its answer proves the server handled what came before.

A supervisor task owns the connection: connect, wait for the session, ping the server every
``keepalive_s``, and after a loss reconnect with capped, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from typing import Any

from slixmpp import JID, ClientXMPP, Iq, Message
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.plugins.xep_0198.stanza import Ack
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath, StanzaPath

from gateway.config import XmppSection
from gateway.model import CommandResult, DeviceEvent, IncomingCommand, Report
from gateway.tasks import TaskSet, cancel_and_wait
from gateway.upstreams.arrival import ArrivalClock
from gateway.upstreams.base import (
    CommandHandler,
    UnpublishableItem,
    UpstreamError,
    UpstreamUnavailable,
)
from gateway.upstreams.supervision import Backoff, keep_connected
from gateway.upstreams.xmpp_adhoc import AdhocCommands, DeviceLister
from gateway.upstreams.xmpp_outcomes import FORBIDDEN, IqAnswer, iq_answer_for
from gateway.upstreams.xmpp_stanzas import (
    NS,
    MalformedCommand,
    UnsendablePayload,
    fill_event,
    fill_report,
    fill_result,
    parse_command,
    register_stanza_plugins,
    report_summary,
    xml_text,
)

log = logging.getLogger(__name__)

DEFAULT_RESOURCE = "duogate"
_ACK_REQUEST = "<r xmlns='urn:xmpp:sm:3'/>"
# slixmpp's own ack requests (one every `window` stanzas) are replaced by ours, sent after
# each batch; a window this large never fills.
_NEVER = 2**31


FIRST_RECONNECT_S = 1.0  # the backoff ceiling doubles from here up to xmpp.reconnect_max_s


class XmppUpstream:
    """The Upstream protocol over XMPP (see docs/XMPP.md for the stanzas)."""

    name = "xmpp"
    window = 32  # messages waiting for the server's XEP-0198 ack at once
    droppable_kinds: frozenset[str] = frozenset()
    extras = None  # the MQTT extras (retained topics) have no XMPP counterpart

    def __init__(
        self,
        config: XmppSection,
        list_devices: DeviceLister,
        *,
        ack_timeout_s: float = 30.0,
        connect_timeout_s: float = 30.0,
        adhoc_wait_s: float = 25.0,
        progress_messages: bool = True,
    ) -> None:
        self._config = config
        self._list_devices = list_devices
        self._ack_timeout_s = ack_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._adhoc_wait_s = adhoc_wait_s
        self._progress_messages = progress_messages
        self.counters: Counter[str] = Counter()
        self.arrival = ArrivalClock()
        try:
            jid = JID(config.jid)
            self._allowed = {JID(j).bare for j in config.allowed_jids}
            self._subscribers = sorted({JID(j).bare for j in config.subscribers})
        except InvalidJID as exc:
            raise UpstreamError(f"xmpp: invalid JID in configuration: {exc}") from None
        if not jid.user:
            raise UpstreamError(f"xmpp.jid: needs a user part, got {config.jid!r}")
        if not jid.resource:
            jid.resource = DEFAULT_RESOURCE
        self._jid = jid
        self._client: ClientXMPP | None = None
        self._adhoc: AdhocCommands | None = None
        self._on_command: CommandHandler | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks = TaskSet(log, "xmpp: task failed")
        self._ready = False
        self._stream_management = False
        self._session_ready: asyncio.Event | None = None
        self._link_lost: asyncio.Future[None] | None = None
        self._pending_acks: dict[str, asyncio.Future[None]] = {}
        self._ack_request_scheduled = False
        self._ack_request_outstanding = False
        self._unrequested_sends = False

    # ----------------------------------------------------------------- Upstream protocol

    @property
    def connected(self) -> bool:
        return self._ready

    @property
    def jid(self) -> JID:
        """The full JID commands are addressed to (the bound one once connected)."""
        if self._client is not None and self._client.boundjid.resource:
            return self._client.boundjid
        return self._jid

    async def start(self, on_command: CommandHandler) -> None:
        if self._supervisor is not None:
            return
        if self._config.password is None:
            raise UpstreamError("xmpp.password: required")
        try:
            password = self._config.password.read()
        except (OSError, KeyError) as exc:
            raise UpstreamError(f"xmpp.password: cannot read secret: {exc}") from None
        self._on_command = on_command
        self._session_ready = asyncio.Event()
        self._client = self._make_client(password)
        self.arrival.start(asyncio.get_running_loop())
        self._supervisor = asyncio.create_task(self._supervise(), name="xmpp-supervisor")

    async def stop(self) -> None:
        self.arrival.stop()
        supervisor, self._supervisor = self._supervisor, None
        await cancel_and_wait(supervisor)
        client = self._client
        if client is not None:
            if self._ready:
                client.send_presence(ptype="unavailable")
            self._mark_lost("upstream stopped")
            client.cancel_connection_attempt()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(wait=2.0), 3.0)
            client.abort()
        await self._tasks.cancel_all()
        self._client = None

    async def publish_report(self, report: Report) -> None:
        def fill(message: Message) -> None:
            fill_report(message["duogate_report"], report)
            message["body"] = report_summary(report)

        await self._deliver(fill)

    async def publish_event(self, event: DeviceEvent) -> None:
        def fill(message: Message) -> None:
            fill_event(message["duogate_event"], event)
            message["body"] = xml_text(f"{event.device}: {event.event}")

        await self._deliver(fill)

    async def publish_result(self, result: CommandResult, reply_to: dict[str, Any]) -> None:
        """Answer the command's IQ (final statuses) or send a progress message.

        Raises UpstreamUnavailable when not connected; a ``reply_to`` that is not ours is
        counted and logged.
        """
        if "adhoc" in reply_to and self._adhoc is not None:
            self._adhoc.deliver(result, reply_to)
            return
        if self._client is None or not self._ready:
            raise UpstreamUnavailable("xmpp: not connected")
        iq_id, recipient = reply_to.get("iq_id"), reply_to.get("from")
        if not isinstance(iq_id, str) or not isinstance(recipient, str) or not recipient:
            self.counters["result_unroutable"] += 1
            log.warning("xmpp: result %s has no usable reply_to: %r", result.id, reply_to)
            return
        answer = iq_answer_for(result)
        if answer is None:
            if self._progress_messages:
                self._send_result_message(recipient, result)
            return
        self._send_iq_answer(iq_id, recipient, answer, result)

    # ------------------------------------------------------------------------ client

    def _make_client(self, password: str) -> ClientXMPP:
        plaintext = self._config.tls == "plaintext_lab_only"
        client = ClientXMPP(
            self._jid,
            password,
            plugin_config={
                # Over plaintext (lab only) the password still never travels in clear: SCRAM.
                "feature_mechanisms": {"unencrypted_plain": False, "unencrypted_scram": plaintext},
                "xep_0198": {"window": _NEVER, "allow_resume": True},
                "xep_0199": {"keepalive": False},
            },
        )
        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0198", "xep_0199"):
            client.register_plugin(plugin)
        register_stanza_plugins()
        client.enable_starttls = self._config.tls == "starttls"
        client.enable_direct_tls = self._config.tls == "direct"
        client.enable_plaintext = plaintext
        if self._config.tls == "direct":
            client.default_port = 5223
        client.ssl_context = self._ssl_context()
        client.auto_authorize = None
        client.auto_subscribe = False
        client.whitespace_keepalive = False

        client.add_event_handler("session_start", self._on_session_start)
        client.add_event_handler("session_bind", self._on_session_bind)
        client.add_event_handler("stream_negotiated", self._on_stream_negotiated)
        client.add_event_handler("session_resumed", self._on_session_resumed)
        client.add_event_handler("disconnected", self._on_disconnected)
        client.add_event_handler("connection_failed", self._on_connection_failed)
        client.add_event_handler("failed_all_auth", self._on_auth_failed)
        client.add_event_handler("stanza_acked", self._on_stanza_acked)
        client.add_event_handler("presence_subscribe", self._on_presence_subscribe)
        client.add_event_handler("message_error", self._on_message_error)
        client.register_handler(
            Callback("duogate ack seen", MatchXPath(Ack.tag_name()), self._on_ack, instream=True)
        )
        client.register_handler(
            Callback(
                "duogate command",
                StanzaPath("iq@type=set/duogate_command"),
                self._on_command_iq,
            )
        )
        self._adhoc = AdhocCommands(
            client,
            is_allowed=self._is_allowed,
            list_devices=self._list_devices,
            submit=self._hand_over,
            notify_late=self._send_result_message,
            wait_s=self._adhoc_wait_s,
            counters=self.counters,
        )
        return client

    def _ssl_context(self) -> ssl.SSLContext:
        if self._config.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self._config.ca_file))
        else:
            context = ssl.create_default_context()
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _is_allowed(self, sender: JID) -> bool:
        return sender.bare in self._allowed

    # ------------------------------------------------------------------- supervision

    async def _supervise(self) -> None:
        assert self._client is not None and self._session_ready is not None
        client = self._client

        def failed(_exc: Exception) -> None:
            log.exception("xmpp: connection attempt failed")

        def before_retry(delay: float) -> None:
            self._mark_lost("connection lost")
            self.counters["reconnects"] += 1
            log.info("xmpp: reconnecting in %.1f s", delay)

        backoff = Backoff(FIRST_RECONNECT_S, self._config.reconnect_max_s)
        await keep_connected(
            lambda: self._connect_once(client), backoff, on_error=failed, before_retry=before_retry
        )

    async def _connect_once(self, client: ClientXMPP) -> bool:
        """One connection from connect to loss; True when a session was reached."""
        assert self._session_ready is not None
        lost = self._link_lost = asyncio.get_running_loop().create_future()
        self._session_ready.clear()
        if self._config.host is not None:
            client.connect(self._config.host, self._config.port or client.default_port)
        else:
            client.connect()
        if not await self._wait_for_session(lost):
            client.cancel_connection_attempt()
            client.abort()
            return False
        await self._keep_alive(lost)
        return True

    async def _wait_for_session(self, lost: asyncio.Future[None]) -> bool:
        assert self._session_ready is not None
        ready = asyncio.ensure_future(self._session_ready.wait())
        try:
            await asyncio.wait(
                {ready, lost}, timeout=self._connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if self._ready and not lost.done():
            return True
        if not lost.done():
            log.warning("xmpp: no session within %.0f s", self._connect_timeout_s)
            self.counters["connect_timeouts"] += 1
        return False

    async def _keep_alive(self, lost: asyncio.Future[None]) -> None:
        """Ping the server every keepalive_s; an unanswered ping drops the link."""
        assert self._client is not None
        client = self._client
        interval = float(self._config.keepalive_s)
        while not lost.done():
            done, _ = await asyncio.wait({lost}, timeout=interval)
            if done:
                return
            ping = asyncio.ensure_future(
                client.plugin["xep_0199"].ping(client.boundjid.domain, timeout=interval)
            )
            await asyncio.wait({ping, lost}, return_when=asyncio.FIRST_COMPLETED)
            if lost.done():
                ping.cancel()
                return
            try:
                ping.result()
            except IqTimeout:
                log.warning("xmpp: server did not answer a ping in %.0f s; reconnecting", interval)
                self.counters["ping_timeouts"] += 1
                client.abort()
                return
            except IqError:
                pass  # an error answer still shows the server is there

    def _mark_lost(self, reason: str) -> None:
        self._ready = False
        self._stream_management = False
        self._ack_request_outstanding = False
        self._unrequested_sends = False
        if self._session_ready is not None:
            self._session_ready.clear()
        pending, self._pending_acks = self._pending_acks, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(UpstreamUnavailable(f"xmpp: {reason} before the server ack"))
        if self._link_lost is not None and not self._link_lost.done():
            self._link_lost.set_result(None)

    # ---------------------------------------------------------------- session events

    def _on_session_bind(self, jid: JID) -> None:
        if self._adhoc is not None:
            self._adhoc.offer(jid)

    def _on_session_start(self, _event: Any) -> None:
        assert self._client is not None
        self._client.send_presence(pstatus="gateway online")
        for subscriber in self._subscribers:
            self._client.send_presence(pto=subscriber, pstatus="gateway online")

    def _on_stream_negotiated(self, _event: Any) -> None:
        assert self._client is not None
        if "bind" not in self._client.features:
            return
        self._stream_management = "stream_management" in self._client.features
        if not self._stream_management:
            log.warning("xmpp: server offers no stream management; confirming with pings")
        self._set_ready()

    def _on_session_resumed(self, _event: Any) -> None:
        self._stream_management = True
        self.counters["resumed"] += 1
        self._set_ready()

    def _set_ready(self) -> None:
        assert self._session_ready is not None
        self._ready = True
        self._session_ready.set()
        log.info("xmpp: online as %s", self.jid)

    def _on_disconnected(self, reason: Any) -> None:
        if self._ready:
            log.warning("xmpp: disconnected: %s", reason or "connection closed")
        self._mark_lost("disconnected")

    def _on_connection_failed(self, error: Any) -> None:
        log.warning("xmpp: connection failed: %s", error)
        self.counters["connect_failures"] += 1
        if self._link_lost is not None and not self._link_lost.done():
            self._link_lost.set_result(None)

    def _on_auth_failed(self, _event: Any) -> None:
        log.error("xmpp: login as %s failed (password, or no secure mechanism)", self._jid.bare)
        self.counters["auth_failures"] += 1

    def _on_presence_subscribe(self, presence: Any) -> None:
        assert self._client is not None
        sender = presence["from"]
        known = sender.bare in self._allowed or sender.bare in self._subscribers
        if not known:
            self.counters["subscriptions_refused"] += 1
        self._client.send_presence(pto=sender.bare, ptype="subscribed" if known else "unsubscribed")

    def _on_message_error(self, message: Any) -> None:
        self.counters["messages_bounced"] += 1
        log.warning(
            "xmpp: message to %s bounced: %s", message["from"], message["error"]["condition"]
        )

    # ------------------------------------------------------------------ acknowledgements

    async def _deliver(self, fill: Callable[[Message], None]) -> None:
        client = self._client
        if client is None or not self._ready:
            raise UpstreamUnavailable("xmpp: not connected")
        lost = self._link_lost
        assert lost is not None
        stanza_ids: list[str] = []
        for subscriber in self._subscribers:
            message = client.make_message(mto=subscriber, mtype="normal")
            try:
                fill(message)
            except UnsendablePayload as exc:
                self.counters["unsendable"] += 1
                raise UnpublishableItem(str(exc)) from None
            stanza_id = client.new_id()
            message["id"] = stanza_id
            if self._stream_management:
                self._pending_acks[stanza_id] = asyncio.get_running_loop().create_future()
            stanza_ids.append(stanza_id)
            client.send(message)
        if not stanza_ids:
            return
        try:
            if self._stream_management:
                self._request_ack_soon()
                waiting = [self._pending_acks[i] for i in stanza_ids]
                # asyncio.timeout over the one future of the usual single subscriber: a
                # wait_for around a gather costs about 5 us more per report.
                async with asyncio.timeout(self._ack_timeout_s):
                    await (waiting[0] if len(waiting) == 1 else asyncio.gather(*waiting))
            else:
                await self._ping_barrier(client, lost)
        except TimeoutError:
            # A server that stops acknowledging is as good as gone: drop the link so the
            # supervisor reconnects (resuming the stream when the server still holds it).
            self.counters["ack_timeouts"] += 1
            log.warning("xmpp: no server ack within %.0f s; reconnecting", self._ack_timeout_s)
            self._mark_lost("no ack in time")
            client.abort()
            raise UpstreamUnavailable(
                f"xmpp: no server ack within {self._ack_timeout_s:.0f} s"
            ) from None
        finally:
            for stanza_id in stanza_ids:
                self._pending_acks.pop(stanza_id, None)
        self.counters["stanzas_acked"] += len(stanza_ids)

    async def _ping_barrier(self, client: ClientXMPP, lost: asyncio.Future[None]) -> None:
        """The server handles a stream in order: its ping answer covers the messages before."""
        ping = asyncio.ensure_future(
            client.plugin["xep_0199"].ping(client.boundjid.domain, timeout=self._ack_timeout_s)
        )
        try:
            await asyncio.wait({ping, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ping.done():
                ping.cancel()
        if lost.done() and not ping.done():
            raise UpstreamUnavailable("xmpp: disconnected before the server answered")
        try:
            ping.result()
        except IqTimeout:
            raise TimeoutError from None
        except IqError:
            pass
        except asyncio.CancelledError:
            raise UpstreamUnavailable("xmpp: disconnected before the server answered") from None

    def _request_ack_soon(self) -> None:
        """One ``<r/>`` per batch: while one is unanswered, later sends wait for its ``<a/>``."""
        self._unrequested_sends = True
        if self._ack_request_outstanding or self._ack_request_scheduled:
            return
        self._ack_request_scheduled = True
        asyncio.get_running_loop().call_soon(self._send_ack_request)

    def _send_ack_request(self) -> None:
        self._ack_request_scheduled = False
        if self._client is None or not self._ready or not self._unrequested_sends:
            return
        self._unrequested_sends = False
        self._ack_request_outstanding = True
        # Through the send queue, so it follows the messages it asks about.
        self._client.send(_ACK_REQUEST)

    def _on_ack(self, _ack: Any) -> None:
        self._ack_request_outstanding = False
        if self._unrequested_sends and self._ready:
            self._request_ack_soon()

    def _on_stanza_acked(self, stanza: Any) -> None:
        future = self._pending_acks.get(stanza["id"]) if isinstance(stanza, Message) else None
        if future is not None and not future.done():
            future.set_result(None)

    # ---------------------------------------------------------------------- commands

    def _on_command_iq(self, iq: Iq) -> None:
        received_mono = self.arrival.arrival()
        sender = iq["from"]
        if not self._is_allowed(sender):
            self.counters["commands_forbidden"] += 1
            log.warning("xmpp: command from %s refused: not on allowed_jids", sender.bare)
            self._send_iq_answer(iq["id"], sender.full, FORBIDDEN, None)
            return
        try:
            parsed = parse_command(iq.xml, now=time.time())
        except MalformedCommand as exc:
            self.counters["commands_malformed"] += 1
            log.warning("xmpp: malformed command from %s: %s", sender.full, exc)
            self._send_iq_answer(
                iq["id"], sender.full, IqAnswer("error", "bad-request", "modify", str(exc)), None
            )
            return
        self.counters["commands_received"] += 1
        command = IncomingCommand(
            origin="xmpp",
            device=parsed.device,
            body=parsed.body,
            received_mono=received_mono,
            expiry_s=parsed.expiry_s,
            reply_to={"iq_id": iq["id"], "from": sender.full},
            size_bytes=len(str(iq)),
        )
        self._tasks.spawn(self._hand_over_iq(command))

    async def _hand_over_iq(self, command: IncomingCommand) -> None:
        try:
            await self._hand_over(command)
        except Exception as exc:
            log.exception("xmpp: command handler failed for %s", command.reply_to)
            answer = IqAnswer("error", "internal-server-error", "wait", f"gateway error: {exc}")
            self._send_iq_answer(command.reply_to["iq_id"], command.reply_to["from"], answer, None)

    async def _hand_over(self, command: IncomingCommand) -> None:
        if self._on_command is None:
            raise UpstreamUnavailable("xmpp: not started")
        await self._on_command(command)

    def _send_iq_answer(
        self, iq_id: str, recipient: str, answer: IqAnswer, result: CommandResult | None
    ) -> None:
        assert self._client is not None
        iq = self._client.make_iq(id=iq_id, ito=recipient, itype=answer.iq_type)
        if result is not None:
            fill_result(iq["duogate_result"], result)
        if answer.iq_type == "error":
            error = iq["error"]
            error["condition"] = answer.condition
            error["type"] = answer.error_type
            if answer.text:
                error["text"] = xml_text(answer.text)
            if answer.app_condition:
                error.xml.append(ET.Element(f"{{{NS}}}{answer.app_condition}"))
        self._client.send(iq)

    def _send_result_message(self, recipient: str, result: CommandResult) -> None:
        if self._client is None:
            return
        message = self._client.make_message(mto=recipient, mtype="normal")
        fill_result(message["duogate_result"], result)
        detail = f" ({result.detail})" if result.detail else ""
        message["body"] = xml_text(
            f"command {result.id} on {result.device}: {result.status}{detail}"
        )
        self._client.send(message)
