"""Fault scenario: the wall clock jumps forward and back by an hour while commands wait.

Deadlines live on the monotonic clock from the moment a command arrives, so a jump of the
wall clock (NTP stepping the time of a board without an RTC) must neither expire a waiting
command early nor revive an expired one. The bridge, the LoRa network and the live state get
the test's wall clock (``wall=``); the monotonic clock, the MQTT broker and the nodes are
untouched.

Each round sends every node a long-lived command (``ttl_s`` 30 s or an ``expires_at`` 30 s
ahead, alternately), jumps the wall clock forward an hour, sends every node a short-lived one
(0.4 s, the other kind), and jumps it back. The long-lived commands must all be executed; no
command may be executed after its deadline (each node's firmware records when it executes);
reports must keep flowing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.bridge import Bridge
from gateway.lora import LoraNetwork
from gateway.state import GatewayState
from gateway.timefmt import rfc3339
from gateway.upstreams.mqtt import MqttUpstream
from hil_tests.faults_fixtures import (
    Execution,
    FaultRow,
    Ledger,
    MqttSubscriber,
    TunedSimRadio,
    base_config,
    node_diagnostics,
    produced_by,
    publish_row,
    settle,
    sized,
    wait_until,
    watch_executions,
    world_nodes,
)
from tests.servers import Mosquitto

PREFIX = "duogate/rel"
HOUR = 3600.0
LONG_S = 30.0
SHORT_S = 0.4


class JumpingClock:
    """The wall clock with an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass(frozen=True, slots=True)
class Sent:
    id: str
    device: str
    latest_deadline: float  # monotonic; the gateway's deadline cannot be later than this
    long_lived: bool


@pytest.mark.timeout(sized(120, 1800))
async def test_wall_clock_jumps_neither_expire_nor_revive_commands(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rounds = sized(2, 30)
    rng = random.Random(12)
    wall = JumpingClock()
    ledger = Ledger()
    results_topic = f"{PREFIX}/devices/+/command/result"
    subscriber = MqttSubscriber(mosquitto.port, PREFIX, ledger, topics=[results_topic])
    await subscriber.wait_connected()
    config = base_config(tmp_path / "data", mqtt_port=mosquitto.port)
    radio = TunedSimRadio(config)
    state = GatewayState(clock=wall)
    lora = LoraNetwork(config, radio, state, wall=wall)
    bridge = Bridge(config, state, [MqttUpstream(config)], [lora], radio=radio, wall=wall)
    lora.progress = bridge.on_driver_progress
    await bridge.start()
    executions: list[Execution] = []
    sent: list[Sent] = []
    numbers = itertools.count(1)

    def send(device: str, lifetime_s: float, *, absolute: bool) -> None:
        number = next(numbers)
        body: dict[str, object] = {"id": f"c{number}", "action": "ping", "params": {"n": number}}
        published = time.monotonic()
        if absolute:
            body["expires_at"] = rfc3339(wall() + lifetime_s)
        else:
            body["ttl_s"] = lifetime_s
        topic = f"{PREFIX}/devices/{device}/command"
        subscriber.client.publish(topic, json.dumps(body), qos=1)
        # The gateway reads the command after this line ran: its deadline is no later than
        # this (an expires_at is converted with the wall clock read at arrival, unjumped yet).
        sent.append(Sent(f"c{number}", device, published + lifetime_s, lifetime_s == LONG_S))

    def finals() -> dict[str, str]:
        out: dict[str, str] = {}
        for _at, topic, payload in list(subscriber.messages):
            if topic.endswith("/command/result"):
                result = json.loads(payload)
                if result["status"] not in ("accepted", "sent"):
                    out[result["id"]] = result["status"]
        return out

    try:
        nodes = world_nodes(radio)
        watch_executions(nodes, executions)
        produced = produced_by(nodes)
        assert await wait_until(lambda: len(ledger.devices()) == len(nodes), 60.0)
        for round_number in range(rounds):
            for index, node in enumerate(nodes):
                send(node.device_id, LONG_S, absolute=(index + round_number) % 2 == 0)
            await asyncio.sleep(0.2)
            wall.offset += HOUR
            for index, node in enumerate(nodes):
                send(node.device_id, SHORT_S, absolute=(index + round_number) % 2 == 1)
            await asyncio.sleep(0.2)
            wall.offset -= HOUR
            await asyncio.sleep(rng.uniform(1.0, 3.0))
        ids = {command.id for command in sent}
        assert await wait_until(lambda: ids <= finals().keys(), LONG_S + 15.0)
        final = await settle(ledger, produced, 30.0)
    finally:
        await bridge.stop()
        subscriber.close()

    outcome = finals()
    by_number = {f"c{e.params['n']}": e for e in executions if "n" in e.params}
    late = [c.id for c in sent if c.id in by_number and by_number[c.id].at > c.latest_deadline]
    not_executed = [(c.id, outcome[c.id]) for c in sent if c.long_lived and c.id not in by_number]
    sent_reports, delivered, lost, duplicates = ledger.tally(final)
    row = FaultRow(
        "wall clock +1 h / -1 h jumps",
        rounds,
        sent_reports,
        delivered,
        lost,
        duplicates,
        None,
        commands=len(sent),
        late=len(late),
    )
    publish_row(request, row)
    assert not late, f"executed after their deadline: {late}"
    assert not not_executed, f"long-lived commands not executed: {not_executed}"
    assert all(outcome[c.id] == "executed" for c in sent if c.long_lived)
    assert lost == 0, f"never delivered: {ledger.missing(final)}\n{node_diagnostics(nodes)}"
