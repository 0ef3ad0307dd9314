"""The benchmarks still run end to end with tiny sizes and produce every figure.

Nothing here looks at speed: the figures only have to exist and make sense (positive rates,
ordered percentiles, every report accounted for), so the benchmark code cannot rot unseen.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profiling import summarize
from bench.run import QUICK, pinned_core, run_all
from bench.syscalls import count_in_window, strace_prefix


@pytest.mark.timeout(300)
def test_every_benchmark_produces_sane_figures(tmp_path: Path) -> None:
    for server in ("mosquitto", "prosody"):
        if shutil.which(server) is None and not Path(f"/usr/sbin/{server}").exists():
            pytest.fail(f"{server} is not installed: run `make test` (installs it via apt-get)")
    out = tmp_path / "PERFORMANCE.md"
    logged: list[str] = []
    outcome = run_all(QUICK, out, log=logged.append)
    figures = outcome["figures"]
    names = ("throughput", "throughput_pinned", "latency", "cpu", "cpu_pinned", "profile")
    for name in (*names, "outage", "xmpp", "storage", "startup", "joinstorm"):
        failure = "\n".join(line for line in logged if line.startswith(f"{name}: FAILED"))
        assert isinstance(figures[name], dict), failure

    for name in ("throughput", "throughput_pinned"):
        throughput = figures[name]
        assert throughput["rate"] > 0 and throughput["baseline_rate"] > 0
        assert throughput["cpu_us_per_report"] > 0
        assert throughput["baseline_cpu_us_per_message"] > 0
        assert throughput["bytes_per_report"] > throughput["payload_size"]
        assert len(throughput["rounds"]) == len(throughput["baseline_rounds"]) == 1
    assert figures["throughput_pinned"]["cpus_allowed"] == [pinned_core()]

    for case in ("default", "batched_50ms"):
        latency = figures["latency"][case]
        assert latency["samples"] == int(QUICK.latency_rate * QUICK.latency_s)
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert figures["latency"]["batched_50ms"]["commit_interval_s"] == 0.05

    for name in ("cpu", "cpu_pinned"):
        cases = figures[name]["cases"]
        for (rate, seconds), case in zip(QUICK.cpu_cases, cases.values(), strict=True):
            assert case["reports"] == int(rate * seconds) and case["cpu_us_per_report"] > 0
    assert figures["cpu_pinned"]["cpus_allowed"] == [pinned_core()]

    profile = figures["profile"]
    rate, seconds = QUICK.profile_steady
    assert profile["steady"]["reports"] == int(rate * seconds)
    assert profile["burst"]["reports"] == QUICK.profile_burst_reports
    for window in (profile["steady"], profile["burst"]):
        summary = window["profile"]
        assert summary["samples"] > 0 and 0 < summary["whole"] <= summary["samples"]
        assert summary["cpu_s"] > 0 and summary["weighted"]  # every thread's CPU time known
        assert sum(seconds for _, seconds in summary["areas"]) == pytest.approx(summary["cpu_s"])
        assert sum(n for _, n, _seconds in summary["threads"]) == summary["samples"]
        # the event loop runs the gateway
        assert "MainThread" in {name for name, *_ in summary["threads"]}
        own = [seconds for *_, seconds, _line, _line_share in summary["own"]]
        assert own and own == sorted(own, reverse=True)

    outage = figures["outage"]
    assert outage["events"] >= QUICK.leased_nodes
    assert outage["drain_entries"] == outage["events"] + QUICK.buffered_reports
    assert 0 < outage["rss_imported_kib"] <= outage["hwm_kib"]
    assert outage["rss_kib"] > 0 and outage["drain_rate"] > 0

    xmpp = figures["xmpp"]
    assert xmpp["rate"] > 0 and xmpp["bytes_per_report"] > 0
    assert xmpp["subscriber_received"] == QUICK.xmpp_reports
    assert xmpp["bounced"] == 0

    traced = shutil.which("strace") is not None
    storage_cases = figures["storage"]["cases"]
    today_there = figures["storage"]["today_unavailable"] is None
    for label, rate, fraction, _seconds in QUICK.storage_cases:
        storage = storage_cases[label]
        runs = [storage, storage["today"]] if today_there else [storage]
        for run in runs:
            assert run["rate"] == rate and run["confirmed_fraction"] == fraction
            assert run["reports"] > 0 and 0 < run["confirmed"] <= run["reports"]
            assert run["lora_counters"].get("report_not_stored", 0) == 0
        if today_there:  # a row per report then: on disk, not on tmpfs
            assert storage["today"]["write_bytes"] > 0
            assert not traced or storage["today"]["syncs"] > 0
    broker_down = storage_cases["broker_down"]
    assert broker_down["broker_down"] and broker_down["confirmed"] > 0
    # nothing acknowledged upstream: each confirmed report waits for a commit on disk
    assert broker_down["write_bytes"] > 0 and (not traced or broker_down["syncs"] > 0)

    startup = figures["startup"]
    assert len(startup["ready"]["seconds"]) == QUICK.start_runs
    assert 0 < startup["ready"]["median_s"] <= startup["ready"]["max_s"]
    assert startup["idle"]["nodes"] == QUICK.idle_nodes and startup["idle"]["cpu_ms_per_s"] >= 0

    storm = figures["joinstorm"]
    assert isinstance(storm, dict), storm
    assert storm["nodes"] == storm["joined"] == storm["reported"] == QUICK.joinstorm_nodes
    join = storm["join"]
    assert 0 < join["median"] <= join["p95"] <= join["max"] == storm["all_joined_s"]
    assert storm["all_joined_s"] <= storm["all_reported_s"] <= QUICK.joinstorm_bound_s
    assert storm["join_attempts"]["median"] >= 1

    text = out.read_text()
    assert "| figure | measured | goal | verdict |" in text
    assert outcome["machine"]["cpu"] in text
    measured = [row for row in outcome["rows"] if row.verdict != "not measured"]
    assert len(measured) >= 8, outcome["rows"]
    assert any(row.figure.startswith("P7") for row in measured), outcome["rows"]
    assert any(row.figure.startswith("P8") for row in measured), outcome["rows"]
    assert any(row.figure.startswith("Join storm") for row in measured), outcome["rows"]
    assert "## Profiles: where the CPU goes" in text
    assert "| top functions by own time |" in text and "| area (own time) |" in text


TRACED_WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
os.fdatasync(fd)  # before the window
start = time.time()
for offset in range(3):
    os.pwrite(fd, b"x" * 100, offset * 100)
    os.fdatasync(fd)
os.fsync(fd)
end = time.time()
os.fsync(fd)  # after the window
print(start, end)
"""


def test_sync_calls_are_counted_inside_the_window_only(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    prefix = strace_prefix(trace)
    if prefix is None:
        pytest.skip("strace is not installed (`make bench` installs it)")
    done = subprocess.run(
        [*prefix, sys.executable, "-c", TRACED_WRITER, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    start, end = map(float, done.stdout.split())
    counts = count_in_window(trace.read_text(), start, end)
    assert counts.calls == {"fdatasync": 3, "fsync": 1, "pwrite64": 3}
    assert counts.syncs == 4 and counts.pwrite_bytes == 300


MAIN = (
    "thread (101): MainThread;_run_module_as_main (<frozen runpy>:198);"
    "BaseEventLoop.run_forever (asyncio/base_events.py:607);Handle._run (asyncio/events.py:80)"
)
JOURNAL = (
    "thread (102): journal_0;Thread._bootstrap (threading.py:1002);"
    "_transaction (gateway/store/journal.py:229)"
)
RAW_SAMPLES = [
    f"{MAIN};_sock_send (paho/mqtt/client.py:1102) 5",
    f"{MAIN};_sock_send (paho/mqtt/client.py:1103) 1",
    f"{MAIN};dumps (json/__init__.py:231) 2",
    "thread (101): MainThread;_run_module_as_main (<frozen runpy>:198);"
    "BaseEventLoop.run_forever (asyncio/base_events.py:607);"
    "EpollSelector.select (selectors.py:468) 2",
    # read while it changed: cut short, its innermost frame still counts for own time
    "thread (101): MainThread;_check (gateway/protocol/frames.py:259) 1",
    f"{JOURNAL} 3",
    "thread (103): journal_1;Thread._bootstrap (threading.py:1002);"
    "_transaction (gateway/store/journal.py:230) 1",
]


def test_profile_summary_counts_own_time_areas_and_time_inside() -> None:
    profile = summarize(RAW_SAMPLES, hz=1)  # no thread CPU times: a sample weighs 1 s
    assert (profile.samples, profile.whole) == (15, 14)
    assert (profile.cpu_s, profile.whole_cpu_s, profile.weighted) == (15, 14, False)
    # executor workers journal_0 and journal_1 as one
    assert profile.threads == [("MainThread", 11, 11), ("journal", 4, 4)]
    assert dict(profile.areas) == {
        "paho and MQTT upstream": 6,
        "SQLite and journal": 4,
        "JSON": 2,
        "asyncio loop": 2,
        "gateway core": 1,
    }
    send = profile.own[0]
    assert send == ("_sock_send", "paho/mqtt/client.py", "paho and MQTT upstream", 6, 1102, 5 / 6)
    inside = {(function, seconds) for function, _file, _area, seconds in profile.cumulative}
    # run_forever and the thread starts are in every whole stack of their threads: left out
    assert inside == {
        ("Handle._run", 8),
        ("_sock_send", 6),
        ("dumps", 2),
        ("EpollSelector.select", 2),
    }


def test_profile_samples_share_out_their_threads_cpu_time() -> None:
    # MainThread (101) ran 2.2 s over its 11 samples, journal_0 (102) 0.3 s over 3; the
    # CPU time of journal_1 (103) is unknown: its one sample weighs 1/hz
    profile = summarize(RAW_SAMPLES, hz=100, cpu_s={101: 2.2, 102: 0.3})
    assert profile.weighted is False
    assert profile.cpu_s == pytest.approx(2.2 + 0.3 + 0.01)
    assert dict((name, seconds) for name, _n, seconds in profile.threads) == pytest.approx(
        {"MainThread": 2.2, "journal": 0.31}
    )
    assert dict(profile.areas)["paho and MQTT upstream"] == pytest.approx(6 * 0.2)
    assert dict(profile.areas)["SQLite and journal"] == pytest.approx(0.31)
