"""What the simulated SX1276 counts, for tests and the simulator's log."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class ChipStats:
    spi_transfers: int = 0
    tx_started: int = 0
    tx_done: int = 0
    tx_aborted: int = 0
    rx_packets: int = 0
    rx_dropped_too_long: int = 0
    rx_timeouts: int = 0
    tx_ocp_limited: int = 0
    spi_during_reset: int = 0
    dio0_rises: int = 0
    dio1_rises: int = 0
    callback_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
