"""One person at the console prompt: typed lines in, requests run against the live state and
the bridge's controls, text out. Transports (``server``) feed it bytes and give it an output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Protocol

from gateway.console.editor import LineEditor, LineTooLong
from gateway.console.formatting import (
    format_duty_cycle,
    format_frame,
    format_leases,
    format_nodes,
    format_radio,
    format_result,
    format_status,
)
from gateway.console.parser import (
    HELP,
    MAX_LINE,
    ConsoleInputError,
    ConsoleRequest,
    HelpRequest,
    LeasesRequest,
    LogLevelRequest,
    NodesRequest,
    QuitRequest,
    RadioSetRequest,
    RadioShowRequest,
    SendRequest,
    StatusRequest,
    TailRequest,
    parse_command,
)
from gateway.console.wire import BANNER, FAREWELL, PROMPT
from gateway.model import CommandResult
from gateway.state import Controls, GatewayState

log = logging.getLogger(__name__)

MAX_QUEUED_LINES = 64
MAX_OUTPUT_BUFFER = 256 * 1024
TAIL_BACKLOG = 10


class ConsoleOutput(Protocol):
    def write(self, text: str) -> None: ...

    def buffered(self) -> int: ...

    @property
    def closed(self) -> bool: ...


_EOF = object()


class ConsoleSession:
    """One person at the prompt. Transports call ``feed``/``feed_eof``; ``run`` serves them."""

    def __init__(
        self,
        state: GatewayState,
        controls: Controls | None,
        output: ConsoleOutput,
        *,
        echo: bool,
        background: set[asyncio.Task[Any]] | None = None,
        farewell: str = FAREWELL,
    ) -> None:
        self._state = state
        self._farewell = farewell
        self._controls = controls
        self._out = output
        self._editor = LineEditor(echo=echo)
        self._lines: asyncio.Queue[Any] = asyncio.Queue()
        self._busy = False
        self._interrupted = asyncio.Event()
        self._quit = False
        self._background = background if background is not None else set()

    def feed(self, data: bytes) -> None:
        if self._busy:
            # Any key stops a running tail or wait; what was typed is not kept.
            self._interrupted.set()
            return
        lines, echo = self._editor.feed(data)
        if echo:
            self._out.write(echo)
        for line in lines:
            if self._lines.qsize() >= MAX_QUEUED_LINES:
                self._state.counters.console_errors += 1
                continue
            self._lines.put_nowait(line)

    def feed_eof(self) -> None:
        self._interrupted.set()
        self._lines.put_nowait(_EOF)

    async def run(self, banner: str = BANNER) -> None:
        self._out.write(banner + PROMPT)
        while True:
            item = await self._lines.get()
            if item is _EOF or self._out.closed:
                return
            await self._run_line(item)
            if self._quit or self._out.closed:
                return
            self._out.write(PROMPT)

    async def _run_line(self, item: str | LineTooLong) -> None:
        try:
            if isinstance(item, LineTooLong):
                raise ConsoleInputError(
                    f"line too long ({item.length} characters, at most {MAX_LINE})"
                )
            request = parse_command(item)
            if request is not None:
                await self._dispatch(request)
        except ConsoleInputError as exc:
            self._error(str(exc))
        except ValueError as exc:  # a control refused a value
            self._error(str(exc).splitlines()[0] if str(exc) else "invalid value")
        except Exception as exc:
            log.exception("console command failed")
            self._out.write(f"error: internal error: {type(exc).__name__}: {exc}\n")

    def _error(self, message: str) -> None:
        self._state.counters.console_errors += 1
        self._out.write(f"error: {message}\n")

    async def _dispatch(self, request: ConsoleRequest) -> None:
        state = self._state
        match request:
            case HelpRequest():
                self._out.write(HELP)
            case StatusRequest():
                self._out.write(format_status(state))
            case NodesRequest():
                self._out.write(format_nodes(state))
            case LeasesRequest():
                self._out.write(format_leases(state))
            case RadioShowRequest():
                self._out.write(f"radio       {format_radio(state.radio)}\n")
                self._out.write(f"duty cycle  {format_duty_cycle(state.duty_cycle_used())}\n")
            case TailRequest():
                await self._tail()
            case SendRequest():
                await self._send(request)
            case RadioSetRequest(changes=changes):
                settings = await self._need_controls().reconfigure_radio(changes)
                self._out.write(f"radio       {format_radio(settings)}\n")
            case LogLevelRequest(level=level):
                self._need_controls().set_log_level(level)
                self._out.write(f"log level {level}\n")
            case QuitRequest():
                self._out.write(self._farewell)
                self._quit = True

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[asyncio.Future[Any]]:
        """While inside, any input stops the command (and is discarded): yields the stop signal.

        Lines that were already queued count as input typed after the command.
        """
        self._busy = True
        self._interrupted.clear()
        if not self._lines.empty():
            self._interrupted.set()
        stop = asyncio.ensure_future(self._interrupted.wait())
        try:
            yield stop
        finally:
            stop.cancel()
            self._busy = False

    def _need_controls(self) -> Controls:
        if self._controls is None:
            raise ConsoleInputError("not available: the gateway has no controls attached")
        return self._controls

    async def _tail(self) -> None:
        frames = self._state.frames
        self._out.write("live frames; any key stops\n")
        with frames.subscribe() as subscription, self._interruptible() as stop:
            for entry in frames.recent(TAIL_BACKLOG):
                self._out.write(format_frame(entry))
            while not stop.done() and not self._out.closed:
                if self._out.buffered() > MAX_OUTPUT_BUFFER // 2:
                    # The reader is slow: let the subscription drop the oldest entries.
                    await asyncio.wait({stop}, timeout=0.05)
                    continue
                receive = asyncio.ensure_future(subscription.get())
                await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                if receive.done():
                    self._out.write(format_frame(receive.result()))
                else:
                    receive.cancel()
        if subscription.dropped:
            self._out.write(f"({subscription.dropped} frames not shown: output too slow)\n")

    async def _send(self, request: SendRequest) -> None:
        controls = self._need_controls()
        self._out.write(f"sending {request.action} to {request.device}; any key stops waiting\n")
        sending = asyncio.ensure_future(
            controls.send_command(request.device, request.action, request.params, request.ttl_s)
        )
        # Once queued, the command carries on even if this session stops waiting or ends.
        self._background.add(sending)
        sending.add_done_callback(self._background.discard)
        sending.add_done_callback(_log_result)
        with self._interruptible() as stop:
            await asyncio.wait({sending, stop}, return_when=asyncio.FIRST_COMPLETED)
        if sending.done():
            self._out.write(format_result(sending.result()))
            return
        self._out.write("stopped waiting; the command carries on\n")


def _log_result(task: asyncio.Future[CommandResult]) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.error("console command failed: %s", task.exception())
    else:
        log.info("console command result: %s", format_result(task.result()).strip())
