"""Run one benchmark in a fresh interpreter: ``python -m bench.child NAME PARAMS_JSON``.

Every figure comes from its own process, so no benchmark inherits another's heap, threads
or caches, and memory figures are the gateway's alone. The child talks to ``bench.run``
over its standard streams, one line each way:

* ``EVENT <name> <json>``: the child reached a point where the parent acts (stop or start
  a server, run the baseline), then waits for a ``go`` line on its standard input;
* ``RESULT <json>``: the figures, last line of a successful run.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench.harness import quiet_logging


class Channel:
    """The child's side of the line protocol with ``bench.run``.

    ``standalone`` (params ``{"standalone": true}``): nobody answers, every wait returns at
    once (for running a benchmark under a profiler by hand).
    """

    def __init__(self, standalone: bool = False) -> None:
        self.standalone = standalone

    def announce(self, event: str, data: dict[str, Any] | None = None) -> None:
        print(f"EVENT {event} {json.dumps(data or {})}", flush=True)

    async def wait_go(self) -> dict[str, Any]:
        """Wait for the parent's ``go [json]`` line; returns its data."""
        if self.standalone:
            return {}
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        word, _, rest = line.strip().partition(" ")
        if word != "go":
            raise SystemExit(f"bench child: expected 'go' from the parent, got {line!r}")
        return json.loads(rest) if rest else {}


Benchmark = Callable[[dict[str, Any], Channel], Awaitable[dict[str, Any]]]


# name -> (module, function); a child imports only the module it runs.
BENCHMARKS = {
    "throughput": ("bench.pipeline", "throughput"),
    "latency": ("bench.pipeline", "latency"),
    "cpu": ("bench.pipeline", "cpu_per_report"),
    "profile": ("bench.pipeline", "profiled"),
    "outage": ("bench.outage", "memory_and_drain"),
    "xmpp": ("bench.xmpp_wire", "xmpp_throughput"),
    "storage": ("bench.storage", "storage_writes"),
    "idle": ("bench.startup", "idle_cpu"),
}


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m bench.child NAME PARAMS_JSON", file=sys.stderr)
        return 2
    quiet_logging()
    name, params = sys.argv[1], json.loads(sys.argv[2])
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module_name, function_name = BENCHMARKS[name]
    benchmark: Benchmark = getattr(importlib.import_module(module_name), function_name)
    channel = Channel(standalone=bool(params.get("standalone")))
    result = asyncio.run(benchmark(params, channel))
    print(f"RESULT {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
