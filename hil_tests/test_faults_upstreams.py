"""Fault scenarios: the MQTT broker and the XMPP server killed (SIGKILL) during a report stream.

The gateway runs in this process on the simulated radio (real SX127x driver, simulated chip,
RF medium, simulated nodes); the servers are real mosquitto and prosody processes. Every
report the nodes produce must reach the subscriber: the outbox keeps an entry until the
server acknowledged it, and sends it again after a reconnect.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from gateway.daemon import Gateway
from hil_tests.faults_fixtures import (
    FaultRow,
    Ledger,
    MqttSubscriber,
    ProsodyWithOffline,
    Stopwatch,
    TunedSimRadio,
    XmppSubscriber,
    base_config,
    produced_by,
    publish_row,
    recovery_time,
    settle,
    sized,
    wait_until,
    world_nodes,
)
from tests.servers import Mosquitto

PREFIX = "duogate/rel"


@pytest.mark.timeout(sized(120, 3600))
async def test_mosquitto_killed_and_restarted_during_a_stream(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repetitions = sized(2, 30)
    rng = random.Random(5)
    ledger = Ledger()
    subscriber = MqttSubscriber(mosquitto.port, PREFIX, ledger)
    await subscriber.wait_connected()
    # A clean restart writes the subscriber's persistent session to the broker's database, so
    # a broker killed later still queues reports for a subscriber that has not reconnected yet.
    subscriber.connected.clear()
    await asyncio.to_thread(mosquitto.restart)
    await subscriber.wait_connected()

    config = base_config(tmp_path / "data", mqtt_port=mosquitto.port)
    radio = TunedSimRadio(config)
    gateway = Gateway.build(config, radio=radio)
    await gateway.start()
    recoveries = Stopwatch()
    try:
        nodes = world_nodes(radio)
        produced = produced_by(nodes)
        assert await wait_until(lambda: len(ledger.devices()) == len(nodes), 60.0)
        for _ in range(repetitions):
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            mosquitto.kill()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await asyncio.to_thread(mosquitto.start)
            recoveries.add(await recovery_time(ledger, produced, time.monotonic(), 30.0))
        final = await settle(ledger, produced, 30.0)
    finally:
        await gateway.stop()
        subscriber.close()

    sent, delivered, lost, duplicates = ledger.tally(final)
    row = FaultRow(
        "mosquitto SIGKILL", repetitions, sent, delivered, lost, duplicates, recoveries.worst
    )
    publish_row(request, row)
    assert sent > 0
    assert lost == 0, f"reports never delivered: {ledger.missing(final)}"
    assert recoveries.worst is not None


@pytest.mark.timeout(sized(120, 3600))
async def test_prosody_killed_and_restarted_during_a_stream(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repetitions = sized(2, 20)
    rng = random.Random(6)
    server = ProsodyWithOffline(tmp_path / "prosody")
    server.start()
    subscriber: XmppSubscriber | None = None
    gateway: Gateway | None = None
    recoveries = Stopwatch()
    ledger = Ledger()
    try:
        gateway_jid = server.create_user("gateway", "pw-gateway")
        person_jid = server.create_user("person", "pw-person")
        secret = tmp_path / "xmpp-password"
        secret.write_text("pw-gateway\n")
        secret.chmod(0o600)
        xmpp = {
            "enabled": True,
            "jid": f"{gateway_jid}/duogate",
            "password": {"file": str(secret)},
            "host": server.host,
            "port": server.port,
            "tls": "starttls",
            "ca_file": str(server.ca_file),
            "subscribers": [person_jid],
            "keepalive_s": 10,
            "reconnect_max_s": 2.0,
        }
        subscriber = XmppSubscriber(server, person_jid, "pw-person", ledger)
        subscriber.start()
        await subscriber.wait_connected()
        config = base_config(tmp_path / "data", extra={"xmpp": xmpp})
        radio = TunedSimRadio(config)
        gateway = Gateway.build(config, radio=radio)
        await gateway.start()
        nodes = world_nodes(radio)
        produced = produced_by(nodes)
        assert await wait_until(lambda: len(ledger.devices()) == len(nodes), 60.0)
        for _ in range(repetitions):
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            server.kill()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await asyncio.to_thread(server.start)
            recoveries.add(await recovery_time(ledger, produced, time.monotonic(), 30.0))
        final = await settle(ledger, produced, 30.0)
    finally:
        if gateway is not None:
            await gateway.stop()
        if subscriber is not None:
            await subscriber.stop()
        server.kill()

    sent, delivered, lost, duplicates = ledger.tally(final)
    row = FaultRow(
        "prosody SIGKILL", repetitions, sent, delivered, lost, duplicates, recoveries.worst
    )
    publish_row(request, row)
    assert sent > 0
    assert lost == 0, f"reports never delivered: {ledger.missing(final)}"
    assert recoveries.worst is not None
