"""The command path under hostile input, against a real mosquitto and prosody.

Each test sends what a hostile or careless client would and checks that the gateway answers
once, stores nothing it cannot keep, lends its publish rights to nobody and never lets a
command live longer than its sender allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import gateway.bridge.results
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.timefmt import rfc3339
from tests.bridge_fixtures import (
    PREFIX,
    MqttWatcher,
    Process,
    fast_settings,
    joined_devices,
    running_gateway,
    toml_text,
    world_of,
)
from tests.servers import Mosquitto, Prosody
from tests.xmpp_fixtures import Peer, refused

PAST = rfc3339(time.time() - 60)
GATEWAY_PASSWORD = "pw-gateway"
ACL = f"""
user gateway
topic readwrite {PREFIX}/#
topic write apps/allowed/#

user app
topic readwrite #
"""


def result_messages(watcher: MqttWatcher, topic: str) -> list[dict[str, Any]]:
    return [m.json() for m in watcher.on(topic)]


async def first_device(gateway: Gateway, watcher: MqttWatcher) -> str:
    world = world_of(gateway)
    await watcher.wait_until(lambda: bool(joined_devices(world)), "a node to join")
    return joined_devices(world)[0]


@contextlib.asynccontextmanager
async def acl_broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    broker = Mosquitto(
        tmp_path / "broker", acl=ACL, users={"gateway": GATEWAY_PASSWORD, "app": "pw-app"}
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def acl_settings(tmp_path: Path, broker: Mosquitto) -> dict[str, Any]:
    secret = tmp_path / "mqtt-password"
    secret.write_text(GATEWAY_PASSWORD + "\n")
    secret.chmod(0o600)
    settings = fast_settings(tmp_path / "data", broker.port, nodes=1)
    settings["mqtt"].update(
        username="gateway",
        password={"file": str(secret)},
        response_topic_prefixes=["apps/"],
        discovery=False,
    )
    return settings


# -- 1. a refused Response Topic ---------------------------------------------------------------


async def test_a_response_topic_the_broker_refuses_costs_one_result_per_command_not_a_storm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.bridge.results, "RESULT_RETRY_S", 0.2)
    count = 20
    async with acl_broker(tmp_path) as broker:
        watcher = MqttWatcher(broker, login=("app", "pw-app"))
        watcher.connect()
        config = parse_config(acl_settings(tmp_path, broker))
        async with running_gateway(config) as gw:
            device = await first_device(gw, watcher)
            topic = f"{PREFIX}/devices/{device}/command/result"
            mqtt = gw.bridge.upstreams["mqtt"]  # type: ignore[union-attr]
            for n in range(count):
                # mosquitto 2.0 drops a client whose publish it refused; commands sent before
                # the gateway is back are not queued for it (QoS 0): send one at a time.
                await watcher.wait_until(lambda: mqtt.connected, "the gateway connected")
                watcher.command(
                    device,
                    {"id": f"r{n}", "action": "relay", "expires_at": PAST},
                    response_topic="apps/denied/results",
                    correlation=f"c{n}".encode(),
                )
                await watcher.wait_until(
                    lambda n=n: mqtt.stats["response_publishes_failed"] == n + 1,
                    f"the response topic of r{n} refused",
                )
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)  # ten retry rounds: nothing more may come
            assert mqtt.stats["response_publishes_failed"] == count  # type: ignore[attr-defined]
        # ... nor after a restart.
        async with running_gateway(config):
            await asyncio.sleep(1.5)
        watcher.drop()
    results = result_messages(watcher, topic)
    assert sorted(r["id"] for r in results) == sorted(f"r{n}" for n in range(count))
    assert {r["status"] for r in results} == {"expired"}
    assert watcher.on("apps/denied/results") == []


async def test_a_result_the_broker_refuses_everywhere_is_retried_with_backoff_then_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.bridge.results, "RESULT_RETRY_S", 0.05)
    monkeypatch.setattr(gateway.bridge.results, "RESULT_RETRY_MAX_S", 0.4)
    # The ACL lets the gateway publish everything but command results.
    writable = (
        "status",
        "status/#",
        "devices/+/report",
        "devices/+/event",
        "devices/+/availability",
    )
    acl = ACL.replace(
        f"topic readwrite {PREFIX}/#",
        f"topic read {PREFIX}/#\n" + "\n".join(f"topic write {PREFIX}/{t}" for t in writable),
    )
    broker = Mosquitto(
        tmp_path / "broker", acl=acl, users={"gateway": GATEWAY_PASSWORD, "app": "pw-app"}
    )
    broker.start()
    try:
        watcher = MqttWatcher(broker, login=("app", "pw-app"))
        watcher.connect()
        settings = acl_settings(tmp_path, broker)
        config = parse_config(settings)
        async with running_gateway(config) as gw:
            world = world_of(gw)
            await watcher.wait_until(lambda: bool(joined_devices(world)), "a node to join")
            device = joined_devices(world)[0]
            watcher.command(device, {"id": "nowhere", "action": "relay", "expires_at": PAST})
            bridge = gw.bridge
            assert bridge is not None and bridge.commands is not None
            await watcher.wait_until(
                lambda: bridge.counters["results_given_up"] == 1, "the result given up", 20
            )
            state = await bridge.commands.get("mqtt", device, "nowhere")
            assert state is not None
            assert state.result_attempts == gateway.bridge.results.MAX_RESULT_ATTEMPTS
            await asyncio.sleep(1.0)
            assert bridge.counters["results_given_up"] == 1
        watcher.drop()
    finally:
        broker.kill()


# -- 2. Response Topics outside the allowed namespaces -------------------------------------------


async def test_response_topics_outside_the_allowed_namespaces_are_never_published_to(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=1)
    settings["mqtt"].update(response_topic_prefixes=["apps/"], discovery=False)
    watcher = MqttWatcher(mosquitto, ("#", "$SYS/#"))
    watcher.connect()
    async with running_gateway(parse_config(settings)) as gw:
        device = await first_device(gw, watcher)
        refused_topics = [
            f"{PREFIX}/status",
            f"{PREFIX}/status/health",
            f"{PREFIX}/devices/{device}/command",
            f"duogate/other-gateway/devices/{device}/command",
            "duogate/other-gateway/responses/x",
            "$SYS/evil",
            "elsewhere/results",
            "apps/x/status",
        ]
        allowed_topics = [f"{PREFIX}/responses/app-1/r", "apps/ok/r"]
        for n, topic in enumerate(refused_topics + allowed_topics):
            watcher.command(
                device,
                {"id": f"t{n}", "action": "relay", "expires_at": PAST},
                response_topic=topic,
                correlation=f"k{n}".encode(),
            )
        total = len(refused_topics) + len(allowed_topics)
        canonical = f"{PREFIX}/devices/{device}/command/result"
        await watcher.wait_until(
            lambda: (
                len(watcher.on(canonical)) >= total and all(watcher.on(t) for t in allowed_topics)
            ),
            "every result",
        )
        await asyncio.sleep(0.5)
        mqtt = gw.bridge.upstreams["mqtt"]  # type: ignore[union-attr]
        assert mqtt.stats["response_topics_refused"] == len(refused_topics)  # type: ignore[attr-defined]
    watcher.drop()
    for topic in refused_topics:
        results = [m for m in watcher.on(topic) if b'"status"' in m.payload]
        assert results == [], f"a result was published on {topic}"
    for n, topic in enumerate(allowed_topics, start=len(refused_topics)):
        (message,) = watcher.on(topic)
        assert message.json()["id"] == f"t{n}" and message.correlation == f"k{n}".encode()


# -- 3. the duplicate final result ---------------------------------------------------------------


async def test_a_final_result_whose_first_publication_is_slow_is_published_once(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker stalls (SIGSTOP) while a command ends: its result waits for the PUBACK and
    the retry loop comes round several times meanwhile; it must not publish it again."""
    monkeypatch.setattr(gateway.bridge.results, "RESULT_RETRY_S", 0.1)
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    config = parse_config(fast_settings(tmp_path / "data", mosquitto.port, nodes=1))
    async with running_gateway(config) as gw:
        world = world_of(gw)
        device = await first_device(gw, watcher)
        world.nodes[0].stop()  # nobody answers: the command ends expired in the queue
        watcher.command(device, {"id": "slow", "action": "relay", "ttl_s": 1.0})
        await watcher.wait_until(lambda: "accepted" in watcher.statuses(device, "slow"), "accepted")
        assert mosquitto.proc is not None
        os.killpg(mosquitto.proc.pid, signal.SIGSTOP)
        try:
            bridge = gw.bridge
            assert bridge is not None and bridge.commands is not None

            async def final() -> bool:
                state = await bridge.commands.get("mqtt", device, "slow")  # type: ignore[union-attr]
                return state is not None and state.status.final

            deadline = time.monotonic() + 5
            while not await final():
                assert time.monotonic() < deadline, "the command did not end"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # fifteen retry rounds while the PUBACK is outstanding
        finally:
            os.killpg(mosquitto.proc.pid, signal.SIGCONT)
        await watcher.wait_for_final(device, "slow")
        await asyncio.sleep(1.0)
    watcher.drop()
    assert watcher.statuses(device, "slow") == ["accepted", "expired"]


# -- 4. text that is not Unicode, numbers that are not JSON ---------------------------------------


async def test_lone_surrogates_and_nan_are_rejected_at_intake_without_a_traceback(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    config = parse_config(fast_settings(tmp_path / "data", mosquitto.port, nodes=1))
    async with running_gateway(config) as gw:
        device = await first_device(gw, watcher)
        topic = f"{PREFIX}/devices/{device}/command/result"
        bodies = [
            (b'{"id":"\\ud800x","action":"relay","params":{}}', "", "invalid_text"),
            (b'{"id":"s2","action":"rel\\udc00","params":{}}', "s2", "invalid_text"),
            (b'{"id":"s3","action":"relay","params":{"n":"\\ud83d"}}', "s3", "invalid_text"),
            (b'{"id":"s4","action":"relay","params":{"\\udfff":1}}', "s4", "invalid_text"),
            (b'{"id":"s5","action":"relay","params":{"level":NaN}}', "s5", "invalid_number"),
            (b'{"id":"s6","action":"relay","params":{"x":[Infinity]}}', "s6", "invalid_number"),
        ]
        for n, (body, _id, _detail) in enumerate(bodies):
            watcher.publish(f"{PREFIX}/devices/{device}/command", body, correlation=bytes([n]))
        await watcher.wait_until(lambda: len(watcher.on(topic)) >= len(bodies), "every answer")
        bridge = gw.bridge
        assert bridge is not None and bridge.commands is not None
        assert await bridge.commands.open_commands() == []
    watcher.drop()
    answers = {m.correlation: m.json() for m in watcher.on(topic)}
    for n, (_body, command_id, detail) in enumerate(bodies):
        answer = answers[bytes([n])]
        assert (answer["id"], answer["status"], answer["detail"]) == (
            command_id,
            "rejected",
            detail,
        )
    assert "Traceback" not in caplog.text and "UnicodeEncodeError" not in caplog.text


# -- 5. size ----------------------------------------------------------------------------------


async def test_oversized_commands_are_answered_too_large_and_never_stored(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    config = parse_config(fast_settings(tmp_path / "data", mosquitto.port, nodes=1))
    async with running_gateway(config) as gw:
        device = await first_device(gw, watcher)
        bridge = gw.bridge
        assert bridge is not None and bridge.commands is not None
        limit = config.commands.max_message_bytes
        big = {"id": "big", "action": "relay", "params": {"pad": "x" * limit}}
        watcher.command(device, big, correlation=b"big")
        # Far beyond the limit: the broker does not even deliver it (MQTT 5 Maximum Packet Size).
        huge = {"id": "huge", "action": "relay", "params": {"pad": "x" * 4_000_000}}
        watcher.command(device, huge, correlation=b"huge")
        watcher.command(device, {"id": "fine", "action": "ping", "expires_at": PAST})
        topic = f"{PREFIX}/devices/{device}/command/result"
        await watcher.wait_until(
            lambda: {m.json()["id"] for m in watcher.on(topic)} >= {"", "fine"}, "the answers"
        )
        await asyncio.sleep(0.5)
        assert await bridge.commands.get("mqtt", device, "big") is None
        mqtt = bridge.upstreams["mqtt"]
        assert mqtt.stats["oversized_commands"] == 1  # type: ignore[attr-defined]
        assert mqtt.stats["commands_received"] == 2  # type: ignore[attr-defined]
    watcher.drop()
    (too_large,) = [m for m in watcher.on(topic) if m.correlation == b"big"]
    assert too_large.json() | {"ts": None} == {
        "id": "",
        "status": "rejected",
        "detail": "too_large",
        "ts": None,
    }
    assert [m for m in watcher.on(topic) if m.correlation == b"huge"] == []


# -- XMPP: the same checks at the other door ----------------------------------------------------


async def test_xmpp_commands_with_bad_text_nan_or_too_large_are_refused_at_intake(
    tmp_path: Path, prosody: Prosody
) -> None:
    gateway_jid = prosody.create_user("gw", "pw-gw")
    alice = prosody.create_user("alice", "pw-alice")
    secret = tmp_path / "xmpp-password"
    secret.write_text("pw-gw\n")
    secret.chmod(0o600)
    settings = fast_settings(tmp_path / "data", 1, nodes=1)
    settings["mqtt"] = {"enabled": False}
    settings["xmpp"] = {
        "enabled": True,
        "jid": f"{gateway_jid}/duogate",
        "password": {"file": str(secret)},
        "host": prosody.host,
        "port": prosody.port,
        "ca_file": str(prosody.ca_file),
        "allowed_jids": [alice],
    }
    async with running_gateway(parse_config(settings)) as gw:
        world = world_of(gw)
        deadline = time.monotonic() + 30
        while not joined_devices(world) or not gw.bridge.upstreams["xmpp"].connected:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no join or no XMPP session"
            await asyncio.sleep(0.05)
        device = joined_devices(world)[0]
        peer = await Peer(prosody, alice, "pw-alice").connect()
        try:
            to = gw.bridge.upstreams["xmpp"].jid  # type: ignore[union-attr]
            cases = [
                ('{"name": "\\ud800"}', "invalid_text", "bad-request"),
                ('{"level": NaN}', "invalid_number", "bad-request"),
                (json.dumps({"pad": "x" * 5000}), "too_large", "not-acceptable"),
            ]
            for n, (params, detail, condition) in enumerate(cases):
                answer = await refused(
                    peer.command(to, device=device, id=f"x{n}", action="relay", params=params)
                )
                assert answer["error"]["condition"] == condition
                assert answer["error"]["text"] == detail
        finally:
            await peer.close()
        assert await gw.bridge.commands.open_commands() == []  # type: ignore[union-attr]


# -- 10. a command that waited while the gateway stood still -------------------------------------


async def test_a_command_buffered_while_the_gateway_was_stopped_expires_by_its_message_expiry(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """SIGSTOP the gateway, send a command with an MQTT 5 Message Expiry of 2 s, resume after
    4 s: the broker handed it over at once, so it waited in the gateway's socket buffer; it
    must end ``expired``, never run."""
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=1)
    settings["mqtt"]["keepalive_s"] = 30
    config_path = tmp_path / "duogate.toml"
    config_path.write_text(toml_text(settings))
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    process = Process("gateway", ["run", "--config", str(config_path)], tmp_path)
    process.start()
    try:
        await watcher.wait_until(
            lambda: bool(watcher.reports()), f"a report\n{process.output()}", timeout=40
        )
        device = next(iter(watcher.reports()))
        process.signal(signal.SIGSTOP, timeout=0)
        await asyncio.sleep(0.5)
        watcher.command(device, {"id": "stale", "action": "relay", "ttl_s": 30}, expiry_s=2)
        await asyncio.sleep(4.0)
        process.signal(signal.SIGCONT, timeout=0)
        assert await watcher.wait_for_final(device, "stale") == "expired"
        (final,) = [r for r in watcher.results(device, "stale") if r["status"] == "expired"]
        assert final["detail"] == "expired_on_arrival"
        assert "sent" not in watcher.statuses(device, "stale")
        # A command sent now, with the gateway running, is not penalised for the old stall.
        await asyncio.sleep(3.0)
        watcher.command(device, {"id": "fresh", "action": "ping"}, expiry_s=20)
        assert await watcher.wait_for_final(device, "fresh") == "executed"
    finally:
        process.signal(signal.SIGTERM)
        watcher.drop()


# -- 9. exposure said out loud ----------------------------------------------------------------


async def test_open_join_with_the_public_key_is_announced_in_the_health_message(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=1)
    settings["metrics"] = {"enabled": True, "host": "0.0.0.0", "port": 0}
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(parse_config(settings)):
        topic = f"{PREFIX}/status/health"
        await watcher.wait_until(lambda: bool(watcher.on(topic)), "the health message")
    watcher.drop()
    late = MqttWatcher(mosquitto, (topic,))  # a client that comes later still gets it
    late.connect()
    await late.wait_until(lambda: bool(late.on(topic)), "the retained health message")
    late.drop()
    (health,) = late.on(topic)
    assert health.retain
    body = health.json()
    assert body["state"] == "ok" and body["problems"] == {}
    assert [line.split(":")[0] for line in body["warnings"]] == ["join.open_join", "metrics.host"]
