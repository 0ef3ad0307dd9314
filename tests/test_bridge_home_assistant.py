"""Home Assistant discovery, device availability and the health message, published through
the MQTT extras of the in-memory upstream; entity command topics taken as commands.

Retained messages reaching a late subscriber, and the discovery payloads checked against Home
Assistant's schema, stay with mosquitto in test_bridge_mqtt.py and test_ha_mqtt.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.discovery import HA_COMMAND_QOS, HA_STATUS_QOS
from gateway.model import EventKind
from gateway.upstreams.memory import MemoryUpstream
from tests.bridge_fixtures import GATEWAY_ID, PREFIX, joined_devices, world_of
from tests.twin_fixtures import (
    reporting_node,
    twin_config,
    twin_gateway,
    wait_for_final,
)


async def test_discovery_and_availability_follow_joins_events_and_reconnects(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path)) as (gateway, twin):
        device = world_of(gateway).nodes[0].device_id
        switch = f"homeassistant/switch/{GATEWAY_ID}_{device}/relay/config"
        availability = f"{PREFIX}/devices/{device}/availability"
        await twin.wait_for(
            lambda: bool(twin.on_topic(switch)) and bool(twin.on_topic(availability)),
            "discovery and availability of the joined node",
        )
        assert all(m.retain and m.qos == 1 for m in twin.on_topic(switch))
        config = json.loads(twin.on_topic(switch)[-1].payload)
        assert config["command_topic"] == f"{PREFIX}/devices/{device}/ha/relay/set"
        assert [m.text() for m in twin.on_topic(availability)] == ["online"]

        assert gateway.bridge is not None
        await gateway.bridge.event(device, EventKind.OFFLINE)
        await twin.wait_for(
            lambda: twin.on_topic(availability)[-1].text() == "offline", "availability offline"
        )
        # While the broker is away nothing can be published; on return the retained topics
        # are brought up to date: health (the open join warning), discovery, availability.
        twin.disconnect()
        await gateway.bridge.event(device, EventKind.ONLINE)
        published = len(twin.raw)
        await twin.reconnect()
        again = {m.topic: m for m in twin.raw[published:]}
        assert again[availability].text() == "online"
        assert switch in again
        health = json.loads(again[f"{PREFIX}/status/health"].payload)
        assert health["state"] == "ok" and health["warnings"]


async def test_home_assistant_online_gets_the_configs_again(tmp_path: Path) -> None:
    async with twin_gateway(twin_config(tmp_path)) as (gateway, twin):
        device = world_of(gateway).nodes[0].device_id
        switch = f"homeassistant/switch/{GATEWAY_ID}_{device}/relay/config"
        await twin.wait_for(lambda: bool(twin.on_topic(switch)), "the switch config")
        before = len(twin.on_topic(switch))
        assert ("homeassistant/status", HA_STATUS_QOS, False) in twin.subscriptions
        assert await twin.deliver("homeassistant/status", "online") == 1
        assert len(twin.on_topic(switch)) == before + 1


async def test_entity_command_topics_switch_the_node_and_reject_what_does_not_fit(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path)) as (gateway, twin):
        node = await reporting_node(gateway, twin)
        device = node.device_id
        command_filter = f"{PREFIX}/devices/+/ha/+/set"
        assert (command_filter, HA_COMMAND_QOS, True) in twin.subscriptions
        topic = f"{PREFIX}/devices/{device}/ha/relay/set"
        # Retained: never executed (it would run again at every reconnect).
        assert await twin.deliver(topic, "ON", retain=True) == 0
        assert await twin.deliver(topic, "ON") == 1
        await twin.wait_for(lambda: bool(twin.results), "the switch command accepted")
        (switched,) = {r.result.id for r in twin.results}
        assert await wait_for_final(twin, switched) == "executed"
        assert node.relay is True
        await twin.deliver(topic, "SIDEWAYS")
        await twin.deliver(f"{PREFIX}/devices/{device}/ha/volume/set", "11")
    rejected = [r.result for r in twin.results if r.result.status == "rejected"]
    assert [r.detail.split(":")[0] for r in rejected if r.detail] == [
        "invalid_payload",
        "unknown_entity",
    ]


async def test_without_discovery_availability_and_health_are_still_published(
    tmp_path: Path,
) -> None:
    config = twin_config(tmp_path, mqtt={"discovery": False})
    async with twin_gateway(config) as (gateway, twin):
        await twin.wait_for(lambda: bool(joined_devices(world_of(gateway))), "a join")
        device = joined_devices(world_of(gateway))[0]
        availability = f"{PREFIX}/devices/{device}/availability"
        await twin.wait_for(lambda: bool(twin.on_topic(availability)), "availability")
        assert twin.on_topic(f"{PREFIX}/status/health")
        assert not [m for m in twin.raw if m.topic.startswith("homeassistant/")]
        assert twin.subscriptions == []


async def test_an_upstream_without_extras_gets_no_retained_status(tmp_path: Path) -> None:
    xmpp = MemoryUpstream("xmpp", with_extras=False)
    async with twin_gateway(twin_config(tmp_path), xmpp) as (gateway, twin):
        await reporting_node(gateway, twin)
        assert gateway.bridge is not None and gateway.bridge.home_assistant is None
        assert twin.events  # the join still goes out as an event
    assert twin.raw == [] and twin.subscriptions == []
