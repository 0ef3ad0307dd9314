"""The live state of a running gateway: the one model the console, metrics and web page read.

The bridge writes it as frames, joins, commands and connection changes happen; readers only
look. Every update is O(1) and never waits, because it runs on the path of every frame. All
methods are meant to be called on the event loop thread.

Things the bridge already keeps elsewhere (outbox depth, duty-cycle use, leases) are not
copied here: the bridge sets a callable that the readers call when they need the numbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from drivers.radio.base import RadioSettings
from gateway.config import ConfigError, RadioSection
from gateway.model import CommandResult, CommandStatus

FRAME_LOG_SIZE = 500
SUBSCRIBER_QUEUE_SIZE = 256
# Problems the gateway reports (metrics show each as 0 or 1).
KNOWN_PROBLEMS = ("storage",)


@dataclass(slots=True)
class UpstreamState:
    name: str
    connected: bool = False
    last_error: str | None = None
    since: float = 0.0  # Unix time of the last change of ``connected``


@dataclass(slots=True)
class NodeInfo:
    """What the gateway has seen of one device. The bridge mutates it in place."""

    device: str
    kind: str  # "lora" | "modbus" | "ble"
    address: int | None = None  # LoRa short address from the lease
    last_seen: float | None = None  # Unix time
    rssi: float | None = None
    snr: float | None = None
    uplinks: int = 0
    downlinks: int = 0
    reports: int = 0
    duplicates: int = 0
    last_data: dict[str, Any] | None = None
    pending_commands: int = 0


@dataclass(frozen=True, slots=True)
class SignalSample:
    """The signal of one uplink as the gateway heard it."""

    device: str
    kind: str
    ts: float  # Unix time
    rssi: float | None
    snr: float | None


SignalListener = Callable[[SignalSample], None]


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    oldest_age_s: float | None  # None when the outbox is empty
    commits: int = 0  # database commits (each one disk sync), for every store
    rows_written: int = 0  # outbox rows written to disk
    never_written: int = 0  # outbox rows every upstream took before they were due on disk


@dataclass(frozen=True, slots=True)
class LeaseRow:
    address: int
    device: str
    last_seen: float | None  # Unix time of the last uplink under this lease


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class FrameLogEntry:
    ts: float  # Unix time
    direction: Direction
    node: str  # device id when known, else the short address as "0x0001", else "?"
    type: str  # frame type ("join", "data", "ack", "command", ...) or "rejected:<reason>"
    rssi: float | None
    snr: float | None
    size: int  # bytes on air
    body: dict[str, Any] | str | None = None  # decoded content, for people to read


@dataclass(slots=True)
class Counters:
    frames_received: int = 0
    frames_sent: int = 0
    frames_rejected: Counter[str] = field(default_factory=Counter)  # by reason
    joins: Counter[str] = field(default_factory=Counter)  # "accepted" / "refused"
    commands: Counter[str] = field(default_factory=Counter)  # by final status
    console_errors: int = 0  # bad console input lines


class FrameSubscription:
    """A reader's bounded queue of new frame log entries.

    When the reader falls behind, the oldest queued entry is dropped (and counted), so the
    writer never waits.
    """

    def __init__(self, log: FrameLog, maxsize: int) -> None:
        self._log = log
        self.queue: asyncio.Queue[FrameLogEntry] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, entry: FrameLogEntry) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
            self._log.dropped += 1
        self.queue.put_nowait(entry)

    async def get(self) -> FrameLogEntry:
        return await self.queue.get()

    def close(self) -> None:
        self._log.unsubscribe(self)

    def __enter__(self) -> FrameSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameLog:
    """The last ``size`` frames heard or sent, plus live subscribers."""

    def __init__(self, size: int = FRAME_LOG_SIZE) -> None:
        self._entries: deque[FrameLogEntry] = deque(maxlen=size)
        self._subscribers: list[FrameSubscription] = []
        self.dropped = 0  # entries dropped across all slow subscribers

    def append(self, entry: FrameLogEntry) -> None:
        self._entries.append(entry)
        for subscriber in self._subscribers:
            subscriber.offer(entry)

    def recent(self, count: int | None = None) -> list[FrameLogEntry]:
        entries = list(self._entries)
        return entries if count is None else entries[-count:] if count > 0 else []

    def subscribe(self, maxsize: int = SUBSCRIBER_QUEUE_SIZE) -> FrameSubscription:
        subscription = FrameSubscription(self, maxsize)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: FrameSubscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FrameLogEntry]:
        return iter(self._entries)


class GatewayState:
    """Everything a person or a scraper may want to know about the running gateway."""

    def __init__(
        self,
        *,
        frame_log_size: int = FRAME_LOG_SIZE,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self.started_at: float = clock()
        self._started_mono = monotonic()
        self.upstreams: dict[str, UpstreamState] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.counters = Counters()
        self.frames = FrameLog(frame_log_size)
        self.radio: RadioSettings | None = None
        # What the gateway cannot do right now (e.g. "storage": the disk is full) -> why.
        self.problems: dict[str, str] = {}
        # Set by the bridge; None until it does.
        self.outbox_stats: Callable[[], OutboxStats] | None = None
        self.duty_cycle: Callable[[], Mapping[str, float]] | None = None  # band -> used 0..1
        self.leases: Callable[[], Sequence[LeaseRow]] | None = None
        self.radio_counters: Callable[[], Mapping[str, int]] | None = None  # the radio driver's
        self._signal_listeners: list[SignalListener] = []

    def now(self) -> float:
        return self._clock()

    def uptime_s(self) -> float:
        return self._monotonic() - self._started_mono

    # --- writers (the bridge) ---

    def set_upstream(self, name: str, connected: bool, error: str | None = None) -> None:
        upstream = self.upstreams.get(name)
        if upstream is None:
            upstream = self.upstreams[name] = UpstreamState(name, since=self._clock())
        if upstream.connected != connected:
            upstream.connected = connected
            upstream.since = self._clock()
        if error is not None:
            upstream.last_error = error

    def node(self, device: str, kind: str) -> NodeInfo:
        """The node entry for ``device``, created on first sight."""
        info = self.nodes.get(device)
        if info is None:
            info = self.nodes[device] = NodeInfo(device, kind)
        return info

    def note_uplink(
        self,
        device: str,
        kind: str,
        *,
        rssi: float | None = None,
        snr: float | None = None,
        address: int | None = None,
        data: dict[str, Any] | None = None,
        duplicate: bool = False,
        ts: float | None = None,
    ) -> NodeInfo:
        """An accepted uplink from ``device``: a new report when ``data`` is given and it is
        not a duplicate."""
        info = self.node(device, kind)
        info.uplinks += 1
        seen = self._clock() if ts is None else ts
        info.last_seen = seen
        if rssi is not None:
            info.rssi = rssi
        if snr is not None:
            info.snr = snr
        if address is not None:
            info.address = address
        if duplicate:
            info.duplicates += 1
        elif data is not None:
            info.reports += 1
            info.last_data = data
        if (rssi is not None or snr is not None) and self._signal_listeners:
            sample = SignalSample(device, kind, seen, rssi, snr)
            for listener in list(self._signal_listeners):
                listener(sample)
        return info

    def watch_signal(self, listener: SignalListener) -> Callable[[], None]:
        """Call ``listener`` with every uplink that carries an RSSI or SNR, of any device kind;
        returns the function that stops it. Listeners run on the uplink's path: no waiting."""
        self._signal_listeners.append(listener)

        def stop() -> None:
            if listener in self._signal_listeners:
                self._signal_listeners.remove(listener)

        return stop

    def note_downlink(self, device: str, kind: str = "lora") -> None:
        self.node(device, kind).downlinks += 1

    def count_received(self) -> None:
        self.counters.frames_received += 1

    def count_sent(self) -> None:
        self.counters.frames_sent += 1

    def count_rejected(self, reason: str) -> None:
        self.counters.frames_rejected[reason] += 1

    def count_join(self, accepted: bool) -> None:
        self.counters.joins["accepted" if accepted else "refused"] += 1

    def set_problem(self, name: str, detail: str | None) -> bool:
        """Record (``detail``) or clear (None) a problem; True when it started or ended."""
        if detail is None:
            return self.problems.pop(name, None) is not None
        started = name not in self.problems
        self.problems[name] = detail
        return started

    @property
    def degraded(self) -> bool:
        return bool(self.problems)

    def count_command(self, status: CommandStatus | str) -> None:
        """Call once per command, with its final status."""
        self.counters.commands[str(status)] += 1

    def log_frame(self, entry: FrameLogEntry) -> None:
        self.frames.append(entry)

    # --- readers ---

    def outbox(self) -> OutboxStats:
        return self.outbox_stats() if self.outbox_stats is not None else OutboxStats(0, None)

    def duty_cycle_used(self) -> dict[str, float]:
        return dict(self.duty_cycle()) if self.duty_cycle is not None else {}

    def lease_rows(self) -> list[LeaseRow]:
        return list(self.leases()) if self.leases is not None else []

    def crc_errors(self) -> int:
        """Frames the radio received with a payload CRC error and dropped."""
        counters = self.radio_counters() if self.radio_counters is not None else {}
        return int(counters.get("crc_errors", 0))


class Controls(Protocol):
    """Actions people can take on a running gateway (console, web page); the bridge implements
    them."""

    async def send_command(
        self, device: str, action: str, params: dict[str, Any], ttl_s: float | None
    ) -> CommandResult:
        """Queue a command (origin ``console``/``web``) and return its final result.

        ``ttl_s`` None means the configured default. An invalid command is a ``rejected``
        result, not an exception.
        """

    async def reconfigure_radio(self, changes: dict[str, Any]) -> RadioSettings:
        """Apply changes to the radio settings and return the new settings.

        Unknown key or bad value: ValueError with a one-line message; nothing is applied.
        """

    def set_log_level(self, level: str) -> None:
        """``debug`` / ``info`` / ``warning`` / ``error``; ValueError otherwise."""


RADIO_SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RadioSettings))


def radio_settings_with(current: RadioSettings, changes: Mapping[str, Any]) -> RadioSettings:
    """``current`` with ``changes`` applied, checked against the same bounds as the config file.

    Raises ValueError with one line naming each bad key on an unknown key or a bad value.
    """
    unknown = [key for key in changes if key not in RADIO_SETTING_NAMES]
    if unknown:
        names = ", ".join(RADIO_SETTING_NAMES)
        raise ValueError(f"unknown radio setting {unknown[0]!r} (known: {names})")
    merged = {**dataclasses.asdict(current), **changes}
    implicit_header = merged.pop("implicit_header")
    if not isinstance(implicit_header, bool):
        raise ValueError(f"implicit_header: must be true or false, got {implicit_header!r}")
    try:
        section = RadioSection.from_table(merged, strict=True)
    except ConfigError as exc:
        raise ValueError("; ".join(exc.problems)) from None
    checked = {
        name: getattr(section, name) for name in RADIO_SETTING_NAMES if name != "implicit_header"
    }
    return RadioSettings(**checked, implicit_header=implicit_header)
