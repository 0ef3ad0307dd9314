"""What reading the configuration loads: msgspec, never pydantic.

``check-config`` and ``run`` are started as a user starts them (``python -X importtime -m
gateway ...``); every module the process imported in its whole life is read from the
interpreter's import log (one stderr line per module).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bridge_fixtures import fast_settings, toml_text
from tests.import_log_fixtures import ROOT, imported_packages, other_lines, run_until_ready
from tests.servers import Mosquitto, free_port


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gateway", "check-config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_settings(tmp_path: Path, settings: dict[str, dict]) -> Path:
    path = tmp_path / "duogate.toml"
    path.write_text(toml_text(settings))
    return path


def test_check_config_reads_a_file_without_pydantic(tmp_path: Path) -> None:
    secret = tmp_path / "xmpp-password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    settings = fast_settings(tmp_path / "data", free_port(), nodes=0)
    settings["xmpp"] = {"enabled": True}
    settings["xmpp.password"] = {"file": str(secret)}
    settings["web"] = {"enabled": True, "port": 0}
    checked = check_config(write_settings(tmp_path, settings))
    assert checked.returncode == 0, other_lines(checked.stderr)
    assert checked.stdout.startswith(f"{tmp_path / 'duogate.toml'}: ok")
    imported = imported_packages(checked.stderr)
    assert {"gateway", "msgspec", "slixmpp"} <= imported  # the log covers the checks
    assert "pydantic" not in imported


def test_check_config_names_every_bad_key_without_pydantic(tmp_path: Path) -> None:
    path = tmp_path / "duogate.toml"
    path.write_text(
        "[sim]\nnodes = 0\n"
        '[mqtt]\nport = 70000\nkeepalive_s = "often"\nprot = 1\n'
        '[radio]\ndriver = "serial"\n'
        '[[modbus.buses]]\nname = "a"\ntransport = "tcp"\nhost = "meter"\n'
        "[[modbus.buses.devices]]\nunit = 300\n"
        '[[modbus.buses]]\nname = "b"\ntransport = "tcp"\n'
    )
    checked = check_config(path)
    assert checked.returncode == 2
    assert other_lines(checked.stderr) == [
        "radio: driver 'serial' needs radio.serial_port",
        "mqtt.port: must be 1..65535, got 70000",
        "mqtt.keepalive_s: must be an int, got str 'often'",
        "mqtt.prot: unknown key",
        "modbus.buses[0].devices[0].unit: must be 0..247, got 300",
        "modbus.buses[1]: tcp bus needs 'host'",
    ]
    assert "pydantic" not in imported_packages(checked.stderr)


def test_run_starts_without_pydantic(tmp_path: Path, mosquitto: Mosquitto) -> None:
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=2)
    settings["console"] = {"enabled": True, "socket": str(tmp_path / "console.sock")}
    settings["metrics"] = {"enabled": True, "port": 0}
    settings["web"] = {"enabled": True, "port": 0}
    config = write_settings(tmp_path, settings)
    stderr = run_until_ready(tmp_path, config)
    imported = imported_packages(stderr)
    assert {"gateway", "msgspec", "paho", "prometheus_client", "aiohttp"} <= imported
    assert "pydantic" not in imported
