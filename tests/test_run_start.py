"""What `duogate run` loads at start, and how it fails when its metrics port is taken.

The gateway is started as a user starts it (``python -m gateway run --config FILE``), with the
interpreter's own import log (``-X importtime``, one stderr line per module imported) turned
on; it is stopped with SIGTERM after systemd's READY=1, and every module the process imported
in its whole life is read from that log.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.bridge_fixtures import fast_settings, toml_text
from tests.import_log_fixtures import ROOT, imported_packages, other_lines, run_until_ready
from tests.servers import Mosquitto, free_port


def write_config(tmp_path: Path, broker_port: int, metrics_port: int, *, web: bool) -> Path:
    settings = fast_settings(tmp_path / "data", broker_port, nodes=0)
    settings["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": metrics_port}
    if web:
        settings["web"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    path = tmp_path / "duogate.toml"
    path.write_text(toml_text(settings))
    return path


def run_and_scrape(tmp_path: Path, config: Path, metrics_port: int) -> tuple[str, str]:
    """Start ``duogate run``, scrape its metrics at READY=1, stop it: (scrape, stderr)."""
    scraped: list[str] = []

    def scrape() -> None:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            scraped.append(response.read().decode())

    stderr = run_until_ready(tmp_path, config, scrape)
    return scraped[0], stderr


def test_metrics_without_the_status_page_never_load_aiohttp(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    metrics_port = free_port()
    config = write_config(tmp_path, mosquitto.port, metrics_port, web=False)
    scrape, stderr = run_and_scrape(tmp_path, config, metrics_port)
    assert 'duogate_upstream_connected{upstream="mqtt"}' in scrape
    imported = imported_packages(stderr)
    assert {"gateway", "prometheus_client", "paho"} <= imported  # the log covers the run
    assert "aiohttp" not in imported


def test_the_status_page_loads_aiohttp_when_it_is_on(tmp_path: Path, mosquitto: Mosquitto) -> None:
    metrics_port = free_port()
    config = write_config(tmp_path, mosquitto.port, metrics_port, web=True)
    scrape, stderr = run_and_scrape(tmp_path, config, metrics_port)
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
    output = other_lines(result.stderr)
    assert "Traceback" not in result.stderr
    assert output[-1] == (
        f"duogate: error: [Errno {errno.EADDRINUSE}] metrics cannot listen on 127.0.0.1:{port}: "
        f"error while attempting to bind on address ('127.0.0.1', {port}): address already in use"
    )
    # Naming the error does not load the status page's framework either.
    assert "aiohttp" not in imported_packages(result.stderr)
