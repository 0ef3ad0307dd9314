"""Command results back the way their command came, final ones published exactly once.

A result goes to the upstream the command came from (``publish_result``), or to the waiting
console or web request. A final result is published once when its command ends; only if that
fails is it retried, by the retry loop alone, with a growing delay (attempts made while the
upstream is down do not count), and given up after ``MAX_RESULT_ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from gateway.model import Command, CommandResult
from gateway.store.commands import CommandState, CommandStore
from gateway.upstreams.base import Upstream, UpstreamError

log = logging.getLogger("duogate.bridge")

LOCAL_ORIGINS = ("console", "web")
RESULT_RETRY_S = 2.0  # how often due retries are looked for, and the first retry delay
RESULT_RETRY_MAX_S = 300.0
MAX_RESULT_ATTEMPTS = 8  # failed publications of a final result before it is given up


class ResultSender:
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        commands: CommandStore,
        counters: Counter[str],
        *,
        wall: Callable[[], float],
        store_errors: tuple[type[BaseException], ...],
    ) -> None:
        self.upstreams = upstreams
        self.commands = commands
        self.counters = counters  # results_given_up
        self._wall = wall
        self._store_errors = store_errors
        self._local_waiters: dict[tuple[str, str], asyncio.Future[CommandResult]] = {}

    async def schedule_unpublished(self) -> None:
        """After a restart: final results never published are due for a retry."""
        await self.commands.schedule_unpublished(
            now_wall=self._wall(), max_attempts=MAX_RESULT_ATTEMPTS
        )

    def expect_local(self, origin: str, command_id: str) -> asyncio.Future[CommandResult]:
        """A future for the final result of a console or web command."""
        waiter: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._local_waiters[(origin, command_id)] = waiter
        return waiter

    def forget_local(self, origin: str, command_id: str) -> None:
        self._local_waiters.pop((origin, command_id), None)

    async def send(
        self, origin: str, reply_to: dict[str, Any], result: CommandResult, *, final: bool = True
    ) -> bool:
        """Send a result back the way its command came; False if that is not possible now."""
        if origin in LOCAL_ORIGINS:
            waiter = self._local_waiters.get((origin, result.id))
            if final and waiter is not None and not waiter.done():
                waiter.set_result(result)
            return True
        upstream = self.upstreams.get(origin)
        if upstream is None:
            return True
        try:
            await upstream.publish_result(result, reply_to)
        except (UpstreamError, ValueError) as exc:
            log.info("%s result of %r not sent yet: %s", origin, result.id, exc)
            return False
        return True

    async def publish_final(self, command: Command, result: CommandResult) -> None:
        """Publish the final result of ``command`` once; on failure leave it to the retries."""
        upstream = self.upstreams.get(command.origin)
        connected = upstream is None or upstream.connected
        if await self.send(command.origin, command.reply_to, result):
            await self.commands.mark_result_published(
                command.origin, command.device, command.id, result.status
            )
            return
        # From here on only the retry loop publishes this result.
        attempts = 1 if connected else 0
        await self.commands.schedule_result_retry(
            command.origin,
            command.device,
            command.id,
            attempts=attempts,
            retry_at=result.ts + retry_delay(attempts),
        )

    async def retry_loop(self) -> None:
        """Final results whose first publication failed, retried when due."""
        while True:
            await asyncio.sleep(RESULT_RETRY_S)
            try:
                for state in await self.commands.due_results(
                    now_wall=self._wall(), max_delay_s=RESULT_RETRY_MAX_S
                ):
                    await self._retry(state)
            except self._store_errors as exc:
                log.error("command results not republished (will retry): %s", exc)

    async def _retry(self, state: CommandState) -> None:
        upstream = self.upstreams.get(state.origin)
        if upstream is not None and not upstream.connected:
            return  # due again as soon as the upstream is back; no attempt spent
        key = (state.origin, state.device, state.id)
        if await self.send(state.origin, state.reply_to, state.result()):
            await self.commands.mark_result_published(*key, state.status)
            return
        attempts = state.result_attempts + 1
        if attempts >= MAX_RESULT_ATTEMPTS:
            await self.commands.schedule_result_retry(*key, attempts=attempts, retry_at=None)
            self.counters["results_given_up"] += 1
            log.warning(
                "%s result %s of %r for %s given up after %d attempts",
                state.origin,
                state.status,
                state.id,
                state.device,
                attempts,
            )
            return
        await self.commands.schedule_result_retry(
            *key, attempts=attempts, retry_at=self._wall() + retry_delay(attempts)
        )


def retry_delay(failed_attempts: int) -> float:
    """Seconds before the next publication of a result that failed ``failed_attempts`` times."""
    return min(RESULT_RETRY_MAX_S, RESULT_RETRY_S * 2 ** max(failed_attempts - 1, 0))
