"""Outbox rows on disk: the schema, the upstreams' bits, and reports/events <-> JSON bodies."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from typing import Any, Literal

from gateway.model import DeviceEvent, EventKind, Report

log = logging.getLogger("gateway.store.outbox")

MAX_UPSTREAMS = 62  # bits of a positive SQLite integer

Kind = Literal["report", "event"]


class NotPlainJson(ValueError):
    """A report or event whose data is not plain JSON."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    droppable INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_droppable ON outbox(id) WHERE droppable = 1;
CREATE TABLE IF NOT EXISTS outbox_upstreams (
    name TEXT PRIMARY KEY,
    bit INTEGER NOT NULL UNIQUE
);
"""


def init_schema(conn: sqlite3.Connection, upstreams: list[str]) -> tuple[dict[str, int], int, int]:
    """Create the tables; give each upstream its bit, forgetting those no longer enabled.

    Returns the bits by upstream name, the number of stored entries and the newest id.
    """
    try:
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        known = dict(conn.execute("SELECT name, bit FROM outbox_upstreams").fetchall())
        for name, bit in list(known.items()):
            if name not in upstreams:
                _forget_upstream(conn, name, bit)
                del known[name]
        used = set(known.values())
        for name in upstreams:
            if name not in known:
                free = next(b for b in range(MAX_UPSTREAMS) if b not in used)
                used.add(free)
                known[name] = free
                conn.execute("INSERT INTO outbox_upstreams VALUES (?, ?)", (name, free))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    count = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return {name: 1 << known[name] for name in upstreams}, count, row[0] if row else 0


def _forget_upstream(conn: sqlite3.Connection, name: str, bit: int) -> None:
    mask = 1 << bit
    conn.execute("UPDATE outbox SET pending = pending & ? WHERE (pending & ?) != 0", (~mask, mask))
    removed = conn.execute("DELETE FROM outbox WHERE pending = 0").rowcount
    conn.execute("DELETE FROM outbox_upstreams WHERE name = ?", (name,))
    log.warning(
        "outbox: upstream %r is no longer enabled; %d entries only it still needed removed",
        name,
        removed,
    )


def encode(item: Report | DeviceEvent) -> tuple[Kind, str]:
    if isinstance(item, Report):
        kind: Kind = "report"
        fields: dict[str, Any] = {
            "id": item.id,
            "device": item.device,
            "kind": item.kind,
            "ts": item.ts,
            "seq": item.seq,
            "data": item.data,
            "rssi": item.rssi,
            "snr": item.snr,
        }
        if item.gateways is not None:
            fields["gateways"] = item.gateways
    elif isinstance(item, DeviceEvent):
        kind = "event"
        fields = {
            "device": item.device,
            "event": str(item.event),
            "ts": item.ts,
            "detail": item.detail,
        }
    else:
        raise NotPlainJson(f"not a Report or DeviceEvent: {type(item).__name__}")
    try:
        body = json.dumps(fields, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise NotPlainJson(f"{kind} from {item.device} is not plain JSON: {exc}") from None
    return kind, body


def decode(kind: str, body: str) -> Report | DeviceEvent:
    fields = json.loads(body)
    if kind == "report":
        return Report(**fields)
    if kind == "event":
        return DeviceEvent(
            device=fields["device"],
            event=EventKind(fields["event"]),
            ts=fields["ts"],
            detail=fields["detail"],
        )
    raise ValueError(f"unknown kind {kind!r}")


def droppable_kinds_for_mqtt(qos_reports: int, qos_events: int) -> frozenset[str]:
    """The kinds the MQTT config publishes at QoS 0 (``mqtt.qos_reports``/``qos_events``)."""
    kinds = set()
    if qos_reports == 0:
        kinds.add("report")
    if qos_events == 0:
        kinds.add("event")
    return frozenset(kinds)
