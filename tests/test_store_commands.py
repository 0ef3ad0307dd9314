from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.model import Command, CommandResult, CommandStatus
from gateway.store.commands import (
    RESTART_DETAIL,
    CommandStore,
    HistoryEntry,
    UnknownCommand,
    UnstorableCommand,
)

DEVICE = "lora-0011223344556677"
WALL = 1_780_000_000.0
MONO = 500.0
REPLY = {"response_topic": "app/replies/7", "correlation_data_hex": "00ff"}


def command(command_id: str = "c1", *, origin: str = "mqtt", ttl: float = 30.0) -> Command:
    return Command(
        id=command_id,
        device=DEVICE,
        action="unlock",
        params={"door": 1},
        deadline=MONO + ttl,
        origin=origin,
        reply_to=REPLY,
    )


async def test_accept_and_transitions(tmp_path: Path) -> None:
    store = await CommandStore.open(tmp_path)
    try:
        cmd = command()
        assert await store.accept(cmd, now_mono=MONO, now_wall=WALL)
        assert await store.transition(cmd, CommandStatus.SENT, now_mono=MONO + 2, now_wall=WALL + 2)
        assert await store.transition(
            cmd, CommandStatus.EXECUTED, now_mono=MONO + 5, now_wall=WALL + 5, detail="ok"
        )
        state = await store.get("mqtt", DEVICE, "c1")
        assert state is not None
        assert state.status is CommandStatus.EXECUTED
        assert state.remaining_s == pytest.approx(25.0)
        assert state.saved_wall == WALL + 5
        assert state.reply_to == REPLY
        assert state.history == (
            HistoryEntry(CommandStatus.ACCEPTED, WALL),
            HistoryEntry(CommandStatus.SENT, WALL + 2),
            HistoryEntry(CommandStatus.EXECUTED, WALL + 5, "ok"),
        )
        assert state.result() == CommandResult("c1", DEVICE, CommandStatus.EXECUTED, WALL + 5, "ok")
    finally:
        await store.close()


async def test_duplicate_is_recognised_per_origin_and_device(tmp_path: Path) -> None:
    store = await CommandStore.open(tmp_path)
    try:
        assert await store.accept(command("c1"), now_mono=MONO, now_wall=WALL)
        assert not await store.accept(command("c1"), now_mono=MONO + 1, now_wall=WALL + 1)
        assert await store.accept(command("c1", origin="xmpp"), now_mono=MONO, now_wall=WALL)
    finally:
        await store.close()


async def test_only_one_final_result(tmp_path: Path) -> None:
    store = await CommandStore.open(tmp_path)
    try:
        cmd = command()
        await store.accept(cmd, now_mono=MONO, now_wall=WALL)
        assert await store.transition(
            cmd, CommandStatus.EXPIRED, now_mono=MONO + 31, now_wall=WALL + 31
        )
        late = await store.transition(
            cmd, CommandStatus.EXECUTED, now_mono=MONO + 40, now_wall=WALL + 40
        )
        assert late is False
        state = await store.get("mqtt", DEVICE, "c1")
        assert state is not None and state.status is CommandStatus.EXPIRED
        assert len(state.history) == 2
    finally:
        await store.close()


async def test_unknown_command(tmp_path: Path) -> None:
    store = await CommandStore.open(tmp_path)
    try:
        with pytest.raises(UnknownCommand):
            await store.transition(command(), CommandStatus.SENT, now_mono=MONO, now_wall=WALL)
        assert await store.get("mqtt", DEVICE, "nope") is None
    finally:
        await store.close()


async def test_reply_address_must_be_json(tmp_path: Path) -> None:
    store = await CommandStore.open(tmp_path)
    try:
        bad = Command("c9", DEVICE, "x", {}, MONO + 1, "mqtt", {"correlation_data": b"\x00"})
        with pytest.raises(UnstorableCommand):
            await store.accept(bad, now_mono=MONO, now_wall=WALL)
    finally:
        await store.close()


async def test_restart_settles_open_commands(tmp_path: Path) -> None:
    store = await CommandStore.open(tmp_path)
    queued, sent, done = command("queued"), command("sent"), command("done")
    for cmd in (queued, sent, done):
        await store.accept(cmd, now_mono=MONO, now_wall=WALL)
    await store.transition(sent, CommandStatus.SENT, now_mono=MONO + 1, now_wall=WALL + 1)
    await store.transition(done, CommandStatus.SENT, now_mono=MONO + 1, now_wall=WALL + 1)
    await store.transition(done, CommandStatus.EXECUTED, now_mono=MONO + 2, now_wall=WALL + 2)
    await store.mark_result_published("mqtt", DEVICE, "done", CommandStatus.EXECUTED)
    assert {s.id for s in await store.open_commands()} == {"queued", "sent"}
    await store.close()

    # The process restarts: the monotonic clock starts over; nothing open survives.
    reopened = await CommandStore.open(tmp_path)
    try:
        settled = await reopened.recover(now_wall=WALL + 100)
        by_id = {s.id: s for s in settled}
        assert set(by_id) == {"queued", "sent"}
        assert by_id["queued"].status is CommandStatus.EXPIRED
        assert by_id["sent"].status is CommandStatus.TIMEOUT
        assert by_id["sent"].result() == CommandResult(
            "sent", DEVICE, CommandStatus.TIMEOUT, WALL + 100, RESTART_DETAIL
        )
        assert by_id["queued"].reply_to == REPLY
        assert await reopened.open_commands() == []
        assert await reopened.recover(now_wall=WALL + 200) == []

        pending = await reopened.unpublished_results()
        assert {s.id for s in pending} == {"queued", "sent"}
        await reopened.mark_result_published("mqtt", DEVICE, "queued", CommandStatus.EXPIRED)
        assert {s.id for s in await reopened.unpublished_results()} == {"sent"}
    finally:
        await reopened.close()


async def test_prune_keeps_open_commands(tmp_path: Path) -> None:
    store = await CommandStore.open(tmp_path, max_states=5)
    try:
        for n in range(8):
            cmd = command(f"c{n}")
            await store.accept(cmd, now_mono=MONO, now_wall=WALL)
            if n < 6:
                await store.transition(
                    cmd, CommandStatus.FAILED, now_mono=MONO, now_wall=WALL, detail="nack"
                )
        assert await store.prune() == 3
        assert await store.get("mqtt", DEVICE, "c0") is None
        assert await store.get("mqtt", DEVICE, "c3") is not None
        assert {s.id for s in await store.open_commands()} == {"c6", "c7"}
    finally:
        await store.close()


async def test_only_results_whose_first_publication_failed_are_due_and_only_when_due(
    tmp_path: Path,
) -> None:
    store = await CommandStore.open(tmp_path)
    try:
        for name in ("in-flight", "failed", "given-up"):
            cmd = command(name)
            await store.accept(cmd, now_mono=MONO, now_wall=WALL)
            await store.transition(cmd, CommandStatus.EXPIRED, now_mono=MONO, now_wall=WALL)
        # A result whose first publication is still under way is nobody else's to publish.
        assert await store.due_results(now_wall=WALL + 1000, max_delay_s=300) == []
        await store.schedule_result_retry("mqtt", DEVICE, "failed", attempts=1, retry_at=WALL + 2)
        await store.schedule_result_retry("mqtt", DEVICE, "given-up", attempts=8, retry_at=None)
        assert await store.due_results(now_wall=WALL + 1, max_delay_s=300) == []
        (due,) = await store.due_results(now_wall=WALL + 2, max_delay_s=300)
        assert (due.id, due.result_attempts) == ("failed", 1)
        # A wall clock set back by an hour does not hold the retry back for an hour.
        assert [s.id for s in await store.due_results(now_wall=WALL - 3600, max_delay_s=300)] == [
            "failed"
        ]
        await store.mark_result_published("mqtt", DEVICE, "failed", CommandStatus.EXPIRED)
        assert await store.due_results(now_wall=WALL + 5, max_delay_s=300) == []
    finally:
        await store.close()

    # After a restart the result cut short becomes due; the one given up stays given up.
    reopened = await CommandStore.open(tmp_path)
    try:
        assert await reopened.schedule_unpublished(now_wall=WALL + 10, max_attempts=8) == 1
        due = await reopened.due_results(now_wall=WALL + 10, max_delay_s=300)
        assert [s.id for s in due] == ["in-flight"]
    finally:
        await reopened.close()


async def test_a_store_from_before_result_retries_gains_the_columns(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "duogate.sqlite3")
    old.executescript(
        """
        CREATE TABLE command_states (
            origin TEXT NOT NULL, device TEXT NOT NULL, id TEXT NOT NULL, action TEXT NOT NULL,
            reply_to TEXT NOT NULL, status TEXT NOT NULL, remaining_s REAL NOT NULL,
            saved_wall REAL NOT NULL, history TEXT NOT NULL, published_status TEXT,
            UNIQUE (origin, device, id)
        );
        INSERT INTO command_states VALUES ('mqtt', 'lora-0011223344556677', 'old', 'ping', '{}',
            'executed', 0, 1780000000,
            '[["accepted",1780000000,null],["executed",1780000001,null]]', NULL);
        """
    )
    old.commit()
    old.close()
    store = await CommandStore.open(tmp_path)
    try:
        (state,) = await store.unpublished_results()
        assert (state.id, state.result_attempts) == ("old", 0)
        assert await store.schedule_unpublished(now_wall=WALL, max_attempts=8) == 1
    finally:
        await store.close()
