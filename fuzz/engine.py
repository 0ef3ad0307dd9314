"""Run one fuzz target: ``python -m fuzz.engine TARGET --runs N --work DIR``.

With atheris installed this is coverage-guided libFuzzer (the gateway's and drivers' modules
instrumented), starting from the target's seeds. Without it, a random mutation engine (bit
flips, byte edits, splices and fresh random inputs, from the same seeds) runs the same number
of inputs. Either way a crash (any exception other than the target's documented rejection)
writes the input to ``DIR/crash-*`` and exits non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path


def _write_seeds(seeds: list[bytes], corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def run_atheris(name: str, runs: int, work: Path) -> int:
    import atheris

    with atheris.instrument_imports(include=["gateway", "drivers", "fuzz"]):
        from fuzz.targets import all_targets

    target = all_targets()[name]
    corpus = work / "corpus"
    _write_seeds(target.seeds, corpus)
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-max_len={target.max_len}",
        "-rss_limit_mb=3072",
        "-print_final_stats=1",
        f"-artifact_prefix={work}/",
        str(corpus),
    ]
    atheris.Setup(argv, target.run)
    atheris.Fuzz()  # exits the process
    return 0


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        position = rng.randrange(len(buffer) + 1)
        if choice < 0.3 and buffer:
            index = min(position, len(buffer) - 1)
            buffer[index] ^= 1 << rng.randrange(8)
        elif choice < 0.5 and buffer:
            buffer[min(position, len(buffer) - 1)] = rng.choice(
                (0, 0xFF, 0x7F, 0x80, rng.randrange(256))
            )
        elif choice < 0.65:
            buffer[position:position] = rng.randbytes(rng.randint(1, 8))
        elif choice < 0.8 and buffer:
            del buffer[position : position + rng.randint(1, 8)]
        elif choice < 0.9:
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            buffer[position:position] = other[start : start + rng.randint(1, 32)]
        else:
            buffer = buffer[: rng.randrange(len(buffer) + 1)]
    return bytes(buffer)


def run_random(name: str, runs: int, work: Path, seed: int = 1) -> int:
    from fuzz.targets import all_targets

    target = all_targets()[name]
    rng = random.Random(seed)
    pool = list(target.seeds) or [b""]
    run: Callable[[bytes], None] = target.run
    started = time.monotonic()
    for number in range(1, runs + 1):
        if rng.random() < 0.1:
            data = rng.randbytes(rng.randint(0, 300))
        else:
            data = mutate(rng, rng.choice(pool), pool)[: target.max_len]
        try:
            run(data)
        except Exception:
            crash = work / f"crash-{hashlib.sha1(data).hexdigest()}"
            crash.write_bytes(data)
            traceback.print_exc()
            print(f"==CRASH== input written to {crash}", file=sys.stderr)
            return 1
        if number % 64 == 0 and len(pool) < 512:
            pool.append(data)
        if number % 100_000 == 0:
            rate = number / (time.monotonic() - started)
            print(f"#{number} exec/s: {rate:.0f}", file=sys.stderr, flush=True)
    rate = runs / max(time.monotonic() - started, 1e-9)
    print(f"stat::number_of_executed_units: {runs}", file=sys.stderr)
    print(f"stat::average_exec_per_sec:     {rate:.0f}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.engine")
    parser.add_argument("target")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.engine == "atheris":
        return run_atheris(args.target, args.runs, args.work)
    return run_random(args.target, args.runs, args.work)


if __name__ == "__main__":
    raise SystemExit(main())
