"""What the console prints: status, node and lease tables, frames and command results.

Shared with the web page, which shows the same text.
"""

from __future__ import annotations

import json
import re
import time

from drivers.radio.base import RadioSettings
from gateway.model import CommandResult
from gateway.state import FrameLogEntry, GatewayState


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
    lines.append(
        f"storage     {outbox.commits} commits, {outbox.rows_written} rows written, "
        f"{outbox.never_written} taken upstream before due"
    )
    lines.append(f"radio       {format_radio(state.radio)}")
    lines.append(f"duty cycle  {format_duty_cycle(state.duty_cycle_used())}")
    counters = state.counters
    rejected = sum(counters.frames_rejected.values())
    lines.append(
        f"frames      {counters.frames_received} received, {counters.frames_sent} sent,"
        f" {rejected} rejected, {state.crc_errors()} CRC errors"
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
