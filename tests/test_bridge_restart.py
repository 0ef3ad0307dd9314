"""The gateway killed with SIGKILL and started again, as separate processes.

The simulated world (``duogate sim``) runs in its own process and keeps running; the gateway
(``duogate run`` on the real SX127x driver, ``radio.spi = "sim://..."``) is killed mid-stream
and restarted. Nothing reported may be lost (the nodes retransmit what was not acked, the
outbox keeps what was acked but not yet published), and a command open at the kill still gets
exactly one final result after the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.model import lora_device_id
from tests.servers import Mosquitto, free_port
from tests.test_bridge_mqtt import MqttWatcher, assert_no_gaps, fast_settings, max_counter

ROOT = Path(__file__).resolve().parent.parent


def toml_text(data: dict[str, Any]) -> str:
    """Enough TOML for the flat tables of a test config."""
    lines: list[str] = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


class Process:
    """A ``python -m gateway ...`` child with its output in a file."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *self.args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def signal(self, sig: int, timeout: float = 15.0) -> int | None:
        """Send ``sig``; wait up to ``timeout`` for the exit (0: do not wait, e.g. SIGSTOP)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        if timeout == 0:
            return None
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_port(port: int, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.alive(), f"{process.name} exited:\n{process.output()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{process.name} is not listening on {port}:\n{process.output()}")


async def test_gateway_killed_and_restarted_loses_no_report_and_settles_open_commands(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    world_port = free_port()
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=2, interval_s=1.0)
    settings["radio"].update(driver="sx127x", spi=f"sim://127.0.0.1:{world_port}")
    settings["sim"].update(state_dir=str(tmp_path / "nodes"), listen=f"127.0.0.1:{world_port}")
    config_path = tmp_path / "duogate.toml"
    config_path.write_text(toml_text(settings))
    world = Process("world", ["sim", "--config", str(config_path)], tmp_path)
    gateway = Process(
        "gateway",
        ["run", "--config", str(config_path), "--set", f"mqtt.port={mosquitto.port}"],
        tmp_path,
    )
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    world.start()
    try:
        wait_for_port(world_port, world)
        gateway.start()
        devices = [lora_device_id(0x0016_C001_0000_0000 + n) for n in (1, 2)]
        await watcher.wait_for_counters(devices, 2, timeout=40)

        # 1. Killed mid-stream, right after a report went out.
        await watcher.wait_for_counters(devices[:1], max_counter(watcher.reports()[devices[0]]) + 1)
        gateway.signal(signal.SIGKILL)
        killed_at = max(max_counter(reports) for reports in watcher.reports().values())
        await asyncio.sleep(1.5)  # the nodes keep reporting into the void, and retransmit
        gateway.start()
        await watcher.wait_for_counters(devices, killed_at + 3, timeout=40)

        # 2. Killed with a command accepted but not yet sent. The world is frozen meanwhile
        # (SIGSTOP) so that no receive window can come before the kill.
        target = devices[0]
        world.signal(signal.SIGSTOP, timeout=0)
        watcher.command(target, {"id": "open", "action": "relay", "params": {"on": True}})
        await watcher.wait_until(
            lambda: "accepted" in watcher.statuses(target, "open"), "the command accepted"
        )
        gateway.signal(signal.SIGKILL)
        world.signal(signal.SIGCONT, timeout=0)
        killed_at = max(max_counter(reports) for reports in watcher.reports().values())
        await asyncio.sleep(1.0)
        gateway.start()
        assert await watcher.wait_for_final(target, "open", timeout=40) == "expired"
        await watcher.wait_for_counters(devices, killed_at + 3, timeout=40)
        assert gateway.signal(signal.SIGTERM) == 0
    finally:
        if gateway.alive():
            gateway.signal(signal.SIGKILL)
        world.signal(signal.SIGCONT, timeout=0)
        world_exit = world.signal(signal.SIGTERM)
        watcher.drop()
    assert world_exit == 0, world.output()
    assert "Traceback" not in gateway.output() + world.output()
    assert_no_gaps(watcher.reports(), devices, ids_once=False)

    # The command open at the kill ended once, as expired (never sent late after a restart),
    # and the node never saw it.
    results = watcher.results(target, "open")
    assert [(r["status"], r.get("detail")) for r in results] == [
        ("accepted", None),
        ("expired", "gateway_restart"),
    ]
    node_state = json.loads((tmp_path / "nodes" / f"node-{target[5:]}.json").read_text())
    assert node_state["relay"] is False
    assert node_state["recent_commands"] == []
