"""``duogate`` started as a user starts it, with the interpreter's import log on.

``python -X importtime`` writes one stderr line per module imported; every module the process
imported in its whole life is read from that log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORT_LOG_PREFIX = "import time:"
READY_TIMEOUT_S = 60.0


def imported_packages(stderr: str) -> set[str]:
    """Top-level package of every module named in ``-X importtime`` lines."""
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith(IMPORT_LOG_PREFIX) and "cumulative" not in line
    }


def other_lines(stderr: str) -> list[str]:
    """The stderr lines that are not the import log."""
    return [line for line in stderr.splitlines() if not line.startswith(IMPORT_LOG_PREFIX)]


def run_until_ready(
    tmp_path: Path, config: Path, at_ready: Callable[[], None] = lambda: None
) -> str:
    """Start ``python -X importtime -m gateway run --config CONFIG``, call ``at_ready`` once it
    says READY=1 to systemd, stop it with SIGTERM (it must exit 0); its whole stderr."""
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
            at_ready()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, stderr_path.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return stderr_path.read_text()
