"""The field and bench parts on a running gateway with the simulated world: the console over a
serial line (a pty pair, as picocom would see it) and its Unix socket, the Prometheus endpoint
after a simulated run, and systemd readiness from a real `duogate run` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.console.wire import PROMPT
from tests.bridge_fixtures import fast_settings, running_gateway, world_of
from tests.console_fixtures import Terminal
from tests.servers import Mosquitto

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pty_line() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else r"(?:\{\})?")
    match = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name}{{{labels}}} not in the scrape"
    return float(match.group(1))


async def drain(terminal: Terminal) -> None:
    """Forget whatever the console printed so far (greeting, extra prompts)."""
    with contextlib.suppress(BlockingIOError):
        while os.read(terminal.fd, 4096):
            pass
    terminal.buffer = b""


async def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())


async def test_console_and_metrics_on_a_running_gateway(
    tmp_path: Path, mosquitto: Mosquitto, pty_line: tuple[int, str]
) -> None:
    master, serial_path = pty_line
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=2)
    settings["console"] = {
        "enabled": True,
        "socket": str(tmp_path / "console.sock"),
        "serial_port": serial_path,
    }
    settings["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    async with running_gateway(parse_config(settings)) as gateway:
        world = world_of(gateway)
        devices = sorted(node.device_id for node in world.nodes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not all(node.stats.acks_received >= 2 for node in world.nodes):
            assert loop.time() < deadline, "the simulated nodes did not report"
            await asyncio.sleep(0.1)

        terminal = Terminal(master)
        terminal.type(b"\r")
        await terminal.read_until(PROMPT.encode())
        await asyncio.sleep(0.3)
        await drain(terminal)

        terminal.type(b"status\r")
        status = (await terminal.read_until(PROMPT.encode())).decode()
        assert "uptime" in status and "mqtt: connected" in status
        assert "868.1" in status or "MHz" in status

        terminal.type(b"nodes\r")
        nodes = (await terminal.read_until(PROMPT.encode())).decode()
        for device in devices:
            assert device in nodes

        terminal.type(b"leases\r")
        leases = (await terminal.read_until(PROMPT.encode())).decode()
        assert all(device in leases for device in devices)

        terminal.type(b"tail\r")
        streamed = (await terminal.read_until(b"report")).decode()
        streamed += (await terminal.read_until(b"\r\n")).decode()
        assert any(device in streamed for device in devices)
        assert "dBm" in streamed or "rssi" in streamed.lower()
        terminal.type(b"q")  # any key stops tail
        await terminal.read_until(PROMPT.encode())

        terminal.type(b"frob --now\r")
        bad = (await terminal.read_until(PROMPT.encode())).decode()
        assert "error: unknown command 'frob'" in bad
        assert gateway.state.counters.console_errors >= 1

        device = devices[0]
        terminal.type(f'send {device} relay {{"on": true}} ttl=20\r'.encode())
        sent = (await terminal.read_until(PROMPT.encode())).decode()
        assert "executed" in sent
        assert world.node(device).relay is True

        # The Unix socket shows the same model: `duogate console -c nodes`.
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway",
                "console",
                "--socket",
                str(tmp_path / "console.sock"),
                "-c",
                "nodes",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert all(d in result.stdout for d in devices)

        metrics = next(s for s in gateway.services if type(s).__name__ == "MetricsServer")
        text = await scrape(metrics.port)
        received = metric(text, "duogate_frames_received_total")
        assert received >= 6  # two joins and at least two reports each
        assert metric(text, "duogate_frames_sent_total") >= 6  # accepts and acks
        assert metric(text, "duogate_joins_total", 'result="accepted"') >= 2
        assert metric(text, "duogate_leases_in_use") == 2
        assert metric(text, "duogate_upstream_connected", 'upstream="mqtt"') == 1
        assert metric(text, "duogate_commands_total", 'status="executed"') >= 1
        assert metric(text, "duogate_outbox_depth") >= 0
        # Each report and event was written, or taken by the broker before it was due on disk.
        written = metric(text, "duogate_outbox_rows_written_total")
        assert written + metric(text, "duogate_outbox_rows_never_written_total") >= 4
        assert metric(text, "duogate_storage_commits_total") >= 1  # the leases at the joins
        # Metrics read the same live model as the console: never behind it.
        assert gateway.state.counters.frames_received >= received


def test_duogate_run_tells_systemd_it_is_ready_and_pings_the_watchdog(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(1.0)
    config = tmp_path / "gw.toml"
    config.write_text(
        f"""
[gateway]
id = "field"
data_dir = "{tmp_path / "data"}"
[radio]
driver = "sim"
[join]
open_join = true
[mqtt]
port = {mosquitto.port}
[sim]
nodes = 1
[console]
socket = "{tmp_path / "console.sock"}"
[metrics]
port = 0
"""
    )
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000")
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    messages: list[str] = []
    try:
        for _ in range(60):
            with contextlib.suppress(TimeoutError):
                messages.append(listener.recv(4096).decode())
            if any("READY=1" in m for m in messages) and any("WATCHDOG=1" in m for m in messages):
                break
        assert any("READY=1" in m for m in messages), messages
        assert any("WATCHDOG=1" in m for m in messages), messages
        process.send_signal(signal.SIGTERM)
        for _ in range(20):
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                break
            if any("STOPPING=1" in m for m in messages):
                break
        assert process.wait(timeout=30) == 0
        assert any("STOPPING=1" in m for m in messages), messages
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listener.close()
