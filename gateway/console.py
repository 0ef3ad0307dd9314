"""The bench console: a line-oriented command prompt on a serial port and a local Unix socket.

A technician reaches it with ``picocom -b 115200 /dev/ttyACM0`` (USB gadget serial or a
USB-UART) or, on the gateway itself, with ``duogate console``. It reads the live
``GatewayState`` and acts through the bridge's ``Controls``.

Lines end with CR or LF. On the serial port the console echoes what is typed and handles
backspace (terminal programs do not echo locally); on the socket the client's terminal does
that. ``tail`` and the wait in ``send`` stop on any input.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import errno
import itertools
import json
import logging
import math
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import serial

from drivers.radio.base import RadioSettings
from gateway.config import Config, ConfigError, load_config
from gateway.model import CommandResult, device_kind
from gateway.state import Controls, FrameLogEntry, GatewayState

log = logging.getLogger(__name__)

PROMPT = "duogate> "
BANNER = "duogate console; type 'help' for commands\n"
# After quit the socket connection is closed; the serial console waits for Enter.
FAREWELL = "bye\n"
SERIAL_FAREWELL = "bye; press Enter for a new session\n"
MAX_LINE = 2048
MAX_QUEUED_LINES = 64
MAX_OUTPUT_BUFFER = 256 * 1024
TAIL_BACKLOG = 10
DEFAULT_CONFIG = Path("/etc/duogate/duogate.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConsoleInputError(ValueError):
    """A console line that cannot be run; the message is one line for the person typing."""


# --- requests: what a command line asks for ---


@dataclass(frozen=True, slots=True)
class HelpRequest:
    pass


@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


@dataclass(frozen=True, slots=True)
class NodesRequest:
    pass


@dataclass(frozen=True, slots=True)
class LeasesRequest:
    pass


@dataclass(frozen=True, slots=True)
class TailRequest:
    pass


@dataclass(frozen=True, slots=True)
class SendRequest:
    device: str
    action: str
    params: dict[str, Any]
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class RadioShowRequest:
    pass


@dataclass(frozen=True, slots=True)
class RadioSetRequest:
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LogLevelRequest:
    level: str


@dataclass(frozen=True, slots=True)
class QuitRequest:
    pass


ConsoleRequest = (
    HelpRequest
    | StatusRequest
    | NodesRequest
    | LeasesRequest
    | TailRequest
    | SendRequest
    | RadioShowRequest
    | RadioSetRequest
    | LogLevelRequest
    | QuitRequest
)

HELP = """\
commands:
  help                                  this list
  status                                uptime, upstreams, outbox, radio
  nodes                                 devices seen: address, last seen, RSSI/SNR, counters
  leases                                short-address leases
  tail                                  live frames (any key stops)
  send <device> <action> [json] [ttl=S] send a command, print its result (any key stops waiting)
  radio                                 radio settings and duty-cycle use
  radio set key=value ...               change radio settings at runtime, e.g. sf=9 freq=868.3MHz
                                        keys: freq sf bw cr power sync preamble crc or full names
  log <debug|info|warning|error>        set the log level
  quit                                  end this session
"""

RADIO_ALIASES = {
    "freq": "frequency_hz",
    "frequency": "frequency_hz",
    "sf": "spreading_factor",
    "bw": "bandwidth_hz",
    "bandwidth": "bandwidth_hz",
    "cr": "coding_rate",
    "power": "tx_power_dbm",
    "tx_power": "tx_power_dbm",
    "sync": "sync_word",
    "preamble": "preamble_length",
}

_ACTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_WORD = re.compile(r"\S+")
# A word that starts like a JSON value is taken as the params (and must then be valid JSON).
_JSON_START = re.compile(r'[{\["0-9-]|(?:true|false|null|NaN|Infinity)(?![A-Za-z0-9_])')
_JSON_TYPES: dict[type, str] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}
_TTL = re.compile(r"^ttl=(\S*)$", re.IGNORECASE)
_HERTZ = re.compile(r"^(\d+(?:\.\d+)?)(hz|khz|mhz)$")
_HERTZ_SCALE = {"hz": 1, "khz": 1_000, "mhz": 1_000_000}
_NO_ARGUMENTS = {
    "help": HelpRequest,
    "status": StatusRequest,
    "nodes": NodesRequest,
    "leases": LeasesRequest,
    "tail": TailRequest,
    "quit": QuitRequest,
    "exit": QuitRequest,
}


def parse_command(line: str) -> ConsoleRequest | None:
    """Turn one console line into a request; None for a blank line.

    Raises ConsoleInputError (a ValueError) with a one-line message for anything else.
    """
    if len(line) > MAX_LINE:
        raise ConsoleInputError(f"line too long ({len(line)} characters, at most {MAX_LINE})")
    words = line.split()
    if not words:
        return None
    name = words[0].lower()
    if name in _NO_ARGUMENTS:
        if len(words) > 1:
            raise ConsoleInputError(f"'{name}' takes no arguments")
        return _NO_ARGUMENTS[name]()
    if name == "send":
        return _parse_send(line)
    if name == "radio":
        return _parse_radio(words[1:])
    if name == "log":
        return _parse_log(words[1:])
    raise ConsoleInputError(f"unknown command {_shown(words[0])} (try help)")


def _shown(text: str, limit: int = 40) -> str:
    """Quote user text for an error line, cut short and with control characters escaped."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def _parse_send(line: str) -> SendRequest:
    """``send <device> <action> [json] [ttl=S]``, read from the line itself so that an error
    can give the column in the line as typed (the JSON may hold spaces)."""
    usage = "usage: send <device> <action> [json-object] [ttl=SECONDS]"
    words = list(itertools.islice(_WORD.finditer(line), 3))
    if len(words) < 3:
        raise ConsoleInputError(usage)
    device, action = words[1].group(), words[2].group()
    try:
        device_kind(device)
    except ValueError:
        raise ConsoleInputError(f"not a device id: {_shown(device)}") from None
    if not _ACTION.match(action):
        raise ConsoleInputError(f"not an action name: {_shown(action)}")
    params: dict[str, Any] | None = None
    ttl_s: float | None = None
    position = words[2].end()
    while (word := _WORD.search(line, position)) is not None:
        text = word.group()
        ttl_match = _TTL.match(text)
        if ttl_match is not None:
            if ttl_s is not None:
                raise ConsoleInputError(f"ttl given twice (column {word.start() + 1})")
            ttl_s = _parse_ttl(ttl_match.group(1))
            position = word.end()
        elif params is None and _JSON_START.match(text):
            params, position = _parse_params(line, word.start())
        else:
            wanted = "a JSON object or ttl=SECONDS" if params is None else "ttl=SECONDS"
            raise ConsoleInputError(
                f"expected {wanted} at column {word.start() + 1}, got {_shown(text)}"
            )
    return SendRequest(device, action, params if params is not None else {}, ttl_s)


def _parse_ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConsoleInputError(f"ttl must be a positive number of seconds, got {_shown(text)}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


_PARAMS_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _parse_params(line: str, start: int) -> tuple[dict[str, Any], int]:
    """The JSON object that starts at ``line[start]`` and where it ends.

    Errors name the column in the whole line (counted from 1) and quote the JSON text.
    """
    try:
        params, end = _PARAMS_DECODER.raw_decode(line, start)
    except json.JSONDecodeError as exc:
        raise ConsoleInputError(
            f"params: invalid JSON at column {exc.pos + 1} ({_json_place(line, start, exc.pos)}):"
            f" {exc.msg}"
        ) from None
    except RecursionError:
        raise ConsoleInputError(
            f"params: invalid JSON at column {start + 1}: nested too deeply"
        ) from None
    except ValueError as exc:  # NaN, Infinity or a number out of range
        raise ConsoleInputError(f"params: invalid JSON at column {start + 1}: {exc}") from None
    if not isinstance(params, dict):
        raise ConsoleInputError(
            f"params must be a JSON object, got {_JSON_TYPES.get(type(params), 'a value')}"
            f" at column {start + 1}"
        )
    return params, end


def _json_place(line: str, start: int, error: int) -> str:
    """Where a JSON error is, in words: the text there, within the JSON as typed."""
    text = line[start:].rstrip()
    last = text.rsplit(maxsplit=1)
    if len(last) == 2 and _TTL.match(last[1]) and start + len(last[0]) >= error:
        text = last[0].rstrip()
    here = line[error : start + len(text)]
    if not here.strip():
        return f"at the end of {_shown(text)}"
    return f"at {_shown(here, 12)} in {_shown(text)}"


def _parse_radio(words: list[str]) -> RadioShowRequest | RadioSetRequest:
    if not words:
        return RadioShowRequest()
    if words[0].lower() != "set":
        raise ConsoleInputError("usage: radio | radio set key=value ...")
    if len(words) < 2:
        raise ConsoleInputError("usage: radio set key=value ... (e.g. radio set sf=9)")
    changes: dict[str, Any] = {}
    for pair in words[1:]:
        key, equals, text = pair.partition("=")
        if not equals or not key or not text:
            raise ConsoleInputError(f"expected key=value, got {_shown(pair)}")
        key = key.lower()
        name = RADIO_ALIASES.get(key, key)
        changes[name] = _setting_value(key, text)
    return RadioSetRequest(changes)


def _setting_value(key: str, text: str) -> int | float | bool:
    lowered = text.lower()
    if lowered in ("true", "on", "yes"):
        return True
    if lowered in ("false", "off", "no"):
        return False
    hertz = _HERTZ.match(lowered)
    if hertz is not None:
        frequency = float(hertz.group(1)) * _HERTZ_SCALE[hertz.group(2)]
        if not math.isfinite(frequency):
            raise ConsoleInputError(f"{key}: frequency out of range: {_shown(text)}")
        return round(frequency)
    for base in (0, 10):  # 0 reads 0x12; 10 reads 08
        try:
            return int(text, base)
        except ValueError:
            pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConsoleInputError(
            f"{key}: expected a number, true/false or Hz value, got {_shown(text)}"
        )
    return int(value) if value.is_integer() else value


def _parse_log(words: list[str]) -> LogLevelRequest:
    if len(words) != 1:
        raise ConsoleInputError("usage: log debug|info|warning|error")
    level = words[0].lower()
    level = "warning" if level == "warn" else level
    if level not in LOG_LEVELS:
        raise ConsoleInputError(f"unknown log level {_shown(words[0])} (debug|info|warning|error)")
    return LogLevelRequest(level)


# --- formatting: what the console prints ---


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def format_age(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    age = max(0.0, now - ts)
    if age < 60:
        return f"{age:.0f}s ago"
    if age < 3600:
        return f"{age / 60:.0f}m ago"
    if age < 86_400:
        return f"{age / 3600:.1f}h ago"
    return f"{age / 86_400:.1f}d ago"


def format_radio(settings: RadioSettings | None) -> str:
    if settings is None:
        return "not open"
    return (
        f"{settings.frequency_hz / 1e6:.3f} MHz  SF{settings.spreading_factor}"
        f"  BW {settings.bandwidth_hz / 1000:g} kHz  CR 4/{settings.coding_rate}"
        f"  {settings.tx_power_dbm} dBm  sync 0x{settings.sync_word:02x}"
        f"  preamble {settings.preamble_length}  CRC {'on' if settings.crc else 'off'}"
        f"  {'implicit' if settings.implicit_header else 'explicit'} header"
    )


def format_duty_cycle(used: dict[str, float]) -> str:
    if not used:
        return "-"
    return "  ".join(f"{band} {ratio * 100:.2f} %" for band, ratio in sorted(used.items()))


def format_status(state: GatewayState) -> str:
    now = state.now()
    lines = [f"uptime      {format_duration(state.uptime_s())}"]
    if not state.upstreams:
        lines.append("upstreams   none")
    for name, upstream in sorted(state.upstreams.items()):
        word = "connected" if upstream.connected else "disconnected"
        line = f"upstream    {name}: {word} for {format_duration(now - upstream.since)}"
        if upstream.last_error:
            line += f" (last error: {printable(upstream.last_error)})"
        lines.append(line)
    outbox = state.outbox()
    oldest = "" if outbox.oldest_age_s is None else f", oldest {outbox.oldest_age_s:.1f} s"
    lines.append(f"outbox      {outbox.depth} waiting{oldest}")
    lines.append(f"radio       {format_radio(state.radio)}")
    lines.append(f"duty cycle  {format_duty_cycle(state.duty_cycle_used())}")
    counters = state.counters
    rejected = sum(counters.frames_rejected.values())
    lines.append(
        f"frames      {counters.frames_received} received, {counters.frames_sent} sent,"
        f" {rejected} rejected"
    )
    lines.append(f"nodes       {len(state.nodes)} seen")
    return "\n".join(lines) + "\n"


def _number(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_nodes(state: GatewayState) -> str:
    if not state.nodes:
        return "no nodes seen yet\n"
    now = state.now()
    header = (
        f"{'DEVICE':<24} {'ADDR':>6} {'LAST SEEN':>10} {'RSSI':>7} {'SNR':>6}"
        f" {'UP':>6} {'DOWN':>6} {'REPORTS':>7} {'DUPS':>5} {'PEND':>4}"
    )
    lines = [header]
    for info in sorted(state.nodes.values(), key=lambda node: node.device):
        address = "-" if info.address is None else f"0x{info.address:04x}"
        lines.append(
            f"{info.device:<24} {address:>6} {format_age(info.last_seen, now):>10}"
            f" {_number(info.rssi):>7} {_number(info.snr):>6} {info.uplinks:>6}"
            f" {info.downlinks:>6} {info.reports:>7} {info.duplicates:>5}"
            f" {info.pending_commands:>4}"
        )
    return "\n".join(lines) + "\n"


def format_leases(state: GatewayState) -> str:
    rows = state.lease_rows()
    if not rows:
        return "no leases\n"
    now = state.now()
    lines = [f"{'ADDR':>6}  {'DEVICE':<24} {'LAST SEEN':>10}"]
    for row in sorted(rows, key=lambda lease: lease.address):
        lines.append(f"0x{row.address:04x}  {row.device:<24} {format_age(row.last_seen, now):>10}")
    return "\n".join(lines) + f"\n{len(rows)} in use\n"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` on one line with control characters escaped: frames come off the air, and an
    escape sequence in one must not reach the technician's terminal."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def format_frame(entry: FrameLogEntry) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(entry.ts))
    millis = int((entry.ts % 1) * 1000)
    if entry.body is None:
        body = ""
    elif isinstance(entry.body, str):
        body = printable(entry.body)
    else:
        body = printable(
            json.dumps(entry.body, separators=(",", ":"), default=str, ensure_ascii=False)
        )
    return (
        f"{clock}.{millis:03d} {entry.direction:<4} {printable(entry.node):<24}"
        f" {printable(entry.type):<10}"
        f" rssi {_number(entry.rssi):>6} snr {_number(entry.snr):>5} {entry.size:>3} B  {body}"
    ).rstrip() + "\n"


def format_result(result: CommandResult) -> str:
    detail = f": {printable(result.detail)}" if result.detail else ""
    return f"result: {result.status} (command {result.id}){detail}\n"


# --- line editing ---


@dataclass(frozen=True, slots=True)
class LineTooLong:
    length: int


class LineEditor:
    """Raw input bytes to lines: CR, LF or CRLF end a line; backspace and Ctrl-U edit;
    Ctrl-C drops the line; terminal escape sequences (arrow keys) are ignored.

    ``feed`` returns the completed lines and the text to echo (empty without echo).
    """

    def __init__(self, *, echo: bool, max_line: int = MAX_LINE) -> None:
        self._echo = echo
        self._max_line = max_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars: list[str] = []
        self._overflow = 0
        self._escape = ""  # "", "esc" or "csi"
        self._after_cr = False

    def reset(self) -> None:
        self._chars.clear()
        self._overflow = 0
        self._escape = ""

    def feed(self, data: bytes) -> tuple[list[str | LineTooLong], str]:
        lines: list[str | LineTooLong] = []
        echo: list[str] = []
        for char in self._decoder.decode(data):
            after_cr, self._after_cr = self._after_cr, False
            if self._escape:
                self._skip_escape(char)
            elif char == "\x1b":
                self._escape = "esc"
            elif char in "\r\n":
                if char == "\n" and after_cr:
                    continue
                self._after_cr = char == "\r"
                lines.append(self._finish())
                echo.append("\n")
            elif char in "\x7f\b":
                if self._overflow:
                    self._overflow -= 1
                elif self._chars:
                    self._chars.pop()
                    echo.append("\b \b")
            elif char == "\x15":  # Ctrl-U
                echo.append("\b \b" * len(self._chars))
                self.reset()
            elif char == "\x03":  # Ctrl-C
                self.reset()
                lines.append("")
                echo.append("^C\n")
            elif char == "\t" or char >= " ":
                char = " " if char == "\t" else char
                if len(self._chars) >= self._max_line:
                    self._overflow += 1
                else:
                    self._chars.append(char)
                    echo.append(char)
        return lines, "".join(echo) if self._echo else ""

    def _skip_escape(self, char: str) -> None:
        if self._escape == "esc":
            self._escape = "csi" if char in "[O" else ""
        elif "@" <= char <= "~":
            self._escape = ""

    def _finish(self) -> str | LineTooLong:
        line = "".join(self._chars)
        overflow = self._overflow
        self.reset()
        if overflow:
            return LineTooLong(len(line) + overflow)
        return line


# --- sessions ---


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


# --- transports ---


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


def console_socket_path(config: Config) -> Path:
    return config.console.socket or config.gateway.data_dir / "console.sock"


# --- the `duogate console` client ---


def add_console_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help=f"gateway config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--socket", type=Path, default=None, help="console socket path")
    parser.add_argument(
        "-c",
        "--command",
        dest="console_command",
        default=None,
        help="run one command, print its output and exit",
    )


def console_main(args: argparse.Namespace) -> int:
    """``duogate console``: interactive, or one command with ``-c``. Exit 1 on any error.

    Reads ``args.socket``, ``args.config`` and ``args.console_command`` (the ``-c`` text; see
    ``add_console_arguments``).
    """
    try:
        path = _client_socket_path(args)
    except ConfigError as exc:
        print(f"error: {exc.problems[0]}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = getattr(args, "console_command", None)
    try:
        if command is not None:
            return asyncio.run(run_one_shot(path, command))
        return asyncio.run(run_interactive(path))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"error: cannot reach the console at {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _client_socket_path(args: argparse.Namespace) -> Path:
    socket_path = getattr(args, "socket", None)
    if socket_path is not None:
        return Path(socket_path)
    config_path = getattr(args, "config", None)
    if config_path is None:
        if not DEFAULT_CONFIG.is_file():
            raise ValueError(
                f"no console socket: give --socket or --config ({DEFAULT_CONFIG} absent)"
            )
        config_path = DEFAULT_CONFIG
    return console_socket_path(load_config(config_path, check_files=False))


async def run_one_shot(path: Path, command: str, write: Callable[[str], None] | None = None) -> int:
    """Run one console command, streaming its output to ``write`` (default stdout).

    Returns 1 when the output holds an error line or the console refused the session.
    """
    write = write or _write_stdout
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        greeting: list[str] = []
        if not await _read_until_prompt(reader, greeting.append):
            write("".join(greeting))  # the console refused the session
            return 1
        writer.write(command.replace("\n", " ").encode() + b"\n")
        await writer.drain()
        printed: list[str] = []

        def keep(text: str) -> None:
            printed.append(text)
            write(text)

        await _read_until_prompt(reader, keep)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    output = "".join(printed)
    return 1 if any(line.startswith("error:") for line in output.splitlines()) else 0


async def _read_until_prompt(reader: asyncio.StreamReader, write: Callable[[str], None]) -> bool:
    """Pass on output until the prompt (not passed on; True) or the end of the connection."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""
    while True:
        data = await reader.read(4096)
        held += decoder.decode(data, final=not data)
        if held.endswith(PROMPT):
            write(held[: -len(PROMPT)])
            return True
        if not data:
            write(held)
            return False
        # Hold back a tail that could be the start of the prompt.
        keep = next((n for n in range(len(PROMPT) - 1, 0, -1) if held.endswith(PROMPT[:n])), 0)
        write(held[: len(held) - keep])
        held = held[len(held) - keep :]


async def run_interactive(path: Path) -> int:
    """Line-mode session: the local terminal edits lines, the console answers.

    Ends with 0 when the session ends as asked (``quit``, or the end of input: Ctrl-D or the
    end of a piped file); 1, with a line on stderr, when the gateway closes the connection on
    its own (it stopped, or refused the session).
    """
    reader, writer = await asyncio.open_unix_connection(str(path))
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    input_ended = False

    def end_input() -> None:
        nonlocal input_ended
        input_ended = True
        with contextlib.suppress(OSError):
            writer.write_eof()

    def on_stdin() -> None:
        try:
            data = os.read(stdin, 4096)
        except OSError:  # the terminal went away
            data = b""
        if data:
            writer.write(data)
        else:
            loop.remove_reader(stdin)
            end_input()

    try:
        loop.add_reader(stdin, on_stdin)
    except (PermissionError, ValueError):  # a regular file: send it all
        writer.write(sys.stdin.buffer.read())
        end_input()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    shown = ""  # the tail of what was printed
    try:
        while True:
            data = await reader.read(4096)
            text = decoder.decode(data, final=not data)
            _write_stdout(text)
            shown = (shown + text)[-len(FAREWELL) :]
            if not data:
                break
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(stdin)
        writer.close()
    if shown and not shown.endswith("\n"):
        _write_stdout("\n")
    if input_ended or shown == FAREWELL:
        return 0
    print("console connection closed by the gateway", file=sys.stderr)
    return 1


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
