"""The machine the figures were measured on, for docs/PERFORMANCE.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import sqlite3
import subprocess
from importlib import metadata
from pathlib import Path

VERSION_TIMEOUT_S = 20


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.machine()


def memory_total() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return "unknown"
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return f"{int(match.group(1)) / 1024 / 1024:.1f} GiB" if match else "unknown"


def _first_line(command: list[str], pattern: str) -> str | None:
    if shutil.which(command[0]) is None and not Path(f"/usr/sbin/{command[0]}").exists():
        return None
    binary = shutil.which(command[0]) or f"/usr/sbin/{command[0]}"
    try:
        done = subprocess.run(
            [binary, *command[1:]],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else None


def mosquitto_version() -> str:
    return _first_line(["mosquitto", "-h"], r"mosquitto version (\S+)") or "unknown"


def prosody_version() -> str:
    # `prosody --version` starts a server on some versions; prosodyctl only reports.
    return _first_line(["prosodyctl", "about"], r"Prosody (\S+)") or "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, str]:
    load = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": memory_total(),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "prosody": prosody_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho-mqtt": package_version("paho-mqtt"),
        "slixmpp": package_version("slixmpp"),
        "cryptography": package_version("cryptography"),
        "load average (1, 5, 15 min)": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }
