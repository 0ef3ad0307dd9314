"""The test harness's servers are real and survive stop/kill/start with the same port."""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as mqtt
import pytest

from tests.servers import ServerError


def _mqtt_roundtrip(host: str, port: int) -> bytes:
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, msg: got.append(msg.payload)
    client.connect(host, port)
    client.subscribe("harness/t", qos=1)
    client.loop(1.0)
    client.publish("harness/t", b"hello", qos=1)
    for _ in range(50):
        client.loop(0.1)
        if got:
            break
    client.disconnect()
    return got[0] if got else b""


def test_mosquitto_is_real_and_restartable(mosquitto):
    assert _mqtt_roundtrip(mosquitto.host, mosquitto.port) == b"hello"
    port = mosquitto.port
    mosquitto.kill()
    with pytest.raises(OSError):
        socket.create_connection((mosquitto.host, port), timeout=0.5)
    mosquitto.start()
    assert mosquitto.port == port
    assert _mqtt_roundtrip(mosquitto.host, mosquitto.port) == b"hello"


def test_prosody_requires_tls_and_registers_users(prosody):
    jid = prosody.create_user("alice", "secret")
    assert jid == "alice@localhost"
    with socket.create_connection((prosody.host, prosody.port), timeout=5) as sock:
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
            b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        features = b""
        while b"</stream:features>" not in features:
            chunk = sock.recv(4096)
            assert chunk, "prosody closed the stream"
            features += chunk
    assert b"<starttls" in features and b"<required" in features
    context = ssl.create_default_context(cafile=str(prosody.ca_file))
    assert context.cert_store_stats()["x509"] >= 1


def test_server_start_failure_is_reported(tmp_path):
    from tests.servers import Mosquitto

    broker = Mosquitto(tmp_path / "m")
    broker.config_path.write_text("not a mosquitto directive\n")
    with pytest.raises(ServerError, match="mosquitto"):
        broker.start(timeout=5)
