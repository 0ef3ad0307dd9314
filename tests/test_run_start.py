"""What `duogate run` loads at start, and how it fails when its metrics port is taken.

The gateway is started as a user starts it (``python -m gateway run --config FILE``), with the
interpreter's own import log (``-X importtime``, one stderr line per module imported) turned
on; it is stopped with SIGTERM after systemd's READY=1, and every module the process imported
in its whole life is read from that log.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.bridge_fixtures import fast_settings, toml_text
from tests.servers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
IMPORT_LOG_PREFIX = "import time:"


def imported_packages(stderr: str) -> set[str]:
    """Top-level package of every module named in ``-X importtime`` lines."""
    packages = set()
    for line in stderr.splitlines():
        if line.startswith(IMPORT_LOG_PREFIX) and "cumulative" not in line:
            module = line.rsplit("|", 1)[-1].strip()
            packages.add(module.split(".")[0])
    return packages


def write_config(tmp_path: Path, broker_port: int, metrics_port: int, *, web: bool) -> Path:
    settings = fast_settings(tmp_path / "data", broker_port, nodes=0)
    settings["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": metrics_port}
    if web:
        settings["web"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    path = tmp_path / "duogate.toml"
    path.write_text(toml_text(settings))
    return path


def run_until_ready(tmp_path: Path, config: Path, metrics_port: int) -> tuple[str, str]:
    """Start ``duogate run``, scrape its metrics at READY=1, stop it: (scrape, stderr)."""
    notify_path = tmp_path / "notify.sock"
    stderr_path = tmp_path / "stderr.txt"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
        stderr_path.open("w") as stderr,
    ):
        notify.bind(str(notify_path))
        notify.settimeout(READY_TIMEOUT_S)
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "gateway", "run", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while "READY=1" not in notify.recv(4096).decode().splitlines():
                assert time.monotonic() < deadline, "no READY=1"
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                scrape = response.read().decode()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, stderr_path.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return scrape, stderr_path.read_text()


def test_metrics_without_the_status_page_never_load_aiohttp(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    metrics_port = free_port()
    config = write_config(tmp_path, mosquitto.port, metrics_port, web=False)
    scrape, stderr = run_until_ready(tmp_path, config, metrics_port)
    assert 'duogate_upstream_connected{upstream="mqtt"}' in scrape
    imported = imported_packages(stderr)
    assert {"gateway", "prometheus_client", "paho"} <= imported  # the log covers the run
    assert "aiohttp" not in imported


def test_the_status_page_loads_aiohttp_when_it_is_on(tmp_path: Path, mosquitto: Mosquitto) -> None:
    metrics_port = free_port()
    config = write_config(tmp_path, mosquitto.port, metrics_port, web=True)
    scrape, stderr = run_until_ready(tmp_path, config, metrics_port)
    assert "duogate_uptime_seconds" in scrape
    assert "aiohttp" in imported_packages(stderr)


def test_a_taken_metrics_port_is_one_line_and_exit_1(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, mosquitto.port, port, web=False)
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "gateway", "run", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    output = [line for line in result.stderr.splitlines() if not line.startswith(IMPORT_LOG_PREFIX)]
    assert "Traceback" not in result.stderr
    assert output[-1] == (
        f"duogate: error: [Errno {errno.EADDRINUSE}] metrics cannot listen on 127.0.0.1:{port}: "
        f"error while attempting to bind on address ('127.0.0.1', {port}): address already in use"
    )
    # Naming the error does not load the status page's framework either.
    assert "aiohttp" not in imported_packages(result.stderr)
