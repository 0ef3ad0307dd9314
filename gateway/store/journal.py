"""One SQLite connection shared by the gateway's stores, with commits timed by deadlines.

Each store that writes often (the outbox, the LoRa leases) registers as a ``JournalWriter``:
it keeps its changes in memory and says by when they must be on disk (``due``). The journal
commits once, at the earliest time any writer asked for, and every writer's pending changes
ride that one transaction: one disk sync serves everything that changed since the last
commit. A writer whose changes became unnecessary before they were due (an outbox row every
upstream acknowledged) simply has nothing to write when the commit comes.

All database work runs on one thread that owns the connection (``DatabaseWorker``); the event
loop never waits for a disk sync. Several users share one journal (the bridge's outbox and the
LoRa network's leases): each calls ``open`` and ``close``; the last ``close`` commits what is
left and closes the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway.store.db import DatabaseWorker, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a failed commit the next one waits this long, so a full disk is not hammered.
RETRY_AFTER_FAILURE_S = 1.0

Write = Callable[[sqlite3.Connection], Any]


class JournalWriter(Protocol):
    """A store whose changes ride the journal's commits. Called on the event loop."""

    def take(self) -> Write | None:
        """The changes made since the last take, as a function run inside the transaction on
        the database thread (its result goes to ``committed``); None if nothing changed."""

    def committed(self, outcome: Any) -> None:
        """The transaction holding the taken changes is on disk."""

    def failed(self, error: StoreError) -> None:
        """The transaction holding the taken changes failed; nothing of it was written."""


class Journal:
    """Use ``await journal.open()`` once per user, ``await journal.close()`` when done."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.commits = 0
        self.failed_commits = 0
        self._users = 0
        self._db: DatabaseWorker | None = None
        self._writers: list[JournalWriter] = []
        self._watchers: list[Callable[[str | None], None]] = []
        self._due: float | None = None
        self._not_before = 0.0
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._writes: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the database on first use (StoreError if it cannot be used)."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._db is None:
                self._db, _ = await DatabaseWorker.open(
                    self.data_dir,
                    thread_name="journal",
                    error=StoreError,
                    error_prefix="database",
                    setup=lambda conn: None,
                )
                self._committer = asyncio.create_task(self._commit_loop(), name="journal")
            self._users += 1

    async def close(self) -> None:
        """One user is done; the last one commits what is pending and closes the database.
        StoreError if that last commit failed (the database is closed all the same)."""
        if self._users <= 0:
            return
        self._users -= 1
        if self._users > 0:
            return
        try:
            await self.commit()
        finally:
            committer, self._committer = self._committer, None
            if committer is not None:
                committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await committer
            closed = StoreError("database closed before the commit")
            for waiter in [*self._waiters, *(future for _, _, future in self._writes)]:
                if not waiter.done():
                    waiter.set_exception(closed)
            self._waiters, self._writes = [], []
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for work passed to ``run`` (it runs on the database thread)."""
        return self._database().conn

    def register(self, writer: JournalWriter) -> None:
        self._writers.append(writer)

    def watch(self, listener: Callable[[str | None], None]) -> None:
        """``listener`` hears after each commit: None if it worked, else what went wrong."""
        self._watchers.append(listener)

    def unregister(self, writer: JournalWriter) -> None:
        with contextlib.suppress(ValueError):
            self._writers.remove(writer)

    # ------------------------------------------------------------------ work

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the database thread (reads, schema, single statements)."""
        return await self._database().run(fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any, within_s: float = 0.0) -> T:
        """``fn(*args)`` on the database thread inside the commit due ``within_s`` from now
        (shared with every other change pending then); its result once that commit is on
        disk. What ``fn`` raises undoes only its own changes and is raised here; StoreError
        if the commit failed."""
        self._database()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writes.append((fn, args, future))
        self.due_in(within_s)
        return await future

    def due(self, at: float) -> None:
        """A commit is needed by loop time ``at`` (the earliest request wins)."""
        if self._due is None or at < self._due:
            self._due = at
            self._wake.set()

    def due_in(self, seconds: float) -> None:
        self.due(asyncio.get_running_loop().time() + max(0.0, seconds))

    async def commit(self) -> None:
        """Commit every writer's pending changes now; StoreError if the commit failed."""
        self._database()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.due(0.0)
        await waiter

    # ------------------------------------------------------------------ the commit task

    def _database(self) -> DatabaseWorker:
        if self._db is None:
            raise StoreError("database is not open")
        return self._db

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._due is None:
                await self._wake.wait()
                self._wake.clear()
                continue
            delay = max(self._due, self._not_before) - loop.time()
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow close()'s cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                self._wake.clear()
                continue  # an earlier request may have come in
            self._due = None
            await self._commit_once(loop)

    async def _commit_once(self, loop: asyncio.AbstractEventLoop) -> None:
        waiters, self._waiters = self._waiters, []
        writes, self._writes = self._writes, []
        work = [(writer, write) for writer in list(self._writers) if (write := writer.take())]
        if writes:
            work.append((_QueuedWrites(writes), _QueuedWrites.run_all(writes)))
        if not work:
            _settle(waiters, None)
            return
        try:
            db = self._database()
            outcomes = await db.run(_transaction, db.conn, [write for _, write in work])
        except StoreError as exc:
            self.failed_commits += 1
            self._not_before = loop.time() + RETRY_AFTER_FAILURE_S
            log.error("commit failed: %s", exc)
            for writer, _ in work:
                writer.failed(exc)
            _settle(waiters, exc)
            self._tell(str(exc))
            return
        self.commits += 1
        for (writer, _), outcome in zip(work, outcomes, strict=True):
            writer.committed(outcome)
        _settle(waiters, None)
        self._tell(None)

    def _tell(self, problem: str | None) -> None:
        for listener in self._watchers:
            listener(problem)


def _transaction(conn: sqlite3.Connection, writes: list[Write]) -> list[Any]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcomes = [write(conn) for write in writes]
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return outcomes


class _QueuedWrites:
    """The ``Journal.write`` calls of one commit, each in a savepoint of its own."""

    def __init__(
        self, writes: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]]
    ) -> None:
        self.futures = [future for _, _, future in writes]

    @staticmethod
    def run_all(
        writes: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]],
    ) -> Write:
        calls = [(fn, args) for fn, args, _ in writes]

        def run(conn: sqlite3.Connection) -> list[tuple[bool, Any]]:
            outcomes: list[tuple[bool, Any]] = []
            for fn, args in calls:
                conn.execute("SAVEPOINT journal_write")
                try:
                    outcomes.append((True, fn(*args)))
                except sqlite3.Error:
                    raise  # the database itself failed: the whole commit fails
                except Exception as exc:  # this write refused (e.g. an unknown key)
                    conn.execute("ROLLBACK TO journal_write")
                    outcomes.append((False, exc))
                conn.execute("RELEASE journal_write")
            return outcomes

        return run

    def take(self) -> Write | None:  # never registered; here to be a JournalWriter
        return None

    def committed(self, outcome: list[tuple[bool, Any]]) -> None:
        for future, (ok, value) in zip(self.futures, outcome, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def failed(self, error: StoreError) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(StoreError(str(error)))


def _settle(waiters: list[asyncio.Future[None]], error: StoreError | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(StoreError(str(error)))
