"""The harness's NATS cluster is real: MQTT 3.1.1 clients on different nodes see each other's
messages, retained messages and wills, through the death and return of a node, and duogate's
MQTT upstream works on one node with applications on the others."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.model import IncomingCommand
from gateway.upstreams.mqtt import MqttUpstream
from tests.mqtt_upstream_fixtures import DEVICE, mqtt_config, report
from tests.nats_fixtures import (
    WAIT_S,
    nats_cluster,
    no_retained_on,
    publish_until_accepted,
    retained_on,
)
from tests.servers import MqttTestClient, NatsCluster, ServerError

__all__ = ["nats_cluster"]  # the fixture, imported for pytest to find

QUIET_S = 1.0  # how long "nothing arrives" is watched for


def expect_in_order(client: MqttTestClient, payloads: Iterable[bytes], topic: str) -> None:
    """``payloads`` arrive on ``topic`` in this order; a repeat of one already seen (a publish
    retried after a failure may have been stored the first time too) is passed over."""
    seen: set[bytes] = set()
    for payload in payloads:
        while True:
            message = client.next(WAIT_S, topic)
            if message.payload == payload:
                break
            assert message.payload in seen, f"{message.payload!r} came before {payload!r}"
        assert message.qos == 1
        seen.add(payload)


def test_qos1_messages_published_on_node_0_reach_a_subscriber_on_node_2_in_order(
    nats_cluster: NatsCluster,
) -> None:
    topic = "fleet1/devices/lora-0016c0f100000001/report"
    with nats_cluster.client(2) as subscriber, nats_cluster.client(0) as publisher:
        assert subscriber.subscribe("fleet1/devices/+/report") == [1]
        payloads = [json.dumps({"seq": n}).encode() for n in range(30)]
        for payload in payloads:
            publisher.publish(topic, payload)
        received = [subscriber.next(WAIT_S) for _ in payloads]
    assert [message.payload for message in received] == payloads
    assert {(message.topic, message.qos, message.retain) for message in received} == {
        (topic, 1, False)
    }


def test_a_retained_message_from_node_1_reaches_new_subscribers_on_node_2_until_replaced(
    nats_cluster: NatsCluster,
) -> None:
    topic = "fleet1/gateways/gw-a/status"
    with nats_cluster.client(1) as publisher:
        publisher.publish(topic, b"online", retain=True)
        retained_on(nats_cluster, 2, topic, b"online")
        publisher.publish(topic, b"offline", retain=True)
        retained_on(nats_cluster, 2, topic, b"offline")
        with nats_cluster.client(2) as fresh:
            fresh.subscribe("fleet1/gateways/+/status")
            message = fresh.next(WAIT_S)
            assert (message.topic, message.payload, message.retain) == (topic, b"offline", True)
            with pytest.raises(ServerError):
                fresh.next(QUIET_S)  # the replaced message is gone, not kept beside
        publisher.publish(topic, b"", retain=True)
        no_retained_on(nats_cluster, 2, topic)


def test_the_will_of_a_client_that_dies_reaches_a_subscriber_on_another_node(
    nats_cluster: NatsCluster,
) -> None:
    topic = "fleet1/gateways/gw-b/status"
    will = (topic, b"offline", 1, True)
    with nats_cluster.client(2) as watcher:
        watcher.subscribe(topic)
        leaving = nats_cluster.client(0, client_id="gw-b", will=will)
        leaving.close()  # DISCONNECT: no will
        dying = nats_cluster.client(0, client_id="gw-b", will=will)
        dying.publish(topic, b"online", retain=True)
        assert watcher.next(WAIT_S, topic).payload == b"online"
        dying.drop()  # the socket closes without DISCONNECT, as when the process is killed
        assert watcher.next(WAIT_S, topic).payload == b"offline"
        with pytest.raises(ServerError):
            watcher.next(QUIET_S, topic)  # one will, from the death only
    retained_on(nats_cluster, 1, topic, b"offline")
    with nats_cluster.client(1) as cleaner:
        cleaner.publish(topic, b"", retain=True)


def test_mqtt_5_and_spaces_in_topics_are_refused_qos_2_and_dots_work(
    nats_cluster: NatsCluster,
) -> None:
    with pytest.raises(ServerError, match="Unsupported protocol version"):
        nats_cluster.client(0, protocol=paho.MQTTv5)
    with nats_cluster.client(2) as subscriber:
        assert subscriber.subscribe("fleet1/qos2/+", qos=2) == [2]
        assert subscriber.subscribe("fleet1/with.dot/#", "fleet1/with space/#") == [1, 128]
        with nats_cluster.client(0) as publisher:
            publisher.publish("fleet1/qos2/x", b"two", qos=2)
            publisher.publish("fleet1/with.dot/x", b"dot")
        arrived = {subscriber.next(WAIT_S).payload, subscriber.next(WAIT_S).payload}
        assert arrived == {b"two", b"dot"}  # in either order: QoS 2 takes a longer exchange
        with nats_cluster.client(0) as publisher:
            publisher.client.publish("fleet1/a b", b"refused", 1)
            assert publisher.disconnected.wait(WAIT_S), "a topic with a space was taken"
        with pytest.raises(ServerError):
            subscriber.next(QUIET_S)


def test_a_killed_node_leaves_the_others_exchanging_and_works_again_once_restarted(
    nats_cluster: NatsCluster,
) -> None:
    to_node_2 = "fleet1/devices/lora-0016c0f100000002/report"
    to_node_0 = "fleet1/devices/lora-0016c0f100000003/report"
    will_topic = "fleet1/gateways/gw-c/status"
    on_node_2 = nats_cluster.client(2)
    on_node_0 = nats_cluster.client(0)
    on_node_2.subscribe(to_node_2)
    on_node_0.subscribe(to_node_0, will_topic)
    stranded = nats_cluster.client(1, client_id="gw-c", will=(will_topic, b"offline", 1, False))
    away = nats_cluster.client(1, client_id="app-away", clean_session=False)
    away.subscribe(to_node_2)
    nats_cluster.kill(1)
    try:
        assert stranded.disconnected.wait(WAIT_S) and away.disconnected.wait(WAIT_S)
        # The first QoS 1 publish may fail while a stream led by the dead node elects a leader.
        first = b"first after the kill"
        publisher_0 = publish_until_accepted(nats_cluster, 0, to_node_2, first)
        publisher_2 = publish_until_accepted(nats_cluster, 2, to_node_0, first)
        payloads = [first] + [f"after the kill {n}".encode() for n in range(10)]
        for payload in payloads[1:]:
            publisher_0.publish(to_node_2, payload)
            publisher_2.publish(to_node_0, payload)
        expect_in_order(on_node_2, payloads, to_node_2)
        expect_in_order(on_node_0, payloads, to_node_0)
        # A persistent session of the dead node resumes on another, with what it missed.
        resumed = _reconnect(nats_cluster, 2, client_id="app-away", clean_session=False)
        assert resumed.session_present
        expect_in_order(resumed, payloads, to_node_2)
        resumed.close()
    finally:
        nats_cluster.start(1)
    with nats_cluster.client(1) as back:
        assert back.subscribe(to_node_0) == [1]
        publisher_2.publish(to_node_0, b"to the restarted node")
        assert back.next(WAIT_S, to_node_0).payload == b"to the restarted node"
        back.publish(to_node_2, b"from the restarted node")
        expect_in_order(on_node_2, [b"from the restarted node"], to_node_2)
    # Only the node holding a connection publishes its will: with that node killed, never.
    with pytest.raises(ServerError):
        on_node_0.next(QUIET_S, will_topic)
    for client in (on_node_0, on_node_2, publisher_0, publisher_2):
        client.close()
    nats_cluster.client(0, client_id="app-away").close()  # a clean session ends the old one


def _reconnect(cluster: NatsCluster, node: int, **options: Any) -> MqttTestClient:
    """Connect, again until accepted: a session's record may be on a stream electing a
    leader after a node's death."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return cluster.client(node, timeout=10.0, **options)
        except (ServerError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def test_duogate_upstream_on_node_0_reports_to_node_2_and_takes_commands_from_node_1(
    nats_cluster: NatsCluster,
) -> None:
    gateway = "gw-nats"
    prefix = f"duogate/{gateway}"
    config = mqtt_config(gateway, nats_cluster.host, nats_cluster.mqtt_port(0), protocol="3.1.1")
    commands: asyncio.Queue[IncomingCommand] = asyncio.Queue()
    observer = await asyncio.to_thread(nats_cluster.client, 2)
    commander = await asyncio.to_thread(nats_cluster.client, 1)
    await asyncio.to_thread(observer.subscribe, f"{prefix}/devices/+/report")
    upstream = MqttUpstream(config)
    await upstream.start(commands.put)
    try:
        assert await upstream.wait_connected(WAIT_S), "upstream did not connect to node 0"
        await asyncio.gather(*(upstream.publish_report(report(n)) for n in range(10)))
        for n in range(10):
            message = await asyncio.to_thread(observer.next, WAIT_S)
            assert message.topic == f"{prefix}/devices/{DEVICE}/report"
            assert json.loads(message.payload) == report(n).to_wire()
        await asyncio.to_thread(retained_on, nats_cluster, 2, f"{prefix}/status", b"online")
        envelope = {"id": "c-1", "action": "set", "params": {"interval_s": 60}}
        command_topic = f"{prefix}/devices/{DEVICE}/command"
        await asyncio.to_thread(commander.publish, command_topic, json.dumps(envelope))
        incoming = await asyncio.wait_for(commands.get(), WAIT_S)
        assert (incoming.origin, incoming.device, incoming.body) == ("mqtt", DEVICE, envelope)
    finally:
        await upstream.stop()
        observer.close()
        commander.close()
    await asyncio.to_thread(retained_on, nats_cluster, 1, f"{prefix}/status", b"offline")
