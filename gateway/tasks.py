"""Background tasks that one owner starts and ends together.

A task created with ``asyncio.create_task`` and then forgotten can be garbage-collected
mid-run, and its exception is reported only as "never retrieved". ``TaskSet`` keeps every
task referenced until it ends, logs a failure once in the owner's words, and cancels and
awaits whatever is still running when the owner stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    """Tasks of one owner (the bridge, an upstream, the LoRa shell)."""

    def __init__(self, log: logging.Logger, failure: str) -> None:
        self._log = log
        self._failure = failure  # log line for a task that raised, e.g. "bridge task failed"
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every running task and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("%s: %s", self._failure, describe(task.exception()))


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end, whatever it ends with.

    Waiting never swallows the caller's own cancellation (``asyncio.wait`` does not raise
    what the task raised; a bare ``await task`` under ``suppress(CancelledError)`` would).
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    _retrieve(task)


async def first_of(*awaitables: Any) -> None:
    """Wait until one of ``awaitables`` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:
            _retrieve(task)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of an ended task as seen (its owner logged any failure)."""
    if not task.cancelled():
        task.exception()


def describe(exc: BaseException | None) -> str:
    """``Type: message`` of an exception for a one-line log."""
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
