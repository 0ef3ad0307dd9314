"""The command path on the in-memory upstream: validation and its reasons, expiry before the
receive window, exactly one final result (repeats answered from the store, refused results
retried with backoff and given up), and the console's controls.

The whole gateway runs (simulated world, LoRa shell, bridge, SQLite stores); only the server
is the twin. What MQTT itself carries (Response Topics, Correlation Data, Message Expiry,
retained messages) is checked against mosquitto in test_bridge_mqtt.py and
test_hostile_commands.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.bridge.results
from gateway.model import CommandStatus
from gateway.timefmt import rfc3339
from tests.twin_fixtures import (
    counters_of,
    reporting_node,
    twin_config,
    twin_gateway,
    wait_for_counter,
    wait_for_final,
)

MALFORMED: list[tuple[str, bytes | str | dict[str, Any], str]] = [
    ("", "switch it on", "invalid_json"),
    ("", b"\xff\xfe{", "invalid_json"),
    ("", "[1, 2]", "not_an_object"),
    ("", {"action": "relay", "params": {"on": True}}, "missing_id"),
    ("", {"id": 7, "action": "relay"}, "invalid_id"),
    ("m-action", {"id": "m-action", "params": {"on": True}}, "missing_action"),
    ("m-params", {"id": "m-params", "action": "relay", "params": [True]}, "invalid_params"),
    (
        "m-ttl",
        {"id": "m-ttl", "action": "relay", "params": {"on": True}, "ttl_s": -5},
        "invalid_ttl_s",
    ),
    ("m-ttl-text", {"id": "m-ttl-text", "action": "ping", "ttl_s": "5"}, "invalid_ttl_s"),
    ("m-field", {"id": "m-field", "action": "ping", "ttl": 5}, "unknown_field"),
    ("m-when", {"id": "m-when", "action": "ping", "expires_at": "soon"}, "invalid_expires_at"),
    ("m-dance", {"id": "m-dance", "action": "dance"}, "unknown_action"),
]


def past() -> str:
    return rfc3339(time.time() - 60)


async def test_malformed_commands_are_rejected_with_a_reason_and_disturb_nothing(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path)) as (gateway, twin):
        node = await reporting_node(gateway, twin)
        device = node.device_id
        for index, (_, body, _) in enumerate(MALFORMED):
            await twin.send_command(device, body, reply_to={"tag": f"bad-{index}"})
        strangers = ["lora-00000000000000ff", "not-a-device", "modbus-x-1"]
        for index, stranger in enumerate(strangers):
            await twin.send_command(
                stranger, {"id": f"s-{index}", "action": "ping"}, reply_to={"tag": f"s-{index}"}
            )
        # Rejections are answered before the command is taken: nothing to wait for.
        assert len(twin.results) == len(MALFORMED) + len(strangers)
        # The gateway carries on: reports keep coming and a good command still works.
        seen = max(counters_of(twin.reports, device))
        await twin.send_command(device, {"id": "good", "action": "ping", "ttl_s": 20})
        assert await wait_for_final(twin, "good") == "executed"
        await wait_for_counter(twin, [device], seen + 2)
        assert [c.action for c in node.executed] == ["ping"]
        assert gateway.state.counters.commands["rejected"] == len(MALFORMED) + len(strangers)
    by_tag = {sent.reply_to["tag"]: sent.result for sent in twin.results if sent.reply_to}
    for index, (command_id, _, reason) in enumerate(MALFORMED):
        result = by_tag[f"bad-{index}"]
        assert (result.device, result.id) == (device, command_id)
        assert (result.status, result.detail) == (CommandStatus.REJECTED, reason)
    for index, stranger in enumerate(strangers):
        result = by_tag[f"s-{index}"]
        assert (result.device, result.status, result.detail) == (
            stranger,
            CommandStatus.REJECTED,
            "unknown_device",
        )
    # Each rejected command got exactly one result, and none was ever "accepted".
    assert len(twin.results) == len(MALFORMED) + len(strangers) + 3  # good: accepted/sent/executed


async def test_commands_that_expire_before_the_receive_window_never_reach_the_node(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path)) as (gateway, twin):
        node = await reporting_node(gateway, twin)
        device = node.device_id
        # Less than one whole second to live: it cannot reach the node with time left.
        await twin.send_command(
            device, {"id": "short", "action": "relay", "params": {"on": True}, "ttl_s": 0.9}
        )
        # A long ttl_s, but the transport's expiry (MQTT 5 Message Expiry) says one second.
        await twin.send_command(
            device,
            {"id": "transport", "action": "relay", "params": {"on": True}, "ttl_s": 60},
            expiry_s=1.0,
        )
        for command_id in ("short", "transport"):
            assert await wait_for_final(twin, command_id) == "expired"
        seen = max(counters_of(twin.reports, device))
        await wait_for_counter(twin, [device], seen + 2)  # receive windows came and went
        assert node.relay is False
        assert node.executed == []
        assert node.stats.commands_expired == 0  # not even dropped on arrival: never sent
        assert [e for e in gateway.state.frames.recent() if e.type == "command"] == []
    for command_id in ("short", "transport"):
        results = twin.results_for(command_id)
        assert [r.status for r in results] == ["accepted", "expired"]
        assert results[-1].detail in ("expired_in_queue", "expired_before_transmission")
    assert all(not r.data["relay"] for r in twin.reports)


async def test_a_repeated_command_is_answered_from_the_store_and_executed_once(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path)) as (gateway, twin):
        node = await reporting_node(gateway, twin)
        device = node.device_id
        body = {"id": "once", "action": "ping", "ttl_s": 20}
        await twin.send_command(device, body, reply_to={"try": 1})
        await twin.send_command(device, body, reply_to={"try": 2})
        assert await wait_for_final(twin, "once") == "executed"
        await twin.send_command(device, body, reply_to={"try": 3})
        await twin.wait_for(lambda: len(twin.results_for("once")) >= 5, "the repeat answered")
        assert [c.action for c in node.executed] == ["ping"]
    answers = [(s.reply_to["try"], str(s.result.status)) for s in twin.results]
    assert answers.count((3, "executed")) == 1  # the stored final result, sent again
    assert [status for n, status in answers if n == 1] == ["accepted", "sent", "executed"]
    assert {status for n, status in answers if n == 2} <= {"accepted", "sent"}


async def test_a_refused_final_result_is_retried_with_backoff_then_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.bridge.results, "RESULT_RETRY_S", 0.02)
    monkeypatch.setattr(gateway.bridge.results, "RESULT_RETRY_MAX_S", 0.1)
    attempts = gateway.bridge.results.MAX_RESULT_ATTEMPTS
    async with twin_gateway(twin_config(tmp_path)) as (gw, twin):
        device = (await reporting_node(gw, twin)).device_id
        assert gw.bridge is not None and gw.bridge.commands is not None
        twin.refuse_results(attempts + 5)
        await twin.send_command(device, {"id": "late", "action": "ping", "expires_at": past()})
        await twin.wait_for(
            lambda: gw.bridge.counters["results_given_up"] == 1,  # type: ignore[union-attr]
            "the result given up",
        )
        state = await gw.bridge.commands.get("mqtt", device, "late")
        assert state is not None and state.status is CommandStatus.EXPIRED
        assert state.result_attempts == attempts
        twin.refuse_results(0)
        await asyncio.sleep(0.3)  # several retry rounds: a given-up result stays given up
    assert twin.results_for("late") == []


async def test_results_due_while_the_upstream_is_down_are_published_once_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.bridge.results, "RESULT_RETRY_S", 0.02)
    async with twin_gateway(twin_config(tmp_path)) as (gw, twin):
        device = (await reporting_node(gw, twin)).device_id
        assert gw.bridge is not None and gw.bridge.commands is not None
        twin.disconnect()
        await twin.send_command(device, {"id": "away", "action": "ping", "expires_at": past()})
        await asyncio.sleep(0.3)  # retry rounds while down: no attempt is spent
        state = await gw.bridge.commands.get("mqtt", device, "away")
        assert state is not None and state.result_attempts == 0
        await twin.reconnect()
        await twin.wait_for(lambda: bool(twin.results_for("away")), "the result published")
        await asyncio.sleep(0.2)
    assert twin.statuses("away") == ["expired"]


async def test_console_commands_take_the_same_path_and_return_their_final_result(
    tmp_path: Path,
) -> None:
    async with twin_gateway(twin_config(tmp_path)) as (gateway, twin):
        node = await reporting_node(gateway, twin)
        assert gateway.bridge is not None
        console = gateway.bridge.controls_for("console")
        result = await console.send_command(node.device_id, "relay", {"on": True}, 20)
        assert (result.status, node.relay) == (CommandStatus.EXECUTED, True)
        refused = await console.send_command(node.device_id, "dance", {}, None)
        assert (refused.status, refused.detail) == (CommandStatus.REJECTED, "unknown_action")
        with pytest.raises(ValueError, match="not a local origin"):
            gateway.bridge.controls_for("mqtt")
    assert twin.results == []  # local commands are answered locally only
