"""The console's command grammar: one typed line to a request, or a one-line error.

The web page checks its commands with the same rules (``parse_command`` on a ``send`` line).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.model import device_kind

MAX_LINE = 2048
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
