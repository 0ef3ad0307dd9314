"""``make bench``: run every benchmark, print the table and write docs/PERFORMANCE.md.

    python -m bench.run                 # full sizes (about 12 minutes on 2 cores)
    python -m bench.run --quick --out /tmp/perf.md   # tiny sizes, a smoke run
    python -m bench.run --only storage --out /tmp/perf.md   # some benchmarks only
    python -m bench.run --only profile --out /tmp/perf.md   # where the CPU goes (P1, P4)

One mosquitto serves every MQTT figure (and the raw paho baseline) of a run; each benchmark
runs in a fresh child process (``bench.child``). A benchmark that fails leaves a row saying
so and the others still run.

Throughput and CPU per report run twice: on the machine's free cores, and with the gateway
process pinned to one core (``taskset -c N``; the raw paho baseline's thread pinned to the
same core), which is closer to a Raspberry Pi. The storage writes (P7) run twice per case:
the working tree, and today's behaviour, the benchmark child of commit ``TODAY_COMMIT``
unpacked from this repository (``git archive``) into a temporary directory and run with the
same interpreter. The profile step runs the P4 steady rate and a P1 burst once more, each
sampled by py-spy from outside (``bench.profiling``), and writes where the CPU went.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.machine import describe
from bench.profiling import ProfilerFailed, Sampler, py_spy
from bench.rawpaho import raw_paho_rate
from bench.startup import time_to_ready
from bench.syscalls import count_in_window, strace_prefix
from tests.servers import Mosquitto, Prosody

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "PERFORMANCE.md"
LOAD = "load average (1, 5, 15 min)"  # the key bench.machine.describe gives it
MQTT_INFLIGHT = 64  # the gateway's default mqtt.inflight: the baseline gets the same window
# Today's behaviour for P7: the last commit before the storage rework (commits timed by
# deadlines). Its own benchmark child runs against its own gateway code.
TODAY_COMMIT = "5a86920"
GIT_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Sizes:
    nodes: int = 1000
    throughput_reports: int = 30_000
    throughput_rounds: int = 3
    latency_rate: float = 20.0
    latency_s: float = 30.0
    latency_warmup_s: float = 2.0
    # (reports/s, seconds): the steady rate of the goal, and a tenth of it
    cpu_cases: tuple[tuple[float, float], ...] = ((200.0, 30.0), (20.0, 30.0))
    cpu_idle_s: float = 5.0
    leased_nodes: int = 1000
    buffered_reports: int = 100_000
    xmpp_nodes: int = 100
    xmpp_reports: int = 5000
    web_live_s: float = 5.0
    storage_nodes: int = 100
    # (label, reports/s, confirmed fraction, steady window s): a busy gateway, and the rate
    # one LoRa channel really carries, mostly confirmed
    storage_cases: tuple[tuple[str, float, float, float], ...] = (
        ("busy", 20.0, 0.5, 30.0),
        ("channel", 3.0, 0.8, 40.0),
    )
    # (reports/s, confirmed fraction, steady window s) with the broker stopped: nothing is
    # acknowledged upstream before its ack is due (working tree only)
    storage_broker_down: tuple[float, float, float] | None = (3.0, 0.8, 40.0)
    storage_warmup_s: float = 5.0
    start_nodes: int = 100
    start_runs: int = 5
    idle_nodes: int = 100
    idle_s: float = 20.0
    # The profiled windows: P4's steady rate (reports/s, seconds) and a P1 burst (reports),
    # sampled this many times a second.
    profile_steady: tuple[float, float] = (200.0, 12.0)
    profile_burst_reports: int = 20_000
    profile_idle_s: float = 2.0
    profile_hz: int = 1000
    # Join storm: nodes powered on at once, bounded by the goal (all joined and reporting)
    joinstorm_nodes: int = 100
    joinstorm_bound_s: float = 300.0


FULL = Sizes()
QUICK = Sizes(
    nodes=20,
    throughput_reports=300,
    throughput_rounds=1,
    latency_s=1.0,
    latency_warmup_s=0.25,
    cpu_cases=((100.0, 1.0), (20.0, 1.0)),
    cpu_idle_s=0.5,
    leased_nodes=20,
    buffered_reports=500,
    xmpp_nodes=5,
    xmpp_reports=100,
    web_live_s=1.0,
    storage_nodes=10,
    storage_cases=(("busy", 20.0, 0.5, 1.0), ("channel", 3.0, 0.8, 1.0)),
    storage_broker_down=(3.0, 0.8, 2.0),
    storage_warmup_s=0.5,
    start_nodes=5,
    start_runs=1,
    idle_nodes=5,
    idle_s=1.0,
    profile_steady=(100.0, 1.0),
    profile_burst_reports=300,
    profile_idle_s=0.2,
    joinstorm_nodes=5,
    joinstorm_bound_s=60.0,
)


class ChildFailed(RuntimeError):
    pass


EventHandler = Callable[[str, dict[str, Any]], dict[str, Any] | None]


def run_child(
    name: str,
    params: dict[str, Any],
    on_event: EventHandler | None = None,
    timeout_s: float = 600,
    prefix: list[str] | None = None,
    tree: Path = ROOT,
) -> dict[str, Any]:
    """Run ``bench.child NAME`` of the source ``tree`` (behind ``prefix``, e.g. a tracer or
    ``taskset``) and answer its events; its RESULT, or ChildFailed."""
    with tempfile.TemporaryFile(mode="w+") as errors:
        proc = subprocess.Popen(
            [
                *(prefix or []),
                sys.executable,
                "-X",
                "faulthandler",
                "-m",
                "bench.child",
                name,
                json.dumps(params),
            ],
            cwd=tree,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.start()
        result: dict[str, Any] | None = None
        try:
            assert proc.stdin is not None and proc.stdout is not None
            for line in proc.stdout:
                kind, _, rest = line.rstrip("\n").partition(" ")
                if kind == "EVENT":
                    event, _, data = rest.partition(" ")
                    reply = on_event(event, json.loads(data or "{}")) if on_event else None
                    proc.stdin.write(f"go {json.dumps(reply or {})}\n")
                    proc.stdin.flush()
                elif kind == "RESULT":
                    result = json.loads(rest)
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if result is None or proc.returncode != 0:
            errors.seek(0)
            tail = "\n".join(errors.read().strip().splitlines()[-15:])
            raise ChildFailed(f"{name}: exit {proc.returncode}\n{tail}")
        return result


# ------------------------------------------------------------------------------ one core


def pinned_core() -> int:
    """The core pinned runs use: the first this process may run on."""
    return min(os.sched_getaffinity(0))


def pin_prefix(core: int) -> list[str]:
    """``taskset -c CORE``: the child process and every thread it starts run on that core."""
    taskset = shutil.which("taskset")
    if taskset is None:
        raise ChildFailed("taskset not installed (util-linux): no figures pinned to one core")
    return [taskset, "-c", str(core)]


@contextlib.contextmanager
def thread_pinned(core: int | None) -> Iterator[None]:
    """This thread (and threads it starts) on ``core`` only, for the block; None: as is."""
    if core is None:
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})  # pid 0: the calling thread
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


# ------------------------------------------------------------------------------ benchmarks


def bench_throughput(broker: Mosquitto, sizes: Sizes, core: int | None = None) -> dict[str, Any]:
    """Rounds of raw paho then the gateway's burst; ``core``: both pinned to that core."""
    baselines: list[dict[str, float]] = []

    def baseline(_event: str, data: dict[str, Any]) -> None:
        with thread_pinned(core):
            baselines.append(
                raw_paho_rate(
                    broker.port,
                    sizes.throughput_reports,
                    data["topic"],
                    data["payload_size"],
                    inflight=MQTT_INFLIGHT,
                )
            )

    figures = run_child(
        "throughput",
        {
            "mqtt_port": broker.port,
            "nodes": sizes.nodes,
            "reports": sizes.throughput_reports,
            "rounds": sizes.throughput_rounds,
        },
        baseline,
        prefix=None if core is None else pin_prefix(core),
    )
    figures["pinned_core"] = core
    figures["baseline_rounds"] = baselines
    figures["baseline_rate"] = _median([b["rate"] for b in baselines])
    figures["baseline_cpu_us_per_message"] = _median([b["cpu_us_per_message"] for b in baselines])
    figures["baseline_bytes_per_message"] = _median([b["bytes_per_message"] for b in baselines])
    return figures


def bench_latency(broker: Mosquitto, sizes: Sizes) -> dict[str, Any]:
    return run_child(
        "latency",
        {
            "mqtt_port": broker.port,
            "nodes": sizes.nodes,
            "rate": sizes.latency_rate,
            "seconds": sizes.latency_s,
            "warmup_s": sizes.latency_warmup_s,
            "commit_intervals": {"default": None, "batched_50ms": 0.05},
        },
    )


def bench_cpu(broker: Mosquitto, sizes: Sizes, core: int | None = None) -> dict[str, Any]:
    """CPU per report at each steady rate; ``core``: the gateway pinned to that core."""
    figures = run_child(
        "cpu",
        {
            "mqtt_port": broker.port,
            "nodes": sizes.nodes,
            "cases": [list(case) for case in sizes.cpu_cases],
            "idle_s": sizes.cpu_idle_s,
        },
        prefix=None if core is None else pin_prefix(core),
    )
    figures["pinned_core"] = core
    return figures


def bench_profile(broker: Mosquitto, workdir: Path, sizes: Sizes) -> dict[str, Any]:
    """The P4 steady rate and a P1 burst in one child, each window sampled by py-spy."""
    executable = py_spy()
    if executable is None:
        raise ChildFailed("py-spy not installed (`make bench` installs it: pip install py-spy)")
    samplers: dict[str, Sampler] = {}
    profiles: dict[str, dict[str, Any]] = {}

    def on_event(event: str, data: dict[str, Any]) -> None:
        phase = data["phase"]
        if event == "profile_start":
            sampler = Sampler(executable, workdir / f"profile-{phase}.raw", sizes.profile_hz)
            samplers[phase] = sampler
            sampler.start(data["pid"])
        elif event == "profile_stop":
            profiles[phase] = samplers.pop(phase).stop().as_dict()

    try:
        figures = run_child(
            "profile",
            {
                "mqtt_port": broker.port,
                "nodes": sizes.nodes,
                "steady": list(sizes.profile_steady),
                "burst_reports": sizes.profile_burst_reports,
                "idle_s": sizes.profile_idle_s,
            },
            on_event,
        )
    except ProfilerFailed as exc:
        raise ChildFailed(str(exc)) from None
    finally:
        for sampler in samplers.values():
            sampler.kill()
    for phase, profile in profiles.items():
        figures[phase]["profile"] = profile
    return figures


def bench_outage(broker: Mosquitto, sizes: Sizes) -> dict[str, Any]:
    """The broker is down while the child buffers, and back for the drain."""

    def broker_back(_event: str, _data: dict[str, Any]) -> None:
        broker.start()

    broker.stop()
    try:
        return run_child(
            "outage",
            {
                "mqtt_port": broker.port,
                "nodes": sizes.leased_nodes,
                "reports": sizes.buffered_reports,
            },
            broker_back,
        )
    finally:
        broker.start()


def bench_storage(broker: Mosquitto, workdir: Path, sizes: Sizes) -> dict[str, Any]:
    """P7: each case in a child run under strace, syncs counted in the child's window; each
    case once for the working tree and once for today's behaviour (``TODAY_COMMIT``)."""
    today = today_tree(workdir)
    figures: dict[str, Any] = {
        "today_commit": TODAY_COMMIT,
        "today_unavailable": today if isinstance(today, str) else None,
        "cases": {},
    }

    def params_of(rate: float, confirmed_fraction: float, seconds: float) -> dict[str, Any]:
        return {
            "mqtt_port": broker.port,
            "nodes": sizes.storage_nodes,
            "rate": rate,
            "confirmed_fraction": confirmed_fraction,
            "seconds": seconds,
            "warmup_s": sizes.storage_warmup_s,
        }

    for label, *case_sizes in sizes.storage_cases:
        params = params_of(*case_sizes)
        case = storage_case(workdir / f"storage-{label}.strace", params, ROOT)
        if isinstance(today, Path):
            try:
                case["today"] = storage_case(
                    workdir / f"storage-{label}-today.strace", params, today
                )
            except ChildFailed as exc:
                case["today"] = f"failed: {str(exc).splitlines()[0]}"
        figures["cases"][label] = case
    if sizes.storage_broker_down is not None:
        params = {**params_of(*sizes.storage_broker_down), "broker_down": True}

        def broker_switch(event: str, _data: dict[str, Any]) -> None:
            if event == "broker_off":
                broker.stop()
            elif event == "broker_on":
                broker.start()

        try:
            trace = workdir / "storage-broker-down.strace"
            figures["cases"]["broker_down"] = storage_case(trace, params, ROOT, broker_switch)
        finally:
            broker.start()
    return figures


def storage_case(
    trace: Path, params: dict[str, Any], tree: Path, on_event: EventHandler | None = None
) -> dict[str, Any]:
    """One P7 case of the source ``tree``, its sync calls counted from an strace of it."""
    prefix = strace_prefix(trace)
    case = run_child("storage", params, on_event, prefix=prefix, tree=tree)
    if prefix is None:
        case["syncs"] = None  # strace missing: bytes only
    else:
        counts = count_in_window(trace.read_text(), *case["window_wall"])
        trace.unlink()
        case.update(syncs=counts.syncs, calls=counts.calls, pwrite_bytes=counts.pwrite_bytes)
    return case


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, timeout=GIT_TIMEOUT_S, check=False
    )


def today_tree(workdir: Path) -> Path | str:
    """The source tree of ``TODAY_COMMIT`` unpacked under ``workdir``, able to run
    ``bench.child`` with this interpreter and importing its own ``gateway``; else why not."""
    if shutil.which("git") is None:
        return "git is not installed"
    if _git("rev-parse", "--git-dir").returncode != 0:
        return f"{ROOT} is not a git repository"
    if _git("cat-file", "-e", f"{TODAY_COMMIT}^{{commit}}").returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
        where = "this shallow clone" if shallow else "this repository"
        return f"commit {TODAY_COMMIT} is not in {where}"
    archive = _git("archive", "--format=tar", TODAY_COMMIT)
    if archive.returncode != 0:
        return f"git archive {TODAY_COMMIT} failed: {archive.stderr.decode().strip()}"
    tree = workdir / f"duogate-{TODAY_COMMIT}"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    # The interpreter's editable install points at the working tree: the child must import
    # the unpacked one (its directory comes first on sys.path under ``python -m``).
    probe = subprocess.run(
        [sys.executable, "-c", "import bench.child, gateway; print(gateway.__file__)"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )
    source = Path(probe.stdout.strip() or "?").resolve()
    if probe.returncode != 0 or not source.is_relative_to(tree.resolve()):
        return f"the tree of {TODAY_COMMIT} does not run here ({probe.stderr.strip() or source})"
    return tree


def bench_startup(broker: Mosquitto, sizes: Sizes) -> dict[str, Any]:
    """P8: ``duogate run`` to READY=1, then idle CPU of a gateway with joined nodes."""
    figures = {"ready": time_to_ready(broker.port, sizes.start_nodes, sizes.start_runs)}
    figures["idle"] = run_child(
        "idle", {"mqtt_port": broker.port, "nodes": sizes.idle_nodes, "idle_s": sizes.idle_s}
    )
    return figures


def bench_xmpp(workdir: Path, sizes: Sizes) -> dict[str, Any]:
    server = Prosody(workdir / "prosody")
    server.start()
    peer: subprocess.Popen[str] | None = None
    try:
        gateway_jid = server.create_user("gateway", "bench-gateway")
        subscriber_jid = server.create_user("subscriber", "bench-subscriber")
        peer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.xmpp_peer",
                server.host,
                str(server.port),
                subscriber_jid,
                "bench-subscriber",
                str(server.ca_file),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert peer.stdin is not None and peer.stdout is not None
        if peer.stdout.readline().strip() != "online":
            raise ChildFailed("xmpp subscriber did not come online")
        figures = run_child(
            "xmpp",
            {
                "host": server.host,
                "port": server.port,
                "ca_file": str(server.ca_file),
                "jid": gateway_jid,
                "password": "bench-gateway",
                "subscriber": subscriber_jid,
                "nodes": sizes.xmpp_nodes,
                "reports": sizes.xmpp_reports,
            },
        )
        figures.update(_subscriber_figures(peer, figures))
        return figures
    finally:
        if peer is not None:
            if peer.stdin is not None:
                peer.stdin.close()
            try:
                peer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()
        server.kill()


def _subscriber_figures(peer: subprocess.Popen[str], figures: dict[str, Any]) -> dict[str, Any]:
    """Reports at the subscriber and the rate of their arrival (waiting up to 10 s)."""
    assert peer.stdin is not None and peer.stdout is not None
    deadline = time.monotonic() + 10
    while True:
        peer.stdin.write("count\n")
        peer.stdin.flush()
        _, count, last = peer.stdout.readline().split()
        if int(count) >= figures["reports"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    received, last_arrival = int(count), float(last)
    seconds = last_arrival - figures["start_mono"]
    return {
        "subscriber_received": received,
        "subscriber_rate": received / seconds if seconds > 0 else 0.0,
    }


def bench_imports() -> list[list[Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.imports"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_joinstorm(sizes: Sizes) -> dict[str, Any]:
    """The join storm (``bench.joinstorm``) in its own interpreter; it runs in real time."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.joinstorm",
            str(sizes.joinstorm_nodes),
            str(sizes.joinstorm_bound_s),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=sizes.joinstorm_bound_s + 120,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ChildFailed(f"joinstorm: exit {done.returncode}\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_web(sizes: Sizes) -> dict[str, Any] | str:
    """The web engineer's figures, if bench/web_weight.py is there; else why not."""
    try:
        from bench import web_weight
    except ImportError as exc:
        return f"bench/web_weight.py not available ({exc})"
    weight = web_weight.measure(live_seconds=sizes.web_live_s)
    figures = asdict(weight)
    for name in ("extra_kib_server", "extra_kib_page_open"):
        figures[name] = getattr(weight, name)
    return figures


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# ------------------------------------------------------------------------------ the run


STEPS = (
    "imports",
    "throughput",
    "throughput_pinned",
    "latency",
    "cpu",
    "cpu_pinned",
    "profile",
    "outage",
    "xmpp",
    "storage",
    "startup",
    "joinstorm",
    "web",
)


def run_all(
    sizes: Sizes,
    out: Path | None = DEFAULT_OUT,
    *,
    log: Callable[[str], None] = print,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Every benchmark (or those named in ``only``, of ``STEPS``); returns
    ``{"machine": ..., "figures": ..., "rows": ...}``."""
    wanted = set(STEPS if only is None else only)
    machine = describe()
    figures: dict[str, Any] = {}
    if "imports" in wanted:
        figures["imports"] = _timed("imports", bench_imports, log)
    with tempfile.TemporaryDirectory(prefix="duogate-bench-servers-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            core = pinned_core()
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("throughput", lambda: bench_throughput(broker, sizes)),
                ("throughput_pinned", lambda: bench_throughput(broker, sizes, core)),
                ("latency", lambda: bench_latency(broker, sizes)),
                ("cpu", lambda: bench_cpu(broker, sizes)),
                ("cpu_pinned", lambda: bench_cpu(broker, sizes, core)),
                ("profile", lambda: bench_profile(broker, Path(tmp), sizes)),
                ("outage", lambda: bench_outage(broker, sizes)),
                ("xmpp", lambda: bench_xmpp(Path(tmp), sizes)),
                ("storage", lambda: bench_storage(broker, Path(tmp), sizes)),
                ("startup", lambda: bench_startup(broker, sizes)),
                ("joinstorm", lambda: bench_joinstorm(sizes)),
            ]
            for name, step in steps:
                if name in wanted:
                    figures[name] = _timed(name, step, log)
        finally:
            broker.kill()
    if "web" in wanted:
        figures["web"] = _timed("web", lambda: bench_web(sizes), log)
    end = " ".join(f"{load:.2f}" for load in os.getloadavg())
    machine[LOAD] += f" at the start, {end} at the end"
    rows = report.rows(figures)
    log("")
    log(report.table_text(rows))
    if out is not None:
        out.write_text(report.markdown(machine, sizes_text(sizes), rows, figures))
        log(f"\nwritten to {out}")
    return {"machine": machine, "figures": figures, "rows": rows}


def _timed(name: str, step: Callable[[], Any], log: Callable[[str], None]) -> Any:
    log(f"{name} ...")
    started = time.monotonic()
    try:
        result = step()
    except Exception as exc:  # a failed benchmark still leaves its row
        log(f"{name}: FAILED: {exc}")
        return f"failed: {str(exc).splitlines()[0]}"
    log(f"{name}: {time.monotonic() - started:.0f} s")
    return result


def sizes_text(sizes: Sizes) -> str:
    return (
        f"{sizes.nodes} joined nodes; throughput {sizes.throughput_rounds} rounds of "
        f"{sizes.throughput_reports} reports; latency {sizes.latency_s:g} s at "
        f"{sizes.latency_rate:g}/s; CPU "
        + ", ".join(f"{seconds:g} s at {rate:g}/s" for rate, seconds in sizes.cpu_cases)
        + "; throughput and CPU also pinned to one core; profiled: "
        f"{sizes.profile_steady[1]:g} s at {sizes.profile_steady[0]:g}/s and a burst of"
        f" {sizes.profile_burst_reports} reports, py-spy at {sizes.profile_hz} samples/s; "
        f"{sizes.leased_nodes} leases and {sizes.buffered_reports} buffered reports; XMPP "
        f"{sizes.xmpp_reports} reports; storage writes "
        + ", ".join(
            f"{seconds:g} s at {rate:g}/s ({fraction:.0%} confirmed)"
            for _, rate, fraction, seconds in sizes.storage_cases
        )
        + (
            ", {:g} s at {:g}/s ({:.0%} confirmed) with the broker down".format(
                sizes.storage_broker_down[2], *sizes.storage_broker_down[:2]
            )
            if sizes.storage_broker_down
            else ""
        )
        + f" with {sizes.storage_nodes} nodes, each case also for {TODAY_COMMIT};"
        f" {sizes.start_runs} starts with"
        f" {sizes.start_nodes} simulated nodes; idle {sizes.idle_s:g} s with"
        f" {sizes.idle_nodes} joined nodes; join storm of {sizes.joinstorm_nodes} nodes,"
        f" at most {sizes.joinstorm_bound_s:g} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"markdown file to write (default: {DEFAULT_OUT.relative_to(ROOT)}; none with --only)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=STEPS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(STEPS)}",
    )
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    out = args.out or (None if args.only else DEFAULT_OUT)  # a partial run keeps the page
    outcome = run_all(QUICK if args.quick else FULL, out, only=args.only)
    failed = [name for name, value in outcome["figures"].items() if isinstance(value, str)]
    return 1 if failed and failed != ["web"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
