"""Reserved LoRa command references per device, so none repeats across restarts.

A node remembers recent command references to answer a repeat without executing twice, so a
reference reused after a restart would make it skip a new command. The downlink scheduler
hands out references only below the stored bound (``ReserveCommandRefs``); after a restart it
continues from the bound.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store.db import StoreError, open_database


class CommandRefStore:
    """The ``lora_command_refs`` table. Not thread-safe: use it from one thread at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS lora_command_refs "
                "(device TEXT PRIMARY KEY, reserved INTEGER NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the command reference table: {exc}") from None

    @classmethod
    def open(cls, data_dir: Path) -> CommandRefStore:
        return cls(open_database(data_dir))

    def close(self) -> None:
        self._conn.close()

    def load(self) -> dict[str, int]:
        """The stored bound of every device."""
        try:
            rows = self._conn.execute("SELECT device, reserved FROM lora_command_refs").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read command references: {exc}") from None
        return {str(device): int(reserved) for device, reserved in rows}

    def reserve(self, device: str, up_to: int) -> None:
        """Store that references of ``device`` below ``up_to`` may be in use (never lowered)."""
        try:
            self._conn.execute(
                "INSERT INTO lora_command_refs (device, reserved) VALUES (?, ?) "
                "ON CONFLICT(device) DO UPDATE SET reserved = MAX(reserved, excluded.reserved)",
                (device, up_to),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot reserve command references: {exc}") from None
