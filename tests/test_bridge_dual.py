"""Both upstreams at once: a real mosquitto and a real prosody fed from one outbox.

Every report goes to both; each upstream acknowledges its own copy, so one server being down
holds back only its own deliveries, and its backlog follows when it returns. A command's
results go back over the protocol it came in on, and nowhere else.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.daemon import Gateway
from gateway.store.outbox import Outbox
from tests.bridge_fixtures import (
    PREFIX,
    MqttWatcher,
    assert_no_gaps,
    fast_settings,
    max_counter,
    running_gateway,
    world_of,
)
from tests.bridge_xmpp_fixtures import XmppWatcher, answer, wait_until, xmpp_of, xmpp_settings
from tests.servers import Mosquitto, Prosody


def dual_config(
    tmp_path: Path, mosquitto: Mosquitto, prosody: Prosody, *, nodes: int
) -> tuple[Config, dict[str, str]]:
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=nodes)
    settings["xmpp"], jids = xmpp_settings(prosody, tmp_path)
    return parse_config(settings), jids


def outbox_of(gateway: Gateway) -> Outbox:
    assert gateway.bridge is not None and gateway.bridge.outbox is not None
    return gateway.bridge.outbox


async def wait_for_backlog(outbox: Outbox, *, empty: str, held: str) -> int:
    """Until ``empty`` has nothing pending while ``held`` still has entries; their count."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        held_back = await outbox.pending_count(held)
        if held_back > 0 and await outbox.pending_count(empty) == 0:
            return held_back
        assert asyncio.get_running_loop().time() < deadline, f"{empty} never caught up"
        await asyncio.sleep(0.02)


def ids_up_to(reports: list[dict[str, Any]], counter: int) -> set[tuple[str, int]]:
    return {(r["id"], r["data"]["counter"]) for r in reports if r["data"]["counter"] <= counter}


async def test_every_report_reaches_both_and_one_server_down_never_holds_the_other_back(
    tmp_path: Path, mosquitto: Mosquitto, prosody: Prosody
) -> None:
    config, jids = dual_config(tmp_path, mosquitto, prosody, nodes=2)
    mqtt = MqttWatcher(mosquitto, (f"{PREFIX}/devices/+/report",))
    mqtt.connect()
    alice = await XmppWatcher(prosody, jids["alice"], "pw-alice").connect()
    async with running_gateway(config) as gateway:
        devices = [node.device_id for node in world_of(gateway).nodes]
        outbox = outbox_of(gateway)
        await mqtt.wait_for_counters(devices, 2)
        await alice.wait_for_counters(devices, 2)

        # The broker dies: XMPP carries on, MQTT's copies wait in the outbox.
        mosquitto.kill()
        mqtt.drop()
        mark = max(alice.counter(d) for d in devices)
        await alice.wait_for_counters(devices, mark + 3)
        assert await wait_for_backlog(outbox, empty="xmpp", held="mqtt") >= 4
        assert gateway.bridge is not None and not gateway.bridge.upstreams["mqtt"].connected
        # Blocking on purpose: the gateway cannot reconnect before the watcher subscribed.
        mosquitto.start()
        mqtt.connect()
        await mqtt.wait_for_counters(devices, mark + 4)

        # Now prosody dies: MQTT carries on, XMPP's copies wait in the outbox.
        prosody.kill()
        await alice.drop()
        mark = max(max_counter(r) for r in mqtt.reports().values())
        await mqtt.wait_for_counters(devices, mark + 3)
        assert await wait_for_backlog(outbox, empty="mqtt", held="xmpp") >= 4
        assert not xmpp_of(gateway).connected
        prosody.start()
        await alice.connect()
        await alice.wait_for_counters(devices, mark + 4)
        final = min(alice.counter(d) for d in devices)
        await mqtt.wait_for_counters(devices, final)
    mqtt.drop()
    await alice.drop()

    by_mqtt, by_xmpp = mqtt.reports(), alice.by_device()
    assert_no_gaps(by_mqtt, devices, ids_once=False)
    assert_no_gaps(by_xmpp, devices, ids_once=False)
    for device in devices:  # the same reports, id for id, over both
        shared = min(max_counter(by_mqtt[device]), max_counter(by_xmpp[device]))
        assert shared >= final
        assert ids_up_to(by_mqtt[device], shared) == ids_up_to(by_xmpp[device], shared)


async def test_command_results_go_back_over_the_protocol_they_came_from(
    tmp_path: Path, mosquitto: Mosquitto, prosody: Prosody
) -> None:
    config, jids = dual_config(tmp_path, mosquitto, prosody, nodes=1)
    mqtt = MqttWatcher(mosquitto)
    mqtt.connect()
    alice = await XmppWatcher(prosody, jids["alice"], "pw-alice").connect()
    async with running_gateway(config) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await mqtt.wait_for_counters([device], 1)
        await wait_until(lambda: xmpp_of(gateway).connected, "the XMPP session")
        over_xmpp = asyncio.create_task(
            alice.command(xmpp_of(gateway).jid, device=device, id="x-1", action="ping", ttl_s="20")
        )
        mqtt.command(
            device,
            {"id": "m-1", "action": "relay", "params": {"on": True}, "ttl_s": 20},
            response_topic=f"{PREFIX}/responses/app",
            correlation=b"m-1",
        )
        assert answer(await over_xmpp) == ("result", "executed", None)
        assert await mqtt.wait_for_final(device, "m-1") == "executed"
        await asyncio.sleep(0.5)  # anything sent the wrong way would have arrived by now
    mqtt.drop()
    await alice.drop()

    assert sorted(c.action for c in node.executed) == ["ping", "relay"]
    results = [m.json() for m in mqtt.snapshot() if m.topic.endswith("/command/result")]
    assert [r["id"] for r in results] == ["m-1"] * 3
    assert [r["status"] for r in results] == ["accepted", "sent", "executed"]
    assert [m.json()["id"] for m in mqtt.on(f"{PREFIX}/responses/app")] == ["m-1"] * 3
    assert {r["id"] for r in alice.results} == {"x-1"}
    assert alice.statuses("x-1") == ["accepted", "sent"]
