"""JSON views of the live state, built with the console's formatting helpers.

The web page, the JSON API and the console read the same ``GatewayState`` through the same
functions (``format_duration``, ``format_age``, ``format_radio``, ``format_frame``, ...), so
the three never disagree. Each view carries the raw numbers for programs and the console's
text for people.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.console.formatting import (
    format_age,
    format_duration,
    format_duty_cycle,
    format_frame,
    format_nodes,
    format_radio,
    format_status,
    printable,
)
from gateway.model import CommandResult
from gateway.state import FrameLogEntry, GatewayState, NodeInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_JSON_DEPTH = 16


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` with what JSON cannot carry replaced: NaN/inf become null, other objects
    their ``str``, and nesting below ``MAX_JSON_DEPTH`` a string."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_JSON_DEPTH:
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_safe(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item, depth + 1) for item in value]
    return str(value)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class StateReader:
    """Calls the bridge's callables (outbox, duty cycle, leases), which may touch the database:
    one failing gives null in the view and a single warning until it recovers."""

    def __init__(self) -> None:
        self._failing: dict[str, str] = {}

    def read(self, what: str, reader: Callable[[], T]) -> T | None:
        try:
            value = reader()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if self._failing.get(what) != message:
                self._failing[what] = message
                log.warning("web: cannot read %s: %s", what, message)
            return None
        self._failing.pop(what, None)
        return value


def status_view(state: GatewayState, reader: StateReader, *, with_text: bool = False) -> dict:
    now = state.now()
    uptime = state.uptime_s()
    counters = state.counters
    outbox = reader.read("outbox", state.outbox)
    duty = reader.read("duty cycle", state.duty_cycle_used)
    radio = state.radio
    view: dict[str, Any] = {
        "now": now,
        "started_at": state.started_at,
        "uptime_s": uptime,
        "uptime": format_duration(uptime),
        "upstreams": [
            {
                "name": name,
                "connected": upstream.connected,
                "since": upstream.since,
                "for": format_duration(now - upstream.since),
                "last_error": printable(upstream.last_error) if upstream.last_error else None,
            }
            for name, upstream in sorted(state.upstreams.items())
        ],
        "outbox": None
        if outbox is None
        else {"depth": outbox.depth, "oldest_age_s": _finite(outbox.oldest_age_s)},
        "radio": None if radio is None else dataclasses.asdict(radio),
        "radio_text": format_radio(radio),
        "duty_cycle": None if duty is None else json_safe(duty),
        "duty_cycle_text": "-" if duty is None else format_duty_cycle(duty),
        "frames": {
            "received": counters.frames_received,
            "sent": counters.frames_sent,
            "rejected": sum(counters.frames_rejected.values()),
            "rejected_by_reason": dict(sorted(counters.frames_rejected.items())),
            "log_dropped": state.frames.dropped,
        },
        "joins": dict(sorted(counters.joins.items())),
        "commands": dict(sorted(counters.commands.items())),
        "nodes_seen": len(state.nodes),
    }
    if with_text:
        view["text"] = _console_text("status", format_status, state)
    return view


def _console_text(what: str, formatter: Callable[[GatewayState], str], state: GatewayState) -> str:
    try:
        return formatter(state)
    except Exception as exc:  # a bridge callable failed; the fields above already say null
        return f"error: cannot read {what}: {type(exc).__name__}: {exc}\n"


def node_view(info: NodeInfo, now: float) -> dict[str, Any]:
    return {
        "device": info.device,
        "kind": info.kind,
        "address": info.address,
        "address_text": "-" if info.address is None else f"0x{info.address:04x}",
        "last_seen": info.last_seen,
        "last_seen_text": format_age(info.last_seen, now),
        "rssi": _finite(info.rssi),
        "snr": _finite(info.snr),
        "uplinks": info.uplinks,
        "downlinks": info.downlinks,
        "reports": info.reports,
        "duplicates": info.duplicates,
        "last_data": json_safe(info.last_data),
        "pending_commands": info.pending_commands,
    }


def nodes_view(state: GatewayState, *, with_text: bool = False) -> dict[str, Any]:
    now = state.now()
    view: dict[str, Any] = {
        "now": now,
        "nodes": [node_view(info, now) for _, info in sorted(state.nodes.items())],
    }
    if with_text:
        view["text"] = format_nodes(state)
    return view


def frame_view(entry: FrameLogEntry, device: str | None) -> dict[str, Any]:
    """One frame log entry; ``device`` is the device id it belongs to when known."""
    millis = int((entry.ts % 1) * 1000)
    return {
        "ts": entry.ts,
        "time": time.strftime("%H:%M:%S", time.localtime(entry.ts)) + f".{millis:03d}",
        "direction": str(entry.direction),
        "node": printable(entry.node),
        "device": device,
        "type": printable(entry.type),
        "rssi": _finite(entry.rssi),
        "snr": _finite(entry.snr),
        "size": entry.size,
        "body": json_safe(entry.body),
        "text": format_frame(entry).rstrip("\n"),
    }


def result_view(result: CommandResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "device": result.device,
        "status": str(result.status),
        "ts": result.ts,
        "detail": printable(result.detail) if result.detail else None,
    }
