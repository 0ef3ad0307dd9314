"""Weight of the web status page: bytes sent to the browser, and the daemon's extra memory.

A child process plays the daemon (a ``GatewayState`` fed with frames from a few nodes, aiohttp
loaded as the metrics server loads it); its resident set size is read from /proc before the
web server is imported and started, with the server idle, and after the page was loaded and
one live (SSE) reader stayed connected for a few seconds.

    .venv/bin/python -m bench.web_weight          # prints the figures as JSON
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class WebWeight:
    page_bytes: dict[str, int]  # index.html, app.js, style.css, total (uncompressed)
    nodes: int
    frames_per_s: float
    live_seconds: float
    rss_base_kib: int  # daemon without the web server
    rss_web_idle_kib: int  # web server started, nobody connected
    rss_page_open_kib: int  # page loaded, one live reader connected for live_seconds
    sse_bytes_per_s: float  # what one open page receives

    @property
    def extra_kib_server(self) -> int:
        return self.rss_web_idle_kib - self.rss_base_kib

    @property
    def extra_kib_page_open(self) -> int:
        return self.rss_page_open_kib - self.rss_base_kib


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def measure(live_seconds: float = 5.0, nodes: int = 20, frames_per_s: float = 5.0) -> WebWeight:
    """Run the child daemon, load the page and follow /events; return the figures."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.web_weight",
            "--serve",
            str(nodes),
            str(frames_per_s),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("bench daemon did not start")
        time.sleep(1.0)  # let the feed settle
        base = rss_kib(child.pid)
        child.stdin.write("start\n")
        child.stdin.flush()
        port = int(child.stdout.readline().split()[1])
        time.sleep(0.5)
        idle = rss_kib(child.pid)
        page_bytes, sse_bytes = asyncio.run(_open_page(port, live_seconds))
        page_open = rss_kib(child.pid)
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return WebWeight(
        page_bytes=page_bytes,
        nodes=nodes,
        frames_per_s=frames_per_s,
        live_seconds=live_seconds,
        rss_base_kib=base,
        rss_web_idle_kib=idle,
        rss_page_open_kib=page_open,
        sse_bytes_per_s=round(sse_bytes / live_seconds, 1),
    )


async def _open_page(port: int, live_seconds: float) -> tuple[dict[str, int], int]:
    base = f"http://127.0.0.1:{port}"
    sizes: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        for name, path in (("index.html", "/"), ("app.js", "/app.js"), ("style.css", "/style.css")):
            async with session.get(base + path) as response:
                response.raise_for_status()
                sizes[name] = len(await response.read())
        sizes["total"] = sum(sizes.values())
        received = 0
        async with session.get(base + "/events") as response:
            response.raise_for_status()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(live_seconds):
                    async for chunk in response.content.iter_any():
                        received += len(chunk)
    return sizes, received


# --- the child: a stand-in daemon ---


async def _serve(nodes: int, frames_per_s: float) -> None:
    import aiohttp.web  # noqa: F401  the daemon has it loaded already (metrics)

    import gateway.config_checks  # noqa: F401  so has it: load_config runs the checks
    from drivers.radio.base import RadioSettings
    from gateway.state import Direction, FrameLogEntry, GatewayState, OutboxStats

    state = GatewayState()
    state.radio = RadioSettings()
    state.set_upstream("mqtt", True)
    state.outbox_stats = lambda: OutboxStats(0, None)
    state.duty_cycle = lambda: {"g1": 0.01}

    async def feed() -> None:
        n = 0
        while True:
            device = f"lora-{n % nodes:016x}"
            rssi, snr = -100 + 10 * math.sin(n / 50), 5.0
            data = {"temp_c": 20.0 + (n % 7), "battery_v": 3.1}
            state.note_uplink(device, "lora", rssi=rssi, snr=snr, address=n % nodes + 1, data=data)
            state.count_received()
            state.log_frame(
                FrameLogEntry(time.time(), Direction.UP, device, "data", rssi, snr, 27, data)
            )
            n += 1
            await asyncio.sleep(1 / frames_per_s)

    feeding = asyncio.create_task(feed())
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "start"

    from gateway.web import WebServer

    server = WebServer(state, None, host="127.0.0.1", port=0)
    port = await server.start()
    print(f"port {port}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # end of input: stop
    await server.stop()
    feeding.cancel()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(_serve(int(sys.argv[2]), float(sys.argv[3])))
        return 0
    weight = measure()
    figures = asdict(weight)
    figures["extra_kib_server"] = weight.extra_kib_server
    figures["extra_kib_page_open"] = weight.extra_kib_page_open
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
