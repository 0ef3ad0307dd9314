"""The whole loop against a real mosquitto: simulated nodes -> real SX127x driver -> bridge ->
outbox -> MQTT, and commands back down to the nodes.

What only a broker shows is checked here: retained messages lost with a killed broker and put
back, Response Topics and Correlation Data on the wire, retained discovery for a late
subscriber, the Last Will. The bridge's own logic (order, no gaps, command validation and
expiry, result retries) runs against the in-memory upstream in test_bridge_pump.py and
test_bridge_router.py.

The gateway runs in this process (``radio.driver = "sim"``: the world's nodes, medium and chip
share the event loop); a paho client in its own thread watches the broker. Node timing is
scaled down (reports every ~1 s, short receive delays and backoffs) to keep the tests short.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.model import EventKind
from tests.bridge_fixtures import (
    GATEWAY_ID,
    PREFIX,
    MqttWatcher,
    assert_no_gaps,
    fast_config,
    max_counter,
    running_gateway,
    world_of,
)
from tests.servers import Mosquitto

# -- reports ----------------------------------------------------------------------------------


async def test_broker_killed_mid_stream_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    config = fast_config(tmp_path, mosquitto, nodes=2)
    async with running_gateway(config) as gateway:
        devices = [node.device_id for node in world_of(gateway).nodes]
        await watcher.wait_for_counters(devices, 2)
        mosquitto.kill()
        watcher.drop()
        before = {d: max_counter(r) for d, r in watcher.reports().items()}
        await asyncio.sleep(3.0)  # reports keep coming from the nodes into the outbox
        assert gateway.bridge is not None and gateway.bridge.outbox is not None
        assert gateway.bridge.outbox.size > 0
        # Blocking on purpose: the gateway (same event loop) cannot reconnect before the
        # watcher has subscribed again, so the watcher misses nothing that is published.
        put_back = [f"{PREFIX}/status"] + [f"{PREFIX}/devices/{d}/availability" for d in devices]
        seen_before = {topic: len(watcher.on(topic)) for topic in put_back}
        mosquitto.start()
        watcher.connect()
        await watcher.wait_for_counters(devices, max(before.values()) + 6)
        # The killed broker forgot its retained messages; the gateway puts them back. Seen
        # live first: a subscriber arriving before the broker had them would get them live.
        await watcher.wait_until(
            lambda: all(len(watcher.on(t)) > seen_before[t] for t in put_back),
            "status and availability published again",
        )
        late = MqttWatcher(mosquitto, (f"{PREFIX}/status", f"{PREFIX}/devices/+/availability"))
        late.connect()
        await late.wait_until(
            lambda: (
                {(m.topic, m.payload) for m in late.snapshot() if m.retain}
                >= {(f"{PREFIX}/status", b"online")}
                | {(f"{PREFIX}/devices/{d}/availability", b"online") for d in devices}
            ),
            "retained status and availability after the broker restart",
        )
        late.drop()
    watcher.drop()
    reports = watcher.reports()
    assert_no_gaps(reports, devices, ids_once=False)
    for device in devices:
        assert max_counter(reports[device]) > before.get(device, 0) + 3


# -- commands ---------------------------------------------------------------------------------


async def test_command_in_time_is_accepted_sent_executed_and_answered_on_its_response_topic(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 1)
        assert node.relay is False
        watcher.command(
            device,
            {"id": "c-on", "action": "relay", "params": {"on": True}, "ttl_s": 20},
            response_topic=f"{PREFIX}/responses/app/7",
            correlation=b"\x00req-7",
        )
        assert await watcher.wait_for_final(device, "c-on") == "executed"
        assert node.relay is True
        assert [(c.action, c.params) for c in node.executed] == [("relay", {"on": True})]
        # The node's next reports carry the new state.
        await watcher.wait_until(
            lambda: any(r["data"]["relay"] for r in watcher.reports()[device]),
            "a report with the relay on",
        )
    watcher.drop()
    assert watcher.statuses(device, "c-on") == ["accepted", "sent", "executed"]
    replies = watcher.on(f"{PREFIX}/responses/app/7")
    assert [m.json()["status"] for m in replies] == ["accepted", "sent", "executed"]
    assert {m.correlation for m in replies} == {b"\x00req-7"}
    on_result_topic = watcher.on(f"{PREFIX}/devices/{device}/command/result")
    assert {m.correlation for m in on_result_topic} == {b"\x00req-7"}


# -- Home Assistant ---------------------------------------------------------------------------


async def test_discovery_is_retained_for_joined_nodes_and_availability_follows_events(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        early = MqttWatcher(mosquitto)
        early.connect()
        await early.wait_for_counters([device], 1)
        # A subscriber arriving later gets the discovery configs and availability retained.
        late = MqttWatcher(mosquitto, ("homeassistant/#", f"{PREFIX}/#"))
        node_id = f"{GATEWAY_ID}_{device}"
        switch_topic = f"homeassistant/switch/{node_id}/relay/config"
        availability = f"{PREFIX}/devices/{device}/availability"
        expected = {
            f"homeassistant/sensor/{node_id}/temperature_c/config",
            f"homeassistant/sensor/{node_id}/counter/config",
            switch_topic,
            f"homeassistant/button/{node_id}/action_ping/config",
            availability,
            f"{PREFIX}/status",
        }
        # Seen live first: a subscriber arriving before the broker had them would get them
        # live, without the retain flag.
        await early.wait_until(
            lambda: expected <= {m.topic for m in early.snapshot()}, "discovery and availability"
        )
        late.connect()
        await late.wait_until(
            lambda: expected <= {m.topic for m in late.snapshot() if m.retain},
            "retained discovery configs and availability",
        )
        assert [m.payload for m in late.on(availability)] == [b"online"]
        assert [m.payload for m in late.on(f"{PREFIX}/status")] == [b"online"]
        switch = late.on(switch_topic)[-1].json()
        assert switch["command_topic"] == f"{PREFIX}/devices/{device}/ha/relay/set"
        assert switch["state_topic"] == f"{PREFIX}/devices/{device}/report"
        assert {a["topic"] for a in switch["availability"]} == {availability, f"{PREFIX}/status"}

        # Home Assistant switching the relay: the bare payload it publishes.
        early.publish(switch["command_topic"], switch["payload_on"])
        await early.wait_until(lambda: node.relay, "the relay switched from Home Assistant")

        assert gateway.bridge is not None
        await gateway.bridge.event(device, EventKind.OFFLINE)
        await late.wait_until(
            lambda: [m.payload for m in late.on(availability)][-1:] == [b"offline"],
            "availability offline after an offline event",
        )
        await gateway.bridge.event(device, EventKind.ONLINE)
        await late.wait_until(
            lambda: [m.payload for m in late.on(availability)][-1:] == [b"online"],
            "availability online after an online event",
        )
    # A clean stop says so on the gateway's status topic.
    await late.wait_until(
        lambda: [m.payload for m in late.on(f"{PREFIX}/status")][-1:] == [b"offline"],
        "status offline after a clean stop",
    )
    early.drop()
    late.drop()
