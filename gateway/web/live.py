"""The live feed behind ``/events``: one producer, many Server-Sent Events readers.

Once a second the hub builds one snapshot of the state and sends each reader what changed
since the previous one: the status always, node rows only when they changed, and the nodes'
"last seen" texts (which age by themselves) apart from the rows, so a node that was not heard
costs a few bytes at most. Frame log entries go out as they happen, without the decoded body
(their console line already shows it), and so does every signal sample added to the history,
whatever the device kind. Everything is serialized once, whatever the number of readers.

A reader that falls behind by ``max_queued`` messages is disconnected rather than slowed
down or fed a gap: the browser reconnects and starts again from a full snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.state import (
    Direction,
    FrameLogEntry,
    FrameSubscription,
    GatewayState,
    SignalSample,
)
from gateway.web.history import SignalHistory, finite
from gateway.web.views import StateReader, frame_view, node_view, status_view

log = logging.getLogger(__name__)

SNAPSHOT_INTERVAL_S = 1.0
FRAME_BACKLOG = 50
MAX_CLIENTS = 8
MAX_QUEUED = 512
RECONNECT_MS = 2000
# Kinds whose uplinks are radio frames in the frame log: their signal is taken from there (join
# frames included, which are not uplinks of a report). Other kinds (BLE) from their uplinks.
FRAME_LOGGED_KINDS = frozenset({"lora"})


def sse_message(event: str, data: str) -> bytes:
    """One SSE message; ``data`` is compact JSON, which never holds a raw newline."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class SseClient:
    """One connected reader: a bounded queue of encoded messages."""

    def __init__(self, max_queued: int) -> None:
        self._messages: deque[bytes] = deque()
        self._max_queued = max_queued
        self._wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def offer(self, message: bytes) -> None:
        if self.closed or self.overflowed:
            return
        if len(self._messages) >= self._max_queued:
            self.overflowed = True
            self._messages.clear()
        else:
            self._messages.append(message)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def next_batch(self) -> bytes | None:
        """Everything queued, as one write; None once the reader must be disconnected."""
        while not self._messages and not self.closed and not self.overflowed:
            await self._wakeup.wait()
            self._wakeup.clear()
        if self.closed or self.overflowed:
            return None
        batch = b"".join(self._messages)
        self._messages.clear()
        return batch


def resolve_device(state: GatewayState, node: str) -> str | None:
    """The device id a frame log entry's ``node`` names (a device id or ``0x0001``)."""
    if node in state.nodes:
        return node
    if node.startswith("0x"):
        try:
            address = int(node, 16)
        except ValueError:
            return None
        for info in state.nodes.values():
            if info.address == address:
                return info.device
    return None


class EventHub:
    def __init__(
        self,
        state: GatewayState,
        history: SignalHistory,
        *,
        interval_s: float = SNAPSHOT_INTERVAL_S,
        backlog: int = FRAME_BACKLOG,
        max_clients: int = MAX_CLIENTS,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._state = state
        self._history = history
        self._reader = StateReader()
        self._interval_s = interval_s
        self._backlog = backlog
        self.max_clients = max_clients
        self._max_queued = max_queued
        self._clients: set[SseClient] = set()
        self._status_json = "null"
        self._rows: dict[str, str] = {}  # device -> serialized row, as last sent
        self._ages: dict[str, str] = {}  # device -> "last seen" text, as last sent
        self._subscription: FrameSubscription | None = None
        self._stop_watching_signal: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.disconnected_slow = 0

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def start(self) -> None:
        for entry in self._state.frames.recent():
            self._record_signal(entry, resolve_device(self._state, entry.node))
        for info in list(self._state.nodes.values()):
            # Before the page started only each device's last signal is known.
            if info.kind not in FRAME_LOGGED_KINDS and info.last_seen is not None:
                self._history.add(info.device, info.last_seen, info.rssi, info.snr)
        self._stop_watching_signal = self._state.watch_signal(self._on_signal)
        self._subscription = self._state.frames.subscribe()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow_frames(self._subscription), name="web-frames"),
            loop.create_task(self._tick(), name="web-snapshots"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._stop_watching_signal is not None:
            self._stop_watching_signal()
            self._stop_watching_signal = None
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        for client in self._clients:
            client.close()
        self._clients.clear()

    def join(self) -> SseClient | None:
        """A new reader with its opening messages queued; None when there are too many."""
        if len(self._clients) >= self.max_clients:
            return None
        if not self._clients:
            self._take_snapshot()  # nobody has been following: start from now
        client = SseClient(self._max_queued)
        hello = {
            "retry_ms": RECONNECT_MS,
            "interval_s": self._interval_s,
            "history_window_s": self._history.window_s,
            "history_bucket_s": self._history.bucket_s,
        }
        client.offer(f"retry: {RECONNECT_MS}\n".encode() + sse_message("hello", _dumps(hello)))
        client.offer(
            sse_message(
                "snapshot", self._snapshot_message(full=True, rows=self._rows, ages=self._ages)
            )
        )
        frames = [self._live_frame(entry) for entry in self._state.frames.recent(self._backlog)]
        client.offer(sse_message("frames", _dumps(frames)))
        self._clients.add(client)
        return client

    def leave(self, client: SseClient) -> None:
        self._clients.discard(client)

    def broadcast(self, event: str, data: Any) -> None:
        if self._clients:
            self._send(sse_message(event, _dumps(data)))

    def _send(self, message: bytes) -> None:
        for client in list(self._clients):
            client.offer(message)
            if client.overflowed:
                self.disconnected_slow += 1
                self._clients.discard(client)
                log.info("web: live reader too slow, disconnected")

    def _take_snapshot(self) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """Rebuild the snapshot; return the rows and ages that changed and the devices gone."""
        state = self._state
        self._status_json = _dumps(status_view(state, self._reader))
        now = state.now()
        rows, ages = {}, {}
        for device, info in state.nodes.items():
            row = node_view(info, now)
            ages[device] = row.pop("last_seen_text")
            rows[device] = _dumps(row)
        changed = {device: row for device, row in rows.items() if self._rows.get(device) != row}
        aged = {device: age for device, age in ages.items() if self._ages.get(device) != age}
        gone = [device for device in self._rows if device not in rows]
        self._rows, self._ages = rows, ages
        return changed, aged, gone

    def _snapshot_message(
        self,
        *,
        full: bool,
        rows: dict[str, str],
        ages: dict[str, str],
        gone: list[str] | None = None,
    ) -> str:
        nodes = ",".join(f"{_dumps(device)}:{row}" for device, row in rows.items())
        return (
            f'{{"full":{"true" if full else "false"},"status":{self._status_json},'
            f'"nodes":{{{nodes}}},"ages":{_dumps(ages)},"gone":{_dumps(gone or [])}}}'
        )

    def _live_frame(self, entry: FrameLogEntry) -> dict[str, Any]:
        view = frame_view(entry, resolve_device(self._state, entry.node))
        del view["body"]
        return view

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._clients:
                continue
            try:
                changed, aged, gone = self._take_snapshot()
            except Exception:
                log.exception("web: cannot build the status snapshot")
                continue
            message = self._snapshot_message(full=False, rows=changed, ages=aged, gone=gone)
            self._send(sse_message("snapshot", message))

    async def _follow_frames(self, subscription: FrameSubscription) -> None:
        while True:
            entry = await subscription.get()
            try:
                self._record_signal(entry, resolve_device(self._state, entry.node))
                if self._clients:
                    self._send(sse_message("frame", _dumps(self._live_frame(entry))))
            except Exception:
                log.exception("web: cannot pass on a frame log entry")

    def _record_signal(self, entry: FrameLogEntry, device: str | None) -> None:
        if device is not None and entry.direction == Direction.UP:
            self._add_sample(device, entry.ts, entry.rssi, entry.snr)

    def _on_signal(self, sample: SignalSample) -> None:
        if sample.kind in FRAME_LOGGED_KINDS:
            return
        try:
            self._add_sample(sample.device, sample.ts, sample.rssi, sample.snr)
        except Exception:  # the uplink's path must not fail because of the page
            log.exception("web: cannot record a signal sample")

    def _add_sample(self, device: str, ts: float, rssi: float | None, snr: float | None) -> None:
        """Into the history, and to the readers as a ``signal`` event when it was kept."""
        if self._history.add(device, ts, rssi, snr):
            self.broadcast(
                "signal", {"device": device, "ts": ts, "rssi": finite(rssi), "snr": finite(snr)}
            )
