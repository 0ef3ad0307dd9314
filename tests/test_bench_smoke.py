"""The benchmarks still run end to end with tiny sizes and produce every figure.

Nothing here looks at speed: the figures only have to exist and make sense (positive rates,
ordered percentiles, every report accounted for), so the benchmark code cannot rot unseen.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.run import QUICK, run_all


@pytest.mark.timeout(300)
def test_every_benchmark_produces_sane_figures(tmp_path: Path) -> None:
    for server in ("mosquitto", "prosody"):
        if shutil.which(server) is None and not Path(f"/usr/sbin/{server}").exists():
            pytest.fail(f"{server} is not installed: run `make test` (installs it via apt-get)")
    out = tmp_path / "PERFORMANCE.md"
    outcome = run_all(QUICK, out, log=lambda _line: None)
    figures = outcome["figures"]
    for name in ("throughput", "latency", "cpu", "outage", "xmpp"):
        assert isinstance(figures[name], dict), f"{name}: {figures[name]}"

    throughput = figures["throughput"]
    assert throughput["rate"] > 0 and throughput["baseline_rate"] > 0
    assert throughput["cpu_us_per_report"] > 0 and throughput["baseline_cpu_us_per_message"] > 0
    assert throughput["bytes_per_report"] > throughput["payload_size"]
    assert len(throughput["rounds"]) == len(throughput["baseline_rounds"]) == 1

    for case in ("default", "batched_50ms"):
        latency = figures["latency"][case]
        assert latency["samples"] == int(QUICK.latency_rate * QUICK.latency_s)
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert figures["latency"]["batched_50ms"]["commit_interval_s"] == 0.05

    cpu = figures["cpu"]
    assert cpu["reports"] == int(QUICK.cpu_rate * QUICK.cpu_s)
    assert cpu["cpu_us_per_report"] > 0

    outage = figures["outage"]
    assert outage["events"] >= QUICK.leased_nodes
    assert outage["drain_entries"] == outage["events"] + QUICK.buffered_reports
    assert 0 < outage["rss_imported_kib"] <= outage["hwm_kib"]
    assert outage["rss_kib"] > 0 and outage["drain_rate"] > 0

    xmpp = figures["xmpp"]
    assert xmpp["rate"] > 0 and xmpp["bytes_per_report"] > 0
    assert xmpp["subscriber_received"] == QUICK.xmpp_reports
    assert xmpp["bounced"] == 0

    text = out.read_text()
    assert "| figure | measured | goal | verdict |" in text
    assert outcome["machine"]["cpu"] in text
    measured = [row for row in outcome["rows"] if row.verdict != "not measured"]
    assert len(measured) >= 8, outcome["rows"]
