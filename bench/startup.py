"""Start-up time to READY=1 and idle CPU with joined nodes (P8).

* ``time_to_ready`` (in ``bench.run``'s process): ``duogate run`` as a child process with a
  real configuration file, the simulated radio (``radio.driver = "sim"``, its world of
  simulated nodes inside the process), the shared mosquitto, console and metrics server on;
  ``NOTIFY_SOCKET`` names a datagram socket this function owns. The time runs from just
  before the process is spawned to the arrival of the datagram with ``READY=1``
  (``gateway.sdnotify``); the process's ``VmRSS`` is read then (everything it imported and
  built, before any report); the gateway is then stopped with SIGTERM and started again.
* ``idle_cpu`` (a ``bench.child``): the gateway as ``duogate run`` assembles it
  (``gateway.daemon.Gateway``, console and metrics included) with the benchmark's injecting
  radio, nodes joined through the real join path and their ``joined`` events delivered; then
  nothing happens but the upstream's keepalives and the gateway's own timers, and the
  process CPU time (user + system, all threads) over that quiet time is divided by it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.child import Channel
from bench.harness import BenchError, cpu_seconds, daemon_gateway, until_outbox_empty

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SETTLE_S = 2.0


def run_config(data_dir: Path, mqtt_port: int, nodes: int) -> str:
    """A ``duogate run`` file: simulated radio with ``nodes`` nodes that may join (open join),
    the shared mosquitto, console and metrics on as by default (metrics on a free port)."""
    return f"""
[gateway]
id = "bench"
data_dir = "{data_dir}"
log_level = "warning"

[radio]
driver = "sim"
region = "none"

[join]
open_join = true

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
discovery = false

[sim]
nodes = {nodes}
report_interval_s = 60
listen = "127.0.0.1:0"

[metrics]
port = 0
"""


def duogate_command() -> list[str]:
    script = Path(sys.executable).parent / "duogate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def process_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def start_until_ready(config: Path, notify_path: Path) -> tuple[float, int]:
    """Seconds from spawning ``duogate run`` to its READY=1, and its VmRSS (KiB) then; the
    process is stopped again."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(READY_TIMEOUT_S)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        started = time.monotonic()
        proc = subprocess.Popen(
            [*duogate_command(), "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            while True:
                try:
                    message = notify.recv(4096).decode()
                except TimeoutError:
                    raise BenchError(f"no READY=1 in {READY_TIMEOUT_S:g} s") from None
                if "READY=1" in message.splitlines():
                    ready = time.monotonic() - started
                    rss_kib = process_rss_kib(proc.pid)
                    break
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=STOP_TIMEOUT_S)
            if proc.returncode != 0:
                tail = "\n".join(errors.strip().splitlines()[-10:])
                raise BenchError(f"duogate run exited {proc.returncode}\n{tail}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        notify_path.unlink()
        return ready, rss_kib


def time_to_ready(mqtt_port: int, nodes: int, runs: int) -> dict[str, Any]:
    times, rss_kib = [], []
    with tempfile.TemporaryDirectory(prefix="duogate-bench-start-") as tmp:
        config = Path(tmp) / "duogate.toml"
        for run in range(runs):
            data_dir = Path(tmp) / f"data{run}"  # every start from an empty data directory
            config.write_text(run_config(data_dir, mqtt_port, nodes))
            seconds, rss = start_until_ready(config, Path(tmp) / "notify.sock")
            times.append(seconds)
            rss_kib.append(rss)
    return {
        "nodes": nodes,
        "runs": runs,
        "seconds": times,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "rss_kib_at_ready": rss_kib,
        "median_rss_kib_at_ready": statistics.median(rss_kib),
    }


async def idle_cpu(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    nodes, idle_s = params["nodes"], params["idle_s"]
    async with daemon_gateway(nodes, params["mqtt_port"]) as (gateway, radio, fleet, config):
        assert gateway.bridge is not None and gateway.bridge.outbox is not None
        outbox = gateway.bridge.outbox
        upstream: Any = gateway.bridge.upstreams["mqtt"]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not upstream.connected:
            if time.monotonic() > deadline:
                raise BenchError("the upstream did not connect")
            await asyncio.sleep(0.01)
        await fleet.join_all(radio, config)
        await until_outbox_empty(outbox, deadline)  # every "joined" event delivered
        await asyncio.sleep(SETTLE_S)
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(idle_s)
        cpu, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
    return {
        "nodes": nodes,
        "idle_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_s": cpu / wall * 1000,
        "keepalive_s": config.mqtt.keepalive_s,
    }
