"""A CircuitPython node program, unchanged, through a real gateway to mosquitto.

Four processes, as on a bench: ``duogate sim`` (the medium, the gateway's chip and an external
node chip served over ``sim://``), ``duogate run`` (the SX127x driver on the gateway chip),
mosquitto, and ``examples/node/code.py`` with Adafruit's ``adafruit_rfm9x`` (from PyPI) on the
``board``/``busio``/``digitalio`` stand-ins of ``tests/circuitpython_stand_ins``, which clock
its SPI transactions into the external chip. The node joins with its registered key, reports
arrive on MQTT, a ``relay`` command sent over MQTT is executed (its result on the result topic,
the relay pin driven high, the next reports saying so), and a command whose time to live is
too short for any receive window comes back ``expired``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge_fixtures import ROOT, MqttWatcher, Process, wait_for_process_port
from tests.servers import Mosquitto, free_port

pytest.importorskip("adafruit_rfm9x")

STAND_INS = ROOT / "tests" / "circuitpython_stand_ins"
NODE_PROGRAM = ROOT / "examples" / "node" / "code.py"
EUI = "70b3d57ed00c1a55"
DEVICE = f"lora-{EUI}"
ROOT_KEY = "8e2f0c7a5b1d4e3f96a8c0b2d4e6f810"
PREFIX = "duogate/t"


class NodeProgram:
    """``code.py`` in its own folder (its settings and state files), as on CIRCUITPY."""

    def __init__(self, folder: Path, chip_url: str) -> None:
        self.folder = folder
        self.chip_url = chip_url
        self.log_path = folder / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join((str(STAND_INS), str(ROOT))),
            "DUOGATE_SIM_CHIP": self.chip_url,
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(NODE_PROGRAM)],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def gateway_config(folder: Path, broker: Mosquitto, world_port: int, node_port: int) -> Path:
    (folder / "devices.toml").write_text(
        f'[[device]]\neui = "{EUI}"\nroot_key = "{ROOT_KEY}"\nname = "feather"\n'
    )
    (folder / "devices.toml").chmod(0o600)
    path = folder / "duogate.toml"
    path.write_text(
        f"""
[gateway]
id = "t"
data_dir = "data"

[radio]
driver = "sx127x"
spi = "sim://127.0.0.1:{world_port}"
frequency_hz = 869_525_000
spreading_factor = 7
bandwidth_hz = 125_000
rx_delay_s = 1.0

[join]
registry = "devices.toml"
join_rx_delay_s = 1.0

[mqtt]
host = "127.0.0.1"
port = {broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[commands]
node_answer_timeout_s = 20

[outbox]
commit_interval_s = 0.05

[sim]
nodes = 0
listen = "127.0.0.1:{world_port}"

[[sim.external_nodes]]
listen = "127.0.0.1:{node_port}"
x_m = 60.0
y_m = 80.0

[console]
enabled = false

[metrics]
enabled = false
"""
    )
    return path


def node_settings(folder: Path) -> None:
    folder.mkdir()
    settings = {
        "eui": EUI,
        "root_key": ROOT_KEY,
        "frequency_hz": 869_525_000,
        "spreading_factor": 7,
        "bandwidth_hz": 125_000,
        "coding_rate": 5,
        "tx_power_dbm": 14,
        "report_interval_s": 3,
        "relay_pin": "D5",
        # 869.525 MHz is EU868's 10 % sub-band; the first join within half a second, and
        # another every few seconds while the gateway is still starting.
        "node": {
            "join_rx_delay_s": 1.0,
            "duty_cycle": 0.1,
            "join_start_spread_s": 0.5,
            "join_backoff_max_s": 4.0,
        },
    }
    (folder / "node_settings.json").write_text(json.dumps(settings))


@pytest.fixture
def bench(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[MqttWatcher, NodeProgram]]:
    world_port, node_port = free_port(), free_port()
    config = gateway_config(tmp_path, mosquitto, world_port, node_port)
    world = Process("sim", ["sim", "--config", str(config)], tmp_path)
    gateway = Process("run", ["run", "--config", str(config)], tmp_path)
    node_folder = tmp_path / "CIRCUITPY"
    node_settings(node_folder)
    node = NodeProgram(node_folder, f"sim://127.0.0.1:{node_port}")
    watcher = MqttWatcher(mosquitto, (f"{PREFIX}/#",))
    watcher.connect()
    try:
        world.start()
        wait_for_process_port(node_port, world)
        gateway.start()
        node.start()
        yield watcher, node
    finally:
        node.stop()
        gateway.signal(signal.SIGTERM)
        world.signal(signal.SIGTERM)
        watcher.drop()
        for process in (world, gateway):
            print(f"--- {process.name}\n{process.output()[-4000:]}")
        print(f"--- node\n{node.output()[-4000:]}")


def wait_for(condition, what: str, node: NodeProgram, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert node.alive(), f"the node program exited:\n{node.output()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def reports(watcher: MqttWatcher) -> list[dict]:
    return watcher.reports().get(DEVICE, [])


def final_status(watcher: MqttWatcher, command_id: str) -> str | None:
    finals = {"executed", "failed", "expired", "rejected", "timeout"}
    return next(
        (status for status in watcher.statuses(DEVICE, command_id) if status in finals), None
    )


def test_circuitpython_node_joins_reports_and_takes_commands(
    bench: tuple[MqttWatcher, NodeProgram],
) -> None:
    watcher, node = bench

    wait_for(lambda: len(reports(watcher)) >= 2, "two reports from the Feather", node)
    first = reports(watcher)[0]["data"]
    assert first["relay"] is False
    assert 21.0 <= first["temperature_c"] <= 23.0
    assert [r["data"]["counter"] for r in reports(watcher)][:2] == [1, 2]
    assert "node: Joined(" in node.output()

    watcher.command(
        DEVICE, {"id": "relay-on", "action": "relay", "params": {"on": True}, "ttl_s": 60}
    )
    wait_for(lambda: final_status(watcher, "relay-on") is not None, "the relay's result", node)
    assert final_status(watcher, "relay-on") == "executed"
    assert "pin D5 high" in node.output()
    wait_for(
        lambda: reports(watcher)[-1]["data"]["relay"] is True, "a report with the relay on", node
    )

    # No receive window can carry a command with less than a whole second left.
    watcher.command(DEVICE, {"id": "too-late", "action": "ping", "ttl_s": 0.5})
    wait_for(lambda: final_status(watcher, "too-late") is not None, "the ping's result", node)
    assert final_status(watcher, "too-late") == "expired"
    assert "sent" not in watcher.statuses(DEVICE, "too-late")

    counters = [r["data"]["counter"] for r in reports(watcher)]
    assert counters == sorted(set(counters)), counters  # each report once, in order
