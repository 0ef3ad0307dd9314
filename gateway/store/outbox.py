"""Durable outbox: every report and event waits in SQLite until each upstream acknowledged it.

Writes are group-committed: ``add`` queues a row in memory and a background task commits all
queued rows (and delivery marks) in one transaction every ``commit_interval_s``, or at once
when ``commit_rows`` rows wait, so one disk sync covers many reports. ``add_durable`` returns
only after the commit that holds its row, so the bridge can ack on air afterwards.

Each entry carries a bitmask of the enabled upstreams that still have to deliver it; it is
deleted when the mask reaches zero. Upstreams read their pending entries in id order (which
keeps every device's order) one page at a time, so a large backlog stays on disk, not in
Python objects. A restart replays whatever was not delivered.

When the outbox holds more than ``max_entries`` it drops, oldest first: entries of the
QoS-0 class (kinds published at QoS 0, ``droppable_kinds``), then reports, then (only if the
outbox is nothing but events) events. Every drop is counted in ``dropped`` and logged with
the count.

All database work runs on one worker thread that owns the connection; the event loop never
waits for a disk sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.model import DeviceEvent, EventKind, Report
from gateway.store.db import DatabaseWorker, StoreError

log = logging.getLogger(__name__)

UPSTREAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_UPSTREAMS = 62  # bits of a positive SQLite integer
DEFAULT_COMMIT_ROWS = 500
DEFAULT_MAX_QUEUED_ROWS = 10_000
RETRY_AFTER_FAILED_COMMIT_S = 1.0

Kind = Literal["report", "event"]
DropClass = Literal["qos0", "report", "event", "corrupt"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    droppable INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_droppable ON outbox(id) WHERE droppable = 1;
CREATE TABLE IF NOT EXISTS outbox_upstreams (
    name TEXT PRIMARY KEY,
    bit INTEGER NOT NULL UNIQUE
);
"""


class OutboxError(Exception):
    """Root of outbox errors."""


class UnstorableItem(OutboxError, ValueError):
    """A report or event that cannot be stored (data that is not plain JSON)."""


class OutboxBusy(OutboxError):
    """Too many rows wait for a commit (the disk is not keeping up or is failing)."""


class CommitFailed(OutboxError):
    """The commit holding an ``add_durable`` row failed; the row was not stored."""


class OutboxClosed(OutboxError):
    pass


class StorageFailed(OutboxError):
    """The database refused an operation (disk full, locked for too long, I/O error)."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    entry_id: int
    item: Report | DeviceEvent


@dataclass(slots=True)
class _Batch:
    rows: list[tuple[str, int, int, str]] = field(default_factory=list)
    durable: list[tuple[int, asyncio.Future[int]]] = field(default_factory=list)  # row index
    marks: dict[int, set[int]] = field(default_factory=dict)  # bit -> entry ids
    discard: set[int] = field(default_factory=set)

    def empty(self) -> bool:
        return not (self.rows or self.marks or self.discard)


@dataclass(frozen=True, slots=True)
class _CommitOutcome:
    first_id: int
    last_id: int
    removed: int
    dropped: dict[str, int]
    count: int


class Outbox:
    """Use ``await Outbox.open(...)``; ``close()`` when done."""

    def __init__(self) -> None:
        raise TypeError("use `await Outbox.open(data_dir, upstreams)`")

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        upstreams: Sequence[str],
        *,
        max_entries: int = 200_000,
        commit_interval_s: float = 0.0,
        commit_rows: int = DEFAULT_COMMIT_ROWS,
        droppable_kinds: Collection[str] = (),
        max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS,
    ) -> Outbox:
        """Open the outbox in ``data_dir`` for the enabled ``upstreams`` (e.g. ["mqtt"]).

        ``droppable_kinds`` names the kinds ("report", "event") published at QoS 0; they are
        dropped first when the outbox is full. Entries still waiting only for upstreams that
        are no longer enabled are removed (and logged).
        """
        if not upstreams:
            raise ValueError("the outbox needs at least one upstream")
        if len(upstreams) > MAX_UPSTREAMS or len(set(upstreams)) != len(upstreams):
            raise ValueError(f"upstream names must be distinct, at most {MAX_UPSTREAMS}")
        for name in upstreams:
            if not UPSTREAM_NAME.match(name):
                raise ValueError(f"bad upstream name {name!r}")
        unknown_kinds = set(droppable_kinds) - {"report", "event"}
        if unknown_kinds:
            raise ValueError(f"unknown kinds {sorted(unknown_kinds)}")
        self = object.__new__(cls)
        self._setup(
            max_entries=max_entries,
            commit_interval_s=commit_interval_s,
            commit_rows=max(1, commit_rows),
            droppable_kinds=frozenset(droppable_kinds),
            max_queued_rows=max_queued_rows,
        )
        names = list(upstreams)
        self._db, (bits, count, last_id) = await DatabaseWorker.open(
            data_dir,
            thread_name="outbox",
            error=StorageFailed,
            error_prefix="outbox database",
            setup=lambda conn: _init_schema(conn, names),
        )
        self._conn = self._db.conn
        self._bits = bits
        self._all_bits = sum(bits.values())
        self._count = count
        self._last_id = last_id
        self._flusher = asyncio.create_task(self._flush_loop(), name="outbox-flush")
        if count:
            log.info("outbox: %d entries waiting from before the restart", count)
        return self

    def _setup(
        self,
        *,
        max_entries: int,
        commit_interval_s: float,
        commit_rows: int,
        droppable_kinds: frozenset[str],
        max_queued_rows: int,
    ) -> None:
        self.max_entries = max_entries
        self.commit_interval_s = commit_interval_s
        self.commit_rows = commit_rows
        self.droppable_kinds = droppable_kinds
        self.max_queued_rows = max_queued_rows
        self.dropped: dict[str, int] = {"qos0": 0, "report": 0, "event": 0, "corrupt": 0}
        self.commits = 0
        self._db: DatabaseWorker
        self._conn: sqlite3.Connection
        self._batch = _Batch()
        self._work = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._committed = asyncio.Condition()
        self._closed = False
        self._bits: dict[str, int] = {}
        self._all_bits = 0
        self._count = 0
        self._last_id = 0
        self._flusher: asyncio.Task[None]
        self._commit_in_flight: asyncio.Future[None] | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def upstreams(self) -> list[str]:
        return list(self._bits)

    @property
    def size(self) -> int:
        """Entries stored (committed), for metrics."""
        return self._count

    @property
    def last_id(self) -> int:
        """Id of the newest committed entry (0 if none ever)."""
        return self._last_id

    def add(self, item: Report | DeviceEvent) -> None:
        """Queue ``item`` for the next group commit (not yet durable when this returns)."""
        self._queue(item)

    async def add_durable(self, item: Report | DeviceEvent) -> int:
        """Store ``item`` and return its entry id once the commit holding it is on disk.

        Raises UnstorableItem, OutboxBusy, or CommitFailed (the row was not stored).
        """
        index = self._queue(item)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._batch.durable.append((index, future))
        return await future

    def mark_delivered(self, upstream: str, entry_ids: Iterable[int]) -> None:
        """Record that ``upstream`` delivered these entries; applied at the next commit."""
        self._check_open()
        bit = self._bit(upstream)
        ids = self._batch.marks.setdefault(bit, set())
        ids.update(entry_ids)
        self._work.set()

    async def flush(self) -> None:
        """Commit everything queued so far (rows and delivery marks); CommitFailed if not."""
        self._check_open()
        target = self._batch
        if target.empty():
            if self._commit_in_flight is not None:
                await asyncio.shield(self._commit_in_flight)
            return
        marker: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        target.durable.append((-1, marker))
        self._batch_full.set()
        self._work.set()
        await marker

    async def pending(
        self, upstream: str, after_id: int = 0, limit: int = 256
    ) -> list[OutboxEntry]:
        """Up to ``limit`` entries ``upstream`` has not delivered, with id > ``after_id``.

        Empty only when there is nothing more to deliver (delivered-but-not-yet-committed
        entries are skipped without shortening the answer to nothing).
        """
        entries: list[OutboxEntry] = []
        async with contextlib.aclosing(self.iter_pending(upstream, after_id, limit)) as stream:
            async for entry in stream:
                entries.append(entry)
                if len(entries) >= limit:
                    break
        return entries

    async def iter_pending(
        self, upstream: str, after_id: int = 0, page_size: int = 256
    ) -> AsyncIterator[OutboxEntry]:
        """Stream every pending entry for ``upstream`` in order, one page at a time."""
        self._check_open()
        bit = self._bit(upstream)
        while True:
            page = await self._run(self._select_pending, bit, after_id, page_size)
            if not page:
                return
            after_id = page[-1][0]
            queued_marks = self._batch.marks.get(bit, ())
            for entry_id, kind, body in page:
                if entry_id in queued_marks:
                    continue
                item = self._decode(entry_id, kind, body)
                if item is not None:
                    yield OutboxEntry(entry_id, item)
            if len(page) < page_size:
                return

    async def wait_for_entries_after(self, entry_id: int) -> None:
        """Return once an entry with an id above ``entry_id`` is committed."""
        async with self._committed:
            await self._committed.wait_for(lambda: self._last_id > entry_id or self._closed)
        self._check_open()

    async def pending_count(self, upstream: str) -> int:
        bit = self._bit(upstream)
        return await self._run(
            lambda: self._conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE (pending & ?) != 0", (bit,)
            ).fetchone()[0]
        )

    async def close(self) -> None:
        """Commit what is queued, then stop the worker and close the database."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            async with self._committed:
                self._committed.notify_all()
            for _, future in self._batch.durable:
                if not future.done():
                    future.set_exception(OutboxClosed("outbox closed before the commit"))
            await self._db.close()

    # -- queueing ---------------------------------------------------------------------------

    def _queue(self, item: Report | DeviceEvent) -> int:
        self._check_open()
        if len(self._batch.rows) >= self.max_queued_rows:
            raise OutboxBusy(f"{len(self._batch.rows)} rows already wait for a commit")
        kind, body = _encode(item)
        droppable = 1 if kind in self.droppable_kinds else 0
        self._batch.rows.append((kind, droppable, self._all_bits, body))
        if len(self._batch.rows) >= self.commit_rows:
            self._batch_full.set()
        self._work.set()
        return len(self._batch.rows) - 1

    def _bit(self, upstream: str) -> int:
        try:
            return self._bits[upstream]
        except KeyError:
            raise ValueError(f"upstream {upstream!r} is not enabled in the outbox") from None

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxClosed("outbox is closed")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await self._db.run(fn, *args)

    # -- group commit -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._work.wait()
            if self.commit_interval_s > 0 and not self._batch_full.is_set():
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow close()'s cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.commit_interval_s):
                        await self._batch_full.wait()
            self._work.clear()
            self._batch_full.clear()
            batch, self._batch = self._batch, _Batch()
            if batch.empty():
                _resolve(batch.durable, 0)
                continue
            in_flight = asyncio.get_running_loop().create_future()
            self._commit_in_flight = in_flight
            try:
                outcome = await self._run(self._commit, batch)
            except StorageFailed as exc:
                self._requeue_after_failure(batch, exc)
                await asyncio.sleep(RETRY_AFTER_FAILED_COMMIT_S)
                continue
            else:
                self._apply(batch, outcome)
            finally:
                in_flight.set_result(None)
                self._commit_in_flight = None

    def _apply(self, batch: _Batch, outcome: _CommitOutcome) -> None:
        self.commits += 1
        self._count = outcome.count
        if outcome.last_id > self._last_id:
            self._last_id = outcome.last_id
        for index, future in batch.durable:
            if not future.done():
                future.set_result(outcome.first_id + index if index >= 0 else 0)
        for drop_class, number in outcome.dropped.items():
            if number:
                self.dropped[drop_class] += number
                log.warning(
                    "outbox full (max %d): dropped %d oldest %s entries (%d so far)",
                    self.max_entries,
                    number,
                    drop_class,
                    self.dropped[drop_class],
                )
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._committed:
            self._committed.notify_all()

    def _requeue_after_failure(self, batch: _Batch, exc: Exception) -> None:
        """Durable rows fail (their sender retries); the rest goes back for the next commit."""
        durable_rows = {index for index, _ in batch.durable if index >= 0}
        log.error(
            "outbox commit failed (%s): %d rows refused, %d kept for retry",
            exc,
            len(durable_rows),
            len(batch.rows) - len(durable_rows),
        )
        for _, future in batch.durable:
            if not future.done():
                future.set_exception(CommitFailed(f"outbox commit failed: {exc}"))
        kept = [row for index, row in enumerate(batch.rows) if index not in durable_rows]
        newer = self._batch
        newer.rows[:0] = kept
        newer.durable = [(index + len(kept), f) for index, f in newer.durable if index >= 0] + [
            (index, f) for index, f in newer.durable if index < 0
        ]
        for bit, ids in batch.marks.items():
            newer.marks.setdefault(bit, set()).update(ids)
        newer.discard |= batch.discard
        self._work.set()

    # -- worker thread ----------------------------------------------------------------------

    def _commit(self, batch: _Batch) -> _CommitOutcome:
        conn = self._conn
        dropped: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            first_id = self._next_id()
            if batch.rows:
                conn.executemany(
                    "INSERT INTO outbox (kind, droppable, pending, body) VALUES (?, ?, ?, ?)",
                    batch.rows,
                )
            last_id = first_id + len(batch.rows) - 1
            removed = 0
            for bit, ids in batch.marks.items():
                conn.executemany(
                    "UPDATE outbox SET pending = pending & ? WHERE id = ?",
                    ((~bit, entry_id) for entry_id in ids),
                )
                cur = conn.executemany(
                    "DELETE FROM outbox WHERE id = ? AND pending = 0", ((i,) for i in ids)
                )
                removed += max(cur.rowcount, 0)
            if batch.discard:
                cur = conn.executemany(
                    "DELETE FROM outbox WHERE id = ?", ((i,) for i in batch.discard)
                )
                removed += max(cur.rowcount, 0)
            count = self._count + len(batch.rows) - removed
            if count > self.max_entries:
                dropped = self._drop_oldest(count - self.max_entries)
                count -= sum(dropped.values())
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return _CommitOutcome(first_id, last_id, removed, dropped, count)

    def _next_id(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return (row[0] if row else 0) + 1

    def _drop_oldest(self, excess: int) -> dict[str, int]:
        dropped: dict[str, int] = {}
        for drop_class, condition in (
            ("qos0", "droppable = 1"),
            ("report", "kind = 'report'"),
            ("event", "1"),
        ):
            if excess <= 0:
                break
            cur = self._conn.execute(
                f"DELETE FROM outbox WHERE id IN "
                f"(SELECT id FROM outbox WHERE {condition} ORDER BY id LIMIT ?)",
                (excess,),
            )
            dropped[drop_class] = cur.rowcount
            excess -= cur.rowcount
        return dropped

    def _select_pending(self, bit: int, after_id: int, limit: int) -> list[tuple[int, str, str]]:
        return self._conn.execute(
            "SELECT id, kind, body FROM outbox WHERE id > ? AND (pending & ?) != 0 "
            "ORDER BY id LIMIT ?",
            (after_id, bit, limit),
        ).fetchall()

    # -- rows <-> records -------------------------------------------------------------------

    def _decode(self, entry_id: int, kind: str, body: str) -> Report | DeviceEvent | None:
        try:
            return _decode(kind, body)
        except (ValueError, TypeError, KeyError) as exc:
            self.dropped["corrupt"] += 1
            log.error("outbox: entry %d is unreadable (%s); removing it", entry_id, exc)
            self._batch.discard.add(entry_id)
            self._work.set()
            return None


def _init_schema(conn: sqlite3.Connection, upstreams: list[str]) -> tuple[dict[str, int], int, int]:
    """Create the tables; give each upstream its bit, forgetting those no longer enabled.

    Returns the bits by upstream name, the number of stored entries and the newest id.
    """
    try:
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        known = dict(conn.execute("SELECT name, bit FROM outbox_upstreams").fetchall())
        for name, bit in list(known.items()):
            if name not in upstreams:
                _forget_upstream(conn, name, bit)
                del known[name]
        used = set(known.values())
        for name in upstreams:
            if name not in known:
                free = next(b for b in range(MAX_UPSTREAMS) if b not in used)
                used.add(free)
                known[name] = free
                conn.execute("INSERT INTO outbox_upstreams VALUES (?, ?)", (name, free))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    count = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return {name: 1 << known[name] for name in upstreams}, count, row[0] if row else 0


def _forget_upstream(conn: sqlite3.Connection, name: str, bit: int) -> None:
    mask = 1 << bit
    conn.execute("UPDATE outbox SET pending = pending & ? WHERE (pending & ?) != 0", (~mask, mask))
    removed = conn.execute("DELETE FROM outbox WHERE pending = 0").rowcount
    conn.execute("DELETE FROM outbox_upstreams WHERE name = ?", (name,))
    log.warning(
        "outbox: upstream %r is no longer enabled; %d entries only it still needed removed",
        name,
        removed,
    )


def _resolve(waiters: list[tuple[int, asyncio.Future[int]]], value: int) -> None:
    for _, future in waiters:
        if not future.done():
            future.set_result(value)


def _encode(item: Report | DeviceEvent) -> tuple[Kind, str]:
    if isinstance(item, Report):
        kind: Kind = "report"
        fields: dict[str, Any] = {
            "id": item.id,
            "device": item.device,
            "kind": item.kind,
            "ts": item.ts,
            "seq": item.seq,
            "data": item.data,
            "rssi": item.rssi,
            "snr": item.snr,
        }
    elif isinstance(item, DeviceEvent):
        kind = "event"
        fields = {
            "device": item.device,
            "event": str(item.event),
            "ts": item.ts,
            "detail": item.detail,
        }
    else:
        raise UnstorableItem(f"not a Report or DeviceEvent: {type(item).__name__}")
    try:
        body = json.dumps(fields, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnstorableItem(f"{kind} from {item.device} is not plain JSON: {exc}") from None
    return kind, body


def _decode(kind: str, body: str) -> Report | DeviceEvent:
    fields = json.loads(body)
    if kind == "report":
        return Report(**fields)
    if kind == "event":
        return DeviceEvent(
            device=fields["device"],
            event=EventKind(fields["event"]),
            ts=fields["ts"],
            detail=fields["detail"],
        )
    raise ValueError(f"unknown kind {kind!r}")


def droppable_kinds_for_mqtt(qos_reports: int, qos_events: int) -> frozenset[str]:
    """The kinds the MQTT config publishes at QoS 0 (``mqtt.qos_reports``/``qos_events``)."""
    kinds = set()
    if qos_reports == 0:
        kinds.add("report")
    if qos_events == 0:
        kinds.add("event")
    return frozenset(kinds)


__all__ = [
    "CommitFailed",
    "Outbox",
    "OutboxBusy",
    "OutboxClosed",
    "OutboxEntry",
    "OutboxError",
    "StorageFailed",
    "StoreError",
    "UnstorableItem",
    "droppable_kinds_for_mqtt",
]
