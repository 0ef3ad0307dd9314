"""The baseline: plain paho-mqtt publishing at QoS 1 as fast as it can.

One client on paho's own network loop in this thread (no asyncio), the same MQTT version
and in-flight window as the gateway's upstream, the same topic length and payload size.
Every message is handed to paho at once (paho queues what exceeds the window and sends it
as PUBACKs free slots); the time runs from the first ``publish`` to the last PUBACK.
"""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.harness import BenchError, cpu_seconds, tcp_counters


def raw_paho_rate(
    port: int,
    count: int,
    topic: str,
    payload_size: int,
    *,
    inflight: int = 64,
    mqtt5: bool = True,
    timeout_s: float = 120,
) -> dict[str, float]:
    """Messages per second from the first publish to the last PUBACK, CPU time of this
    process and bytes on the wire per message."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-raw-{time.monotonic_ns()}",
        protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311,
    )
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    acked = 0
    last_ack = 0.0

    def on_publish(*_args: Any) -> None:
        nonlocal acked, last_ack
        acked += 1
        last_ack = time.monotonic()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=60)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        client.loop(timeout=0.1)
        if time.monotonic() > deadline:
            raise BenchError("raw paho client did not connect")
    payload = b"x" * payload_size
    try:
        sent0, received0 = tcp_counters(client.socket())
        cpu0 = cpu_seconds()
        start = time.monotonic()
        for _ in range(count):
            info = client.publish(topic, payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise BenchError(f"raw paho publish failed: {paho.error_string(info.rc)}")
        deadline = start + timeout_s
        while acked < count:
            client.loop(timeout=0.05)
            if time.monotonic() > deadline:
                raise BenchError(f"raw paho: {acked} of {count} PUBACKs in time")
        cpu = cpu_seconds() - cpu0
        sent1, received1 = tcp_counters(client.socket())
        return {
            "messages": count,
            "rate": count / (last_ack - start),
            "cpu_us_per_message": cpu / count * 1e6,
            "bytes_per_message": (sent1 - sent0 + received1 - received0) / count,
        }
    finally:
        client.disconnect()
        client.loop(timeout=0.1)
