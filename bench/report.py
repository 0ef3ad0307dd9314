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
# P7: how many times fewer syncs and bytes per report than today's behaviour, per case
TODAY_FACTOR_GOALS = {"busy": 10.0, "channel": 3.0}
JOIN_STORM_GOAL_S = 300.0  # 100 nodes powered on at once: all joined and reporting


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
        if f["pinned_core"] is None:
            pipeline_rate = f["rate"]
        ratio = f["rate"] / f["baseline_rate"]
        cpu_ratio = f["baseline_cpu_us_per_message"] / f["cpu_us_per_report"]
        return [
            Row(
                "P1 pipeline throughput: radio -> PUBACK, durable outbox, vs raw paho QoS 1"
                + pinned_text(f, "raw paho client"),
                f"{f['rate']:.0f} reports/s vs {f['baseline_rate']:.0f} msg/s = {ratio:.2f}x",
                f">= {THROUGHPUT_GOAL}x",
                at_least(ratio, THROUGHPUT_GOAL),
            ),
            Row(
                "Same burst: CPU time per report vs per raw paho message"
                + (", one core" if f["pinned_core"] is not None else ""),
                f"{f['cpu_us_per_report']:.0f} us vs {f['baseline_cpu_us_per_message']:.0f} us"
                f" (CPU-bound ratio {cpu_ratio:.2f}x)",
                "-",
                "-",
            ),
        ]

    for name, where in (("throughput", ""), ("throughput_pinned", ", one core")):
        label = f"P1 pipeline throughput{where}"
        out += _guarded(figures, name, label, f">= {THROUGHPUT_GOAL}x raw paho", throughput)

    def latency(f: dict[str, Any]) -> list[Row]:
        found = []
        for key, case in f.items():
            if not isinstance(case, dict):
                continue  # rate, seconds
            default = key == "default"
            interval = case["commit_interval_s"]
            setting = "default" if interval is None else f"{interval:g}"
            label = (
                f"P2 latency DIO0 -> PUBACK at {f['rate']:g} frames/s, p50 / p99"
                f" (outbox.commit_interval_s = {setting}{', default' if default else ''})"
            )
            # Only the default configuration has a goal; other settings are for comparison.
            goal = f"p99 <= {LATENCY_P99_GOAL_MS:g} ms" if default else "- (not the default)"
            if "not_accepted" in case:
                found.append(Row(label, f"setting refused: {case['not_accepted']}", goal, "-"))
                continue
            split = case["p50_split_ms"]
            found.append(
                Row(
                    label,
                    f"{case['p50_ms']:.1f} / {case['p99_ms']:.1f} ms (max {case['max_ms']:.1f},"
                    f" {case['samples']} reports); p50 of the stages: stored"
                    f" {split['stored']:.1f}, to publish {split['to_publish']:.1f}, to PUBACK"
                    f" {split['publish_to_puback']:.1f}",
                    goal,
                    at_most(case["p99_ms"], LATENCY_P99_GOAL_MS, "ms") if default else "-",
                )
            )
        return found

    out += _guarded(figures, "latency", "P2 latency DIO0 -> PUBACK", "p99 <= 5 ms", latency)

    def memory(f: dict[str, Any]) -> list[Row]:
        rss_mb, hwm_mb = f["rss_kib"] / 1024, f["hwm_kib"] / 1024
        return [
            Row(
                f"P3 resident memory, {f['nodes']} leases + {f['reports']} buffered reports "
                "(broker down)",
                f"{rss_mb:.1f} MB VmRSS (peak {hwm_mb:.1f}); {f['rss_imported_kib'] / 1024:.1f}"
                f" after imports, {f['rss_started_kib'] / 1024:.1f} started,"
                f" {f['rss_joined_kib'] / 1024:.1f} with the leases",
                f"<= {RSS_GOAL_MB:g} MB",
                at_most(rss_mb, RSS_GOAL_MB, "MB"),
            )
        ]

    out += _guarded(figures, "outage", "P3 resident memory", "<= 40 MB", memory)

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
        found = []
        top_rate = max(case["rate"] for case in f["cases"].values())
        for case in f["cases"].values():
            # The goal is set for the busy rate; slower rates are shown beside it.
            has_goal = case["rate"] == top_rate
            found.append(
                Row(
                    f"P4 CPU time per report at {case['rate']:g} reports/s" + pinned_text(f, None),
                    f"{case['cpu_us_per_report']:.0f} us"
                    f" ({case['cpu_us_per_report_above_idle']:.0f} us above idle; idle"
                    f" {f['idle_cpu_ms_per_s']:.1f} ms/s)",
                    f"<= {CPU_GOAL_US:g} us" if has_goal else "none set",
                    at_most(case["cpu_us_per_report"], CPU_GOAL_US, "us") if has_goal else "-",
                )
            )
        return found

    for name, where in (("cpu", ""), ("cpu_pinned", ", one core")):
        out += _guarded(figures, name, f"P4 CPU time per report{where}", "<= 150 us", cpu)

    def drain(f: dict[str, Any]) -> list[Row]:
        label = f"P5 drain of {f['drain_entries']} buffered entries after an outage"
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

    out += _guarded(figures, "outage", "P5 drain after an outage", ">= 0.8x pipeline", drain)

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
    join_goal = f"all joined and reporting <= {JOIN_STORM_GOAL_S:g} s (100 nodes)"
    out += _guarded(figures, "joinstorm", "Join storm", join_goal, joinstorm_rows)
    out += _guarded(figures, "profile", "Profiles of P1 and P4 (py-spy)", "-", profile_rows)
    return [_pointing_to_profile(row, figures.get("profile")) for row in out]


# ------------------------------------------------------------------------------ profiles

PROFILES_HEADING = "Profiles: where the CPU goes"
# the profile child's windows: the P4 steady rate, then a P1 burst
PROFILE_PHASES = ("steady", "burst")


def _profile_title(phase: str, window: dict[str, Any]) -> str:
    if phase == "steady":
        return f"P4 CPU per report at {window['rate']:g} reports/s"
    return f"P1 throughput burst of {window['reports']} reports"


def _pointing_to_profile(row: Row, profile: Any) -> Row:
    """A missed P1 or P4 goal that the profile step explains says where to look."""
    if not isinstance(profile, dict) or not row.verdict.startswith("MISSED"):
        return row
    steady = profile.get("steady")
    explained = row.figure.startswith("P1 pipeline throughput") or (
        isinstance(steady, dict)
        and row.figure.startswith(f"P4 CPU time per report at {steady['rate']:g} reports/s")
    )
    if not explained:
        return row
    return Row(row.figure, row.measured, row.goal, f"{row.verdict}; see {PROFILES_HEADING}")


def _share(count: float, total: float) -> str:
    return f"{count / total:.0%}" if total else "-"


def profile_rows(f: dict[str, Any]) -> list[Row]:
    found = []
    for phase in PROFILE_PHASES:
        window = f[phase]
        profile = window["profile"]
        total = profile["cpu_s"]
        areas = ", ".join(f"{area} {_share(n, total)}" for area, n in profile["areas"][:5])
        found.append(
            Row(
                f"Profile of the {_profile_title(phase, window)} (py-spy, own time by area)",
                f"{areas} ({profile['samples']} samples; {window['cpu_us_per_report']:.0f} us"
                " CPU per report under the profiler)",
                "-",
                "-",
            )
        )
    return found


def _goal_text(phase: str, figures: dict[str, Any]) -> str:
    """The goal the profile explains and its verdict in the same run, if it was measured."""
    if phase == "steady":
        rate = figures["profile"]["steady"]["rate"]
        cpu = figures.get("cpu")
        case = cpu.get("cases", {}).get(f"{rate:g}") if isinstance(cpu, dict) else None
        goal = f"goal <= {CPU_GOAL_US:g} us"
        if case is None:
            return f"{goal}; P4 at {rate:g} reports/s not measured in this run"
        measured = case["cpu_us_per_report"]
        return f"{goal}; P4 in this run: {measured:.0f} us, {at_most(measured, CPU_GOAL_US, 'us')}"
    goal = f"goal >= {THROUGHPUT_GOAL}x raw paho"
    throughput = figures.get("throughput")
    if not isinstance(throughput, dict):
        return f"{goal}; P1 not measured in this run"
    ratio = throughput["rate"] / throughput["baseline_rate"]
    return (
        f"{goal}; P1 in this run: {ratio:.2f}x, {at_least(ratio, THROUGHPUT_GOAL)};"
        f" {throughput['cpu_us_per_report']:.0f} us CPU per report against raw paho's"
        f" {throughput['baseline_cpu_us_per_message']:.0f} us per message"
    )


def profiles_markdown(figures: dict[str, Any]) -> list[str]:
    """The profile step's section of the page: per profiled window, CPU by thread and by
    area, and the top functions by own time and by time inside them."""
    found = figures.get("profile")
    lines = [f"## {PROFILES_HEADING}", ""]
    if not isinstance(found, dict):
        return [*lines, f"Not measured: {found or 'the profile step did not run'}.", ""]
    lines += [
        "The P4 steady rate and a P1 burst run once more in one gateway (`python -m bench.run",
        "--only profile`), each window sampled from outside by py-spy; how, and what a share",
        "means, is under *Profiles* in the method below. *Per report* is the share times the",
        "CPU time per report of the profiled window.",
        "",
    ]
    for phase in PROFILE_PHASES:
        window = found[phase]
        profile = window["profile"]
        total, whole = profile["cpu_s"], profile["whole_cpu_s"]
        cpu_us = window["cpu_us_per_report"]
        cpu_s = cpu_us * window["reports"] / 1e6
        errors = profile["errors"]
        weights = (
            "each sample weighs its thread's CPU time over the window (`schedstat`) divided by"
            " the thread's samples"
            if profile["weighted"]
            else f"some threads' CPU time unknown: each of their samples weighs 1/{profile['hz']} s"
        )

        def per_report(seconds: float, base: float, cpu_us: float = cpu_us) -> str:
            return f"{seconds / base * cpu_us:.0f}" if base else "-"

        lines += [
            f"### {_profile_title(phase, window)}",
            "",
            f"{_goal_text(phase, figures)}.",
            "",
            f"Profiled window: {window['reports']} reports in {window['seconds']:.1f} s"
            f" ({window['rate']:.0f}/s), {cpu_us:.0f} us CPU per report (process CPU time"
            f" {cpu_s:.2f} s). py-spy at {profile['hz']}/s: {profile['samples']} samples of"
            f" running threads, {profile['whole']} of them read whole,"
            f" {'unknown' if errors is None else errors} lost to read errors; {weights}"
            f" ({total:.2f} s in all).",
            "",
            "By thread: "
            + ", ".join(
                f"{name} {_share(seconds, total)} ({seconds:.2f} s, {n} samples)"
                for name, n, seconds in profile["threads"]
            )
            + ".",
            "",
            "| area (own time) | share | us per report |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_md(area)} | {_share(n, total)} | {per_report(n, total)} |"
            for area, n in profile["areas"]
        ]
        lines += [
            "",
            "| top functions by own time | file | area | share | us per report | hottest line |",
            "|---|---|---|---|---|---|",
        ]
        for function, file, area, n, line, line_share in profile["own"]:
            hottest = "-" if line is None else f"{line} ({line_share:.0%} of it)"
            lines.append(
                f"| `{_md(function)}` | {_md(file)} | {_md(area)} | {_share(n, total)}"
                f" | {per_report(n, total)} | {hottest} |"
            )
        lines += [
            "",
            "| top functions by time inside (own and callees) | file | area | share"
            " | us per report |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{_md(function)}` | {_md(file)} | {_md(area)} | {_share(n, whole)}"
            f" | {per_report(n, whole)} |"
            for function, file, area, n in profile["cumulative"]
        ]
        lines.append("")
    return lines


def pinned_text(f: dict[str, Any], baseline: str | None) -> str:
    """What ran pinned to one core, for a figure's label; empty for an unpinned run."""
    core = f["pinned_core"]
    if core is None:
        return ""
    allowed = f.get("cpus_allowed", [core])
    took = "" if allowed == [core] else f"; the child ran on cores {allowed}, not pinned"
    also = f" and {baseline}" if baseline else ""
    return f", one core (`taskset -c {core}`: gateway process{also}; mosquitto not pinned{took})"


def storage_rows(f: dict[str, Any]) -> list[Row]:
    commit = f["today_commit"]
    found = []
    for key, case in f["cases"].items():
        busy = key == "busy"
        where = (
            f"at {case['rate']:g} reports/s"
            if busy
            else f"at {case['rate']:g} reports/s (one LoRa channel)"
        )
        title = f"P7 storage writes {where}, {case['confirmed_fraction']:.0%} confirmed"
        today = case.get("today")
        if case.get("broker_down"):
            title += ", broker down (nothing acknowledged upstream before its ack is due)"
        elif today is None:
            today = f"not measured ({f['today_unavailable'] or 'no run'})"
        found += _storage_case_rows(key, title, case, today, commit)
    return found


def _syncs_text(case: dict[str, Any]) -> str:
    reports, calls = case["reports"], case["calls"]
    return (
        f"{case['syncs'] / reports:.2f} ({calls['fdatasync']} fdatasync + {calls['fsync']} fsync"
        f" for {reports} reports in {case['window_s']:.0f} s, {case['confirmed']} confirmed;"
        f" {calls['pwrite64'] / reports:.1f} pwrite64 per report)"
    )


def _bytes_text(case: dict[str, Any]) -> str:
    reports = case["reports"]
    pwritten = (
        f"; pwrite64 {case['pwrite_bytes'] / reports:.0f} B"
        if case.get("pwrite_bytes") is not None
        else ""
    )
    return (
        f"{case['bytes_per_report']:.0f} B (write_bytes {case['write_bytes'] / 1024:.0f} KiB over"
        f" the window{pwritten})"
    )


def _times_fewer(today: float, now: float) -> float:
    return float("inf") if now == 0 else today / now


def _factor_text(factor: float) -> str:
    return "none now" if factor == float("inf") else f"{factor:.1f}x fewer"


def _storage_case_rows(
    key: str, title: str, case: dict[str, Any], today: dict[str, Any] | str | None, commit: str
) -> list[Row]:
    """Syncs and bytes per report (with today's beside them, unless ``today`` is None), and
    how many times fewer than today."""
    busy = key == "busy"
    reports, floor = case["reports"], sync_floor(case)
    measured_today = isinstance(today, dict)
    today_text = f"; today ({commit}): {today}" if isinstance(today, str) else ""
    found = []
    syncs_now = None if case["syncs"] is None else case["syncs"] / reports
    syncs_goal = f"<= {SYNCS_PER_REPORT_GOAL:g}" if busy else f"floor {floor:.2f}"
    if syncs_now is None:
        found.append(
            Row(f"{title}: syncs per report", "strace not installed", syncs_goal, NOT_MEASURED)
        )
    else:
        where = (
            f"{syncs_now / floor:.1f}x the floor"
            if syncs_now >= floor
            else "below it: the broker acknowledged reports before their acks were due"
        )
        floor_text = (
            f"ack-after-commit floor {floor:.2f} (one sync per {case['rx_delay_s']:g} s receive"
            f" delay, less when the upstreams acknowledge first): {where}"
        )
        beside = f"; today ({commit}) {_syncs_text(today)}" if measured_today else today_text
        if busy:
            verdict = at_most(syncs_now, SYNCS_PER_REPORT_GOAL, "syncs/report")
        else:
            verdict = (
                f"{syncs_now / floor:.1f}x the floor" if syncs_now >= floor else "below the floor"
            )
        found.append(
            Row(
                f"{title}: syncs per report",
                f"{_syncs_text(case)}; {floor_text}{beside}",
                syncs_goal,
                verdict,
            )
        )
    beside = f"; today ({commit}) {_bytes_text(today)}" if measured_today else today_text
    found.append(
        Row(
            f"{title}: bytes written to disk per report",
            _bytes_text(case) + beside,
            f"<= {DISK_BYTES_PER_REPORT_GOAL // 1024} KiB" if busy else "-",
            at_most(case["bytes_per_report"], DISK_BYTES_PER_REPORT_GOAL, "B") if busy else "-",
        )
    )
    if today is None:
        return found
    goal_factor = TODAY_FACTOR_GOALS.get(key)
    goal = f">= {goal_factor:g}x fewer syncs and bytes" if goal_factor else "-"
    label = f"{title}: better than today ({commit}) by"
    if not isinstance(today, dict):
        found.append(Row(label, f"today's behaviour {today}", goal, NOT_MEASURED))
        return found
    factors = {"bytes": _times_fewer(today["bytes_per_report"], case["bytes_per_report"])}
    if syncs_now is not None and today["syncs"] is not None:
        factors = {
            "syncs": _times_fewer(today["syncs"] / today["reports"], syncs_now),
            **factors,
        }
    measured = "; ".join(f"{name} {_factor_text(value)}" for name, value in factors.items())
    short = {name: value for name, value in factors.items() if value < (goal_factor or 0)}
    if goal_factor is None:
        verdict = "-"
    elif short:
        verdict = "MISSED: " + ", ".join(f"{name} {value:.1f}x" for name, value in short.items())
    elif "syncs" not in factors:
        verdict = "syncs not counted (strace missing)"
    else:
        verdict = "met"
    found.append(Row(label, measured, goal, verdict))
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


def _seconds(value: float | None, bound_s: float) -> str:
    return f"> {bound_s:g} s" if value is None else f"{value:.1f} s"


def joinstorm_rows(f: dict[str, Any]) -> list[Row]:
    bound, join = f["bound_s"], f["join"]
    attempts, air = f["join_attempts"], f["air"]
    done = f["all_reported_s"]
    goal = JOIN_STORM_GOAL_S if f["nodes"] >= 100 else None
    if goal is None:
        verdict = "-"  # a smaller storm (--quick) has no goal
    elif done is None:
        missing = f["nodes"] - f["reported"]
        verdict = f"MISSED: {missing} of {f['nodes']} not reporting after {bound:g} s"
    else:
        verdict = at_most(done, goal, "s")
    return [
        Row(
            f"Join storm: {f['nodes']} nodes powered on at once, SF7/125 kHz, 869.525 MHz"
            " (10 % sub-band): join time after power-on, median / p95 / max",
            f"{_seconds(join['median'], bound)} / {_seconds(join['p95'], bound)} /"
            f" {_seconds(join['max'], bound)}; all joined at {_seconds(f['all_joined_s'], bound)},"
            f" all reporting at {_seconds(done, bound)} ({f['joined']} joined,"
            f" {f['reported']} reporting); join requests per node median {attempts['median']:.0f},"
            f" max {attempts['max']:.0f}; {air['lost_collision']} frames lost to collisions",
            "-" if goal is None else f"all joined and reporting <= {goal:g} s",
            verdict,
        )
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
    lines += ["", *profiles_markdown(figures), *METHOD.strip("\n").splitlines(), ""]
    return "\n".join(lines)


METHOD = """
## How each figure is measured

All gateway figures come from the real parts (`LoraNetwork`, `Bridge`, the durable `Outbox`,
`MqttUpstream`/`XmppUpstream`) in a fresh child process per benchmark (`bench/child.py`),
with the default configuration except: radio region `none` (a thousand joins would otherwise
wait for the duty cycle), no Home Assistant discovery, and a short reconnect backoff. The
P-numbers are those of issue 16.

* **Injected at the radio interface.** `bench/harness.py` has a `Radio` (the protocol of
  `drivers/radio/base.py`) that hands frames to the gateway's `on_receive`. Nodes are joined
  through the real join path first (join request in, join accept out, opened with the node
  helpers of `drivers/sim/node_frames.py`, on the node library), from a registry with
  encrypted sessions; every report frame is a new, validly tagged and encrypted uplink built
  by `NodeSession.report`.
  Reports are unconfirmed: at these rates no ack could go on air (duty cycle), and the
  figures are about the way up. Frames are built before the clock starts.
* **PUBACK time.** The MQTT upstream is subclassed only to note `time.monotonic()` when
  `publish_report` returns, which it does once paho's `on_publish` for the PUBACK ran on the
  gateway's loop; the outbox entry is marked delivered right after.
* **Throughput (P1).** Every frame is handed over as fast as the loop takes them (one per
  turn of the event loop), but never more than 5,000 ahead of the PUBACKs (half of what the
  outbox queues before it refuses a report with `OutboxBusy`, which a node would answer by
  retransmitting); the time runs from the first frame to the last PUBACK. Each round is
  preceded by a raw paho round in the parent process: one paho client on its own network
  loop, MQTT 5, the gateway's in-flight window (64), the same number of messages with the
  same topic length and payload size, all handed to paho at once, first `publish` to last
  PUBACK. Figures are medians over the rounds. The CPU line divides the process CPU time
  (all threads) by the reports, for the gateway, and by the messages, for raw paho: the
  ratio of those is what the throughput ratio tends to when the CPU is the limit, and it
  depends less on what else the machine is doing.
* **One core (P1, P4).** Throughput and CPU per report also run with the gateway's child
  process started under `taskset -c N` (N: the first core the benchmark may use, 0 on most
  machines), so every thread of the gateway shares one core, as on a slow single-core board
  (a Raspberry Pi core is also several times slower than a server's: the ratios carry over
  better than the absolute figures). The raw paho baseline of the pinned throughput runs
  with its thread pinned to the same core (`sched_setaffinity`). Mosquitto is not pinned:
  it stands for a broker elsewhere on the network. The child reports the cores it was
  allowed (`sched_getaffinity`), and the row says so if the pinning did not take.
* **Latency (P2).** A thread hands frames over at 20 per second through
  `loop.call_soon_threadsafe`, as the SX127x driver's DIO0 handler does; `RxPacket.t_mono`
  is stamped there. Latency is PUBACK time minus `t_mono`, after a warm-up. The goal is for
  the default configuration; a second run with `outbox.commit_interval_s = 0.05` is shown
  for comparison. The stages: *stored* is `t_mono` to the return of the bridge's `report`
  (frame checked, report taken by the store), *to publish* from there to the start of
  `publish_report`, *to PUBACK* the broker's round trip as the gateway's loop sees it
  (stages that overlap show as a negative or zero share).
* **CPU per report (P4).** The same thread at a steady 200 frames/s, then at 20 frames/s, in
  the same gateway (the outbox drained between the two); process CPU time (`getrusage`,
  all threads: event loop, store and radio threads) from the first frame to the last
  PUBACK, divided by the reports. Idle CPU of the running gateway (measured before) is shown
  beside it. A report handled now and then costs more CPU than one in a burst (cold caches,
  one wake-up of each stage per report), more so on a virtual machine shared with other
  work: compare with the CPU per report of the throughput burst. The goal is set for
  200/s; 20/s has none and is shown so the cost of a wake-up per report stays visible.
* **Memory and drain (P3, P5).** The child is the gateway as `duogate run` assembles it
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
  evenly among them (their acks go out at the receive delay, only once the report is safe).
  After a warm-up, the child reads `write_bytes` of `/proc/self/io` (every
  thread) at the start and the end of a steady window: bytes the process caused to be
  written to the disk (the data directory is on the root file system, not tmpfs). The child
  runs under `strace -f -ttt -e trace=fdatasync,fsync,pwrite64` (`bench/syscalls.py`), and
  the calls that started inside the window are counted; pwrite64's returned sizes give the
  bytes SQLite handed the kernel. The window counts the frames handed over in it. The
  floor: a confirmed report's ack leaves at the receive delay after the uplink, and its row
  must be durable by then, so one commit can serve every report whose ack falls due within
  one receive delay: at least min(confirmed reports/s, 1 / receive delay) syncs per second,
  divided by the rate (less when every upstream acknowledged a report before its ack is due).
  With the local broker acknowledging within milliseconds, that is the usual case; the run
  with the broker stopped for the whole window (the gateway disconnected before the first
  frame, the broker started again after the window) is the case where nothing is
  acknowledged upstream first and the floor applies in full.
  *Today's behaviour*: each case (the broker up) also runs as the benchmark child of commit
  5a86920, the last one before the storage rework, unpacked from this repository with
  `git archive` into a temporary directory and run there with the same interpreter (checked
  to import that tree's `gateway`, not the working tree's), right after the working tree's
  run of the same case and under the same strace. *Better than today by* divides today's
  syncs and bytes per report by the working tree's ("none now" when the working tree wrote
  nothing in the window); the goal is at least 10x at 20 reports/s and 3x at one channel's
  rate, for both. A shallow clone without that commit shows the reason instead.
* **P8 start-up and idle CPU.** `duogate run --config FILE` as a child process with a real
  file (`bench/startup.py`: simulated radio with 100 simulated nodes in the process, open
  join, the bench's mosquitto, console and metrics on), `NOTIFY_SOCKET` naming a datagram
  socket the benchmark owns; the time runs from just before the process is spawned to the
  `READY=1` datagram, each start from an empty data directory, stopped with SIGTERM after.
  Idle CPU: the gateway as `duogate run` assembles it (console and metrics on) with the
  injecting radio, 100 nodes joined through the real join path and their events delivered,
  then process CPU time (user + system, all threads) over a quiet spell with nothing but
  the MQTT keepalives and the gateway's own timers.
* **Profiles (P1, P4).** The profile step (`bench.child profile`) starts the gateway of the
  throughput benchmark (1,000 joined nodes), warms it up as P1 does, then runs the P4 steady
  rate (the DIO0 thread at 200 frames/s for 12 s) and a P1 burst of 20,000 reports, one
  after the other in the same process. Around each window the child sends the parent its
  process id, and the parent runs `py-spy record --pid PID --rate 1000 --nonblocking
  --threads --format raw` for exactly that window (stopped with SIGINT; `make bench`
  installs py-spy with the test dependencies). At each sample py-spy keeps only the threads
  that are running, not those waiting on a lock, a socket, a timer or the disk, so a
  thread's samples measure its CPU time, system calls and C code included (SQLite, socket
  sends, OpenSSL), counted to the Python function that called them. `--nonblocking`:
  py-spy's default stops the process at each sample, which wakes every waiting thread so
  they all count as running; unstopped, a stack read while it changes can come out cut short
  or mixed up, so *own time* (the innermost frame, read first) counts every sample and *time
  inside* a function only the stacks read down to their thread's entry point. Frames in 95%
  or more of their thread's samples (thread start, the event loop's run) are left out of
  that list, the thread line carries them, and so are the benchmark's own frames around the
  gateway's work (the coroutine handing a burst over, the PUBACK clock). An *area* is that
  of the innermost frame's file: SQLite and journal (`gateway/store/`), paho and MQTT
  upstream (`paho/`, `gateway/upstreams/mqtt*`), crypto (`cryptography/`,
  `gateway/protocol/crypto.py`), JSON (`json/`), radio driver (`drivers/` and the
  benchmark's DIO0 stand-in thread), asyncio loop (`asyncio/`, `selectors.py`: the epoll
  calls and wake-ups), threads, locks, queues, logging, gateway core (the rest of
  `gateway/`), benchmark instrumentation (`bench/`). Each thread's samples share out that
  thread's CPU time over the window (the first field of `/proc/PID/task/TID/schedstat`, read
  by the parent as sampling starts and stops), so a thread that is ready but waits for a
  core (the broker and py-spy busy on both cores) gains no share by it, and the shares add
  up to the process's CPU time (compare the window's `getrusage` figure, shown beside it;
  samples lost to read errors count for nothing). Within one thread, a sample taken while it
  waits for a core still counts where the thread stands, often just after a wake-up. *us per
  report* scales a share to the window's CPU time per report (`getrusage`). py-spy never
  stops the child, but reading its memory a thousand times a second costs it some cache:
  compare the window's CPU per report with the unprofiled P1 and P4 rows.
* **Join storm.** `python -m bench.joinstorm` (`hil_tests/join_storm_fixtures.py`) in its own
  interpreter: 100 nodes of the simulated world (the node library on simulated SX1276s at
  50 m to 2 km, with the library's real-time join backoff and the 10 % sub-band's duty
  cycle) powered on in the same instant, the gateway's real SX127x driver and LoRa stack on
  its simulated chip, SF7/125 kHz on 869.525 MHz, receive delays of 1 s, open join; in real
  time, every frame its real time on air, seeded. A node's join time is power-on to its
  `Joined`; *reporting* is power-on to its first report reaching the gateway's sink (made at
  power-on, sent once joined). The run ends when every node is reporting, or at the goal's
  300 s (a node not there by then counts as later than that). docs/NODE.md ("After a power
  cut") has the arithmetic of the channel and the duty cycle.
* **Units.** MB is 2^20 bytes, us is microseconds, B is bytes.
* **Web page.** `bench/web_weight.py`: bytes of the page's files and the daemon's extra
  resident memory with the web server idle and with the page open.

## Profiling by hand

`python -m bench.run --only profile --out /tmp/perf.md` writes the profiles above alone.
To look at one benchmark in a profiler's own views, run it by itself, e.g.

    .venv/bin/py-spy record --threads -f speedscope -o profile.json -- \\
        .venv/bin/python -m bench.child throughput \\
        '{"standalone": true, "mqtt_port": 1883, "nodes": 1000, "reports": 30000, "rounds": 1}'

(`standalone`: no parent answers; a mosquitto must listen on the given port.)
"""
