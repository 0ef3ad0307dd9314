"""The bridge's side of ``DeviceSink`` for tests that run a driver on its own (LoRa, Modbus,
BLE): a sink that keeps every report and event it is handed, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.model import EventKind


@dataclass(frozen=True, slots=True)
class StoredReport:
    device: str
    kind: str
    data: dict[str, Any]
    rssi: float | None = None
    snr: float | None = None
    seq: int | None = None
    report_id: str | None = None

    @property
    def session(self) -> str:
        """``device:session`` part of the report id: counters restart with a new session."""
        assert self.report_id is not None
        return self.report_id.rpartition(":")[0]


class RecordingSink:
    """A ``DeviceSink`` that keeps every report and event it is handed, in order."""

    def __init__(self) -> None:
        self.reports: list[StoredReport] = []
        self.events: list[tuple[str, EventKind, dict[str, Any] | None]] = []
        self._changed = asyncio.Event()

    async def report(
        self,
        device: str,
        kind: str,
        data: dict[str, Any],
        *,
        rssi: float | None = None,
        snr: float | None = None,
        seq: int | None = None,
        report_id: str | None = None,
        safe_within_s: float | None = None,
        gateways: list[dict[str, Any]] | None = None,
    ) -> None:
        self.reports.append(StoredReport(device, kind, dict(data), rssi, snr, seq, report_id))
        self._changed.set()

    async def event(
        self, device: str, event: EventKind, detail: dict[str, Any] | None = None
    ) -> None:
        self.events.append((device, event, detail))
        self._changed.set()

    def of(self, device: str) -> list[StoredReport]:
        return [report for report in self.reports if report.device == device]

    def data(self, device: str) -> list[dict[str, Any]]:
        return [report.data for report in self.of(device)]

    def kinds(self, device: str) -> list[EventKind]:
        return [event for name, event, _detail in self.events if name == device]

    def devices_with(self, *kinds: EventKind) -> set[str]:
        """The devices that had an event of one of these kinds."""
        return {device for device, event, _detail in self.events if event in kinds}

    def counters(self) -> list[tuple[str, int]]:
        """(device, counter) of every report that carries a simulated node's report counter."""
        return [
            (report.device, counter)
            for report in self.reports
            if isinstance(counter := report.data.get("counter"), int)
        ]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``condition`` holds, checking it after each report or event."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()
