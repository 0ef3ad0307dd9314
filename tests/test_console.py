from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.console.editor import LineEditor, LineTooLong
from gateway.console.formatting import format_frame
from gateway.console.parser import (
    ConsoleInputError,
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
from gateway.console.server import SERIAL_FAREWELL, ConsoleServer
from gateway.console.wire import BANNER, PROMPT
from gateway.model import CommandStatus
from gateway.state import Direction, FrameLogEntry, GatewayState
from tests import console_fixtures
from tests.console_fixtures import (
    DEVICE,
    TIMEOUT,
    FakeControls,
    Terminal,
    connect,
    console_program,
    frame,
    one_shot,
    sample_state,
)


@pytest.fixture
def state() -> GatewayState:
    return sample_state()


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
        (f"send {DEVICE} reboot TTL=30 {{}}", SendRequest(DEVICE, "reboot", {}, 30.0)),
        (
            f'  send  {DEVICE}  set  {{ "s": "}} ttl=9" }}  ',
            SendRequest(DEVICE, "set", {"s": "} ttl=9"}, None),
        ),
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
        (
            f"send {DEVICE} set {{relay}}",
            "params: invalid JSON at column 33 (at 'relay}' in '{relay}'):"
            " Expecting property name enclosed in double quotes",
        ),
        (f"send {DEVICE} set [1, 2]", "params must be a JSON object, got an array at column 32"),
        (f'send {DEVICE} set "x" ttl=3', "params must be a JSON object, got a string"),
        (f"send {DEVICE} set {{}} ttl=0", "ttl must be a positive number"),
        (f"send {DEVICE} set {{}} ttl=inf", "ttl must be a positive number"),
        (f"send {DEVICE} set {{}} ttl=soon", "ttl must be a positive number"),
        (f"send {DEVICE} set {{}} ttl=1 ttl=2", "ttl given twice (column 41)"),
        (
            f"send {DEVICE} reboot now",
            "expected a JSON object or ttl=SECONDS at column 35, got 'now'",
        ),
        (f'send {DEVICE} set {{"a": 1}} {{"b": 2}}', "expected ttl=SECONDS at column 41, got '{"),
        (f'send {DEVICE} set {{"a": 1}}x', "expected ttl=SECONDS at column 40, got 'x'"),
        (
            f'send {DEVICE} set {{"x": NaN}}',
            "params: invalid JSON at column 32: NaN is not allowed",
        ),
        (f'send {DEVICE} set {{"x": 1e999}}', "params: invalid JSON at column 32: number out of"),
        (
            f"send {DEVICE} set " + "[" * 1500,
            "params: invalid JSON at column 32: nested too deeply",
        ),
        (f'send {DEVICE} set {{"a":' + "[" * 1500 + "}", "params: invalid JSON at column 32"),
        (
            f'send {DEVICE} set {{"relay": true ttl=30',
            "params: invalid JSON at column 47 (at 'ttl=30' in '{\"relay\": true ttl=30'):"
            " Expecting ',' delimiter",
        ),
        (
            f'send {DEVICE} set {{"relay": tru}}',
            "params: invalid JSON at column 42 (at 'tru}' in '{\"relay\": tru}'): Expecting value",
        ),
        (
            f'send {DEVICE} set {{"relay": true',
            "params: invalid JSON at column 46 (at the end of '{\"relay\": true'):"
            " Expecting ',' delimiter",
        ),
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
            "-m",
            "gateway",
            "console",
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
    code, out, err = await run("--socket", path, "-c", f"send {DEVICE} relay {{bad json")
    assert code == 1 and err == ""
    assert out == (
        "error: params: invalid JSON at column 35 (at 'bad json' in '{bad json'):"
        " Expecting property name enclosed in double quotes\n"
    )
    code, out, err = await run("--socket", path)  # lines from a pipe, as typed
    assert code == 0 and DEVICE in out and "uptime" in out and err == ""
    code, _, err = await run("--socket", path + ".missing", "-c", "status")
    assert code == 1 and "cannot reach the console" in err


async def test_console_program_on_a_terminal_ends_on_quit(socket_console: ConsoleServer) -> None:
    async with console_program("--socket", str(socket_console.socket_path)) as program:
        terminal = program.terminal
        await terminal.read_until(PROMPT.encode())
        terminal.type(b"status\n")
        assert b"mqtt: connected" in await terminal.read_until(PROMPT.encode())
        terminal.type(f"send {DEVICE} relay {{bad json\n".encode())
        text = await terminal.read_until(PROMPT.encode())
        assert b"error: params: invalid JSON at column 35 (at 'bad json'" in text
        terminal.type(b"quit\n")
        code, shown, err = await program.finish()
    assert code == 0 and err == ""
    assert shown == b"quit\r\nbye\r\n"  # the terminal's echo, the farewell, nothing after it


async def test_console_program_ends_on_ctrl_d(socket_console: ConsoleServer) -> None:
    async with console_program("--socket", str(socket_console.socket_path)) as program:
        await program.terminal.read_until(PROMPT.encode())
        program.terminal.type(b"\x04")  # Ctrl-D at the start of a line: end of input
        code, shown, err = await program.finish()
    assert code == 0 and err == ""
    assert shown == b"\r\n"  # the cursor leaves the prompt's line


async def test_console_program_says_when_the_gateway_goes_away(
    tmp_path: Path, state: GatewayState, controls: FakeControls
) -> None:
    server = ConsoleServer(state, controls, socket_path=tmp_path / "c.sock")
    await server.start()
    try:
        async with console_program("--socket", str(server.socket_path)) as program:
            await program.terminal.read_until(PROMPT.encode())
            await server.stop()
            code, _, err = await program.finish()
    finally:
        await server.stop()
    assert code == 1
    assert err == "console connection closed by the gateway\n"


# --- over a serial port (a pty pair stands in for /dev/ttyGS0 or a USB-UART) ---


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    with console_fixtures.pty_pair() as pair:
        yield pair


@pytest.fixture
async def serial_console(
    pty_pair: tuple[int, str], state: GatewayState, controls: FakeControls
) -> AsyncIterator[tuple[ConsoleServer, Terminal]]:
    master, path = pty_pair
    async with console_fixtures.serial_console(master, path, state, controls) as opened:
        yield opened


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


def crlf(text: str) -> bytes:
    """``text`` as the serial console puts it on the line."""
    return text.replace("\n", "\r\n").encode()


async def test_serial_quit_goes_silent_until_enter(
    serial_console: tuple[ConsoleServer, Terminal],
) -> None:
    server, terminal = serial_console
    terminal.type(b"quit\r")
    assert await terminal.read_until(crlf(SERIAL_FAREWELL)) == b"quit\r\n" + crlf(SERIAL_FAREWELL)
    # Keys other than Enter are thrown away and nothing is shown (no echo, no prompt) ...
    terminal.type(b"status")
    terminal.type(b"\x1b[A x")
    # ... until Enter: then the banner and the prompt, and nothing else, come next.
    terminal.type(b"\r")
    assert await terminal.read_until(PROMPT.encode()) == crlf(BANNER + PROMPT)
    assert server.serial_connected
    # The LF of a CR LF Enter is not taken for an empty line; what was typed before it is gone.
    terminal.type(b"\nnodes\r")
    text = await terminal.read_until(PROMPT.encode())
    assert text.startswith(b"nodes\r\nDEVICE")
    terminal.type(b"quit\r\n")
    await terminal.read_until(crlf(SERIAL_FAREWELL))
    terminal.type(b"\r")
    assert await terminal.read_until(PROMPT.encode()) == crlf(BANNER + PROMPT)


async def test_serial_json_error_points_at_the_json(
    serial_console: tuple[ConsoleServer, Terminal], state: GatewayState, controls: FakeControls
) -> None:
    _, terminal = serial_console
    typed = f"send {DEVICE} relay {{bad json"
    terminal.type(typed.encode() + b"\r")
    text = await terminal.read_until(PROMPT.encode())
    column = typed.index("bad") + 1  # the first character the JSON parser could not take
    assert text == crlf(
        f"{typed}\n"
        f"error: params: invalid JSON at column {column} (at 'bad json' in '{{bad json'):"
        " Expecting property name enclosed in double quotes\n" + PROMPT
    )
    typed = f'send {DEVICE} relay {{"on": true, }} ttl=5'
    terminal.type(typed.encode() + b"\r")
    text = (await terminal.read_until(PROMPT.encode())).decode()
    column = typed.index("}") + 1
    assert f"error: params: invalid JSON at column {column} (at '}}'" in text
    assert text.endswith("Expecting property name enclosed in double quotes\r\n" + PROMPT)
    assert controls.sent == [] and state.counters.console_errors == 2


async def test_serial_bad_input_never_shows_a_traceback(
    serial_console: tuple[ConsoleServer, Terminal],
    state: GatewayState,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, terminal = serial_console
    bad_lines = [
        f"send {DEVICE} relay {{",
        f"send {DEVICE} relay " + "{" * 1500,
        f'send {DEVICE} relay {{"on": 1e999}}',
        f"send {DEVICE} relay [" + "[" * 1500 + "]",
        f"send {DEVICE} relay ttl=",
        "send \x01 \x7f",
        "radio set sf=0x",
        "log \u202e",
    ]
    with caplog.at_level(logging.WARNING, logger="gateway.console"):
        for line in bad_lines:
            terminal.type(line.encode() + b"\r")
            answer = (await terminal.read_until(PROMPT.encode())).decode(errors="replace")
            printed = answer.split("\r\n")[1:]  # after the echo of the line
            assert len(printed) == 2 and printed[0].startswith("error: "), answer
            assert printed[1] == PROMPT
    assert state.counters.console_errors == len(bad_lines)
    assert not caplog.records


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
