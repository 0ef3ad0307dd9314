"""LoRa leases in SQLite: one row per EUI, so the network core can be rebuilt after a restart.

A row holds what the core needs to continue every session (address, both nonces, the
uplink counters already accepted, the downlink counter reservation) and the EUI's join
history (generation, recent nonces). Session keys are not stored: they are derived again
from the registry's root key and the two nonces.

Writes are batched: ``LeaseWriter`` takes the changed records from the core (``take_dirty``)
and writes them with the journal's next commit, which the LoRa shell asks for within
``LEASE_SYNC_S`` of an uplink and at once before it answers a join; see
``gateway/protocol/session.py`` for what a crash between two writes can cost.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from gateway.protocol.crypto import NONCE_LEN, TAG_LEN
from gateway.protocol.join import DeviceCredentials, JoinSettings, LeaseRecord, RandomBytes
from gateway.protocol.session import NetworkCore
from gateway.store.db import StoreError, open_database
from gateway.store.journal import Journal, Write

log = logging.getLogger(__name__)

# Changed lease records (uplink counters, last seen) are on disk within this long.
LEASE_SYNC_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lora_leases (
    eui TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    recent_nonces BLOB NOT NULL,
    last_seen REAL NOT NULL,
    address INTEGER,
    dev_nonce BLOB NOT NULL,
    gw_nonce BLOB NOT NULL,
    encrypt INTEGER NOT NULL,
    rx_delay_ds INTEGER NOT NULL,
    accept_frame BLOB NOT NULL,
    up_last INTEGER NOT NULL,
    up_recent BLOB NOT NULL,
    dl_reserved INTEGER NOT NULL
)
"""

_COLUMNS = (
    "eui, generation, recent_nonces, last_seen, address, dev_nonce, gw_nonce, encrypt, "
    "rx_delay_ds, accept_frame, up_last, up_recent, dl_reserved"
)

_UPSERT = f"""
INSERT INTO lora_leases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(eui) DO UPDATE SET
    generation = excluded.generation,
    recent_nonces = excluded.recent_nonces,
    last_seen = excluded.last_seen,
    address = excluded.address,
    dev_nonce = excluded.dev_nonce,
    gw_nonce = excluded.gw_nonce,
    encrypt = excluded.encrypt,
    rx_delay_ds = excluded.rx_delay_ds,
    accept_frame = excluded.accept_frame,
    up_last = excluded.up_last,
    up_recent = excluded.up_recent,
    dl_reserved = excluded.dl_reserved
"""

_RECENT_ENTRY = 4 + TAG_LEN  # counter + tag


def _row(record: LeaseRecord) -> tuple[object, ...]:
    return (
        f"{record.eui:016x}",
        record.generation,
        b"".join(record.recent_nonces),
        record.last_seen,
        record.address,
        record.dev_nonce,
        record.gw_nonce,
        int(record.encrypt),
        record.rx_delay_ds,
        record.accept_frame,
        record.up_last,
        b"".join(counter.to_bytes(4, "big") + tag for counter, tag in record.up_recent),
        record.dl_reserved,
    )


def _chunks(blob: bytes, size: int) -> list[bytes]:
    if len(blob) % size:
        raise ValueError(f"blob of {len(blob)} bytes is not a multiple of {size}")
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def _int(value: object, name: str) -> int:
    if not isinstance(value, int):
        raise ValueError(f"{name} is not an integer")
    return value


def _blob(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"{name} is not a blob")
    return value


def _record(row: tuple[object, ...]) -> LeaseRecord:
    """A record from a row; ValueError for a row this version cannot use."""
    eui, generation, nonces, last_seen, address, dev_nonce, gw_nonce = row[:7]
    encrypt, rx_delay_ds, accept_frame, up_last, up_recent, dl_reserved = row[7:]
    if not isinstance(eui, str) or len(eui) != 16:
        raise ValueError(f"bad eui {eui!r}")
    if not isinstance(last_seen, (int, float)):
        raise ValueError("last_seen is not a number")
    dev_nonce = _blob(dev_nonce, "dev_nonce")
    gw_nonce = _blob(gw_nonce, "gw_nonce")
    if address is not None and (len(dev_nonce) != NONCE_LEN or len(gw_nonce) != NONCE_LEN):
        raise ValueError("lease without both nonces")
    return LeaseRecord(
        eui=int(eui, 16),
        generation=_int(generation, "generation"),
        recent_nonces=tuple(_chunks(_blob(nonces, "recent_nonces"), NONCE_LEN)),
        last_seen=float(last_seen),
        address=None if address is None else _int(address, "address"),
        dev_nonce=dev_nonce,
        gw_nonce=gw_nonce,
        encrypt=bool(_int(encrypt, "encrypt")),
        rx_delay_ds=_int(rx_delay_ds, "rx_delay_ds"),
        accept_frame=_blob(accept_frame, "accept_frame"),
        up_last=_int(up_last, "up_last"),
        up_recent=tuple(
            (int.from_bytes(entry[:4], "big"), entry[4:])
            for entry in _chunks(_blob(up_recent, "up_recent"), _RECENT_ENTRY)
        ),
        dl_reserved=_int(dl_reserved, "dl_reserved"),
    )


class LeaseStore:
    """The ``lora_leases`` table. Not thread-safe: use it from one thread at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.skipped_rows = 0  # unreadable rows ignored by the last load
        try:
            conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the lease table: {exc}") from None

    @classmethod
    def open(cls, data_dir: Path) -> LeaseStore:
        return cls(open_database(data_dir))

    def close(self) -> None:
        self.conn.close()

    def load(self) -> list[LeaseRecord]:
        """Every readable record; unreadable rows are logged, counted and skipped."""
        records = []
        self.skipped_rows = 0
        try:
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM lora_leases").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read leases: {exc}") from None
        for row in rows:
            try:
                records.append(_record(row))
            except (ValueError, TypeError) as exc:
                self.skipped_rows += 1
                log.error("lease row for %r skipped: %s", row[0], exc)
        return records

    def save(self, records: Iterable[LeaseRecord]) -> int:
        """Upsert records in one transaction; StoreError if it could not be committed."""
        rows = [_row(record) for record in records]
        if not rows:
            return 0
        try:
            self.conn.execute("BEGIN")
            try:
                self.conn.executemany(_UPSERT, rows)
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {len(rows)} leases: {exc}") from None
        return len(rows)

    def flush(self, core: NetworkCore) -> int:
        """Write the core's changed records; on failure they stay pending in the core."""
        records = core.take_dirty()
        try:
            return self.save(records)
        except StoreError:
            core.mark_dirty(record.eui for record in records)
            raise


class LeaseWriter:
    """The core's changed lease records, written with the journal's next commit (a
    ``JournalWriter``). Records of a failed commit are marked changed again."""

    def __init__(self, core: NetworkCore, journal: Journal) -> None:
        self.core = core
        self.journal = journal
        self._taken: list[LeaseRecord] = []

    def take(self) -> Write | None:
        records = self.core.take_dirty()
        if not records:
            return None
        self._taken = records
        rows = [_row(record) for record in records]
        return lambda conn: conn.executemany(_UPSERT, rows).rowcount

    def committed(self, outcome: object) -> None:
        self._taken = []

    def failed(self, error: StoreError) -> None:
        self.core.mark_dirty(record.eui for record in self._taken)
        self._taken = []
        self.journal.due_in(LEASE_SYNC_S)


def open_core(
    store: LeaseStore,
    settings: JoinSettings,
    registry: Mapping[int, DeviceCredentials],
    *,
    random_bytes: RandomBytes | None = None,
) -> NetworkCore:
    """Rebuild the core from the store and write its new downlink reservations at once,
    so no downlink counter used before the restart can be used again."""
    records = store.load()
    if random_bytes is None:
        core = NetworkCore(settings, registry, records=records)
    else:
        core = NetworkCore(settings, registry, records=records, random_bytes=random_bytes)
    store.flush(core)
    return core
