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

    def signal(self, sig: int, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
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

        # Right after one of its reports, the node's next receive window is a second away:
        # a command accepted now is still queued when the gateway dies.
        target = devices[0]
        seen = max_counter(watcher.reports()[target])
        await watcher.wait_for_counters([target], seen + 1)
        watcher.command(target, {"id": "open", "action": "relay", "params": {"on": True}})
        await watcher.wait_until(
            lambda: "accepted" in watcher.statuses(target, "open"), "the command accepted"
        )
        gateway.signal(signal.SIGKILL)
        killed_at = {d: max_counter(watcher.reports()[d]) for d in devices}
        await asyncio.sleep(1.5)  # the nodes keep reporting into the void, and retransmit
        gateway.start()

        final = await watcher.wait_for_final(target, "open", timeout=40)
        await watcher.wait_for_counters(devices, max(killed_at.values()) + 4, timeout=40)
        assert gateway.signal(signal.SIGTERM) == 0
    finally:
        if gateway.alive():
            gateway.signal(signal.SIGKILL)
        world_exit = world.signal(signal.SIGTERM)
        watcher.drop()
    assert world_exit == 0, world.output()
    assert "Traceback" not in gateway.output() + world.output()
    assert_no_gaps(watcher.reports(), devices, ids_once=False)

    results = watcher.results(target, "open")
    finals = [r for r in results if r["status"] not in ("accepted", "sent")]
    assert len(finals) == 1, results
    node_state = json.loads((tmp_path / "nodes" / f"node-{target[5:]}.json").read_text())
    if final == "expired":
        # Queued, never transmitted: settled at startup, and the node never saw it.
        assert finals[0]["detail"] == "gateway_restart"
        assert node_state["relay"] is False
        assert node_state["recent_commands"] == []
    else:
        # Transmitted before the kill: the node may have executed it; nobody can tell.
        assert (final, finals[0]["detail"]) == ("timeout", "gateway_restart")
