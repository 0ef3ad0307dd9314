"""An upstream in memory: the Upstream interface and the MQTT extras, with no server.

The twin of ``mqtt.MqttUpstream`` (and of any upstream) for bridge and LoRa tests. It keeps
what was published, in order, and takes commands from the test as a broker would hand them
over. Test hooks make it misbehave the ways a server does:

* ``disconnect()`` / ``reconnect()``: the connection drops (publishes fail as unavailable,
  waiting ones too) and comes back (ready listeners run, as after an MQTT reconnect);
* ``refuse(n)``: the next ``n`` publishes are refused (as a broker refuses a publish it is
  not authorised for); ``refuse_results(n)``: only results; ``cannot_carry(n)``: the next
  ``n`` publishes are items the server can never take (retrying will not help);
* ``stall()`` / ``release()``: publishes wait for an ack that does not come, until released.

A publish returns only once it counts as acknowledged, so the bridge's outbox marks and
result bookkeeping behave as with a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.model import CommandResult, DeviceEvent, IncomingCommand, Report
from gateway.upstreams.base import (
    CommandHandler,
    MessageCallback,
    MqttExtras,
    ReadyCallback,
    UpstreamError,
    UpstreamUnavailable,
)


class Refused(UpstreamUnavailable):
    """The twin refused a publish (``refuse``/``refuse_results``)."""


class CannotCarry(UpstreamError, ValueError):
    """The twin can never take this item (``cannot_carry``): retrying will not help."""


@dataclass(frozen=True, slots=True)
class Published:
    """A message the extras published (``publish_raw``)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def text(self) -> str:
        return self.payload.decode()


@dataclass(frozen=True, slots=True)
class SentResult:
    result: CommandResult
    reply_to: dict[str, Any] = field(default_factory=dict)


class MemoryUpstream:
    """``name`` is the origin commands from it carry (``mqtt`` by default)."""

    def __init__(
        self,
        name: str = "mqtt",
        *,
        window: int = 32,
        droppable_kinds: frozenset[str] = frozenset(),
        with_extras: bool = True,
    ) -> None:
        self.name = name
        self.window = window
        self.droppable_kinds = droppable_kinds
        self._with_extras = with_extras
        self.reports: list[Report] = []
        self.events: list[DeviceEvent] = []
        self.results: list[SentResult] = []
        self.raw: list[Published] = []
        self.subscriptions: list[tuple[str, int, bool]] = []  # filter, qos, carries commands
        self.publish_attempts = 0
        self.not_carried: list[Report | DeviceEvent | CommandResult | Published] = []
        self._on_command: CommandHandler | None = None
        self._extras: list[tuple[str, MessageCallback, bool]] = []
        self._ready_listeners: list[ReadyCallback] = []
        self._connected = False
        self._started = False
        self._refusals = 0
        self._result_refusals = 0
        self._uncarried = 0
        self._released = asyncio.Event()
        self._released.set()
        self._lost = asyncio.Event()
        self.changed = asyncio.Event()  # set whenever something is published

    # -- Upstream ---------------------------------------------------------------------------

    @property
    def extras(self) -> MqttExtras | None:
        return self if self._with_extras else None

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self, on_command: CommandHandler) -> None:
        self._on_command = on_command
        self._started = True
        await self.reconnect()

    async def stop(self) -> None:
        self._started = False
        self._drop()

    async def publish_report(self, report: Report) -> None:
        await self._acknowledged(report)
        self.reports.append(report)
        self._note_change()

    async def publish_event(self, event: DeviceEvent) -> None:
        await self._acknowledged(event)
        self.events.append(event)
        self._note_change()

    async def publish_result(self, result: CommandResult, reply_to: dict[str, Any]) -> None:
        await self._acknowledged(result)
        self.results.append(SentResult(result, dict(reply_to)))
        self._note_change()

    # -- MqttExtras -------------------------------------------------------------------------

    async def publish_raw(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        if "+" in topic or "#" in topic:
            raise ValueError(f"cannot publish to a topic with wildcards: {topic!r}")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        message = Published(topic, data, qos, retain)
        await self._acknowledged(message)
        self.raw.append(message)
        self._note_change()

    def subscribe_extra(
        self, topic_filter: str, callback: MessageCallback, qos: int = 0, *, commands: bool = False
    ) -> None:
        self._extras.append((topic_filter, callback, commands))
        self.subscriptions.append((topic_filter, qos, commands))

    def add_ready_listener(self, callback: ReadyCallback) -> None:
        self._ready_listeners.append(callback)

    # -- test hooks: messages in ------------------------------------------------------------

    async def send_command(
        self,
        device: str,
        body: dict[str, Any] | str | bytes,
        *,
        reply_to: dict[str, Any] | None = None,
        expiry_s: float | None = None,
        received_mono: float | None = None,
        size_bytes: int | None = None,
    ) -> None:
        """Hand a command to the bridge, as the upstream's consumer would; returns when the
        bridge took it (validated, stored, answered if rejected)."""
        if self._on_command is None:
            raise RuntimeError("the upstream is not started")
        await self._on_command(
            IncomingCommand(
                origin=self.name,
                device=device,
                body=body,
                received_mono=time.monotonic() if received_mono is None else received_mono,
                expiry_s=expiry_s,
                reply_to=dict(reply_to or {}),
                size_bytes=size_bytes,
            )
        )

    async def deliver(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        arrival: float | None = None,
    ) -> int:
        """A message on an extra subscription; returns how many callbacks took it.

        Retained messages on subscriptions that carry commands are dropped, as MQTT does."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        stamp = time.monotonic() if arrival is None else arrival
        taken = 0
        for topic_filter, callback, commands in list(self._extras):
            if not topic_matches(topic_filter, topic) or (commands and retain):
                continue
            outcome = callback(topic, data, stamp)
            if inspect.isawaitable(outcome):
                await outcome
            taken += 1
        return taken

    # -- test hooks: misbehaviour -----------------------------------------------------------

    def disconnect(self) -> None:
        """The connection drops: publishes fail, those waiting for an ack too."""
        self._drop()

    async def reconnect(self) -> None:
        """Connected again; the ready listeners run (awaited) as after an MQTT reconnect."""
        self._lost = asyncio.Event()
        self._connected = True
        for listener in list(self._ready_listeners):
            outcome = listener()
            if inspect.isawaitable(outcome):
                await outcome

    def refuse(self, count: int = 1) -> None:
        """The next ``count`` publishes of any kind are refused."""
        self._refusals += count

    def refuse_results(self, count: int = 1) -> None:
        """The next ``count`` result publishes are refused (reports still go through)."""
        self._result_refusals += count

    def cannot_carry(self, count: int = 1) -> None:
        """The next ``count`` publishes fail for good (``CannotCarry``)."""
        self._uncarried += count

    def stall(self) -> None:
        """Publishes wait for an ack that does not come (until ``release`` or a drop)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    # -- test hooks: what came out ----------------------------------------------------------

    def results_for(self, command_id: str) -> list[CommandResult]:
        return [sent.result for sent in self.results if sent.result.id == command_id]

    def statuses(self, command_id: str) -> list[str]:
        return [str(result.status) for result in self.results_for(command_id)]

    def on_topic(self, topic: str) -> list[Published]:
        return [message for message in self.raw if message.topic == topic]

    async def wait_for(
        self, condition: Callable[[], bool], what: str, timeout: float = 30.0
    ) -> None:
        """Until ``condition()`` holds, checked after every publish (AssertionError after
        ``timeout`` seconds: for a test that would otherwise hang)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.05))

    # -- inside -----------------------------------------------------------------------------

    async def _acknowledged(self, item: Report | DeviceEvent | CommandResult | Published) -> None:
        self.publish_attempts += 1
        if not self._connected:
            raise UpstreamUnavailable(f"{self.name}: not connected")
        if self._refusals > 0:
            self._refusals -= 1
            raise Refused(f"{self.name}: publish refused")
        if self._uncarried > 0:
            self._uncarried -= 1
            self.not_carried.append(item)
            raise CannotCarry(f"{self.name}: cannot carry this item")
        if isinstance(item, CommandResult) and self._result_refusals > 0:
            self._result_refusals -= 1
            raise Refused(f"{self.name}: result refused")
        if not self._released.is_set():
            lost = self._lost
            waiting = [
                asyncio.ensure_future(self._released.wait()),
                asyncio.ensure_future(lost.wait()),
            ]
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waiting:
                    task.cancel()
            if lost.is_set():
                raise UpstreamUnavailable(f"{self.name}: connection lost before the ack")

    def _drop(self) -> None:
        self._connected = False
        self._lost.set()

    def _note_change(self) -> None:
        self.changed.set()


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    filter_levels = topic_filter.split("/")
    levels = topic.split("/")
    for index, wanted in enumerate(filter_levels):
        if wanted == "#":
            return True
        if index >= len(levels):
            return False
        if wanted not in ("+", levels[index]):
            return False
    return len(levels) == len(filter_levels)
