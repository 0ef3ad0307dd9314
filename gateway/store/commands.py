"""Command states in SQLite, so every command still ends in exactly one final result after a
restart, and a command delivered twice (MQTT QoS 1 redelivery) is recognised.

A state is keyed by (origin, device, id). Each save records the status, the time left before
the deadline (``remaining_s``, from the monotonic deadline) with the wall time of the save,
and appends to the history. Monotonic deadlines do not survive a restart, so ``recover``
settles every command that was still open when the gateway stopped:

* ``accepted`` (queued, never transmitted) becomes ``expired`` with detail
  ``gateway_restart``: it is not sent late after a reboot;
* ``sent`` (transmitted, no answer yet) becomes ``timeout`` with detail ``gateway_restart``:
  the node may or may not have executed it.

The bridge publishes each final result once, as soon as it is final, and calls
``mark_result_published``. Only when that first attempt fails does it ``schedule_result_retry``;
``due_results`` lists the results whose retry is due, so a result is never published by two
hands at once. Retries back off and end after ``max_result_attempts``: a result the server
keeps refusing is given up, not retried forever. After a restart, ``schedule_unpublished``
makes every final result that was not confirmed published (a first attempt cut short by the
stop included) due again.

Each change rides the journal's next commit (``gateway/store/journal.py``), due at once: it
shares the transaction, and its one disk sync, with whatever else is pending (outbox rows,
leases). Final states beyond ``max_states`` are pruned oldest first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.model import Command, CommandResult, CommandStatus
from gateway.store.db import StoreError
from gateway.store.journal import Journal

log = logging.getLogger(__name__)

RESTART_DETAIL = "gateway_restart"
DEFAULT_MAX_STATES = 10_000
_PRUNE_EVERY = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS command_states (
    origin TEXT NOT NULL,
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    action TEXT NOT NULL,
    reply_to TEXT NOT NULL,
    status TEXT NOT NULL,
    remaining_s REAL NOT NULL,
    saved_wall REAL NOT NULL,
    history TEXT NOT NULL,
    published_status TEXT,
    result_attempts INTEGER NOT NULL DEFAULT 0,
    retry_at REAL,
    UNIQUE (origin, device, id)
);
CREATE INDEX IF NOT EXISTS command_states_status ON command_states(status);
"""
# Columns added after the first release: (name, definition) for ALTER TABLE on older files.
_ADDED_COLUMNS = (
    ("result_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("retry_at", "REAL"),
)
_UNPUBLISHED = "status NOT IN (?, ?) AND (published_status IS NULL OR published_status != status)"

_OPEN_STATUSES = (CommandStatus.ACCEPTED.value, CommandStatus.SENT.value)
_COLUMNS = (
    "origin, device, id, action, reply_to, status, remaining_s, saved_wall, history, "
    "published_status, result_attempts"
)


class CommandStoreError(Exception):
    pass


class UnstorableCommand(CommandStoreError, ValueError):
    """A command whose reply address is not plain JSON."""


class UnknownCommand(CommandStoreError, KeyError):
    pass


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    status: CommandStatus
    ts: float  # wall time
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CommandState:
    origin: str
    device: str
    id: str
    action: str
    reply_to: dict[str, Any]
    status: CommandStatus
    remaining_s: float  # time left before the deadline at the last save (negative: past it)
    saved_wall: float  # wall time of the last save
    history: tuple[HistoryEntry, ...]
    published_status: CommandStatus | None = None
    result_attempts: int = 0  # failed attempts to publish the final result

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.origin, self.device, self.id)

    def result(self) -> CommandResult:
        """The result for the current status (time and detail of the last transition)."""
        last = self.history[-1]
        return CommandResult(self.id, self.device, self.status, last.ts, last.detail)


class CommandStore:
    """Use ``await CommandStore.open(data_dir)``; ``close()`` when done."""

    def __init__(self) -> None:
        raise TypeError("use `await CommandStore.open(data_dir)`")

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        max_states: int = DEFAULT_MAX_STATES,
        journal: Journal | None = None,
    ) -> CommandStore:
        """``journal``: share the database and its commits with other stores."""
        self = object.__new__(cls)
        self.max_states = max_states
        self._accepts = 0
        self._closed = False
        self._journal = journal if journal is not None else Journal(data_dir)
        try:
            await self._journal.open()
        except StoreError as exc:
            raise CommandStoreError(f"command store database: {exc}") from None
        self._conn = self._journal.conn
        try:
            await self._run(_create_schema, self._conn)
        except BaseException:
            await self._journal.close()
            raise
        return self

    async def accept(self, command: Command, *, now_mono: float, now_wall: float) -> bool:
        """Store a new command as ``accepted``; False if (origin, device, id) is known already."""
        try:
            reply_to = json.dumps(command.reply_to, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UnstorableCommand(f"reply address of {command.id!r} is not JSON: {exc}") from None
        history = _history_json((HistoryEntry(CommandStatus.ACCEPTED, now_wall),))
        row = (
            command.origin,
            command.device,
            command.id,
            command.action,
            reply_to,
            CommandStatus.ACCEPTED.value,
            command.deadline - now_mono,
            now_wall,
            history,
            None,
            0,
        )
        inserted = await self._write_in_commit(self._insert, row)
        if inserted:
            self._accepts += 1
            if self._accepts % _PRUNE_EVERY == 0:
                await self.prune()
        return inserted

    async def transition(
        self,
        command: Command,
        status: CommandStatus,
        *,
        now_mono: float,
        now_wall: float,
        detail: str | None = None,
    ) -> bool:
        """Move a stored command to ``status``.

        False (nothing changed) when the command is already final: a command has exactly one
        final result, so a late node answer after ``expired`` is not recorded. UnknownCommand
        if it was never accepted.
        """
        key = (command.origin, command.device, command.id)
        entry = HistoryEntry(CommandStatus(status), now_wall, detail)
        return await self._write_in_commit(
            self._transition, key, entry, command.deadline - now_mono
        )

    async def forget(self, command: Command) -> None:
        """Drop a command's state: another gateway of a fleet carries it out and answers it;
        should it come back here, it is taken as new."""
        key = (command.origin, command.device, command.id)
        await self._write_in_commit(
            self._write,
            "DELETE FROM command_states WHERE origin = ? AND device = ? AND id = ?",
            key,
        )

    async def get(self, origin: str, device: str, command_id: str) -> CommandState | None:
        rows = await self._run(
            self._select, "origin = ? AND device = ? AND id = ?", (origin, device, command_id)
        )
        return rows[0] if rows else None

    async def open_commands(self) -> list[CommandState]:
        """States still ``accepted`` or ``sent``."""
        return await self._run(self._select, "status IN (?, ?)", _OPEN_STATUSES)

    async def recover(self, *, now_wall: float) -> list[CommandState]:
        """Settle commands left open by the previous run (see module doc); return them."""
        settled = await self._run(self._recover, now_wall)
        if settled:
            log.warning(
                "%d commands were open when the gateway stopped; settled as expired/timeout",
                len(settled),
            )
        return settled

    async def unpublished_results(self) -> list[CommandState]:
        """Final states whose result has not been confirmed published."""
        return await self._run(self._select, _UNPUBLISHED, _OPEN_STATUSES)

    async def due_results(self, *, now_wall: float, max_delay_s: float) -> list[CommandState]:
        """Unpublished final results whose scheduled retry is due at ``now_wall``.

        A retry more than ``max_delay_s`` away can only come from a wall clock that was set
        back since: it is due now, not after the clock catches up.
        """
        return await self._run(
            self._select,
            f"{_UNPUBLISHED} AND (retry_at <= ? OR retry_at > ?)",
            (*_OPEN_STATUSES, now_wall, now_wall + max_delay_s),
        )

    async def schedule_result_retry(
        self, origin: str, device: str, command_id: str, *, attempts: int, retry_at: float | None
    ) -> None:
        """Record ``attempts`` failed attempts; retry at ``retry_at`` (None: given up)."""
        await self._write_in_commit(
            self._write,
            "UPDATE command_states SET result_attempts = ?, retry_at = ? "
            "WHERE origin = ? AND device = ? AND id = ?",
            (attempts, retry_at, origin, device, command_id),
        )

    async def schedule_unpublished(self, *, now_wall: float, max_attempts: int) -> int:
        """At start: make every unpublished final result not given up due now; how many."""
        return await self._write_in_commit(
            self._write,
            f"UPDATE command_states SET retry_at = ? WHERE {_UNPUBLISHED} AND result_attempts < ?",
            (now_wall, *_OPEN_STATUSES, max_attempts),
        )

    async def mark_result_published(
        self, origin: str, device: str, command_id: str, status: CommandStatus
    ) -> None:
        await self._write_in_commit(
            self._write,
            "UPDATE command_states SET published_status = ?, retry_at = NULL "
            "WHERE origin = ? AND device = ? AND id = ?",
            (CommandStatus(status).value, origin, device, command_id),
        )

    async def prune(self) -> int:
        """Delete the oldest final states beyond ``max_states``; return how many."""
        return await self._write_in_commit(self._prune)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(StoreError):  # the last user's commit: said by its writer
            await self._journal.close()

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Reads (and the start-up recovery, a transaction of its own)."""
        if self._closed:
            raise CommandStoreError("command store is closed")
        try:
            return await self._journal.run(fn, *args)
        except StoreError as exc:
            raise CommandStoreError(f"command store database: {exc}") from None

    async def _write_in_commit(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise CommandStoreError("command store is closed")
        try:
            return await self._journal.write(fn, *args)
        except StoreError as exc:
            raise CommandStoreError(f"command store database: {exc}") from None

    # -- worker thread ----------------------------------------------------------------------

    def _insert(self, row: tuple[Any, ...]) -> bool:
        cur = self._conn.execute(
            f"INSERT OR IGNORE INTO command_states ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            row,
        )
        return cur.rowcount == 1

    def _transition(self, key: tuple[str, str, str], entry: HistoryEntry, remaining: float) -> bool:
        """Inside the journal's transaction (``Journal.write``)."""
        row = self._conn.execute(
            "SELECT status, history FROM command_states WHERE origin = ? AND device = ? AND id = ?",
            key,
        ).fetchone()
        if row is None:
            raise UnknownCommand(f"no command {key[2]!r} for {key[1]} from {key[0]}")
        if CommandStatus(row[0]).final:
            return False
        history = (*_history_from_json(row[1]), entry)
        self._conn.execute(
            "UPDATE command_states SET status = ?, remaining_s = ?, saved_wall = ?, "
            "history = ? WHERE origin = ? AND device = ? AND id = ?",
            (entry.status.value, remaining, entry.ts, _history_json(history), *key),
        )
        return True

    def _recover(self, now_wall: float) -> list[CommandState]:
        conn = self._conn
        settled: list[CommandState] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for state in self._select("status IN (?, ?)", _OPEN_STATUSES):
                final = (
                    CommandStatus.EXPIRED
                    if state.status is CommandStatus.ACCEPTED
                    else CommandStatus.TIMEOUT
                )
                history = (*state.history, HistoryEntry(final, now_wall, RESTART_DETAIL))
                conn.execute(
                    "UPDATE command_states SET status = ?, saved_wall = ?, history = ? "
                    "WHERE origin = ? AND device = ? AND id = ?",
                    (final.value, now_wall, _history_json(history), *state.key),
                )
                settled.append(
                    CommandState(
                        state.origin,
                        state.device,
                        state.id,
                        state.action,
                        state.reply_to,
                        final,
                        state.remaining_s,
                        now_wall,
                        history,
                        state.published_status,
                        state.result_attempts,
                    )
                )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return settled

    def _select(self, where: str, args: tuple[Any, ...]) -> list[CommandState]:
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM command_states WHERE {where} ORDER BY rowid", args
        ).fetchall()
        states = []
        for row in rows:
            try:
                states.append(_state_from_row(row))
            except (ValueError, TypeError, KeyError) as exc:
                log.error(
                    "command state %r for %s is unreadable (%s); skipped", row[2], row[1], exc
                )
        return states

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        return self._conn.execute(sql, args).rowcount

    def _prune(self) -> int:
        excess = (
            self._conn.execute("SELECT COUNT(*) FROM command_states").fetchone()[0]
            - self.max_states
        )
        if excess <= 0:
            return 0
        cur = self._conn.execute(
            "DELETE FROM command_states WHERE rowid IN (SELECT rowid FROM command_states "
            "WHERE status NOT IN (?, ?) ORDER BY rowid LIMIT ?)",
            (*_OPEN_STATUSES, excess),
        )
        return cur.rowcount


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(command_states)")}
    for name, definition in _ADDED_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE command_states ADD COLUMN {name} {definition}")


def _history_json(history: tuple[HistoryEntry, ...]) -> str:
    return json.dumps([[str(h.status), h.ts, h.detail] for h in history], separators=(",", ":"))


def _history_from_json(text: str) -> tuple[HistoryEntry, ...]:
    return tuple(HistoryEntry(CommandStatus(s), float(ts), d) for s, ts, d in json.loads(text))


def _state_from_row(row: tuple[Any, ...]) -> CommandState:
    (
        origin,
        device,
        command_id,
        action,
        reply_to,
        status,
        remaining,
        saved,
        history,
        published,
        attempts,
    ) = row
    return CommandState(
        origin=origin,
        device=device,
        id=command_id,
        action=action,
        reply_to=json.loads(reply_to),
        status=CommandStatus(status),
        remaining_s=remaining,
        saved_wall=saved,
        history=_history_from_json(history),
        published_status=CommandStatus(published) if published else None,
        result_attempts=attempts,
    )
