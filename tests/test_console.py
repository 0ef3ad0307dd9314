from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.radio.base import RadioSettings
from gateway.console import (
    PROMPT,
    ConsoleInputError,
    ConsoleServer,
    HelpRequest,
    LeasesRequest,
    LineEditor,
    LineTooLong,
    LogLevelRequest,
    NodesRequest,
    QuitRequest,
    RadioSetRequest,
    RadioShowRequest,
    SendRequest,
    StatusRequest,
    TailRequest,
    format_frame,
    parse_command,
    run_one_shot,
)
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


@pytest.fixture
def state() -> GatewayState:
    state = GatewayState()
    state.radio = RadioSettings()
    state.set_upstream("mqtt", True)
    state.set_upstream("xmpp", False, "connection refused")
    state.outbox_stats = lambda: OutboxStats(3, 4.5)
    state.duty_cycle = lambda: {"g1": 0.0125}
    state.leases = lambda: [LeaseRow(0x0001, DEVICE, time.time() - 30)]
    state.note_uplink(DEVICE, "lora", rssi=-87.5, snr=6.25, address=1, data={"temp": 21.5})
    return state


@pytest.fixture
def controls(state: GatewayState) -> FakeControls:
    return FakeControls(state)


# --- parsing ---


@pytest.mark.parametrize(
    ("line", "request_"),
    [
        ("help", HelpRequest()),
        ("  STATUS  ", StatusRequest()),
        ("nodes", NodesRequest()),
        ("leases", LeasesRequest()),
        ("tail", TailRequest()),
        ("quit", QuitRequest()),
        ("radio", RadioShowRequest()),
        ("log DEBUG", LogLevelRequest("debug")),
        ("log warn", LogLevelRequest("warning")),
        (f"send {DEVICE} reboot", SendRequest(DEVICE, "reboot", {}, None)),
        (f"send {DEVICE} reboot ttl=30", SendRequest(DEVICE, "reboot", {}, 30.0)),
        (
            f'send {DEVICE} set {{"relay": true, "note": "a b"}}',
            SendRequest(DEVICE, "set", {"relay": True, "note": "a b"}, None),
        ),
        (
            f'send {DEVICE} set {{"level": 0.5}}\tttl=2.5',
            SendRequest(DEVICE, "set", {"level": 0.5}, 2.5),
        ),
        ("send modbus-boiler-3 write {}", SendRequest("modbus-boiler-3", "write", {}, None)),
        (
            "radio set sf=9 freq=868.3MHz bw=125kHz crc=off sync=0x34",
            RadioSetRequest(
                {
                    "spreading_factor": 9,
                    "frequency_hz": 868_300_000,
                    "bandwidth_hz": 125_000,
                    "crc": False,
                    "sync_word": 0x34,
                }
            ),
        ),
        (
            "radio set tx_power_dbm=10 preamble=08",
            RadioSetRequest({"tx_power_dbm": 10, "preamble_length": 8}),
        ),
        ("radio set frequency_hz=8.683e8", RadioSetRequest({"frequency_hz": 868_300_000})),
        ("", None),
        ("   \t ", None),
    ],
)
def test_parse_command(line: str, request_: object) -> None:
    assert parse_command(line) == request_


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("foo", "unknown command 'foo' (try help)"),
        ("status now", "'status' takes no arguments"),
        ("send", "usage: send"),
        (f"send {DEVICE}", "usage: send"),
        ("send lora-xyz reboot", "not a device id: 'lora-xyz'"),
        (f"send {DEVICE} 9lives", "not an action name"),
        (f"send {DEVICE} set {{relay}}", "params are not valid JSON"),
        (f"send {DEVICE} set [1, 2]", "expected a JSON object or ttl=SECONDS"),
        (f'send {DEVICE} set "x" ttl=3', "params must be a JSON object"),
        (f"send {DEVICE} set {{}} ttl=0", "ttl must be a positive number"),
        (f"send {DEVICE} set {{}} ttl=inf", "ttl must be a positive number"),
        (f"send {DEVICE} set {{}} ttl=soon", "ttl must be a positive number"),
        (f'send {DEVICE} set {{"x": NaN}}', "params are not valid JSON"),
        (f'send {DEVICE} set {{"x": 1e999}}', "params are not valid JSON"),
        (f"send {DEVICE} set " + "[" * 1500, "expected a JSON object"),
        (f'send {DEVICE} set {{"a":' + "[" * 1500 + "}", "params are not valid JSON"),
        ("radio show", "usage: radio"),
        ("radio set", "usage: radio set"),
        ("radio set sf", "expected key=value"),
        ("radio set sf=", "expected key=value"),
        ("radio set sf=fast", "sf: expected a number"),
        ("radio set freq=1e999MHz", "expected a number"),
        ("log", "usage: log"),
        ("log loud", "unknown log level 'loud'"),
        ("x" * 3000, "line too long"),
    ],
)
def test_parse_errors_are_one_line(line: str, message: str) -> None:
    with pytest.raises(ConsoleInputError, match=re.escape(message)) as caught:
        parse_command(line)
    assert "\n" not in str(caught.value)


@given(st.text(max_size=300))
def test_parse_never_raises_anything_else(line: str) -> None:
    try:
        parse_command(line)
    except ConsoleInputError as exc:
        assert str(exc) and "\n" not in str(exc)


_words = st.sampled_from(
    ["send", "radio", "set", "log", DEVICE, "set", "ttl=5", "ttl=", "{", "}", "[", '"a":', "sf=9"]
)


@given(st.lists(st.one_of(_words, st.text(max_size=12)), max_size=8))
def test_parse_never_raises_anything_else_on_near_misses(words: list[str]) -> None:
    try:
        parse_command(" ".join(words))
    except ConsoleInputError as exc:
        assert str(exc) and "\n" not in str(exc)


# --- line editing ---


def test_line_editor_accepts_cr_lf_and_crlf() -> None:
    editor = LineEditor(echo=False)
    assert editor.feed(b"status\rnodes\nleases\r\nhelp") == (["status", "nodes", "leases"], "")
    assert editor.feed(b"\r") == (["help"], "")
    assert editor.feed(b"\n") == ([], "")  # the LF of a CRLF split across reads
    assert editor.feed(b"\n") == ([""], "")


def test_line_editor_echoes_and_edits() -> None:
    editor = LineEditor(echo=True)
    lines, echo = editor.feed(b"stax\x7fx\x08tus\r")
    assert lines == ["status"]
    assert echo == "stax\b \bx\b \btus\n"
    lines, echo = editor.feed(b"\x1b[Ahelp\x1bOB\x15nodes\x03")
    assert lines == [""]
    assert echo == "help" + "\b \b" * 4 + "nodes^C\n"
    assert editor.feed("tãil\r".encode()) == (["tãil"], "tãil\n")


def test_line_editor_reports_overlong_lines() -> None:
    editor = LineEditor(echo=True, max_line=4)
    lines, echo = editor.feed(b"abcdefg\rok\r")
    assert lines == [LineTooLong(7), "ok"]
    assert echo == "abcd\nok\n"


@given(st.lists(st.binary(max_size=40), max_size=10), st.booleans())
def test_line_editor_takes_any_bytes(chunks: list[bytes], echo: bool) -> None:
    editor = LineEditor(echo=echo, max_line=16)
    for chunk in chunks:
        lines, echoed = editor.feed(chunk)
        for line in lines:
            assert isinstance(line, LineTooLong) or (len(line) <= 16 and "\n" not in line)
        assert echo or echoed == ""


def test_frames_from_the_air_cannot_reach_the_terminal_raw() -> None:
    hostile = FrameLogEntry(
        time.time(),
        Direction.UP,
        "0x0001\x1b]0;pwned\x07",
        "data\r",
        None,
        None,
        9,
        "ok\x1b[2J\nrm -rf",
    )
    line = format_frame(hostile)
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "\x1b" not in line and "\r" not in line and "\x07" not in line
    assert "ok\\x1b[2J\\nrm -rf" in line
    assert "rssi      - snr     -   9 B" in line
    as_json = format_frame(dataclasses.replace(hostile, body={"text": "a\x1bb"}))
    assert "\x1b" not in as_json


# --- over the Unix socket ---


@pytest.fixture
async def socket_console(
    tmp_path: Path, state: GatewayState, controls: FakeControls
) -> AsyncIterator[ConsoleServer]:
    server = ConsoleServer(state, controls, socket_path=tmp_path / "run" / "console.sock")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


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


async def test_socket_mode_is_0660(socket_console: ConsoleServer) -> None:
    assert socket_console.socket_path is not None
    mode = socket_console.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_status(socket_console: ConsoleServer) -> None:
    code, text = await one_shot(socket_console, "status")
    assert code == 0
    assert "uptime" in text
    assert "mqtt: connected" in text
    assert "xmpp: disconnected" in text and "connection refused" in text
    assert "outbox      3 waiting, oldest 4.5 s" in text
    assert "868.100 MHz  SF7  BW 125 kHz  CR 4/5  14 dBm" in text
    assert "g1 1.25 %" in text
    assert PROMPT not in text


async def test_nodes_and_leases(socket_console: ConsoleServer) -> None:
    code, text = await one_shot(socket_console, "nodes")
    assert code == 0
    header, row = text.strip().splitlines()
    assert header.split()[:5] == ["DEVICE", "ADDR", "LAST", "SEEN", "RSSI"]
    assert row.split()[:2] == [DEVICE, "0x0001"]
    assert "-87.5" in row and "6.2" in row
    code, text = await one_shot(socket_console, "leases")
    assert code == 0
    assert "0x0001" in text and DEVICE in text and "30s ago" in text and "1 in use" in text


async def test_help_and_radio(socket_console: ConsoleServer) -> None:
    code, text = await one_shot(socket_console, "help")
    assert code == 0
    for command in ("status", "nodes", "leases", "tail", "send", "radio set", "log"):
        assert command in text
    code, text = await one_shot(socket_console, "radio")
    assert code == 0 and "SF7" in text and "g1 1.25 %" in text


async def test_bad_input_gets_one_error_line_and_is_counted(
    socket_console: ConsoleServer, state: GatewayState
) -> None:
    async with connect(socket_console) as session:
        session.send("foo\n")
        assert (
            await session.read_until(PROMPT) == "error: unknown command 'foo' (try help)\n" + PROMPT
        )
        session.send("send lora-1 x\r")
        assert (await session.read_until(PROMPT)).startswith("error: not a device id")
        session.send("\xff\xfe\n")
        assert (await session.read_until(PROMPT)).startswith("error: unknown command")
        session.send("y" * 5000 + "\n")
        assert (await session.read_until(PROMPT)).startswith("error: line too long")
        session.send("status\n")  # still serving
        assert "uptime" in await session.read_until(PROMPT)
    assert state.counters.console_errors == 4
    code, text = await one_shot(socket_console, "foo")
    assert code == 1 and text == "error: unknown command 'foo' (try help)\n"


async def test_radio_set_and_log_level_go_through_the_controls(
    socket_console: ConsoleServer, state: GatewayState, controls: FakeControls
) -> None:
    code, text = await one_shot(socket_console, "radio set sf=9 freq=868.3MHz")
    assert code == 0 and "868.300 MHz  SF9" in text
    assert state.radio is not None and state.radio.spreading_factor == 9
    code, text = await one_shot(socket_console, "radio set sf=13")
    assert code == 1 and text.startswith("error: spreading_factor:") and text.count("\n") == 1
    code, text = await one_shot(socket_console, "radio set power_level=3")
    assert code == 1 and "unknown radio setting 'power_level'" in text
    assert state.radio.spreading_factor == 9
    code, text = await one_shot(socket_console, "log debug")
    assert code == 0 and controls.level == "debug"


async def test_send_prints_the_result_when_it_arrives(
    socket_console: ConsoleServer, controls: FakeControls
) -> None:
    controls.release.clear()
    async with connect(socket_console) as session:
        session.send(f'send {DEVICE} set {{"relay": true}} ttl=30\n')
        await session.read_until("any key stops waiting\n")
        assert controls.sent == [(DEVICE, "set", {"relay": True}, 30.0)]
        controls.release.set()
        text = await session.read_until(PROMPT)
        assert text == "result: executed (command c1): relay on\n" + PROMPT


async def test_send_stops_waiting_on_any_input(
    socket_console: ConsoleServer, controls: FakeControls
) -> None:
    controls.release.clear()
    async with connect(socket_console) as session:
        session.send(f"send {DEVICE} reboot\n")
        await session.read_until("any key stops waiting\n")
        session.send("\n")
        assert (
            await session.read_until(PROMPT) == "stopped waiting; the command carries on\n" + PROMPT
        )
        controls.release.set()
        session.send("status\n")
        assert "uptime" in await session.read_until(PROMPT)
    assert len(controls.sent) == 1


async def test_send_reports_a_refused_command(
    socket_console: ConsoleServer, controls: FakeControls
) -> None:
    controls.status = CommandStatus.REJECTED
    code, text = await one_shot(socket_console, f"send {DEVICE} explode")
    assert code == 0
    assert "result: rejected (command c1)" in text


async def test_tail_streams_frames_until_any_input(
    socket_console: ConsoleServer, state: GatewayState
) -> None:
    state.log_frame(frame(0))  # the recent backlog comes first
    async with connect(socket_console) as session:
        session.send("tail\n")
        await session.read_until("any key stops\n")
        assert '{"seq":0,"temp":21.5}' in await session.read_until("\n")
        while state.frames.subscriber_count == 0:
            await asyncio.sleep(0.01)
        for n in (1, 2, 3):
            state.log_frame(frame(n))
        state.log_frame(frame(4, body="join from 0x0001"))
        lines = [await session.read_until("\n") for _ in range(4)]
        assert '{"seq":1,"temp":21.5}' in lines[0]
        assert lines[0].split()[1:4] == ["up", DEVICE, "data"]
        assert "rssi  -87.5 snr   6.2  23 B" in lines[0]
        assert lines[3].rstrip().endswith("join from 0x0001")
        session.send("q\n")
        assert (await session.read_until(PROMPT)).endswith(PROMPT)
        assert state.frames.subscriber_count == 0
        state.log_frame(frame(5))
        session.send("status\n")
        text = await session.read_until(PROMPT)
        assert "seq" not in text and "uptime" in text


async def test_quit_and_eof_end_the_session(socket_console: ConsoleServer) -> None:
    async with connect(socket_console) as session:
        session.send("quit\n")
        assert await session.read_until("bye\n") == "bye\n"
        assert await asyncio.wait_for(session.reader.read(), TIMEOUT) == b""
    async with connect(socket_console) as session:
        session.send("tail\n")
        await session.read_until("any key stops\n")
        session.writer.write_eof()  # the end of input stops tail and ends the session
        assert await asyncio.wait_for(session.reader.read(), TIMEOUT) == PROMPT.encode()


async def test_stale_socket_is_replaced_but_a_live_one_is_refused(
    tmp_path: Path, state: GatewayState, socket_console: ConsoleServer
) -> None:
    assert socket_console.socket_path is not None
    second = ConsoleServer(state, None, socket_path=socket_console.socket_path)
    with pytest.raises(OSError, match="in use"):
        await second.start()
    stale = tmp_path / "stale.sock"
    import socket

    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()  # a socket file nobody listens on, as left by a crash
    third = ConsoleServer(state, None, socket_path=stale)
    await third.start()
    try:
        code, text = await one_shot(third, "status")
        assert code == 0 and "uptime" in text
    finally:
        await third.stop()
    assert not stale.exists()
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        await ConsoleServer(state, None, socket_path=plain).start()


async def test_too_many_sessions_are_refused(tmp_path: Path, state: GatewayState) -> None:
    server = ConsoleServer(state, None, socket_path=tmp_path / "c.sock", max_sessions=1)
    await server.start()
    try:
        async with connect(server):
            code, text = await one_shot(server, "status")
            assert code == 1 and "too many console sessions" in text
    finally:
        await server.stop()


async def test_console_client(socket_console: ConsoleServer) -> None:
    async def run(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CONSOLE_MAIN,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(b"nodes\nstatus\n"), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    path = str(socket_console.socket_path)
    code, out, _ = await run("--socket", path, "-c", "status")
    assert code == 0 and out.startswith("uptime") and PROMPT not in out
    code, out, _ = await run("--socket", path, "-c", "bogus")
    assert code == 1 and out == "error: unknown command 'bogus' (try help)\n"
    code, out, _ = await run("--socket", path)  # lines from a pipe, as typed
    assert code == 0 and DEVICE in out and "uptime" in out
    code, _, err = await run("--socket", path + ".missing", "-c", "status")
    assert code == 1 and "cannot reach the console" in err


CONSOLE_MAIN = """
import argparse, sys
from gateway.console import add_console_arguments, console_main
parser = argparse.ArgumentParser()
add_console_arguments(parser)
sys.exit(console_main(parser.parse_args()))
"""


# --- over a serial port (a pty pair stands in for /dev/ttyGS0 or a USB-UART) ---


class Terminal:
    """The technician's end of the serial line (the pty master), like picocom."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        os.set_blocking(fd, False)

    async def read_until(self, marker: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while marker not in self.buffer:
            readable: asyncio.Future[None] = loop.create_future()

            def wake(future: asyncio.Future[None] = readable) -> None:
                if not future.done():
                    future.set_result(None)

            loop.add_reader(self.fd, wake)
            try:
                await asyncio.wait_for(readable, deadline - loop.time())
            finally:
                loop.remove_reader(self.fd)
            with contextlib.suppress(BlockingIOError):
                self.buffer += os.read(self.fd, 4096)
        text, _, self.buffer = self.buffer.partition(marker)
        return text + marker

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(slave)
        with contextlib.suppress(OSError):
            os.close(master)


@pytest.fixture
async def serial_console(
    pty_pair: tuple[int, str], state: GatewayState, controls: FakeControls
) -> AsyncIterator[tuple[ConsoleServer, Terminal]]:
    master, path = pty_pair
    server = ConsoleServer(state, controls, socket_path=None, serial_port=path, serial_retry_s=0.05)
    await server.start()
    terminal = Terminal(master)
    try:
        terminal.type(b"\r")
        await terminal.read_until(PROMPT.encode())
        yield server, terminal
    finally:
        await server.stop()


async def test_serial_echoes_handles_backspace_and_answers(
    serial_console: tuple[ConsoleServer, Terminal],
) -> None:
    _, terminal = serial_console
    terminal.type(b"stax\x7ftus\r")
    text = await terminal.read_until(PROMPT.encode())
    assert text.startswith(b"stax\b \btus\r\n")
    assert b"uptime" in text
    assert b"\r\nupstream    mqtt: connected" in text  # CRLF line ends for picocom
    terminal.type(b"frob\n")
    text = await terminal.read_until(PROMPT.encode())
    assert text == b"frob\r\nerror: unknown command 'frob' (try help)\r\n" + PROMPT.encode()


async def test_serial_tail_stops_on_any_key(
    serial_console: tuple[ConsoleServer, Terminal], state: GatewayState
) -> None:
    _, terminal = serial_console
    terminal.type(b"tail\r")
    await terminal.read_until(b"any key stops\r\n")
    while state.frames.subscriber_count == 0:
        await asyncio.sleep(0.01)
    state.log_frame(frame(7))
    line = await terminal.read_until(b"\r\n")
    assert b'{"seq":7,"temp":21.5}' in line
    terminal.type(b"x")
    await terminal.read_until(PROMPT.encode())
    terminal.type(b"nodes\r")  # the key that stopped tail was not kept
    text = await terminal.read_until(PROMPT.encode())
    assert text.startswith(b"nodes\r\nDEVICE")


async def test_serial_send(
    serial_console: tuple[ConsoleServer, Terminal], controls: FakeControls
) -> None:
    _, terminal = serial_console
    terminal.type(f"send {DEVICE} reboot ttl=5\r".encode())
    text = await terminal.read_until(PROMPT.encode())
    assert b"result: executed (command c1)" in text
    assert controls.sent == [(DEVICE, "reboot", {}, 5.0)]


async def test_serial_quit_starts_a_fresh_session(
    serial_console: tuple[ConsoleServer, Terminal],
) -> None:
    server, terminal = serial_console
    terminal.type(b"quit\r")
    text = await terminal.read_until(PROMPT.encode())
    assert b"bye\r\n" in text and b"type 'help'" in text
    assert server.serial_connected


async def test_serial_port_that_goes_away_is_retried(
    pty_pair: tuple[int, str], state: GatewayState
) -> None:
    master, path = pty_pair
    os.close(master)  # the far end is gone: reads on the port fail
    server = ConsoleServer(state, None, socket_path=None, serial_port=path, serial_retry_s=0.05)
    await server.start()
    try:
        await asyncio.sleep(0.3)
        assert not server.serial_connected
    finally:
        await server.stop()


async def test_missing_serial_port_does_not_stop_the_socket(
    tmp_path: Path, state: GatewayState
) -> None:
    server = ConsoleServer(
        state,
        None,
        socket_path=tmp_path / "c.sock",
        serial_port=str(tmp_path / "ttyGS0"),
        serial_retry_s=0.05,
    )
    await server.start()
    try:
        await asyncio.sleep(0.2)
        assert not server.serial_connected
        code, text = await one_shot(server, "status")
        assert code == 0 and "uptime" in text
    finally:
        await server.stop()
