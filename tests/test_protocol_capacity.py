"""The capacity figures: the model's pieces, the frame sizes it assumes, and the tables in
docs/DEPLOY.md being exactly what the generator computes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import capacity as capacity_tables
from gateway.protocol import crypto, frames
from gateway.protocol.airtime import time_on_air_s
from gateway.protocol.capacity import (
    ACK_FRAME_LEN,
    ALOHA_PEAK_THROUGHPUT,
    SUB_BAND_1_PERCENT,
    SUB_BAND_10_PERCENT,
    TYPICAL_REPORT_BODY,
    capacity,
    channel_reports_per_s,
    report_frame_len,
)

KEYS = crypto.session_keys(bytes(16), 0x0016C00100000001, bytes(8), bytes(range(8)))
ROOT = Path(__file__).resolve().parent.parent


def test_deploy_md_holds_the_generated_tables() -> None:
    document = capacity_tables.DEPLOY_MD.read_text()
    assert capacity_tables.in_document(document) == capacity_tables.render(), (
        "docs/DEPLOY.md capacity tables are stale: run `python -m bench.capacity --write`"
    )


def test_write_replaces_only_the_tables(tmp_path: Path) -> None:
    page = tmp_path / "DEPLOY.md"
    before, after = "# Deploying\n\nintro\n\n", "\nafter the tables\n"
    stale = f"{capacity_tables.BEGIN}\n| old | table |\n{capacity_tables.END}\n"
    page.write_text(before + stale + after)
    capacity_tables.write(page)
    assert page.read_text() == before + capacity_tables.render() + after
    with pytest.raises(ValueError, match="no capacity tables"):
        capacity_tables.in_document(before)


def test_generator_prints_the_tables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.capacity"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout == capacity_tables.render()
    result = subprocess.run(
        [sys.executable, "-m", "bench.capacity", "--bogus"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and result.stderr.startswith("usage:")


def test_frame_sizes_are_those_on_air() -> None:
    report = frames.encode_session(frames.ReportFrame(0x0001, 1000, TYPICAL_REPORT_BODY), KEYS)
    assert len(report) == report_frame_len() == 54
    ack = frames.encode_session(frames.Downlink(0x0001, 7, ack_counter=1000), KEYS)
    assert len(ack) == ACK_FRAME_LEN == 16


def test_aloha_peaks_at_one_over_2e() -> None:
    assert math.isclose(ALOHA_PEAK_THROUGHPUT, 1 / (2 * math.e))
    throughput = [load * math.exp(-2 * load) for load in (0.3, 0.4, 0.5, 0.6, 0.7)]
    assert max(throughput) == throughput[2] == ALOHA_PEAK_THROUGHPUT


@pytest.mark.parametrize(("uplink_s", "ack_s"), [(0.1027, 0.0515), (2.4658, 1.3189), (1.0, 5.0)])
def test_channel_limit_solves_aloha_with_a_deaf_gateway(uplink_s: float, ack_s: float) -> None:
    rate = channel_reports_per_s(uplink_s, ack_s)
    # At the ALOHA peak (G = 0.5) each attempt succeeds unless another uplink overlaps it or
    # an ack is on the air: s = g e^(-2 g T_up) e^(-s (T_up + T_ack)) with g = 0.5 / T_up.
    attempts = 0.5 / uplink_s
    success = math.exp(-2 * attempts * uplink_s) * math.exp(-rate * (uplink_s + ack_s))
    assert rate == pytest.approx(attempts * success, rel=1e-9)
    assert rate < ALOHA_PEAK_THROUGHPUT / uplink_s  # the deaf gateway costs some
    figures = capacity(7, SUB_BAND_10_PERCENT)
    assert figures.channel_success_probability == pytest.approx(
        figures.channel_reports_per_h / 3600 / (0.5 / figures.report_airtime_s)
    )


def test_figures_for_sf7_and_sf12() -> None:
    sf7 = capacity(7, SUB_BAND_10_PERCENT)
    assert sf7.report_airtime_s == time_on_air_s(54, 7, 125_000)
    assert sf7.ack_airtime_s == time_on_air_s(16, 7, 125_000)
    assert sf7.gateway_duty_reports_per_h == pytest.approx(360 / sf7.ack_airtime_s)
    assert sf7.limited_by == "channel"
    assert sf7.reports_per_h == sf7.channel_reports_per_h
    assert sf7.node_min_interval_s == pytest.approx(10 * sf7.report_airtime_s)
    sf12 = capacity(12, SUB_BAND_1_PERCENT)
    assert sf12.gateway_duty_reports_per_h == pytest.approx(36 / sf12.ack_airtime_s)
    assert sf12.limited_by == "gateway duty cycle"
    assert sf12.reports_per_h == sf12.gateway_duty_reports_per_h
    assert sf12.nodes_at(60) is None  # a node may not report every minute at SF12 in 1 %
    assert sf12.nodes_at(3600) == math.floor(sf12.reports_per_h)


def test_capacity_falls_as_the_spreading_factor_rises() -> None:
    for sub_band in (SUB_BAND_1_PERCENT, SUB_BAND_10_PERCENT):
        carried = [capacity(sf, sub_band).reports_per_h for sf in range(7, 13)]
        assert carried == sorted(carried, reverse=True)
        nodes = [capacity(7, sub_band).nodes_at(seconds) for seconds in (60, 300, 900, 3600)]
        assert nodes == sorted(nodes)  # type: ignore[type-var]
