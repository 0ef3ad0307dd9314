"""Reconnect supervision shared by the upstreams, and the task sets every owner keeps."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tasks import TaskSet, cancel_and_wait, first_of
from gateway.upstreams.supervision import Backoff, keep_connected


def test_backoff_grows_and_starts_over_after_a_reset() -> None:
    backoff = Backoff(0.5, 4.0, draw=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    jittered = Backoff(0.5, 4.0, draw=lambda: 1.0)
    assert jittered.next_delay() == 0.25


async def test_sessions_run_until_stopped_with_backoff_reset_after_a_good_one() -> None:
    outcomes = iter([False, RuntimeError("refused"), True, False, True])
    waits: list[float] = []
    errors: list[str] = []
    stop = False

    async def session() -> bool:
        nonlocal stop
        outcome = next(outcomes, None)
        if outcome is None:
            stop = True
            return False
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    backoff = Backoff(0.001, 1.0, draw=lambda: 0.0)
    await keep_connected(
        session,
        backoff,
        on_error=lambda exc: errors.append(str(exc)),
        before_retry=waits.append,
        stopping=lambda: stop,
    )
    assert errors == ["refused"]
    # failed, failed (raised), good (starts over), failed, good (starts over); then the stop.
    assert waits == [0.001, 0.002, 0.001, 0.002, 0.001]


async def test_keep_connected_ends_only_by_cancellation_without_a_stop() -> None:
    attempts = 0

    async def session() -> bool:
        nonlocal attempts
        attempts += 1
        return False

    task = asyncio.ensure_future(
        keep_connected(session, Backoff(0.001, 0.002), on_error=lambda _exc: None)
    )
    while attempts < 3:
        await asyncio.sleep(0.001)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_set_logs_a_failure_once_and_cancels_what_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSet(logging.getLogger("test.tasks"), "worker failed")
    forever = asyncio.Event()

    async def fail() -> None:
        raise ValueError("bad input")

    failing = tasks.spawn(fail())
    waiting = tasks.spawn(forever.wait(), name="waiting")
    await asyncio.wait([failing])
    await asyncio.sleep(0)
    assert len(tasks) == 1
    assert caplog.messages == ["worker failed: ValueError: bad input"]
    await tasks.cancel_all()
    assert waiting.cancelled() and len(tasks) == 0


async def test_first_of_returns_with_the_first_and_cancels_the_rest() -> None:
    never = asyncio.Event()
    soon = asyncio.Event()
    asyncio.get_running_loop().call_soon(soon.set)
    await first_of(never.wait(), soon.wait())
    assert soon.is_set() and not never.is_set()
