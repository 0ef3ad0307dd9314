"""``make fuzz``: every parser target for ``--runs`` inputs each, a few at a time.

    python -m fuzz.run --runs 1000000            # all targets, atheris when installed
    python -m fuzz.run --runs 20000 config       # one target
    python -m fuzz.run --engine random ...       # the fallback engine even with atheris

Prints one line per target (engine, inputs run, inputs per second, crashes) and exits
non-zero if any target crashed; crash inputs and logs stay in ``--work`` (default
``var/fuzz``). With ``--out FILE`` the lines are also appended to FILE as CSV.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fuzz.targets import all_targets

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Outcome:
    target: str
    engine: str
    runs: int
    per_second: float
    crashes: int
    seconds: float
    log: Path

    def line(self) -> str:
        return (
            f"{self.target:<15} {self.engine:<8} {self.runs:>10} inputs "
            f"{self.per_second:>9.0f}/s  crashes {self.crashes}  ({self.seconds:.0f} s)"
        )


def _stat(text: str, name: str) -> float:
    found = re.findall(rf"stat::{name}:\s+([0-9.]+)", text)
    return float(found[-1]) if found else 0.0


def run_target(name: str, runs: int, engine: str, work: Path) -> Outcome:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("crash-*"):
        old.unlink()
    log = folder / "log.txt"
    started = time.monotonic()
    with log.open("wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", "fuzz.engine", name, f"--runs={runs}",
             f"--work={folder}", f"--engine={engine}"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
    text = log.read_text(errors="replace")
    crashes = len(list(folder.glob("crash-*"))) + len(list(folder.glob("timeout-*")))
    if result.returncode != 0 and crashes == 0:
        crashes = 1  # died without writing an input (out of memory, signal): still a failure
    executed = int(_stat(text, "number_of_executed_units"))
    return Outcome(
        name,
        engine,
        executed,
        _stat(text, "average_exec_per_sec"),
        crashes,
        time.monotonic() - started,
        log,
    )


def main(argv: list[str] | None = None) -> int:
    targets = all_targets()
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument("targets", nargs="*", choices=[[], *sorted(targets)], default=[])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=REPO / "var" / "fuzz")
    parser.add_argument("--out", type=Path, help="append the results to this CSV file")
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "random"
        if engine == "random":
            print("atheris is not installed: random mutation fuzzing instead", flush=True)
    names = args.targets or sorted(targets)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = list(
            pool.map(lambda name: run_target(name, args.runs, engine, args.work), names)
        )
    failed = False
    for outcome in outcomes:
        print(outcome.line())
        if outcome.crashes or outcome.runs < args.runs:
            failed = True
            print(f"  see {outcome.log}")
    if args.out is not None:
        new = not args.out.exists() or args.out.stat().st_size == 0
        with args.out.open("a", newline="") as stream:
            writer = csv.writer(stream)
            if new:
                writer.writerow(["target", "engine", "inputs", "per_second", "crashes"])
            for o in outcomes:
                writer.writerow([o.target, o.engine, o.runs, f"{o.per_second:.0f}", o.crashes])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
