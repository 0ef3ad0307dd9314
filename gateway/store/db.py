"""One SQLite database in the data directory, shared by leases, outbox and command states."""

from __future__ import annotations

import sqlite3
from pathlib import Path

DATABASE_NAME = "duogate.sqlite3"


class StoreError(Exception):
    """The data directory cannot be used (missing permissions, disk full, corrupt file)."""


def open_database(data_dir: Path, name: str = DATABASE_NAME) -> sqlite3.Connection:
    """Open (creating if needed) the gateway database in WAL mode with durable commits.

    ``synchronous=FULL`` makes every commit survive a power cut; callers batch many writes
    into one transaction so one sync covers many reports.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(data_dir / name, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # Checkpoint every 1 MiB of log and cut the file back to that afterwards: on a small or
        # nearly full card the log must not grow to SQLite's 4 MiB default and keep the space.
        conn.execute("PRAGMA wal_autocheckpoint=256")
        conn.execute("PRAGMA journal_size_limit=1048576")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open database in {data_dir}: {exc}") from None
    return conn
