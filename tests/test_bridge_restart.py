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
import signal
from pathlib import Path

from gateway.model import lora_device_id
from tests.bridge_fixtures import (
    MqttWatcher,
    Process,
    assert_no_gaps,
    fast_settings,
    max_counter,
    toml_text,
    wait_for_process_port,
)
from tests.servers import Mosquitto, free_port


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
        wait_for_process_port(world_port, world)
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
