"""Join storm: N simulated nodes powered on in the same instant join and report through the real
SX127x driver and LoRa stack (``hil_tests.join_storm_fixtures``), SF7/125 kHz in EU868's 10 %
sub-band, in real time. Prints the figures as one JSON line::

    python -m bench.joinstorm NODES BOUND_S [SEED]

The run ends when every node has joined and had a report forwarded, or at ``BOUND_S``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import quiet_logging
from hil_tests.join_storm_fixtures import run_storm


async def join_storm(nodes: int, bound_s: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="duogate-joinstorm-") as scratch:
        run = await run_storm(Path(scratch), nodes, bound_s, seed=seed)
    figures = run.summary()
    figures["seed"] = seed
    return figures


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not all(arg.replace(".", "", 1).isdigit() for arg in argv):
        print("usage: python -m bench.joinstorm NODES BOUND_S [SEED]", file=sys.stderr)
        return 2
    quiet_logging()
    seed = int(argv[2]) if len(argv) == 3 else 1
    figures = asyncio.run(join_storm(int(argv[0]), float(argv[1]), seed))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
