"""Per-node RSSI/SNR over the last hour, in bounded memory.

Every device kind that reports a signal has a history: LoRa nodes from the frame log (join
frames included), BLE sensors from their adverts' RSSI. Modbus has no radio, so no samples.

Samples fall into fixed time buckets (15 s by default, 240 per hour); a bucket keeps the mean
of its samples, so a node that talks every second costs no more than one that talks every
15 seconds. The number of nodes kept is bounded too: the one heard least recently goes first.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

WINDOW_S = 3600.0
BUCKET_S = 15.0
MAX_NODES = 1000


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(slots=True)
class SignalPoint:
    bucket: int  # floor(ts / bucket_s)
    ts: float  # of the latest sample in the bucket
    rssi_sum: float = 0.0
    rssi_count: int = 0
    snr_sum: float = 0.0
    snr_count: int = 0

    def add(self, ts: float, rssi: float | None, snr: float | None) -> None:
        self.ts = max(self.ts, ts)
        if rssi is not None:
            self.rssi_sum += rssi
            self.rssi_count += 1
        if snr is not None:
            self.snr_sum += snr
            self.snr_count += 1

    def as_row(self) -> list[float | None]:
        """``[ts, rssi, snr]`` with the bucket means rounded to 0.1 (null when none)."""
        rssi = round(self.rssi_sum / self.rssi_count, 1) if self.rssi_count else None
        snr = round(self.snr_sum / self.snr_count, 1) if self.snr_count else None
        return [round(self.ts, 3), rssi, snr]


class SignalHistory:
    def __init__(
        self, *, window_s: float = WINDOW_S, bucket_s: float = BUCKET_S, max_nodes: int = MAX_NODES
    ) -> None:
        if window_s <= 0 or bucket_s <= 0 or max_nodes < 1:
            raise ValueError("window_s and bucket_s must be positive and max_nodes at least 1")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.max_nodes = max_nodes
        self._points_per_node = math.ceil(window_s / bucket_s) + 1
        self._nodes: OrderedDict[str, list[SignalPoint]] = OrderedDict()

    def add(self, device: str, ts: float, rssi: float | None, snr: float | None) -> bool:
        """Record one sample; True when it was kept. Samples without a finite RSSI or SNR, or
        out of order by more than a bucket, are ignored."""
        rssi = finite(rssi)
        snr = finite(snr)
        if (rssi is None and snr is None) or not math.isfinite(ts):
            return False
        bucket = math.floor(ts / self.bucket_s)
        points = self._nodes.get(device)
        if points is None:
            points = self._nodes[device] = []
            while len(self._nodes) > self.max_nodes:
                self._nodes.popitem(last=False)
        else:
            self._nodes.move_to_end(device)
        if points and points[-1].bucket == bucket:
            points[-1].add(ts, rssi, snr)
            return True
        if points and points[-1].bucket > bucket:
            return False
        point = SignalPoint(bucket, ts)
        point.add(ts, rssi, snr)
        points.append(point)
        if len(points) > self._points_per_node:
            del points[: len(points) - self._points_per_node]
        return True

    def points(self, device: str, now: float) -> list[list[float | None]]:
        """``[ts, rssi, snr]`` rows for ``device`` within the window ending at ``now``."""
        since = now - self.window_s
        return [point.as_row() for point in self._nodes.get(device, ()) if point.ts >= since]

    def devices(self) -> list[str]:
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)
