"""Command router: intake, validation and the lifecycle of each command.

A command from an upstream (or the console and web page) is validated against the envelope
and expiry rules, refused by its driver or recorded ``accepted`` (a repeated id is answered
from the store, never executed twice), routed to the driver that owns its device, and ends
in exactly one final result (``results.ResultSender``). Intermediate statuses (``sent``) come
from the drivers through ``on_driver_progress``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from gateway.bridge.directory import DriverDirectory
from gateway.bridge.results import ResultSender
from gateway.fleet.role import SERVED_ELSEWHERE
from gateway.model import Command, CommandResult, CommandStatus, IncomingCommand
from gateway.protocol import envelope, expiry
from gateway.state import GatewayState
from gateway.store.commands import CommandStore
from gateway.tasks import TaskSet

log = logging.getLogger("duogate.bridge")


class CommandRouter:
    def __init__(
        self,
        *,
        state: GatewayState,
        drivers: DriverDirectory,
        commands: CommandStore,
        results: ResultSender,
        policy: expiry.ExpiryPolicy,
        max_message_bytes: int,
        counters: Counter[str],
        tasks: TaskSet,
        storage_problem: Callable[[str | None], None],
        store_errors: tuple[type[BaseException], ...],
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.state = state
        self.drivers = drivers
        self.commands = commands
        self.results = results
        self.policy = policy
        self.max_message_bytes = max_message_bytes
        self.counters = counters  # commands_rejected
        self._tasks = tasks
        self._storage_problem = storage_problem
        self._store_errors = store_errors
        self._mono = monotonic
        self._wall = wall

    async def recover(self) -> None:
        """After a restart: commands left open were ended by it (counted, logged)."""
        for state in await self.commands.recover(now_wall=self._wall()):
            log.info("command %r for %s ended by restart: %s", state.id, state.device, state.status)
            self.state.count_command(state.status)

    async def on_command(self, incoming: IncomingCommand) -> None:
        """Take a command from an upstream; never raises for bad input."""
        now_mono, now_wall = self._mono(), self._wall()
        outcome = envelope.validate(
            incoming,
            self.drivers.knows,
            self.policy,
            now_mono=now_mono,
            now_wall=now_wall,
            max_bytes=self.max_message_bytes,
        )
        if isinstance(outcome, envelope.Rejection):
            self.count_rejection()
            log.info(
                "command %r for %s from %s rejected: %s",
                outcome.command_id,
                incoming.device,
                incoming.origin,
                outcome.reason,
            )
            await self.results.send(incoming.origin, incoming.reply_to, outcome.result(now_wall))
            return
        command = outcome
        refusal = self._refusal(command)
        if refusal is not None:
            self.count_rejection()
            log.info("command %r for %s rejected: %s", command.id, command.device, refusal)
            rejected = CommandResult(
                command.id, command.device, CommandStatus.REJECTED, now_wall, refusal
            )
            await self.results.send(command.origin, command.reply_to, rejected)
            return
        try:
            accepted = await self.commands.accept(command, now_mono=now_mono, now_wall=now_wall)
        except self._store_errors as exc:
            self._storage_problem(f"command store: {exc}")
            # Without a stored state there is no promise of exactly one final result: refuse.
            log.error("command %r for %s not stored: %s", command.id, command.device, exc)
            failed = CommandResult(
                command.id, command.device, CommandStatus.FAILED, now_wall, "not_stored"
            )
            await self.results.send(command.origin, command.reply_to, failed)
            return
        if not accepted:
            existing = await self.commands.get(command.origin, command.device, command.id)
            log.info("command %r for %s repeated; not executed again", command.id, command.device)
            if existing is not None:
                await self.results.send(command.origin, command.reply_to, existing.result())
            return
        self._tasks.spawn(self._run(command))

    def count_rejection(self) -> None:
        self.counters["commands_rejected"] += 1
        self.state.count_command(CommandStatus.REJECTED)

    def on_driver_progress(
        self, command: Command, status: CommandStatus, detail: str | None
    ) -> None:
        """Intermediate status from a driver (``sent``)."""
        self._tasks.spawn(self._progress(command, status, detail))

    def _refusal(self, command: Command) -> str | None:
        """Why the device's driver refuses the command outright (e.g. ``unknown_action``).

        Drivers may offer ``refusal(command) -> str | None``; a refused command is answered
        ``rejected`` without ever being ``accepted``.
        """
        check: Any = getattr(self.drivers.owner(command.device), "refusal", None)
        return check(command) if callable(check) else None

    async def _run(self, command: Command) -> None:
        reason = expiry.check(command, self._mono(), stage=expiry.Stage.ARRIVAL)
        if reason is not None and not command.carried:  # a carried one: its node is asked
            await self._finish(command, CommandStatus.EXPIRED, reason)
            return
        await self._progress(command, CommandStatus.ACCEPTED, None)
        driver = self.drivers.owner(command.device)
        if driver is None:
            await self._finish(command, CommandStatus.REJECTED, "unknown_device")
            return
        try:
            result = await driver.execute(command)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("command %r for %s failed in its driver", command.id, command.device)
            await self._finish(command, CommandStatus.FAILED, f"driver_error: {exc}")
            return
        if result.detail == SERVED_ELSEWHERE:
            log.info(
                "command %r for %s: left to the gateway serving it now", command.id, command.device
            )
            await self.commands.forget(command)
            return
        await self._finish(command, result.status, result.detail)

    async def _progress(self, command: Command, status: CommandStatus, detail: str | None) -> None:
        now_mono, now_wall = self._mono(), self._wall()
        if status is not CommandStatus.ACCEPTED:
            await self.commands.transition(
                command, status, now_mono=now_mono, now_wall=now_wall, detail=detail
            )
        result = CommandResult(command.id, command.device, status, now_wall, detail)
        await self.results.send(command.origin, command.reply_to, result, final=False)

    async def _finish(self, command: Command, status: CommandStatus, detail: str | None) -> None:
        now_mono, now_wall = self._mono(), self._wall()
        if not await self.commands.transition(
            command, status, now_mono=now_mono, now_wall=now_wall, detail=detail
        ):
            return  # already final: exactly one final result is ever published
        self.state.count_command(status)
        log.info(
            "command %r for %s: %s%s",
            command.id,
            command.device,
            status,
            f" ({detail})" if detail else "",
        )
        result = CommandResult(command.id, command.device, status, now_wall, detail)
        await self.results.publish_final(command, result)
