"""`duogate run` as a user runs it: user errors never end in a traceback, stops are clean."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from gateway.model import lora_device_id
from tests.bridge_fixtures import (
    PREFIX,
    ROOT,
    MqttWatcher,
    Process,
    assert_no_gaps,
    fast_settings,
    toml_text,
)
from tests.servers import Mosquitto, free_port


def write_config(tmp_path: Path, broker_port: int, **radio: object) -> Path:
    settings = fast_settings(tmp_path / "data", broker_port, nodes=1, interval_s=1.0)
    settings["radio"].update(radio)
    path = tmp_path / "duogate.toml"
    path.write_text(toml_text(settings))
    return path


def acked_reports(state_file: Path) -> int:
    """Reports the simulated node got acked (so the gateway holds them in its outbox)."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return 0
    return state["report_counter"] - len(state["pending"])


async def test_unreachable_broker_is_retried_and_ctrl_c_stops_cleanly_saying_offline(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    mosquitto.kill()  # the broker is down when the gateway starts
    gateway = Process(
        "gateway", ["run", "--config", str(write_config(tmp_path, mosquitto.port))], tmp_path
    )
    watcher = MqttWatcher(mosquitto)
    gateway.start()
    try:
        attempts = lambda: gateway.output().count("mqtt: cannot connect")  # noqa: E731
        await watcher.wait_until(lambda: attempts() >= 2 or not gateway.alive(), "retries")
        assert gateway.alive(), gateway.output()
        state_file = tmp_path / "data" / "sim" / "node-0016c00100000001.json"
        await watcher.wait_until(
            lambda: acked_reports(state_file) >= 2, "reports acked while the broker is down"
        )
        mosquitto.start()
        watcher.connect()
        device = lora_device_id(0x0016_C001_0000_0001)
        await watcher.wait_for_counters([device], 3)
        assert gateway.signal(signal.SIGINT) == 0
        await watcher.wait_until(
            lambda: [m.payload for m in watcher.on(f"{PREFIX}/status")][-1:] == [b"offline"],
            "offline on the status topic",
        )
    finally:
        if gateway.alive():
            gateway.signal(signal.SIGKILL)
        watcher.drop()
    output = gateway.output()
    assert "Traceback" not in output
    assert output.rstrip().splitlines()[-1].endswith("stopping")
    # Reports taken while the broker was unreachable waited in the outbox.
    assert_no_gaps(watcher.reports(), [device], ids_once=False)


def test_missing_radio_chip_exits_with_one_line(tmp_path: Path) -> None:
    nobody = free_port()
    config = write_config(tmp_path, free_port(), driver="sx127x", spi=f"sim://127.0.0.1:{nobody}")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    # Open join with the public key is warned about at start; the failure is one line.
    lines = [line for line in done.stderr.splitlines() if line.strip() and " WARNING " not in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("duogate: error: ")
    assert f"127.0.0.1:{nobody}" in lines[0]
    assert done.stdout == ""


def test_a_gateway_without_any_upstream_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n[mqtt]\nenabled = false\n[sim]\nnodes = 0\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mqtt.enabled: enable mqtt, xmpp or a fleet; reports need somewhere to go"
    )
