"""Counting a process's disk syscalls with strace, inside a window of wall-clock time.

``bench.run`` starts a benchmark child as ``strace -f -ttt -e trace=... -o FILE python ...``;
the child reports the wall-clock instants its steady window began and ended, and
``count_in_window`` counts the calls that started inside it (every thread: ``-f``). Each
line of the file is ``PID SECONDS.MICROS call(args) = result``; a call another thread
interrupted is split into ``call(args <unfinished ...>`` and ``<... call resumed>) = result``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

TRACED = ("fdatasync", "fsync", "pwrite64")
SYNC_CALLS = ("fdatasync", "fsync")
_LINE = re.compile(r"^\d+\s+(\d+\.\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")
_RESULT = re.compile(r"=\s+(-?\d+)(?:\s.*)?$")


@dataclass(slots=True)
class SyscallCounts:
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRACED, 0))
    pwrite_bytes: int = 0  # bytes pwrite64 returned as written (what SQLite handed the kernel)

    @property
    def syncs(self) -> int:
        return sum(self.calls[name] for name in SYNC_CALLS)


def strace_prefix(output: Path) -> list[str] | None:
    """The command prefix that traces a child into ``output``; None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    return [strace, "-f", "-qq", "-ttt", "-e", f"trace={','.join(TRACED)}", "-o", str(output)]


def count_in_window(trace: str, start: float, end: float) -> SyscallCounts:
    """Calls started in ``[start, end)`` (wall clock, seconds) and the bytes pwrite64 wrote.

    A call counts at its start line; its result may be on a later ``resumed`` line, whose
    bytes count when that line's call started in the window (the resumed line's own time is
    within microseconds of it at these rates).
    """
    counts = SyscallCounts()
    for line in trace.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        instant, name = float(match.group(1)), match.group(2)
        if name not in counts.calls or not start <= instant < end:
            continue
        resumed = "<... " in line
        unfinished = "<unfinished" in line
        if not resumed:
            counts.calls[name] += 1
        if name == "pwrite64" and not unfinished:
            result = _RESULT.search(line)
            if result is not None and int(result.group(1)) > 0:
                counts.pwrite_bytes += int(result.group(1))
    return counts
