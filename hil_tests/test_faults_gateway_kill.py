"""Fault scenario: the gateway process killed with SIGKILL at random moments, restarted.

Three processes, as on a bench: ``python -m gateway sim`` (RF medium, simulated nodes and the
gateway's SX127x chip served on a socket), ``python -m gateway run`` (the real SX127x driver on
``radio.spi = "sim://..."``) and mosquitto. The world keeps running while the gateway is dead;
the nodes keep their unacknowledged reports and send them again, and the gateway's outbox on
disk replays whatever it had stored but not yet delivered.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from hil_tests.faults_fixtures import (
    Child,
    FaultRow,
    Ledger,
    MqttSubscriber,
    Stopwatch,
    free_port,
    produced_from_state_files,
    publish_row,
    recovery_time,
    settle,
    sized,
    wait_until,
)
from tests.servers import Mosquitto, wait_for_port

PREFIX = "duogate/killed"
NODES = 2


def write_config(tmp_path: Path, broker_port: int, world_port: int) -> Path:
    path = tmp_path / "duogate.toml"
    path.write_text(
        f"""
[gateway]
id = "killed"
data_dir = "{tmp_path / "data"}"

[radio]
driver = "sx127x"
spi = "sim://127.0.0.1:{world_port}"
rx_delay_s = 0.3
bandwidth_hz = 500_000

[join]
open_join = true
join_rx_delay_s = 0.3

[mqtt]
port = {broker_port}
discovery = false
reconnect_min_s = 0.5
reconnect_max_s = 2.0

[sim]
nodes = {NODES}
report_interval_s = 6.0
seed = 21
listen = "127.0.0.1:{world_port}"
state_dir = "{tmp_path / "world"}"

[console]
enabled = false

[metrics]
enabled = false
"""
    )
    return path


@pytest.mark.timeout(sized(120, 3600))
async def test_gateway_killed_at_random_moments_and_restarted(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repetitions = sized(2, 25)
    rng = random.Random(7)
    world_port = free_port()
    config = write_config(tmp_path, mosquitto.port, world_port)
    world = Child(["sim", "--config", str(config)], tmp_path / "world.log")
    gateway = Child(["run", "--config", str(config)], tmp_path / "gateway.log")
    ledger = Ledger()
    subscriber = MqttSubscriber(mosquitto.port, PREFIX, ledger)
    produced = produced_from_state_files(tmp_path / "world")
    recoveries = Stopwatch()
    try:
        await subscriber.wait_connected()
        world.start()
        assert world.proc is not None
        await asyncio.to_thread(wait_for_port, "127.0.0.1", world_port, 30.0, world.proc)
        gateway.start()
        # Kills start once every node has joined and been heard: a node that has to join
        # again backs off for minutes (its firmware's join backoff), which measures the node.
        joined = await wait_until(lambda: len(ledger.devices()) == NODES, 90.0)
        assert joined, f"not every node was heard before the first kill\n{gateway.tail()}"
        for _ in range(repetitions):
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            gateway.signal(signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            gateway.start()
            recoveries.add(await recovery_time(ledger, produced, time.monotonic(), 60.0))
        final = await settle(ledger, produced, 60.0)
    finally:
        gateway.signal(signal.SIGTERM)
        world.signal(signal.SIGTERM)
        subscriber.close()

    sent, delivered, lost, duplicates = ledger.tally(final)
    row = FaultRow(
        "gateway SIGKILL", repetitions, sent, delivered, lost, duplicates, recoveries.worst
    )
    publish_row(request, row)
    assert sent > 0
    assert lost == 0, f"never delivered: {ledger.missing(final)}\n{gateway.tail()}"
    assert recoveries.worst is not None, gateway.tail()
