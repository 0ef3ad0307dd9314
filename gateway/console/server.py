"""The console servers the daemon starts: a Unix socket (mode 0660) and, if configured, a
serial port, each serving ``ConsoleSession``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import serial

from gateway.config import Config
from gateway.console.session import MAX_OUTPUT_BUFFER, ConsoleSession
from gateway.console.wire import console_socket_path
from gateway.state import Controls, GatewayState

log = logging.getLogger(__name__)

SERIAL_FAREWELL = "bye; press Enter for a new session\n"


class _StreamOutput:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.dropped = 0

    def write(self, text: str) -> None:
        if self.closed:
            return
        if self.buffered() > MAX_OUTPUT_BUFFER:
            self.dropped += len(text)
            return
        self._writer.write(text.encode())

    def buffered(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    @property
    def closed(self) -> bool:
        return self._writer.transport.is_closing()


class _TtyOutput:
    """Non-blocking writes to a serial port; CRLF line ends for terminal programs."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._pending = bytearray()
        self._closed = False
        self.dropped = 0

    def write(self, text: str) -> None:
        if self._closed:
            return
        data = text.replace("\n", "\r\n").encode()
        if len(self._pending) + len(data) > MAX_OUTPUT_BUFFER:
            self.dropped += len(data)  # nobody is reading the port
            return
        if not self._pending:
            data = data[self._write_now(data) :]
            if not data or self._closed:
                return
            self._loop.add_writer(self._fd, self._on_writable)
        self._pending += data

    def _write_now(self, data: bytes) -> int:
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            log.warning("console serial write failed: %s", exc.strerror or exc)
            self.close()
            return len(data)

    def _on_writable(self) -> None:
        written = self._write_now(bytes(self._pending))
        del self._pending[:written]
        if not self._pending and not self._closed:
            self._loop.remove_writer(self._fd)

    def buffered(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._loop.remove_writer(self._fd)


class ConsoleServer:
    """Serves the console on a Unix socket (mode 0660) and, if configured, a serial port."""

    def __init__(
        self,
        state: GatewayState,
        controls: Controls | None,
        *,
        socket_path: Path | None,
        serial_port: str | None = None,
        serial_baud: int = 115_200,
        max_sessions: int = 8,
        serial_retry_s: float = 5.0,
    ) -> None:
        self._state = state
        self._controls = controls
        self.socket_path = socket_path
        self.serial_port = serial_port
        self._serial_baud = serial_baud
        self._max_sessions = max_sessions
        self._serial_retry_s = serial_retry_s
        self._server: asyncio.AbstractServer | None = None
        self._serial_task: asyncio.Task[None] | None = None
        self._sessions: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self.serial_connected = False

    @classmethod
    def from_config(
        cls, config: Config, state: GatewayState, controls: Controls | None
    ) -> ConsoleServer:
        return cls(
            state,
            controls,
            socket_path=console_socket_path(config),
            serial_port=config.console.serial_port,
            serial_baud=config.console.serial_baud,
        )

    async def start(self) -> None:
        """Bind the socket (OSError if another gateway holds it) and start the serial port."""
        if self.socket_path is not None:
            await self._start_socket(self.socket_path)
        if self.serial_port is not None:
            self._serial_task = asyncio.get_running_loop().create_task(
                self._serve_serial(self.serial_port), name="console-serial"
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [*self._sessions, *([self._serial_task] if self._serial_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._serial_task = None
        if self._server is not None:
            self._server = None
            if self.socket_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path.unlink()

    async def _start_socket(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(path)
        self._server = await asyncio.start_unix_server(self._serve_client, path=str(path))
        os.chmod(path, 0o660)
        log.info("console on %s", path)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._sessions) >= self._max_sessions:
            writer.write(b"error: too many console sessions\n")
            writer.close()
            return
        output = _StreamOutput(writer)
        session = ConsoleSession(
            self._state, self._controls, output, echo=False, background=self._background
        )

        async def pump() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(4096):
                    session.feed(data)
            session.feed_eof()

        pumping = asyncio.ensure_future(pump())
        # stop() cancels the session, not this handler: the streams machinery logs handlers
        # that end cancelled.
        running = asyncio.ensure_future(session.run())
        self._sessions.add(running)
        try:
            await asyncio.wait({running})
        finally:
            pumping.cancel()
            running.cancel()
            self._sessions.discard(running)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_serial(self, port: str) -> None:
        warned = False
        while True:
            try:
                link = serial.Serial(
                    port, self._serial_baud, timeout=0, write_timeout=0, exclusive=True
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                if not warned:
                    log.warning("console serial port %s unavailable (%s); retrying", port, exc)
                    warned = True
                await asyncio.sleep(self._serial_retry_s)
                continue
            warned = False
            log.info("console on serial port %s", port)
            try:
                await self._serve_open_port(link)
            finally:
                link.close()
            log.warning("console serial port %s went away; reopening", port)
            await asyncio.sleep(self._serial_retry_s)

    async def _serve_open_port(self, link: serial.Serial) -> None:
        """Sessions on an open port until it goes away.

        After ``quit`` the console stays silent and reads nothing as a command until Enter is
        pressed (as a router's console port waits for RETURN); then a new session starts with
        the banner. Whatever else is typed meanwhile is thrown away.
        """
        loop = asyncio.get_running_loop()
        fd = link.fileno()
        output = _TtyOutput(loop, fd)
        gone = loop.create_future()
        session: ConsoleSession | None = None
        parked: asyncio.Future[None] | None = None  # set while waiting for Enter after quit
        skip_lf = False  # the Enter that woke the console was a CR; its LF may follow

        def on_readable() -> None:
            nonlocal skip_lf
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # hangup: the adapter was unplugged
                loop.remove_reader(fd)
                if not gone.done():
                    gone.set_result(None)
                return
            if skip_lf:
                skip_lf = False
                data = data.removeprefix(b"\n")
            if parked is not None:
                enter = max(data.rfind(b"\r"), data.rfind(b"\n"))
                if enter >= 0 and not parked.done():
                    skip_lf = data.endswith(b"\r")
                    parked.set_result(None)
                return
            if session is not None:
                session.feed(data)

        loop.add_reader(fd, on_readable)
        self.serial_connected = True
        running: asyncio.Future[None] | None = None
        try:
            while not gone.done() and not output.closed:
                session = ConsoleSession(
                    self._state,
                    self._controls,
                    output,
                    echo=True,
                    background=self._background,
                    farewell=SERIAL_FAREWELL,
                )
                running = asyncio.ensure_future(session.run())
                await asyncio.wait({running, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not running.done():
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
                    break
                running.result()
                session = None
                if output.closed:
                    break
                parked = loop.create_future()
                await asyncio.wait({parked, gone}, return_when=asyncio.FIRST_COMPLETED)
                parked = None
        finally:
            if running is not None and not running.done():
                running.cancel()
            self.serial_connected = False
            loop.remove_reader(fd)
            output.close()


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a gateway that died; refuse if one still answers on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"console socket path exists and is not a socket: {path}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise OSError(errno.EADDRINUSE, f"console socket {path} is not usable: {exc}") from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"console socket in use by another process: {path}")
