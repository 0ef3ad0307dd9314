"""Local controls: what the console and the web page may do on a running gateway.

Commands from here take the same path as any other (``router.CommandRouter``), tagged with
their origin (``console`` or ``web``); the caller waits for the final result. Besides
commands: reconfiguring the radio and changing the log level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from drivers.radio.base import Radio, RadioSettings
from gateway.bridge.results import LOCAL_ORIGINS, ResultSender
from gateway.bridge.router import CommandRouter
from gateway.logsetup import set_level
from gateway.model import CommandResult, CommandStatus, IncomingCommand
from gateway.state import GatewayState, radio_settings_with


class LocalControls:
    """The ``Controls`` (gateway.state) of one local front end."""

    def __init__(
        self,
        origin: str,
        *,
        router: CommandRouter,
        results: ResultSender,
        state: GatewayState,
        radio: Radio | None,
        ids: Iterator[int],
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        if origin not in LOCAL_ORIGINS:
            raise ValueError(f"not a local origin: {origin!r}")
        self.origin = origin
        self._router = router
        self._results = results
        self._state = state
        self._radio = radio
        self._ids = ids  # shared by the console and the web page: no id is given twice
        self._mono = monotonic
        self._wall = wall

    async def send_command(
        self, device: str, action: str, params: dict[str, Any], ttl_s: float | None
    ) -> CommandResult:
        """Send a command and return its final result (``rejected`` if it is invalid)."""
        origin = self.origin
        command_id = f"{origin}-{int(self._wall())}-{next(self._ids)}"
        body: dict[str, Any] = {"id": command_id, "action": action, "params": params}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        waiter = self._results.expect_local(origin, command_id)
        try:
            await self._router.on_command(IncomingCommand(origin, device, body, self._mono()))
            if not waiter.done():
                # Rejections are answered before a waiter could see them: look them up.
                state = await self._router.commands.get(origin, device, command_id)
                if state is None:
                    return CommandResult(
                        command_id, device, CommandStatus.REJECTED, self._wall(), "invalid command"
                    )
            return await waiter
        finally:
            self._results.forget_local(origin, command_id)

    async def reconfigure_radio(self, changes: dict[str, Any]) -> RadioSettings:
        if self._radio is None:
            raise ValueError("no radio configured")
        settings = radio_settings_with(self._radio.settings, changes)
        await self._radio.reconfigure(settings)
        self._state.radio = settings
        return settings

    def set_log_level(self, level: str) -> None:
        set_level(level)
