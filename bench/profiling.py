"""Where the CPU goes: py-spy samples a benchmark child inside a window, this sums it up.

py-spy (``pip install py-spy``; ``make bench`` installs it with the test dependencies) reads
the child's Python stacks from outside and keeps only the threads that are running at each
sample (not those waiting on a lock, a socket or the disk): each sample of a thread stands
for the same slice of CPU time. ``--nonblocking``: the child is never stopped, since stopping
it (py-spy's default) wakes every waiting thread at each sample and they then all count as
running. The price is that a stack read while it changes can come out cut short or mixed
up: the innermost frame is read first and is kept for own time, but only stacks that reach
down to their thread's entry point are counted for the time inside a function.

The raw output has one line per distinct stack, ``thread (TID): NAME;frame;...;frame COUNT``,
each frame ``function (file:line)``, outermost first.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP = 12
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
# A frame found in this share of its threads' samples (or more) is an entry point (thread
# bootstrap, the event loop's run): it explains nothing and is left out of the top lists.
ENTRY_SHARE = 0.95
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\)(?::\s*(?P<name>.*))?$")
# The outermost frame of a stack read whole: ``python -m``'s, a script's or a thread's.
ENTRY_POINTS = frozenset({"_run_module_as_main", "<module>", "Thread._bootstrap"})
ERRORS = re.compile(r"Samples: (\d+) Errors: (\d+)")

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
    ("benchmark instrumentation", ("bench/",)),
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
        profile = summarize(self.raw.read_text().splitlines(), self.hz)
        found = ERRORS.search("\n".join(self._said))
        profile.errors = int(found.group(2)) if found else None
        return profile

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


@dataclass
class Profile:
    """Samples summed up; every count is in samples of one running thread."""

    hz: int
    samples: int = 0
    whole: int = 0  # samples whose stack reached its entry point: the base of ``cumulative``
    errors: int | None = None
    threads: list[tuple[str, int]] = field(default_factory=list)
    areas: list[tuple[str, int]] = field(default_factory=list)
    # (function, file, area, own samples, hottest line, its samples)
    own: list[tuple[str, str, str, int, int | None, int]] = field(default_factory=list)
    # (function, file, area, samples with the function anywhere on the stack)
    cumulative: list[tuple[str, str, str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hz": self.hz,
            "samples": self.samples,
            "whole": self.whole,
            "errors": self.errors,
            "threads": self.threads,
            "areas": self.areas,
            "own": self.own,
            "cumulative": self.cumulative,
        }


def _frame(text: str) -> tuple[str, str, int | None]:
    found = FRAME.match(text)
    if found is None:
        return text, "", None
    line = found.group("line")
    return found.group("function"), found.group("file"), int(line) if line else None


def _thread_name(text: str) -> str | None:
    found = THREAD.match(text)
    if found is None:
        return None
    name = found.group("name") or "unnamed"
    # ThreadPoolExecutor workers are NAME_0, NAME_1...: one line for all of them
    return re.sub(r"_\d+$", "", name)


def summarize(lines: Iterable[str], hz: int, top: int = TOP) -> Profile:
    """Sum py-spy's raw lines up: samples per thread, per area (own time), the ``top``
    functions by own samples and, among the stacks read whole, by samples with the function
    anywhere on the stack."""
    per_thread: Counter[str] = Counter()
    per_area: Counter[str] = Counter()
    own: Counter[tuple[str, str]] = Counter()
    own_lines: defaultdict[tuple[str, str], Counter[int | None]] = defaultdict(Counter)
    inside: Counter[tuple[str, str]] = Counter()
    whole_per_thread: Counter[str] = Counter()
    inside_threads: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    total = whole = 0
    for raw in lines:
        stack_text, _, count_text = raw.rstrip().rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack_text.split(";")
        thread = _thread_name(parts[0])
        if thread is not None:
            parts = parts[1:]
        thread = thread or "unknown"
        if not parts:
            continue
        frames = [_frame(part) for part in parts]
        total += count
        per_thread[thread] += count
        function, file, line = frames[-1]
        per_area[area_of(file, function)] += count
        own[(function, file)] += count
        own_lines[(function, file)][line] += count
        if frames[0][0] not in ENTRY_POINTS:
            continue
        whole += count
        whole_per_thread[thread] += count
        for key in {(function, file) for function, file, _ in frames}:
            inside[key] += count
            inside_threads[key].add(thread)

    def is_entry(key: tuple[str, str]) -> bool:
        return inside[key] >= ENTRY_SHARE * sum(whole_per_thread[t] for t in inside_threads[key])

    profile = Profile(hz=hz, samples=total, whole=whole)
    profile.threads = per_thread.most_common()
    profile.areas = per_area.most_common()
    for (function, file), count in own.most_common(top):
        line, line_count = own_lines[(function, file)].most_common(1)[0]
        area = area_of(file, function)
        profile.own.append((function, file, area, count, line, line_count))
    ranked = [(key, count) for key, count in inside.most_common() if not is_entry(key)]
    for (function, file), count in ranked[:top]:
        profile.cumulative.append((function, file, area_of(file, function), count))
    return profile
