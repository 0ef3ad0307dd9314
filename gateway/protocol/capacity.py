"""How many reports one single-channel gateway carries: air time, duty cycle and pure ALOHA.

One SX127x listens on one frequency at one spreading factor, so every node of a gateway shares
one channel. Three limits apply to confirmed reports (each answered by an ack downlink):

* **the channel**: nodes transmit when their report is due, without listening first: pure
  ALOHA. With uplink attempts (retransmissions included) arriving at random at rate ``g``, an
  uplink of time on air ``T_up`` gets through only if no other uplink overlaps it (nothing
  starts within ``T_up`` before or after it) and the half-duplex gateway is not sending an
  ack meanwhile (no ack starts within ``T_ack`` before it or ``T_up`` after its start). Acks
  follow successful uplinks, at rate ``s``, so

      s = g * exp(-2 g T_up) * exp(-s (T_up + T_ack))

  ``g * exp(-2 g T_up)`` is the classic ALOHA throughput ``G e^(-2G)`` (``G = g T_up``), which
  peaks at ``G = 0.5`` with 18.4 % (``1 / 2e``) of the time carrying successful frames; the
  acks lower that peak a little further. ``channel_reports_per_s`` is the ``s`` at the peak.
* **the gateway's duty cycle**: each report costs one ack of ``T_ack`` from the gateway's
  budget in the sub-band (1 % or 10 % of every hour in EU868), so at most
  ``limit / T_ack`` reports per second.
* **each node's duty cycle**: a node may not report more often than ``T_up / limit`` (before
  any retransmission).

Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.protocol.airtime import time_on_air_s
from gateway.protocol.dutycycle import EU868_SUB_BANDS, WINDOW_S, SubBand
from gateway.protocol.frames import SESSION_MIN_LEN, encode_cbor

ALOHA_PEAK_LOAD = 0.5  # G at which pure ALOHA throughput G e^(-2G) peaks
ALOHA_PEAK_THROUGHPUT = ALOHA_PEAK_LOAD * math.exp(-2 * ALOHA_PEAK_LOAD)  # 1 / 2e = 0.184

# A report as the simulated node sends it (docs/protocol.md): a report counter past 255 and a
# temperature with one decimal, which CBOR carries as a double (9 bytes).
TYPICAL_REPORT_BODY: dict[str, Any] = {"counter": 1000, "temperature_c": 21.3, "relay": False}
ACK_BODY_LEN = 4  # the acknowledged uplink counter
ACK_FRAME_LEN = SESSION_MIN_LEN + ACK_BODY_LEN

# EU868 sub-bands a single-channel gateway is usually put in: g (868.0-868.6 MHz, 1 %, the
# LoRaWAN default channels 868.1/868.3/868.5) and g3 (869.4-869.65 MHz, 10 %, 869.525 MHz).
SUB_BAND_1_PERCENT = EU868_SUB_BANDS[0]
SUB_BAND_10_PERCENT = EU868_SUB_BANDS[2]


def report_frame_len(body: dict[str, Any] | None = None) -> int:
    """Bytes on air of a report: header and tag (12) plus the CBOR body."""
    return SESSION_MIN_LEN + len(encode_cbor(TYPICAL_REPORT_BODY if body is None else body))


def channel_reports_per_s(report_airtime_s: float, ack_airtime_s: float) -> float:
    """Successful reports per second at the ALOHA peak, the gateway deaf while it acks.

    Solves ``s * exp(s (T_up + T_ack)) = peak / T_up`` (the left side grows with ``s``).
    """
    if not report_airtime_s > 0 or not ack_airtime_s >= 0:
        raise ValueError("air times must be positive")
    target = ALOHA_PEAK_THROUGHPUT / report_airtime_s
    busy = report_airtime_s + ack_airtime_s
    low, high = 0.0, target
    for _ in range(100):
        middle = (low + high) / 2
        if middle * math.exp(middle * busy) < target:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one gateway carries at one spreading factor in one sub-band."""

    spreading_factor: int
    bandwidth_hz: int
    sub_band: SubBand
    report_len: int
    report_airtime_s: float
    ack_airtime_s: float

    @property
    def channel_reports_per_h(self) -> float:
        return channel_reports_per_s(self.report_airtime_s, self.ack_airtime_s) * WINDOW_S

    @property
    def channel_success_probability(self) -> float:
        """The chance an uplink gets through at the channel limit (the ALOHA peak)."""
        rate = channel_reports_per_s(self.report_airtime_s, self.ack_airtime_s)
        return rate * 2 * self.report_airtime_s  # successes per attempt, g = 0.5 / T_up

    @property
    def gateway_duty_reports_per_h(self) -> float:
        """Acks the gateway may send per hour in the sub-band: one per report."""
        return self.sub_band.budget_s / self.ack_airtime_s

    @property
    def reports_per_h(self) -> float:
        """The lower of the two limits: what the gateway carries."""
        return min(self.channel_reports_per_h, self.gateway_duty_reports_per_h)

    @property
    def limited_by(self) -> str:
        if self.gateway_duty_reports_per_h < self.channel_reports_per_h:
            return "gateway duty cycle"
        return "channel"

    @property
    def node_min_interval_s(self) -> float:
        """The shortest report interval a node's own duty cycle allows (no retransmissions)."""
        return self.report_airtime_s / self.sub_band.limit

    def nodes_at(self, interval_s: float) -> int | None:
        """Nodes reporting every ``interval_s`` the gateway carries; None when a node may not
        report that often at all."""
        if interval_s < self.node_min_interval_s:
            return None
        return math.floor(self.reports_per_h * interval_s / WINDOW_S)


def capacity(
    spreading_factor: int,
    sub_band: SubBand,
    *,
    bandwidth_hz: int = 125_000,
    report_len: int | None = None,
    coding_rate: int = 5,
    preamble: int = 8,
) -> Capacity:
    """The capacity for reports of ``report_len`` bytes (default: a typical report)."""
    length = report_frame_len() if report_len is None else report_len

    def airtime(size: int) -> float:
        return time_on_air_s(size, spreading_factor, bandwidth_hz, coding_rate, preamble)

    return Capacity(
        spreading_factor=spreading_factor,
        bandwidth_hz=bandwidth_hz,
        sub_band=sub_band,
        report_len=length,
        report_airtime_s=airtime(length),
        ack_airtime_s=airtime(ACK_FRAME_LEN),
    )
