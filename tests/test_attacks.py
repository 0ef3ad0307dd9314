"""Attacks, each one rejected and counted, and nothing else disturbed.

Air: an attacker with a radio sends forged, tampered, replayed, flooding, oversized and
truncated frames. They enter where real frames enter, the simulated SX1276's FIFO, and go
through the real SX127x driver into the LoRa network; the legitimate node is played by the
node library's frame code (``drivers.sim.node_frames`` on ``node.frames``) so every frame is
exactly what the test says.
Each rejection must show in ``counters.frames_rejected`` under its reason and in the
``duogate_frames_rejected`` metric; no report may be forwarded, no answer transmitted, no
address or state allocated.

Upstreams: a command from an MQTT user the broker's ACL does not allow never reaches the
gateway; a command IQ from a JID not on ``xmpp.allowed_jids`` is answered ``forbidden``.

Files: secrets readable by other users are warned about by ``duogate check-config`` and
``duogate run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import generate_latest

from drivers.radio.base import RxPacket
from drivers.sim.inprocess import InProcessSimRadio
from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.bridge import Bridge
from gateway.config import Config, parse_config
from gateway.driver_settings import sim_radio_settings
from gateway.lora import LoraNetwork
from gateway.metrics import make_registry
from gateway.model import lora_device_id
from gateway.protocol import frames
from gateway.protocol.frames import FrameRejected, JoinAccept
from gateway.state import GatewayState
from gateway.upstreams.mqtt import MqttUpstream
from gateway.upstreams.xmpp import XmppUpstream
from tests.servers import Mosquitto, Prosody
from tests.sink_fixtures import RecordingSink
from tests.xmpp_fixtures import Peer, refused

EUI = 0x0011_2233_4455_6677
ROOT_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
DEVICE = lora_device_id(EUI)
REPO = Path(__file__).resolve().parent.parent


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------ air


@dataclass
class Air:
    lora: LoraNetwork
    radio: InProcessSimRadio
    state: GatewayState
    sink: RecordingSink

    @property
    def chip(self) -> Any:
        assert self.radio.world is not None
        return self.radio.world.chip

    @property
    def rejected(self) -> dict[str, int]:
        return dict(self.state.counters.frames_rejected)

    async def send(self, phy: bytes) -> None:
        """Put ``phy`` in the chip's FIFO as a received packet; wait until it was handled."""
        received = self.state.counters.frames_received
        while not self.chip.deliver(phy):
            await asyncio.sleep(0.005)  # transmitting: the chip hears nothing until it is done
        await wait_until(lambda: self.state.counters.frames_received > received)
        for _ in range(5):
            await asyncio.sleep(0)

    async def join(self, dev_nonce: bytes) -> NodeSession:
        sent = len(self.chip.tx_history)
        await self.send(join_request(EUI, ROOT_KEY, dev_nonce))
        await wait_until(lambda: len(self.chip.tx_history) > sent)
        answer = open_join_answer(self.chip.tx_history[-1].payload, EUI, ROOT_KEY, dev_nonce)
        assert isinstance(answer, JoinAccept)
        return NodeSession.from_accept(EUI, ROOT_KEY, dev_nonce, answer)

    async def quiet(self) -> int:
        """Wait past every receive window an answer could go out in; transmissions so far."""
        await asyncio.sleep(0.5)
        return len(self.chip.tx_history)

    def metric(self, reason: str) -> float:
        text = generate_latest(make_registry(self.state)).decode()
        prefix = f'duogate_frames_rejected_total{{reason="{reason}"}} '
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :])
        return 0.0


def air_config(tmp_path: Path) -> Config:
    registry = tmp_path / "registry.toml"
    registry.write_text(f'[[device]]\neui = "{EUI:016x}"\nroot_key = "{ROOT_KEY.hex()}"\n')
    registry.chmod(0o600)
    return parse_config(
        {
            "gateway": {"data_dir": str(tmp_path / "data")},
            "radio": {"driver": "sim", "rx_delay_s": 0.2},
            "join": {"registry": str(registry), "join_rx_delay_s": 0.2},
            "mqtt": {"port": 1},  # a valid config needs an upstream; none is built here
            "sim": {"nodes": 0, "state_dir": str(tmp_path / "world")},
            "console": {"enabled": False},
            "metrics": {"enabled": False},
        }
    )


@pytest.fixture
async def air(tmp_path: Path) -> AsyncIterator[Air]:
    config = air_config(tmp_path)
    radio = InProcessSimRadio(sim_radio_settings(config))
    state = GatewayState()
    sink = RecordingSink()
    lora = LoraNetwork(config, radio, state)
    await lora.start(sink)
    try:
        yield Air(lora, radio, state, sink)
    finally:
        await lora.stop()


def copy_of(session: NodeSession) -> NodeSession:
    return NodeSession.from_json(session.eui, session.root_key, session.to_json())


def report_frame(session: NodeSession, counter: int, body: dict[str, Any]) -> bytes:
    """A report with a chosen counter (the attacker's copy of the session, not the node's)."""
    forged = copy_of(session)
    forged.up_next = counter
    return forged.report(body, confirmed=False)[1]


async def test_forged_and_tampered_frames_are_rejected_and_counted(air: Air) -> None:
    node = await air.join(b"nonce-01")
    lease = air.lora.core.lease(DEVICE)
    assert lease is not None
    _, genuine = node.report({"counter": 1})
    await air.send(genuine)
    assert [r.data for r in air.sink.reports] == [{"counter": 1}]
    transmissions = await air.quiet()

    forged_tag = bytearray(report_frame(node, node.up_next, {"counter": 666}))
    forged_tag[-1] ^= 0x01
    tampered_body = bytearray(report_frame(node, node.up_next, {"counter": 2}))
    tampered_body[9] ^= 0x40  # inside the CBOR body, under an unchanged tag
    other_key = NodeSession(
        EUI, bytes(16), node.address, b"nonce-01", node.gw_nonce, False, node.rx_delay_ds
    )
    other_key.up_next = node.up_next
    stranger = copy_of(node)
    stranger.address = (node.address % 0xFFFE) + 1
    own_downlink = air.chip.tx_history[-1].payload  # the gateway's ack, sent back at it
    future_version = bytes([0x24]) + genuine[1:]
    attacks = [
        (bytes(forged_tag), "bad_tag"),
        (bytes(tampered_body), "bad_tag"),
        (other_key.report({"counter": 3}, confirmed=True)[1], "bad_tag"),
        (stranger.report({"counter": 4})[1], "unknown_address"),
        (own_downlink, "wrong_direction"),
        (future_version, "bad_version"),
    ]
    expected: dict[str, int] = {}
    for phy, reason in attacks:
        await air.send(phy)
        expected[reason] = expected.get(reason, 0) + 1
    assert air.rejected == expected
    for reason, count in expected.items():
        assert air.metric(reason) == count
    assert [r.data for r in air.sink.reports] == [{"counter": 1}], "a rejected frame was forwarded"
    assert await air.quiet() == transmissions, "a rejected frame was answered"
    after = air.lora.core.lease(DEVICE)
    assert after is not None and after.session_id == lease.session_id

    _, next_genuine = node.report({"counter": 2})
    await air.send(next_genuine)
    assert [r.data for r in air.sink.reports] == [{"counter": 1}, {"counter": 2}], (
        "the node was disturbed"
    )


async def test_replayed_counters_are_rejected_and_counted(air: Air) -> None:
    node = await air.join(b"nonce-02")
    sent = [node.report({"counter": n}, confirmed=False)[1] for n in range(1, 19)]
    for phy in sent:
        await air.send(phy)
    assert len(air.sink.reports) == 18
    transmissions = await air.quiet()

    await air.send(sent[0])  # long past: outside the window of recent uplinks
    await air.send(report_frame(node, node.up_next - 1, {"counter": 999}))  # reused counter
    assert air.rejected == {"replayed_counter": 1, "counter_reused": 1}
    assert air.metric("replayed_counter") == 1 and air.metric("counter_reused") == 1
    await air.send(sent[-1])  # a recent frame again: a retransmission, never forwarded twice
    assert air.state.nodes[DEVICE].duplicates == 1
    assert len(air.sink.reports) == 18
    assert await air.quiet() == transmissions


async def test_replayed_join_nonces_are_rejected_and_counted(air: Air) -> None:
    await air.join(b"nonce-A1")
    second = await air.join(b"nonce-B2")
    lease = air.lora.core.lease(DEVICE)
    assert lease is not None
    transmissions = await air.quiet()

    await air.send(join_request(EUI, ROOT_KEY, b"nonce-A1"))
    assert air.rejected == {"join_replay": 1}
    assert air.metric("join_replay") == 1
    assert await air.quiet() == transmissions, "a replayed join request was answered"
    after = air.lora.core.lease(DEVICE)
    assert after is not None
    assert (after.session_id, after.address) == (lease.session_id, lease.address)
    _, report = second.report({"counter": 1})
    await air.send(report)
    assert [r.data for r in air.sink.reports] == [{"counter": 1}], "the live session was disturbed"


async def test_a_join_flood_allocates_nothing(air: Air) -> None:
    rng = random.Random(3)
    free = air.lora.core.free_addresses
    records = len(air.lora.core.records())
    transmissions = await air.quiet()
    flood = []
    for _ in range(120):  # EUIs nobody registered, with made-up tags
        eui = rng.getrandbits(64)
        flood.append(join_request(eui, rng.randbytes(16), rng.randbytes(8)))
    for _ in range(40):  # the registered EUI, without its key
        flood.append(join_request(EUI, rng.randbytes(16), rng.randbytes(8)))
    for phy in flood:
        await air.send(phy)
    assert air.rejected == {"unknown_eui": 120, "bad_tag": 40}
    assert air.metric("unknown_eui") == 120 and air.metric("bad_tag") == 40
    assert air.lora.core.free_addresses == free
    assert len(air.lora.core.records()) == records, "the flood left state behind"
    assert air.lora.core.leases() == []
    assert await air.quiet() == transmissions, "the flood was answered"
    assert air.sink.events == []
    node = await air.join(b"nonce-03")  # the real device still gets in
    assert node.address is not None


async def test_oversized_and_truncated_frames_are_rejected_and_counted(air: Air) -> None:
    node = await air.join(b"nonce-04")
    transmissions = await air.quiet()
    _, genuine = node.report({"counter": 1})
    for phy in (b"", genuine[:1], genuine[:7], genuine[: frames.SESSION_MIN_LEN - 1]):
        await air.send(phy)
    # An SX127x cannot receive more than 255 bytes; a radio driver that hands over more (a
    # modem on a serial line gone wrong) reaches the same receive handler.
    oversized = genuine + bytes(frames.MAX_PHY_PAYLOAD)
    with pytest.raises(FrameRejected) as caught:
        air.lora.core.receive(oversized, time.time())
    assert caught.value.reason == "oversized"
    air.lora._on_receive(RxPacket(oversized, -60.0, 9.0, time.monotonic()))
    assert air.rejected == {"truncated": 4, "oversized": 1}
    assert air.metric("truncated") == 4 and air.metric("oversized") == 1
    assert await air.quiet() == transmissions
    await air.send(genuine)
    assert [r.data for r in air.sink.reports] == [{"counter": 1}]


# ------------------------------------------------------------------------------ upstreams

PREFIX = "duogate/acl"
ACL = f"""
user gateway
topic readwrite {PREFIX}/#

user operator
topic write {PREFIX}/devices/+/command
topic read {PREFIX}/#

user intruder
topic read {PREFIX}/#
"""
USERS = {"gateway": "pw-gateway", "operator": "pw-operator", "intruder": "pw-intruder"}


def upstream_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "gateway": {"id": "acl", "data_dir": str(tmp_path / "data")},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
    }
    data.update(sections)
    return parse_config(data)


class Client:
    """An MQTT 5 client (paho's own thread) for the operator or the intruder."""

    def __init__(self, port: int, user: str | None) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"test-{user}", protocol=paho.MQTTv5
        )
        if user is not None:
            self.client.username_pw_set(user, USERS[user])
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.puback_codes: list[int] = []
        self.connect_code: int | None = None
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, json.loads(m.payload))
        )
        self.client.on_publish = lambda _c, _u, _mid, code, _p: self.puback_codes.append(code.value)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        self.connect_code = code.value
        if not code.is_failure:
            client.subscribe(f"{PREFIX}/devices/+/command/result", qos=1)

    def command(self, device: str, command_id: str) -> None:
        body = {"id": command_id, "action": "relay", "params": {"on": True}, "ttl_s": 30}
        properties = Properties(PacketTypes.PUBLISH)
        self.client.publish(
            f"{PREFIX}/devices/{device}/command", json.dumps(body), 1, properties=properties
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_commands_from_a_client_the_acl_does_not_allow_never_reach_the_gateway(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "broker", acl=ACL, users=USERS)
    broker.start()
    secret = tmp_path / "mqtt-password"
    secret.write_text(USERS["gateway"] + "\n")
    secret.chmod(0o600)
    config = upstream_config(
        tmp_path,
        mqtt={
            "port": broker.port,
            "username": "gateway",
            "password": {"file": str(secret)},
            "topic_prefix": PREFIX,
            "discovery": False,
        },
    )
    upstream = MqttUpstream(config)
    bridge = Bridge(config, GatewayState(), [upstream], [])
    await bridge.start()
    clients: list[Client] = []
    try:
        await wait_until(lambda: upstream.connected)
        operator, intruder = Client(broker.port, "operator"), Client(broker.port, "intruder")
        anonymous = Client(broker.port, None)
        clients += [operator, intruder, anonymous]
        await wait_until(lambda: None not in (c.connect_code for c in clients))
        assert anonymous.connect_code != 0, "the broker let an anonymous client in"
        await asyncio.sleep(0.2)  # the result subscriptions are in place

        intruder.command("lora-00000000000000aa", "from-intruder")
        await wait_until(lambda: intruder.puback_codes)
        assert intruder.puback_codes == [135], "the broker did not refuse (Not authorized)"
        operator.command("lora-00000000000000aa", "from-operator")
        await wait_until(lambda: operator.messages)
        await asyncio.sleep(0.3)
    finally:
        for client in clients:
            client.close()
        await bridge.stop()
        broker.kill()
    answered = {body["id"] for _topic, body in operator.messages}
    assert answered == {"from-operator"}, "only the operator's command reached the gateway"
    assert upstream.stats["commands_received"] == 1
    assert bridge.state.counters.commands == {"rejected": 1}  # no such device here


async def test_commands_from_a_jid_not_on_the_list_are_forbidden(
    prosody: Prosody, tmp_path: Path
) -> None:
    jids = {name: prosody.create_user(name, f"pw-{name}") for name in ("gw", "alice", "mallory")}
    secret = tmp_path / "xmpp-password"
    secret.write_text("pw-gw\n")
    secret.chmod(0o600)
    config = upstream_config(
        tmp_path,
        mqtt={"enabled": False},
        xmpp={
            "enabled": True,
            "jid": f"{jids['gw']}/duogate",
            "password": {"file": str(secret)},
            "host": prosody.host,
            "port": prosody.port,
            "ca_file": str(prosody.ca_file),
            "allowed_jids": [jids["alice"]],
        },
    )
    upstream = XmppUpstream(config.xmpp, list)
    bridge = Bridge(config, GatewayState(), [upstream], [])
    await bridge.start()
    peers: list[Peer] = []
    try:
        await wait_until(lambda: upstream.connected, 15.0)
        alice = await Peer(prosody, jids["alice"], "pw-alice").connect()
        mallory = await Peer(prosody, jids["mallory"], "pw-mallory").connect()
        peers += [alice, mallory]
        gateway = upstream.jid
        answer = await refused(
            mallory.command(gateway, device="lora-00000000000000aa", id="m1", action="relay")
        )
        assert answer["error"]["condition"] == "forbidden"
        assert upstream.counters["commands_forbidden"] == 1
        assert bridge.state.counters.commands == {}, "a forbidden command reached the bridge"
        allowed = await refused(
            alice.command(gateway, device="lora-00000000000000aa", id="a1", action="relay")
        )
        assert allowed["error"]["condition"] != "forbidden"
        assert bridge.state.counters.commands == {"rejected": 1}
    finally:
        for peer in peers:
            await peer.close()
        await bridge.stop()


# ---------------------------------------------------------------------------------- files


def duogate(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def secrets_config(tmp_path: Path, broker_port: int) -> tuple[Path, Path, Path]:
    password = tmp_path / "mqtt-password"
    password.write_text("secret\n")
    registry = tmp_path / "registry.toml"
    registry.write_text(f'[[device]]\neui = "{EUI:016x}"\nroot_key = "{ROOT_KEY.hex()}"\n')
    config = tmp_path / "duogate.toml"
    config.write_text(
        f"""
[gateway]
data_dir = "{tmp_path / "data"}"
[radio]
driver = "sim"
[join]
registry = "{registry}"
[mqtt]
port = {broker_port}
username = "gateway"
password = {{ file = "{password}" }}
discovery = false
[sim]
nodes = 0
[console]
enabled = false
[metrics]
enabled = false
"""
    )
    return config, password, registry


async def test_secrets_readable_by_others_are_warned_about(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config, password, registry = secrets_config(tmp_path, mosquitto.port)
    password.chmod(0o644)
    registry.chmod(0o640)

    checked = await asyncio.to_thread(duogate, "check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if "readable by other" in line]
    assert any(line.startswith("warning: mqtt.password:") for line in warnings), warnings
    assert any(line.startswith("warning: join.registry:") for line in warnings), warnings

    run = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert run.stderr is not None
        seen: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < 60 and not any(" up: " in line for line in seen):
            line = await asyncio.to_thread(run.stderr.readline)
            if not line:
                break
            seen.append(line)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, 15)
        run.wait(timeout=20)
    text = "".join(seen)
    assert "mqtt.password" in text and "readable by other users" in text, text
    assert "join.registry" in text, text

    password.chmod(0o600)
    registry.chmod(0o600)
    clean = await asyncio.to_thread(duogate, "check-config", str(config))
    assert clean.returncode == 0 and "readable by other" not in clean.stderr, clean.stderr
