"""Durable outbox: every report and event waits until each upstream acknowledged it.

A new row is kept in memory first and handed to the upstreams at once; it is written to disk
only if it is still needed when its commit is due. Each row says by when it must be safe:
``add_durable(item, within_s)`` for a row something waits for (a LoRa ack goes on air only
once the report is safe), ``add(item)`` for a row nobody waits for, due within
``commit_interval_s``. The journal (``gateway/store/journal.py``) commits once at the earliest
due time, and one transaction (one disk sync) serves every row that came in since the last
one. A row every upstream acknowledged before its commit was due is safe without a local
sync: the servers hold it, and it is never written.

Each entry carries a bitmask of the enabled upstreams that still have to deliver it; it is
deleted when the mask reaches zero (a delivery mark rides the next commit). Upstreams read
their pending entries in id order (which keeps every device's order): the newest from memory,
an older backlog from disk one page at a time, so a large backlog stays on disk, not in Python
objects. A restart replays whatever was stored and not delivered.

When the outbox holds more than ``max_entries`` it drops, oldest first: entries of the
QoS-0 class (kinds published at QoS 0, ``droppable_kinds``), then reports, then (only if the
outbox is nothing but events) events. Every drop is counted in ``dropped`` and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Literal

from gateway.model import DeviceEvent, Report
from gateway.store.db import StoreError
from gateway.store.journal import Journal, Write
from gateway.store.outbox_rows import (
    MAX_UPSTREAMS,
    NotPlainJson,
    decode,
    droppable_kinds_for_mqtt,
    encode,
    init_schema,
)

log = logging.getLogger(__name__)

UPSTREAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DEFAULT_COMMIT_ROWS = 500
DEFAULT_MAX_QUEUED_ROWS = 10_000
# Rows already on disk kept in memory for the upstreams, beyond those not yet written.
CACHED_STORED_ROWS = 1024

DropClass = Literal["qos0", "report", "event", "corrupt"]


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


class _State(IntEnum):
    QUEUED = 0  # in memory only
    WRITING = 1  # in the commit running now
    STORED = 2  # on disk (and still in memory for the upstreams)
    GONE = 3  # left memory: delivered everywhere before it was written, or refused


@dataclass(slots=True, eq=False)
class _Row:
    entry_id: int
    kind: str
    droppable: bool
    pending: int
    item: Report | DeviceEvent
    body: str
    state: _State = _State.QUEUED
    waiter: asyncio.Future[int] | None = None


@dataclass(slots=True)
class _Taken:
    rows: list[_Row]
    marks: dict[int, set[int]]  # bit -> ids of stored entries delivered
    discard: set[int]


@dataclass(frozen=True, slots=True)
class _Written:
    count: int
    dropped: dict[str, int]
    dropped_ids: frozenset[int]


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
        journal: Journal | None = None,
    ) -> Outbox:
        """Open the outbox in ``data_dir`` for the enabled ``upstreams`` (e.g. ["mqtt"]).

        ``commit_interval_s``: the longest a row nobody waits for stays in memory only.
        ``droppable_kinds`` names the kinds ("report", "event") published at QoS 0; they are
        dropped first when the outbox is full. Entries still waiting only for upstreams that
        are no longer enabled are removed (and logged). ``journal``: share the database
        connection and its commits with other stores (by default the outbox has its own).
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
        self.max_entries = max_entries
        self.commit_interval_s = commit_interval_s
        self.commit_rows = max(1, commit_rows)
        self.droppable_kinds = frozenset(droppable_kinds)
        self.max_queued_rows = max_queued_rows
        self.dropped: dict[str, int] = {"qos0": 0, "report": 0, "event": 0, "corrupt": 0}
        self.commits = 0
        self.never_written = 0  # rows every upstream took before their commit was due
        self.rows_written = 0
        self._journal = journal if journal is not None else Journal(data_dir)
        self._closed = False
        self._rows: dict[int, _Row] = {}  # in id order: not yet written, then a cache
        self._queued: list[_Row] = []
        self._marks: dict[int, set[int]] = {}
        self._discard: set[int] = set()
        self._arrival: asyncio.Future[None] | None = None
        self._taken = _Taken([], {}, set())
        names = list(upstreams)
        await self._journal.open()
        try:
            bits, count, last_id = await self._journal.run(
                lambda: init_schema(self._journal.conn, names)
            )
        except BaseException:
            await self._journal.close()
            raise
        self._bits: dict[str, int] = bits
        self._all_bits = sum(bits.values())
        self._stored = count
        self._last_id = last_id
        self._cache_floor = last_id + 1  # every pending row from here on is in ``_rows``
        self._journal.register(self)
        if count:
            log.info("outbox: %d entries waiting from before the restart", count)
        return self

    # -- public API -------------------------------------------------------------------------

    @property
    def upstreams(self) -> list[str]:
        return list(self._bits)

    @property
    def size(self) -> int:
        """Entries waiting for an upstream (on disk or not yet written), for metrics."""
        return self._stored + sum(1 for row in self._queued if row.state is _State.QUEUED)

    @property
    def journal_commits(self) -> int:
        """Commits of the database the outbox shares (each one disk sync)."""
        return self._journal.commits

    @property
    def last_id(self) -> int:
        """Id of the newest entry (0 if none ever)."""
        return self._last_id

    def add(self, item: Report | DeviceEvent) -> None:
        """Take ``item``; it is safe within ``commit_interval_s`` (not when this returns).
        Raises UnstorableItem or OutboxBusy."""
        self._queue(item, self.commit_interval_s)

    async def add_durable(self, item: Report | DeviceEvent, within_s: float = 0.0) -> int:
        """Take ``item`` and return its entry id once it is safe: on disk, or acknowledged by
        every upstream. It is written by ``within_s`` from now unless every upstream took it
        first (the time it takes to write is the caller's margin).

        Raises UnstorableItem, OutboxBusy, or CommitFailed (the row was not stored).
        """
        row = self._queue(item, min(within_s, self.commit_interval_s) if within_s else 0.0)
        row.waiter = asyncio.get_running_loop().create_future()
        return await row.waiter

    def mark_delivered(self, upstream: str, entry_ids: Iterable[int]) -> None:
        """Record that ``upstream`` delivered these entries; a row not yet written that every
        upstream has now delivered is never written."""
        self._check_open()
        bit = self._bit(upstream)
        marked = False
        for entry_id in entry_ids:
            row = self._rows.get(entry_id)
            if row is None:  # on disk only
                self._marks.setdefault(bit, set()).add(entry_id)
                marked = True
                continue
            if not row.pending & bit:
                continue
            row.pending &= ~bit
            if row.state is not _State.QUEUED:
                self._marks.setdefault(bit, set()).add(entry_id)
                marked = True
            if row.pending:
                continue
            if row.state is _State.QUEUED:
                self.never_written += 1
                row.state = _State.GONE
                if row.waiter is not None and not row.waiter.done():
                    row.waiter.set_result(entry_id)
            if row.state is not _State.WRITING:
                del self._rows[entry_id]
        if marked:
            self._journal.due_in(self.commit_interval_s)

    async def flush(self) -> None:
        """Write everything taken so far (rows and delivery marks); CommitFailed if not."""
        self._check_open()
        try:
            await self._journal.commit()
        except StoreError as exc:
            raise CommitFailed(f"outbox commit failed: {exc}") from None

    async def pending(
        self, upstream: str, after_id: int = 0, limit: int = 256
    ) -> list[OutboxEntry]:
        """Up to ``limit`` entries ``upstream`` has not delivered, with id > ``after_id``."""
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
        """Stream every pending entry for ``upstream`` in order: a backlog from disk one page
        at a time, then the rows in memory."""
        self._check_open()
        bit = self._bit(upstream)
        while after_id + 1 < self._cache_floor:
            below = self._cache_floor
            page = await self._read(self._select_pending, bit, after_id, below, page_size)
            marked = self._marks.get(bit, ())
            for entry_id, kind, body in page:
                if entry_id in marked or entry_id >= self._cache_floor:
                    continue
                item = self._decode(entry_id, kind, body)
                if item is not None:
                    yield OutboxEntry(entry_id, item)
            after_id = page[-1][0] if len(page) == page_size else below - 1
        for row in [r for r in self._rows.values() if r.entry_id > after_id]:
            if row.pending & bit and row.state is not _State.GONE:
                yield OutboxEntry(row.entry_id, row.item)

    async def wait_for_entries_after(self, entry_id: int) -> None:
        """Return once an entry with an id above ``entry_id`` was taken."""
        while self._last_id <= entry_id and not self._closed:
            if self._arrival is None:
                self._arrival = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._arrival)  # shared by every waiting upstream
        self._check_open()

    async def pending_count(self, upstream: str) -> int:
        bit = self._bit(upstream)
        on_disk = await self._read(
            lambda: self._journal.conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE (pending & ?) != 0", (bit,)
            ).fetchone()[0]
        )
        in_memory = sum(1 for row in self._queued if row.pending & bit)
        return on_disk - len(self._marks.get(bit, ())) + in_memory

    async def close(self) -> None:
        """Write what is pending, then leave the database."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            self._journal.unregister(self)
            self._announce()
            for row in self._queued:
                if row.waiter is not None and not row.waiter.done():
                    row.waiter.set_exception(OutboxClosed("outbox closed before the commit"))
            with contextlib.suppress(StoreError):  # already said by the flush
                await self._journal.close()

    # -- taking rows ------------------------------------------------------------------------

    def _queue(self, item: Report | DeviceEvent, within_s: float) -> _Row:
        self._check_open()
        if len(self._queued) >= self.max_queued_rows:
            raise OutboxBusy(f"{len(self._queued)} rows already wait for a commit")
        try:
            kind, body = encode(item)
        except NotPlainJson as exc:
            raise UnstorableItem(str(exc)) from None
        self._last_id += 1
        droppable = kind in self.droppable_kinds
        row = _Row(self._last_id, kind, droppable, self._all_bits, item, body)
        self._rows[row.entry_id] = row
        self._queued.append(row)
        if len(self._queued) >= self.commit_rows:
            within_s = 0.0
        self._journal.due_in(within_s)
        self._announce()
        return row

    def _announce(self) -> None:
        arrival, self._arrival = self._arrival, None
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    def _bit(self, upstream: str) -> int:
        try:
            return self._bits[upstream]
        except KeyError:
            raise ValueError(f"upstream {upstream!r} is not enabled in the outbox") from None

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxClosed("outbox is closed")

    async def _read(self, fn: Callable[..., object], *args: object) -> object:
        try:
            return await self._journal.run(fn, *args)
        except StoreError as exc:
            raise StorageFailed(f"outbox database: {exc}") from None

    # -- JournalWriter ----------------------------------------------------------------------

    def take(self) -> Write | None:
        rows = [row for row in self._queued if row.state is _State.QUEUED]
        self._queued = []
        if not (rows or self._marks or self._discard):
            return None
        for row in rows:
            row.state = _State.WRITING
        taken = _Taken(rows, self._marks, self._discard)
        self._marks, self._discard = {}, set()
        self._taken = taken
        return lambda conn: self._write(conn, taken)

    def committed(self, outcome: _Written) -> None:
        taken = self._taken
        self.commits += 1
        self.rows_written += len(taken.rows)
        self._stored = outcome.count
        for row in taken.rows:
            if row.waiter is not None and not row.waiter.done():
                row.waiter.set_result(row.entry_id)
            if row.entry_id in outcome.dropped_ids or not row.pending:
                row.state = _State.GONE
                self._rows.pop(row.entry_id, None)
            else:
                row.state = _State.STORED
        if outcome.dropped_ids:
            for entry_id in outcome.dropped_ids:
                dropped = self._rows.pop(entry_id, None)
                if dropped is not None:
                    dropped.state = _State.GONE
        self._log_drops(outcome.dropped)
        self._evict_cached()

    def failed(self, error: StoreError) -> None:
        """Rows something waits for fail (their sender retries); the rest is taken again."""
        taken = self._taken
        kept = []
        for row in taken.rows:
            if not row.pending:  # every upstream took it meanwhile: safe without the write
                row.state = _State.GONE
                self._rows.pop(row.entry_id, None)
                if row.waiter is not None and not row.waiter.done():
                    row.waiter.set_result(row.entry_id)
            elif row.waiter is not None:
                row.state = _State.GONE
                self._rows.pop(row.entry_id, None)
                if not row.waiter.done():
                    row.waiter.set_exception(CommitFailed(f"outbox commit failed: {error}"))
            else:
                row.state = _State.QUEUED
                kept.append(row)
        log.error(
            "outbox commit failed (%s): %d rows refused, %d kept for retry",
            error,
            len(taken.rows) - len(kept),
            len(kept),
        )
        self._queued = kept + self._queued
        for bit, ids in taken.marks.items():
            self._marks.setdefault(bit, set()).update(ids)
        self._discard |= taken.discard
        if kept or taken.marks or taken.discard:
            self._journal.due_in(self.commit_interval_s)

    def _evict_cached(self) -> None:
        """Keep at most CACHED_STORED_ROWS written rows in memory, dropping the oldest (only
        from the front, so that every pending row at or above the floor stays in memory)."""
        excess = len(self._rows) - len(self._queued) - CACHED_STORED_ROWS
        while excess > 0 and self._rows:
            oldest = next(iter(self._rows.values()))
            if oldest.state is not _State.STORED:
                break
            del self._rows[oldest.entry_id]
            self._cache_floor = oldest.entry_id + 1
            excess -= 1

    def _log_drops(self, dropped: dict[str, int]) -> None:
        for drop_class, number in dropped.items():
            if number:
                self.dropped[drop_class] += number
                log.warning(
                    "outbox full (max %d): dropped %d oldest %s entries (%d so far)",
                    self.max_entries,
                    number,
                    drop_class,
                    self.dropped[drop_class],
                )

    # -- database thread --------------------------------------------------------------------

    def _write(self, conn: sqlite3.Connection, taken: _Taken) -> _Written:
        if taken.rows:
            conn.executemany(
                "INSERT INTO outbox (id, kind, droppable, pending, body) VALUES (?, ?, ?, ?, ?)",
                [(r.entry_id, r.kind, int(r.droppable), r.pending, r.body) for r in taken.rows],
            )
        removed = 0
        for bit, ids in taken.marks.items():
            conn.executemany(
                "UPDATE outbox SET pending = pending & ? WHERE id = ?",
                ((~bit, entry_id) for entry_id in ids),
            )
            cur = conn.executemany(
                "DELETE FROM outbox WHERE id = ? AND pending = 0", ((i,) for i in ids)
            )
            removed += max(cur.rowcount, 0)
        if taken.discard:
            cur = conn.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in taken.discard))
            removed += max(cur.rowcount, 0)
        count = self._stored + len(taken.rows) - removed
        dropped: dict[str, int] = {}
        dropped_ids: set[int] = set()
        if count > self.max_entries:
            dropped, dropped_ids = _drop_oldest(conn, count - self.max_entries)
            count -= sum(dropped.values())
        return _Written(count, dropped, frozenset(dropped_ids))

    def _select_pending(
        self, bit: int, after_id: int, below_id: int, limit: int
    ) -> list[tuple[int, str, str]]:
        return self._journal.conn.execute(
            "SELECT id, kind, body FROM outbox WHERE id > ? AND id < ? AND (pending & ?) != 0 "
            "ORDER BY id LIMIT ?",
            (after_id, below_id, bit, limit),
        ).fetchall()

    def _decode(self, entry_id: int, kind: str, body: str) -> Report | DeviceEvent | None:
        try:
            return decode(kind, body)
        except (ValueError, TypeError, KeyError) as exc:
            self.dropped["corrupt"] += 1
            log.error("outbox: entry %d is unreadable (%s); removing it", entry_id, exc)
            self._discard.add(entry_id)
            self._journal.due_in(self.commit_interval_s)
            return None


def _drop_oldest(conn: sqlite3.Connection, excess: int) -> tuple[dict[str, int], set[int]]:
    dropped: dict[str, int] = {}
    ids: set[int] = set()
    for drop_class, condition in (
        ("qos0", "droppable = 1"),
        ("report", "kind = 'report'"),
        ("event", "1"),
    ):
        if excess <= 0:
            break
        gone = conn.execute(
            f"DELETE FROM outbox WHERE id IN "
            f"(SELECT id FROM outbox WHERE {condition} ORDER BY id LIMIT ?) RETURNING id",
            (excess,),
        ).fetchall()
        dropped[drop_class] = len(gone)
        ids.update(entry_id for (entry_id,) in gone)
        excess -= len(gone)
    return dropped, ids


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
