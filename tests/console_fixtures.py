"""Helpers for the console tests: the bridge's side of the console, a live state to show, a
client on the Unix socket, and the technician's end of a serial line (a pty master) for both
the gateway's serial console and the ``duogate console`` program run on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from drivers.radio.base import RadioSettings
from gateway.console.client import run_one_shot
from gateway.console.server import ConsoleServer
from gateway.console.wire import PROMPT
from gateway.model import CommandResult, CommandStatus
from gateway.state import (
    Direction,
    FrameLogEntry,
    GatewayState,
    LeaseRow,
    OutboxStats,
    radio_settings_with,
)

DEVICE = "lora-0011223344556677"
TIMEOUT = 10.0


class FakeControls:
    """The bridge's side of the console, as far as the console can tell."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.sent: list[tuple[str, str, dict[str, Any], float | None]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.status = CommandStatus.EXECUTED
        self.level: str | None = None

    async def send_command(
        self, device: str, action: str, params: dict[str, Any], ttl_s: float | None
    ) -> CommandResult:
        self.sent.append((device, action, params, ttl_s))
        await self.release.wait()
        return CommandResult(f"c{len(self.sent)}", device, self.status, time.time(), "relay on")

    async def reconfigure_radio(self, changes: dict[str, Any]) -> RadioSettings:
        assert self.state.radio is not None
        self.state.radio = radio_settings_with(self.state.radio, changes)
        return self.state.radio

    def set_log_level(self, level: str) -> None:
        if level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"unknown log level {level!r}")
        self.level = level


def sample_state() -> GatewayState:
    """A gateway with one node, one lease, one upstream up and one down."""
    state = GatewayState()
    state.radio = RadioSettings()
    state.set_upstream("mqtt", True)
    state.set_upstream("xmpp", False, "connection refused")
    state.outbox_stats = lambda: OutboxStats(3, 4.5)
    state.duty_cycle = lambda: {"g1": 0.0125}
    state.leases = lambda: [LeaseRow(0x0001, DEVICE, time.time() - 30)]
    state.note_uplink(DEVICE, "lora", rssi=-87.5, snr=6.25, address=1, data={"temp": 21.5})
    return state


def frame(n: int, body: dict[str, Any] | str | None = None) -> FrameLogEntry:
    return FrameLogEntry(
        ts=time.time(),
        direction=Direction.UP,
        node=DEVICE,
        type="data",
        rssi=-87.5,
        snr=6.25,
        size=23,
        body=body if body is not None else {"seq": n, "temp": 21.5},
    )


# --- the Unix socket ---


async def one_shot(server: ConsoleServer, command: str) -> tuple[int, str]:
    assert server.socket_path is not None
    output: list[str] = []
    code = await asyncio.wait_for(run_one_shot(server.socket_path, command, output.append), TIMEOUT)
    return code, "".join(output)


class Session:
    """An open console connection read up to markers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = ""

    async def read_until(self, marker: str) -> str:
        while marker not in self.buffer:
            data = await asyncio.wait_for(self.reader.read(4096), TIMEOUT)
            assert data, f"connection closed before {marker!r}; got {self.buffer!r}"
            self.buffer += data.decode()
        text, _, self.buffer = self.buffer.partition(marker)
        return text + marker

    def send(self, text: str) -> None:
        self.writer.write(text.encode())


@contextlib.asynccontextmanager
async def connect(server: ConsoleServer) -> AsyncIterator[Session]:
    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
    session = Session(reader, writer)
    try:
        await session.read_until(PROMPT)
        yield session
    finally:
        writer.close()


# --- terminals (pty masters) ---


class Terminal:
    """The person's end of a terminal line (a pty master): picocom on the serial console, or
    the terminal ``duogate console`` runs in."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.hung_up = False  # every process on the other end has closed it
        os.set_blocking(fd, False)

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            assert not self.hung_up, f"line closed before {marker!r}; got {self.buffer!r}"
            await self._read_more()
        text, _, self.buffer = self.buffer.partition(marker)
        return text + marker

    async def read_to_hangup(self) -> bytes:
        """Everything until the other end is closed by every process holding it."""
        while not self.hung_up:
            await self._read_more()
        text, self.buffer = self.buffer, b""
        return text

    async def _read_more(self) -> None:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(self.fd, wake)
        try:
            await asyncio.wait_for(readable, TIMEOUT)
        finally:
            loop.remove_reader(self.fd)
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # Linux: EIO on a master whose other end is closed everywhere
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.hung_up = True
        self.buffer += data

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[int, str]]:
    """A pty: the master fd (the person's end) and the slave's path (the device's end)."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(slave)
        with contextlib.suppress(OSError):
            os.close(master)


@contextlib.asynccontextmanager
async def serial_console(
    master: int, path: str, state: GatewayState, controls: FakeControls | None
) -> AsyncIterator[tuple[ConsoleServer, Terminal]]:
    """The console served on the pty slave ``path``, with a prompt already on the terminal."""
    server = ConsoleServer(state, controls, socket_path=None, serial_port=path, serial_retry_s=0.05)
    await server.start()
    terminal = Terminal(master)
    try:
        terminal.type(b"\r")
        await terminal.read_until(PROMPT.encode())
        yield server, terminal
    finally:
        await server.stop()


class ConsoleProgram:
    """``duogate console`` running on a terminal of its own."""

    def __init__(self, process: asyncio.subprocess.Process, terminal: Terminal) -> None:
        self.process = process
        self.terminal = terminal

    async def finish(self) -> tuple[int, bytes, str]:
        """Wait for the program to end: exit code, what the terminal showed, stderr."""
        assert self.process.stderr is not None
        err = await asyncio.wait_for(self.process.stderr.read(), TIMEOUT)
        code = await asyncio.wait_for(self.process.wait(), TIMEOUT)
        shown = await self.terminal.read_to_hangup()
        return code, shown, err.decode()


@contextlib.asynccontextmanager
async def console_program(*args: str) -> AsyncIterator[ConsoleProgram]:
    """``python -m gateway console ARGS`` with its stdin and stdout on a pty, as when run from
    a shell (the terminal echoes and edits lines); stderr is captured apart."""
    master, slave = os.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "console",
            *args,
            stdin=slave,
            stdout=slave,
            stderr=asyncio.subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
    finally:
        os.close(slave)  # the child holds it now: its end closes the line
    try:
        yield ConsoleProgram(process, Terminal(master))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with contextlib.suppress(OSError):
            os.close(master)
