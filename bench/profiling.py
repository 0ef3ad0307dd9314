"""Where the CPU goes: py-spy samples a benchmark child inside a window, this sums it up.

py-spy (``pip install py-spy``; ``make bench`` installs it with the test dependencies) reads
the child's Python stacks from outside and keeps only the threads that are running at each
sample (not those waiting on a lock, a socket or the disk). A thread that is ready to run
but waits for a core counts as running too, so each thread's samples share out its own CPU
time over the window, from the kernel's scheduler statistics. ``--nonblocking``: the child
is never stopped, since stopping it (py-spy's default) wakes every waiting thread at each
sample and they then all count as running. The price is that a stack read while it changes
can come out cut short or mixed up: the innermost frame is read first and is kept for own
time, but only stacks that reach down to their thread's entry point are counted for the time
inside a function.

The raw output has one line per distinct stack, ``thread (TID): NAME;frame;...;frame COUNT``,
each frame ``function (file:line)``, outermost first.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TOP = 12
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
THREAD_CPU_POLL_S = 0.02
# A frame found in this share of its threads' samples (or more) is an entry point (thread
# bootstrap, the event loop's run): it explains nothing and is left out of the top lists.
ENTRY_SHARE = 0.95
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
THREAD = re.compile(r"^thread \((?P<tid>(?:0x)?[0-9a-fA-F]+)\)(?::\s*(?P<name>.*))?$")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The outermost frame of a stack read whole: ``python -m``'s, a script's or a thread's.
ENTRY_POINTS = frozenset({"_run_module_as_main", "<module>", "Thread._bootstrap"})
ERRORS = re.compile(r"Samples: (\d+) Errors: (\d+)")

BENCHMARK = "benchmark instrumentation"
# Area of a frame by its file (as py-spy shortens it: relative to the sys.path entry it was
# found under) and, for the benchmark harness, its function: the first match wins.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLite and journal", ("gateway/store/", "sqlite3/")),
    ("paho and MQTT upstream", ("paho/", "gateway/upstreams/mqtt")),
    ("XMPP upstream", ("slixmpp/", "gateway/upstreams/xmpp")),
    ("crypto", ("cryptography/", "gateway/protocol/crypto.py")),
    ("JSON", ("json/",)),
    ("radio driver", ("drivers/", "bench/harness.py:InjectingRadio", "bench/harness.py:Interr")),
    ("asyncio loop", ("asyncio/", "selectors.py")),
    ("threads, locks, queues", ("threading.py", "queue.py", "concurrent/")),
    ("logging", ("logging/",)),
    ("gateway core", ("gateway/",)),
    (BENCHMARK, ("bench/",)),
)
OTHER = "other"


class ProfilerFailed(RuntimeError):
    pass


def py_spy() -> str | None:
    """The py-spy of this interpreter's environment, else one on PATH, else None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def area_of(file: str, function: str) -> str:
    where = f"{file}:{function}"
    for area, prefixes in AREAS:
        if any(where.startswith(prefix) for prefix in prefixes):
            return area
    return OTHER


class Sampler:
    """``py-spy record`` of one process, from ``start`` to ``stop``."""

    def __init__(self, executable: str, raw: Path, hz: int) -> None:
        self.executable = executable
        self.raw = raw
        self.hz = hz
        self._proc: subprocess.Popen[str] | None = None
        self._said: list[str] = []
        self._pid = 0
        self._cpu_at_start: dict[int, float] = {}
        # the last CPU time seen of each thread: a thread that ends in the window (the DIO0
        # stand-in at its last frame) is gone from /proc when sampling stops
        self._cpu_seen: dict[int, float] = {}
        self._polled = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="thread-cpu", daemon=True)

    def start(self, pid: int) -> None:
        """Returns once py-spy samples ``pid``; ProfilerFailed with py-spy's words if not."""
        self._proc = subprocess.Popen(
            [
                self.executable,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.hz),
                "--nonblocking",
                "--threads",
                "--format",
                "raw",
                "--output",
                str(self.raw),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._proc.stdout is not None
        watchdog = threading.Timer(START_TIMEOUT_S, self._proc.kill)
        watchdog.start()
        try:
            for line in self._proc.stdout:
                self._said.append(line.strip())
                if "Sampling process" in line:
                    self._pid = pid
                    self._cpu_at_start = thread_cpu_s(pid)
                    self._poller.start()
                    return
        finally:
            watchdog.cancel()
        self._proc.wait()
        said = " ".join(line for line in self._said if line) or f"exit {self._proc.returncode}"
        raise ProfilerFailed(f"py-spy did not start: {said}")

    def stop(self) -> Profile:
        """Stops sampling (py-spy writes its output on SIGINT) and sums the samples up."""
        proc = self._proc
        if proc is None:
            raise ProfilerFailed("py-spy was not started")
        self._polled.set()
        self._poller.join()
        self._cpu_seen.update(thread_cpu_s(self._pid))
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise ProfilerFailed("py-spy did not stop") from None
        self._said += rest.splitlines()
        if not self.raw.exists():
            said = " ".join(line.strip() for line in self._said if line.strip())
            raise ProfilerFailed(f"py-spy wrote no samples (exit {proc.returncode}): {said}")
        window_cpu = {
            tid: seconds - self._cpu_at_start.get(tid, 0.0)
            for tid, seconds in self._cpu_seen.items()
        }
        profile = summarize(self.raw.read_text().splitlines(), self.hz, window_cpu)
        found = ERRORS.search("\n".join(self._said))
        profile.errors = int(found.group(2)) if found else None
        return profile

    def _poll(self) -> None:
        while not self._polled.wait(THREAD_CPU_POLL_S):
            try:
                self._cpu_seen.update(thread_cpu_s(self._pid))
            except FileNotFoundError:  # the process ended
                return

    def kill(self) -> None:
        self._polled.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


@dataclass
class Profile:
    """Samples summed up as CPU seconds: each sample of a thread weighs that thread's CPU time
    over the window divided by its samples (``1 / hz`` where the thread's time is unknown)."""

    hz: int
    samples: int = 0
    whole: int = 0  # samples whose stack reached its entry point: the base of ``cumulative``
    errors: int | None = None
    cpu_s: float = 0.0
    whole_cpu_s: float = 0.0
    weighted: bool = False  # every sampled thread's CPU time was known
    # (name, samples, CPU seconds)
    threads: list[tuple[str, int, float]] = field(default_factory=list)
    areas: list[tuple[str, float]] = field(default_factory=list)
    # (function, file, area, own CPU seconds, hottest line, its share of the function's)
    own: list[tuple[str, str, str, float, int | None, float]] = field(default_factory=list)
    # (function, file, area, CPU seconds with the function anywhere on a stack read whole)
    cumulative: list[tuple[str, str, str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _frame(text: str) -> tuple[str, str, int | None]:
    found = FRAME.match(text)
    if found is None:
        return text, "", None
    line = found.group("line")
    return found.group("function"), found.group("file"), int(line) if line else None


def _thread(text: str) -> tuple[int | None, str] | None:
    """The thread id py-spy gives (the kernel's, unless written in hex) and its name."""
    found = THREAD.match(text)
    if found is None:
        return None
    tid = int(found.group("tid")) if found.group("tid").isdigit() else None
    # ThreadPoolExecutor workers are NAME_0, NAME_1...: one line for all of them
    return tid, re.sub(r"_\d+$", "", found.group("name") or "unnamed")


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU time of each thread of ``pid`` so far (kernel thread id -> seconds)."""
    found: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except FileNotFoundError:  # a kernel without scheduler statistics: ticks
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            found[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return found


def summarize(
    lines: Iterable[str], hz: int, cpu_s: dict[int, float] | None = None, top: int = TOP
) -> Profile:
    """Sum py-spy's raw lines up: CPU per thread, per area (own time), the ``top`` functions
    by own time and, among the stacks read whole, by time with the function anywhere on the
    stack (entry points and the benchmark's own frames left out). ``cpu_s``: each thread's
    CPU time over the window by kernel thread id, which the samples of the thread share."""
    stacks: list[tuple[int | None, str, list[tuple[str, str, int | None]], int]] = []
    samples_of: Counter[int | None] = Counter()
    for raw in lines:
        stack_text, _, count_text = raw.rstrip().rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        parts = stack_text.split(";")
        thread = _thread(parts[0])
        if thread is not None:
            parts = parts[1:]
        tid, name = thread or (None, "unknown")
        if parts:
            stacks.append((tid, name, [_frame(part) for part in parts], int(count_text)))
            samples_of[tid] += int(count_text)
    known = cpu_s or {}

    def weight(tid: int | None) -> float:
        if tid in known:
            return known[tid] / samples_of[tid]
        return 1 / hz

    per_thread: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    per_area: Counter[str] = Counter()
    own: Counter[tuple[str, str]] = Counter()
    own_lines: defaultdict[tuple[str, str], Counter[int | None]] = defaultdict(Counter)
    inside: Counter[tuple[str, str]] = Counter()
    whole_per_thread: Counter[str] = Counter()
    inside_threads: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    profile = Profile(hz=hz, weighted=bool(samples_of) and all(t in known for t in samples_of))
    for tid, name, frames, count in stacks:
        seconds = count * weight(tid)
        profile.samples += count
        profile.cpu_s += seconds
        per_thread[name][0] += count
        per_thread[name][1] += seconds
        function, file, line = frames[-1]
        per_area[area_of(file, function)] += seconds
        own[(function, file)] += seconds
        own_lines[(function, file)][line] += seconds
        if frames[0][0] not in ENTRY_POINTS:
            continue
        profile.whole += count
        profile.whole_cpu_s += seconds
        whole_per_thread[name] += seconds
        for key in {(function, file) for function, file, _ in frames}:
            inside[key] += seconds
            inside_threads[key].add(name)

    def is_entry(key: tuple[str, str]) -> bool:
        return inside[key] >= ENTRY_SHARE * sum(whole_per_thread[t] for t in inside_threads[key])

    profile.threads = sorted(
        ((name, int(n), seconds) for name, (n, seconds) in per_thread.items()),
        key=lambda thread: -thread[2],
    )
    profile.areas = per_area.most_common()
    for (function, file), seconds in own.most_common(top):
        line, line_seconds = own_lines[(function, file)].most_common(1)[0]
        area = area_of(file, function)
        profile.own.append((function, file, area, seconds, line, line_seconds / seconds))
    # The benchmark's frames that drive the gateway (a burst handed over from a coroutine,
    # the PUBACK clock around the upstream's publish) hold the gateway's work, not their own.
    ranked = [
        (key, seconds)
        for key, seconds in inside.most_common()
        if not is_entry(key) and area_of(key[1], key[0]) != BENCHMARK
    ]
    for (function, file), seconds in ranked[:top]:
        profile.cumulative.append((function, file, area_of(file, function), seconds))
    return profile
