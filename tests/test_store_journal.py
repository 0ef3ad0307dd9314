from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.store.db import DATABASE_NAME, StoreError
from gateway.store.journal import Journal, Write

TIMEOUT_S = 30.0


class TableWriter:
    """A ``JournalWriter`` of numbers into its own table, recording what happened."""

    def __init__(self, journal: Journal, table: str) -> None:
        self.journal = journal
        self.table = table
        self.pending: list[int] = []
        self.taken: list[int] = []
        self.outcomes: list[Any] = []
        self.failures: list[StoreError] = []

    def add(self, value: int, within_s: float) -> None:
        self.pending.append(value)
        self.journal.due_in(within_s)

    def take(self) -> Write | None:
        if not self.pending:
            return None
        self.taken, self.pending = self.pending, []
        rows = [(value,) for value in self.taken]
        table = self.table
        return lambda conn: conn.executemany(f"INSERT INTO {table} VALUES (?)", rows).rowcount

    def committed(self, outcome: Any) -> None:
        self.outcomes.append(outcome)

    def failed(self, error: StoreError) -> None:
        self.failures.append(error)
        self.pending[:0] = self.taken


def rows(path: Path, table: str) -> list[int]:
    with sqlite3.connect(path / DATABASE_NAME) as conn:
        return [value for (value,) in conn.execute(f"SELECT v FROM {table} ORDER BY v")]


async def open_with_tables(path: Path, *tables: str) -> Journal:
    journal = Journal(path)
    await journal.open()
    for table in tables:
        await journal.run(journal.conn.execute, f"CREATE TABLE {table} (v INTEGER)")
    return journal


async def test_writers_share_one_commit_at_the_earliest_due_time(tmp_path: Path) -> None:
    journal = await open_with_tables(tmp_path, "a", "b")
    first, second = TableWriter(journal, "a"), TableWriter(journal, "b")
    journal.register(first)
    journal.register(second)
    try:
        first.add(1, within_s=60.0)
        second.add(2, within_s=60.0)
        first.add(3, within_s=0.2)
        await asyncio.sleep(0.05)
        assert journal.commits == 0
        async with asyncio.timeout(TIMEOUT_S):
            while journal.commits == 0:
                await asyncio.sleep(0.02)
        assert (rows(tmp_path, "a"), rows(tmp_path, "b")) == ([1, 3], [2])
        assert (first.outcomes, second.outcomes) == ([2], [1])
        await journal.commit()  # nothing pending: no transaction
        assert journal.commits == 1
    finally:
        await journal.close()


async def test_a_failed_commit_fails_every_writer_and_commit_raises(tmp_path: Path) -> None:
    journal = await open_with_tables(tmp_path, "a", "b")
    first, second = TableWriter(journal, "a"), TableWriter(journal, "b")
    journal.register(first)
    journal.register(second)
    blocker = sqlite3.connect(tmp_path / DATABASE_NAME, timeout=0, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
    try:
        first.add(1, within_s=60.0)
        second.add(2, within_s=60.0)
        with pytest.raises(StoreError, match="locked"):
            await asyncio.wait_for(journal.commit(), TIMEOUT_S)
        assert len(first.failures) == len(second.failures) == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        await asyncio.wait_for(journal.commit(), TIMEOUT_S)
        assert (rows(tmp_path, "a"), rows(tmp_path, "b")) == ([1], [2])
    finally:
        await journal.close()


async def test_the_last_user_to_close_commits_and_closes(tmp_path: Path) -> None:
    journal = await open_with_tables(tmp_path, "a")
    await journal.open()  # a second user
    writer = TableWriter(journal, "a")
    journal.register(writer)
    writer.add(7, within_s=60.0)
    await journal.close()
    assert journal.is_open and rows(tmp_path, "a") == []
    await journal.close()
    assert not journal.is_open and rows(tmp_path, "a") == [7]


async def test_a_refused_write_undoes_only_its_own_changes_in_the_shared_commit(
    tmp_path: Path,
) -> None:
    journal = await open_with_tables(tmp_path, "a")
    writer = TableWriter(journal, "a")
    journal.register(writer)

    def insert_then_refuse(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO a VALUES (99)")
        raise KeyError("no such command")

    try:
        writer.add(1, within_s=60.0)
        good = asyncio.ensure_future(
            journal.write(lambda: journal.conn.execute("INSERT INTO a VALUES (2)").rowcount)
        )
        bad = asyncio.ensure_future(journal.write(insert_then_refuse, journal.conn))
        assert await asyncio.wait_for(good, TIMEOUT_S) == 1
        with pytest.raises(KeyError, match="no such command"):
            await asyncio.wait_for(bad, TIMEOUT_S)
        assert rows(tmp_path, "a") == [1, 2]
        assert journal.commits == 1  # the writer's row, the good write: one transaction
    finally:
        await journal.close()
