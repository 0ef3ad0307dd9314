"""One SQLite database in the data directory, shared by leases, outbox and command states."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

DATABASE_NAME = "duogate.sqlite3"

T = TypeVar("T")


class StoreError(Exception):
    """The data directory cannot be used (missing permissions, disk full, corrupt file)."""


def open_database(data_dir: Path, name: str = DATABASE_NAME) -> sqlite3.Connection:
    """Open (creating if needed) the gateway database in WAL mode with durable commits.

    ``synchronous=FULL`` makes every commit survive a power cut; the journal commits only
    when something must be on disk, so one sync covers many writes.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(data_dir / name, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # For flash: a page changed by many commits is copied from the log into the database
        # once per checkpoint, so checkpoint rarely (every 4 MiB of log, SQLite's default
        # size), and let the log file keep that size: it is overwritten in place from its
        # start after a checkpoint instead of being cut and grown again (file-size metadata
        # written each time). Commits are few, so the log fills slowly.
        conn.execute("PRAGMA wal_autocheckpoint=1000")
        conn.execute("PRAGMA journal_size_limit=4194304")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open database in {data_dir}: {exc}") from None
    return conn


class DatabaseWorker:
    """A store's connection and the one thread that uses it: the event loop never waits for a
    disk sync. Use ``await DatabaseWorker.open(...)``; ``close()`` when done.

    What the database or the disk refuses in ``run`` (sqlite3.Error, OSError) is raised as the
    store's own ``error`` with the message ``"<error_prefix>: <what went wrong>"``.
    """

    def __init__(
        self,
        worker: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        error: Callable[[str], Exception],
        error_prefix: str,
    ) -> None:
        self._worker = worker
        self.conn = conn
        self._error = error
        self._error_prefix = error_prefix

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        thread_name: str,
        error: Callable[[str], Exception],
        error_prefix: str,
        setup: Callable[[sqlite3.Connection], T],
    ) -> tuple[DatabaseWorker, T]:
        """Open the database on a new worker thread and run ``setup`` (the store's schema) there;
        return the worker and what ``setup`` returned. On any failure nothing stays open."""
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        conn: sqlite3.Connection | None = None
        try:
            conn = await asyncio.get_running_loop().run_in_executor(worker, open_database, data_dir)
            database = cls(worker, conn, error, error_prefix)
            ready = await database.run(setup, conn)
        except BaseException:
            if conn is not None:
                conn.close()
            worker.shutdown(wait=False)
            raise
        return database, ready

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise self._error(f"{self._error_prefix}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection once the work queued before has run, then end the thread."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self.conn.close)
        self._worker.shutdown(wait=True)
