"""Turn the figures of a run into rows against their goals: a text table and the markdown page."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NOT_MEASURED = "not measured"
THROUGHPUT_GOAL = 0.8  # x raw paho
LATENCY_P99_GOAL_MS = 5.0
RSS_GOAL_MB = 40.0
CPU_GOAL_US = 150.0
DRAIN_GOAL = 0.8  # x pipeline rate
SYNCS_PER_REPORT_GOAL = 0.1
DISK_BYTES_PER_REPORT_GOAL = 1024


def sync_floor(case: dict[str, Any]) -> float:
    """Syncs per report that acking each confirmed report only after its commit requires at
    least: one commit can serve every confirmed report whose ack is due within one receive
    delay, so at most one sync per receive delay, fewer when confirmed reports are rarer
    (and none when the upstreams acknowledged a report before its ack is due)."""
    confirmed_per_s = case["rate"] * case["confirmed_fraction"]
    return min(confirmed_per_s, 1 / case["rx_delay_s"]) / case["rate"]


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    measured: str
    goal: str
    verdict: str


def at_least(value: float, goal: float, unit: str = "x") -> str:
    if value >= goal:
        return "met"
    short = goal - value
    return f"MISSED by {short:.2f}{unit} ({short / goal:.0%} short)"


def at_most(value: float, goal: float, unit: str) -> str:
    if value <= goal:
        return "met"
    return f"MISSED by {value - goal:.1f} {unit} ({value / goal:.1f}x the goal)"


def _guarded(
    figures: dict[str, Any], name: str, label: str, goal: str, build: Callable[[Any], list[Row]]
) -> list[Row]:
    value = figures.get(name)
    if value is None or isinstance(value, str):
        return [Row(label, value or NOT_MEASURED, goal, NOT_MEASURED)]
    try:
        return build(value)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return [Row(label, f"figures incomplete ({exc!r})", goal, NOT_MEASURED)]


def rows(figures: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    pipeline_rate: float | None = None

    def throughput(f: dict[str, Any]) -> list[Row]:
        nonlocal pipeline_rate
        pipeline_rate = f["rate"]
        ratio = f["rate"] / f["baseline_rate"]
        cpu_ratio = f["baseline_cpu_us_per_message"] / f["cpu_us_per_report"]
        return [
            Row(
                "Pipeline throughput: radio -> PUBACK, durable outbox, vs raw paho QoS 1",
                f"{f['rate']:.0f} reports/s vs {f['baseline_rate']:.0f} msg/s = {ratio:.2f}x",
                f">= {THROUGHPUT_GOAL}x",
                at_least(ratio, THROUGHPUT_GOAL),
            ),
            Row(
                "Same burst: CPU time per report vs per raw paho message",
                f"{f['cpu_us_per_report']:.0f} us vs {f['baseline_cpu_us_per_message']:.0f} us"
                f" (CPU-bound ratio {cpu_ratio:.2f}x)",
                "-",
                "-",
            ),
        ]

    out += _guarded(figures, "throughput", "Pipeline throughput", ">= 0.8x raw paho", throughput)

    def latency(f: dict[str, Any]) -> list[Row]:
        found = []
        for key in ("default", "batched_50ms"):
            case = f[key]
            label = (
                f"Latency DIO0 -> PUBACK at {f['rate']:g} frames/s, p50 / p99 "
                f"(outbox.commit_interval_s = {case['commit_interval_s']:g}"
                f"{', default' if key == 'default' else ''})"
            )
            split = case["p50_split_ms"]
            found.append(
                Row(
                    label,
                    f"{case['p50_ms']:.1f} / {case['p99_ms']:.1f} ms (max {case['max_ms']:.1f},"
                    f" {case['samples']} reports); p50 of the stages: stored"
                    f" {split['stored']:.1f}, to publish {split['to_publish']:.1f}, to PUBACK"
                    f" {split['publish_to_puback']:.1f}",
                    f"p99 <= {LATENCY_P99_GOAL_MS:g} ms",
                    at_most(case["p99_ms"], LATENCY_P99_GOAL_MS, "ms"),
                )
            )
        return found

    out += _guarded(figures, "latency", "Latency DIO0 -> PUBACK", "p99 <= 5 ms", latency)

    def memory(f: dict[str, Any]) -> list[Row]:
        rss_mb, hwm_mb = f["rss_kib"] / 1024, f["hwm_kib"] / 1024
        return [
            Row(
                f"Resident memory, {f['nodes']} leases + {f['reports']} buffered reports "
                "(broker down)",
                f"{rss_mb:.1f} MB VmRSS (peak {hwm_mb:.1f}); {f['rss_imported_kib'] / 1024:.1f}"
                f" after imports, {f['rss_started_kib'] / 1024:.1f} started,"
                f" {f['rss_joined_kib'] / 1024:.1f} with the leases",
                f"<= {RSS_GOAL_MB:g} MB",
                at_most(rss_mb, RSS_GOAL_MB, "MB"),
            )
        ]

    out += _guarded(figures, "outage", "Resident memory", "<= 40 MB", memory)

    def imports(stages: list[list[Any]]) -> list[Row]:
        steps = [f"{stages[0][0]} {stages[0][1] / 1024:.1f}"]
        steps += [
            f"{name} +{(rss - before) / 1024:.1f}"
            for (_, before), (name, rss) in itertools.pairwise(stages)
        ]
        return [
            Row(
                "Same process before any data: VmRSS (MB) after each import of `duogate run`",
                "; ".join(steps) + f" = {stages[-1][1] / 1024:.1f}",
                "-",
                "-",
            )
        ]

    out += _guarded(figures, "imports", "Memory after imports", "-", imports)

    def cpu(f: dict[str, Any]) -> list[Row]:
        return [
            Row(
                f"CPU time per report at {f['rate']:g} reports/s",
                f"{f['cpu_us_per_report']:.0f} us ({f['cpu_us_per_report_above_idle']:.0f} us"
                f" above idle; idle {f['idle_cpu_ms_per_s']:.1f} ms/s)",
                f"<= {CPU_GOAL_US:g} us",
                at_most(f["cpu_us_per_report"], CPU_GOAL_US, "us"),
            )
        ]

    out += _guarded(figures, "cpu", "CPU time per report", "<= 150 us", cpu)

    def drain(f: dict[str, Any]) -> list[Row]:
        label = f"Drain of {f['drain_entries']} buffered entries after an outage"
        if pipeline_rate is None:
            return [Row(label, f"{f['drain_rate']:.0f}/s", ">= 0.8x pipeline", NOT_MEASURED)]
        ratio = f["drain_rate"] / pipeline_rate
        return [
            Row(
                label,
                f"{f['drain_rate']:.0f} reports/s = {ratio:.2f}x the pipeline rate"
                f" ({f['drain_cpu_us_per_entry']:.0f} us CPU each)",
                f">= {DRAIN_GOAL}x pipeline",
                at_least(ratio, DRAIN_GOAL),
            )
        ]

    out += _guarded(figures, "outage", "Drain after an outage", ">= 0.8x pipeline", drain)

    def xmpp(f: dict[str, Any]) -> list[Row]:
        relative = f" = {f['rate'] / pipeline_rate:.2f}x MQTT" if pipeline_rate else ""
        found = [
            Row(
                "XMPP throughput, one subscriber, XEP-0198 acked (radio -> server ack)",
                f"{f['rate']:.0f} reports/s{relative}; {f['subscriber_received']} of "
                f"{f['reports']} at the subscriber ({f['subscriber_rate']:.0f}/s)",
                "-",
                "-",
            )
        ]
        mqtt = figures.get("throughput")
        mqtt_bytes = (
            f"MQTT 5 QoS 1 {mqtt['bytes_per_report']:.0f} B, "
            if isinstance(mqtt, dict)
            else "MQTT not measured, "
        )
        found.append(
            Row(
                "Bytes on the wire per report, both directions",
                f"{mqtt_bytes}XMPP {f['bytes_per_report']:.0f} B (STARTTLS)",
                "-",
                "-",
            )
        )
        return found

    out += _guarded(figures, "xmpp", "XMPP throughput and bytes per report", "-", xmpp)

    def web(f: dict[str, Any]) -> list[Row]:
        pages = f["page_bytes"]
        parts = ", ".join(
            f"{name} {size / 1024:.1f}" for name, size in pages.items() if name != "total"
        )
        return [
            Row(
                "Web page weight (uncompressed)",
                f"{pages['total'] / 1024:.1f} KiB ({parts})",
                "-",
                "-",
            ),
            Row(
                "Web page extra memory of the daemon",
                f"+{f['extra_kib_server'] / 1024:.1f} MB server idle, "
                f"+{f['extra_kib_page_open'] / 1024:.1f} MB with the page open",
                "-",
                "-",
            ),
        ]

    out += _guarded(figures, "web", "Web page weight and extra memory", "-", web)
    out += _guarded(figures, "storage", "P7 storage writes", "<= 0.1 syncs/report", storage_rows)
    out += _guarded(figures, "startup", "P8 start-up and idle CPU", "-", startup_rows)
    return out


def storage_rows(f: dict[str, Any]) -> list[Row]:
    found = []
    for key, case in f.items():
        busy = key == "busy"
        where = (
            f"at {case['rate']:g} reports/s"
            if busy
            else f"at {case['rate']:g} reports/s (one LoRa channel)"
        )
        title = f"P7 storage writes {where}, {case['confirmed_fraction']:.0%} confirmed"
        reports, floor = case["reports"], sync_floor(case)
        floor_text = (
            f"ack-after-commit floor {floor:.2f} (one per {case['rx_delay_s']:g} s receive delay)"
        )
        if case["syncs"] is None:
            found.append(
                Row(f"{title}: syncs per report", "strace not installed", "", NOT_MEASURED)
            )
        else:
            per_report = case["syncs"] / reports
            calls = case["calls"]
            measured = (
                f"{per_report:.2f} ({calls['fdatasync']} fdatasync + {calls['fsync']} fsync for"
                f" {reports} reports in {case['window_s']:.0f} s, {case['confirmed']} confirmed;"
                f" {calls['pwrite64'] / reports:.1f} pwrite64 per report); {floor_text},"
                f" {per_report / floor:.0f}x the floor"
            )
            if busy:
                goal = f"<= {SYNCS_PER_REPORT_GOAL:g}"
                verdict = at_most(per_report, SYNCS_PER_REPORT_GOAL, "syncs/report")
            else:
                goal, verdict = f"floor {floor:.2f}", f"{per_report / floor:.1f}x the floor"
            found.append(Row(f"{title}: syncs per report", measured, goal, verdict))
        per_report_bytes = case["bytes_per_report"]
        pwritten = (
            f"; pwrite64 {case['pwrite_bytes'] / reports:.0f} B"
            if case.get("pwrite_bytes") is not None
            else ""
        )
        found.append(
            Row(
                f"{title}: bytes written to disk per report",
                f"{per_report_bytes:.0f} B (write_bytes {case['write_bytes'] / 1024:.0f} KiB over"
                f" the window{pwritten})",
                f"<= {DISK_BYTES_PER_REPORT_GOAL // 1024} KiB" if busy else "-",
                at_most(per_report_bytes, DISK_BYTES_PER_REPORT_GOAL, "B") if busy else "-",
            )
        )
    return found


def startup_rows(f: dict[str, Any]) -> list[Row]:
    ready, idle = f["ready"], f["idle"]
    starts = ", ".join(f"{seconds:.2f}" for seconds in ready["seconds"])
    return [
        Row(
            f"P8 start-up: `duogate run` (simulated radio, {ready['nodes']} nodes) to READY=1",
            f"median {ready['median_s']:.2f} s, max {ready['max_s']:.2f} s"
            f" ({ready['runs']} starts: {starts})",
            "-",
            "-",
        ),
        Row(
            f"P8 idle CPU with {idle['nodes']} joined nodes (keepalives only)",
            f"{idle['cpu_ms_per_s']:.2f} ms/s ({idle['cpu_ms_per_s'] / 10:.2f}% of one core,"
            f" over {idle['idle_s']:.0f} s; MQTT keepalive {idle['keepalive_s']} s)",
            "-",
            "-",
        ),
    ]


def table_text(found: list[Row]) -> str:
    headers = ("figure", "measured", "goal", "verdict")
    cells = [headers, *((r.figure, r.measured, r.goal, r.verdict) for r in found)]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(machine: dict[str, str], sizes: str, found: list[Row], figures: dict[str, Any]) -> str:
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (`python -m bench.run`); do not edit by hand. Every figure",
        "is a ratio or a percentile taken in one run, against one local mosquitto (and one",
        "local prosody for XMPP), so the machine's speed cancels out as far as it can.",
        "",
        f"Measured {machine['date']} on:",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {_md(key)} | {_md(value)} |" for key, value in machine.items() if key != "date"]
    lines += [
        "",
        f"Sizes: {sizes}.",
        "",
        "## Results",
        "",
        "| figure | measured | goal | verdict |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {_md(r.figure)} | {_md(r.measured)} | {_md(r.goal)} | {_md(r.verdict)} |" for r in found
    ]
    lines += ["", *METHOD.strip("\n").splitlines(), ""]
    return "\n".join(lines)


METHOD = """
## How each figure is measured

All gateway figures come from the real parts (`LoraNetwork`, `Bridge`, durable `Outbox` with
its group commit and `synchronous=FULL`, `MqttUpstream`/`XmppUpstream`) in a fresh child
process per benchmark (`bench/child.py`), with the default configuration except: radio
region `none` (a thousand joins would otherwise wait for the duty cycle), no Home Assistant
discovery, and a short reconnect backoff.

* **Injected at the radio interface.** `bench/harness.py` has a `Radio` (the protocol of
  `drivers/radio/base.py`) that hands frames to the gateway's `on_receive`. Nodes are joined
  through the real join path first (join request in, join accept out, opened with the node
  helpers of `drivers/sim/node.py`), from a registry with encrypted sessions; every report
  frame is a new, validly tagged and encrypted uplink built by `NodeSession.report`.
  Reports are unconfirmed: at these rates no ack could go on air (duty cycle), and the
  figures are about the way up. Frames are built before the clock starts.
* **PUBACK time.** The MQTT upstream is subclassed only to note `time.monotonic()` when
  `publish_report` returns, which it does once paho's `on_publish` for the PUBACK ran on the
  gateway's loop; the outbox entry is marked delivered right after (committed with the next
  group commit).
* **Throughput.** Every frame is handed over as fast as the loop takes them (one per turn of
  the event loop), but never more than 5,000 ahead of the outbox's commits (half of what the
  outbox queues before it refuses a report with `OutboxBusy`, which a node would answer by
  retransmitting); the time runs from the first frame to the last PUBACK. Each round is
  preceded by a raw paho round in the parent process: one paho client on its own network
  loop, MQTT 5, the gateway's in-flight window (64), the same number of messages with the
  same topic length and payload size, all handed to paho at once, first `publish` to last
  PUBACK. Figures are medians over the rounds. The CPU line divides the process CPU time
  (all threads) by the reports, for the gateway, and by the messages, for raw paho: the
  ratio of those is what the throughput ratio tends to when the CPU is the limit, and it
  depends less on what else the machine is doing.
* **Latency.** A thread hands frames over at 20 per second through
  `loop.call_soon_threadsafe`, as the SX127x driver's DIO0 handler does; `RxPacket.t_mono`
  is stamped there. Latency is PUBACK time minus `t_mono`, after a warm-up. It is measured
  with the default `outbox.commit_interval_s` (0: commit as soon as anything waits; rows
  arriving during a commit go into the next one) and with 0.05 s (a report waits for the
  next timed group commit). The stages: *stored* is `t_mono` to the return of the bridge's
  `report` (frame checked, row committed with `synchronous=FULL`), *to publish* from there
  to the start of `publish_report` (the drain task reads the new row back), *to PUBACK* the
  broker's round trip as the gateway's loop sees it.
* **CPU per report.** The same 20/s thread at 200 frames/s for the whole run; process CPU
  time (`getrusage`, all threads: event loop, outbox worker, lease writer) from the first
  frame to the last PUBACK, divided by the reports. Idle CPU of the running gateway is shown
  beside it. A report handled now and then costs more CPU than one in a burst (cold caches,
  one wake-up of each stage per report), more so on a virtual machine shared with other
  work: compare with the CPU per report of the throughput burst.
* **Memory and drain.** The child is the gateway as `duogate run` assembles it
  (`gateway.daemon.Gateway`: console and metrics server included, web page off as by
  default). The shared mosquitto is stopped; nodes join, reports are injected until the
  outbox holds them all; after a garbage collection and a pause, `VmRSS` and `VmHWM` are read
  from `/proc/self/status`. The process also holds the benchmark's node sessions (well under
  1 MB for 1,000 nodes). The line below it comes from a separate fresh interpreter
  (`bench/imports.py`) that only imports what `duogate run` loads, one library at a time.
  Then the same mosquitto is started again and the drain is timed
  from the moment the upstream is connected to the last PUBACK; its rate is compared with
  the pipeline rate of the throughput benchmark of the same run.
* **XMPP.** Prosody (STARTTLS required, XEP-0198) with the gateway as the only upstream and
  one subscriber online in its own process. The burst is timed like the MQTT one, up to the
  last XEP-0198 ack of the server; arrivals at the subscriber are counted beside it.
* **Bytes on the wire** are the gateway socket's TCP counters (`TCP_INFO`
  `tcpi_bytes_acked` + `tcpi_bytes_received`) over the burst, divided by the reports: MQTT is
  plaintext on loopback, XMPP runs inside TLS as the server requires.
* **P7 storage writes.** The pipeline gateway (as for latency) with 100 joined nodes; a
  thread hands frames over at a steady rate as a DIO0 handler does, confirmed ones spread
  evenly among them (their acks go out at the receive delay, only after the report's row is
  committed). After a warm-up, the child reads `write_bytes` of `/proc/self/io` (every
  thread) at the start and the end of a steady window: bytes the process caused to be
  written to the disk (the data directory is on the root file system, not tmpfs). The child
  runs under `strace -f -ttt -e trace=fdatasync,fsync,pwrite64` (`bench/syscalls.py`), and
  the calls that started inside the window are counted; pwrite64's returned sizes give the
  bytes SQLite handed the kernel. The window counts the frames handed over in it. The
  floor: a confirmed report's ack leaves at the receive delay after the uplink, and its row
  must be durable by then, so one commit can serve every report whose ack falls due within
  one receive delay: at least min(confirmed reports/s, 1 / receive delay) syncs per second,
  divided by the rate (less when every upstream acknowledged a report before its ack is due).
* **P8 start-up and idle CPU.** `duogate run --config FILE` as a child process with a real
  file (`bench/startup.py`: simulated radio with 100 simulated nodes in the process, open
  join, the bench's mosquitto, console and metrics on), `NOTIFY_SOCKET` naming a datagram
  socket the benchmark owns; the time runs from just before the process is spawned to the
  `READY=1` datagram, each start from an empty data directory, stopped with SIGTERM after.
  Idle CPU: the gateway as `duogate run` assembles it (console and metrics on) with the
  injecting radio, 100 nodes joined through the real join path and their events delivered,
  then process CPU time (user + system, all threads) over a quiet spell with nothing but
  the MQTT keepalives and the gateway's own timers.
* **Units.** MB is 2^20 bytes, us is microseconds, B is bytes.
* **Web page.** `bench/web_weight.py`: bytes of the page's files and the daemon's extra
  resident memory with the web server idle and with the page open.

## Profiling

Run one benchmark by itself under a profiler, e.g.

    .venv/bin/py-spy record --threads -f speedscope -o profile.json -- \\
        .venv/bin/python -m bench.child throughput \\
        '{"standalone": true, "mqtt_port": 1883, "nodes": 1000, "reports": 30000, "rounds": 1}'

(`standalone`: no parent answers; a mosquitto must listen on the given port.)
"""
