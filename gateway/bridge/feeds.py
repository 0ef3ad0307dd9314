"""State feeds: what the console, metrics and web page read from the bridge's side.

``GatewayState`` calls these at read time (outbox size and age of its oldest entry, duty
cycle used, LoRa leases); a loop refreshes the age and each upstream's connected flag once
a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from drivers.radio.base import Radio
from gateway.bridge.directory import DriverDirectory
from gateway.state import GatewayState, LeaseRow, OutboxStats
from gateway.store.outbox import Outbox
from gateway.upstreams.base import Upstream

log = logging.getLogger("duogate.bridge")

STATS_INTERVAL_S = 1.0


class StateFeeds:
    def __init__(
        self,
        state: GatewayState,
        outbox: Outbox,
        upstreams: Mapping[str, Upstream],
        drivers: DriverDirectory,
        *,
        wall: Callable[[], float],
        store_errors: tuple[type[BaseException], ...],
    ) -> None:
        self.state = state
        self.outbox = outbox
        self.upstreams = upstreams
        self.drivers = drivers
        self._wall = wall
        self._store_errors = store_errors
        self._oldest_ts: float | None = None

    def attach(self, radio: Radio | None) -> None:
        """Point the live state at these feeds (and the radio's settings)."""
        self.state.outbox_stats = self.outbox_stats
        self.state.duty_cycle = self.duty_cycle
        self.state.leases = self.lease_rows
        if radio is not None:
            self.state.radio = radio.settings
            self.state.radio_counters = lambda: getattr(radio, "counters", {})

    def outbox_stats(self) -> OutboxStats:
        oldest = None if self._oldest_ts is None else max(0.0, self._wall() - self._oldest_ts)
        outbox = self.outbox
        return OutboxStats(
            outbox.size, oldest, outbox.journal_commits, outbox.rows_written, outbox.never_written
        )

    def duty_cycle(self) -> dict[str, float]:
        for driver in self.drivers:
            used = getattr(driver, "duty_cycle_used", None)
            if used is not None:
                return used()
        return {}

    def lease_rows(self) -> list[LeaseRow]:
        rows: list[LeaseRow] = []
        for driver in self.drivers:
            core: Any = getattr(driver, "core", None) if driver.kind == "lora" else None
            if core is None:
                continue
            with contextlib.suppress(RuntimeError):
                rows = [
                    LeaseRow(i.address, i.device_id, i.last_seen or None) for i in core.leases()
                ]
        return sorted(rows, key=lambda row: row.address)

    async def run(self) -> None:
        """Refresh the outbox age and the upstreams' flags until cancelled."""
        while True:
            oldest: float | None = None
            try:
                for name in self.upstreams:
                    page = await self.outbox.pending(name, 0, limit=1)
                    if page:
                        ts = page[0].item.ts
                        oldest = ts if oldest is None else min(oldest, ts)
            except self._store_errors as exc:
                log.debug("outbox statistics not read: %s", exc)
            self._oldest_ts = oldest
            for upstream in self.upstreams.values():
                self.state.set_upstream(upstream.name, upstream.connected)
            await asyncio.sleep(STATS_INTERVAL_S)
