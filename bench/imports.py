"""Where a gateway's resident memory goes before it holds any data: RSS after each import.

    python -m bench.imports     # prints JSON: [[stage, VmRSS KiB after it], ...]

Run in a fresh interpreter (``bench.run`` does), importing the modules ``duogate run`` loads
with the default configuration (MQTT upstream, console and metrics server on, status page
off: no aiohttp), in an order that separates the big libraries. ``tests/test_run_start.py``
checks from ``duogate run``'s own import log that aiohttp stays out.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

STAGES = (
    ("interpreter", ()),
    ("asyncio (with ssl)", ("asyncio", "ssl")),
    ("sqlite3, json", ("sqlite3", "json")),
    (
        "cryptography",
        ("cryptography.hazmat.primitives.ciphers", "cryptography.hazmat.primitives.cmac"),
    ),
    ("msgspec and the config models", ("msgspec", "gateway.config")),
    ("paho-mqtt", ("paho.mqtt.client",)),
    (
        "gateway core (bridge, LoRa, outbox, MQTT upstream)",
        ("gateway.daemon", "gateway.upstreams.mqtt"),
    ),
    ("prometheus_client (metrics)", ("gateway.metrics",)),
    ("console", ("gateway.console.server",)),
)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> int:
    found = []
    for stage, modules in STAGES:
        for module in modules:
            importlib.import_module(module)
        found.append([stage, rss_kib()])
    if "aiohttp" in sys.modules:
        raise RuntimeError("aiohttp was imported: duogate run loads it only for the status page")
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
