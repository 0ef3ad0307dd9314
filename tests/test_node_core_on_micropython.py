"""The node core's frames, state machine and storage in a real MicroPython (the WebAssembly
port, tests/micropython_fixtures.py), checked against the protocol document's vectors and the
gateway's own code run here on CPython. (AES and CMAC there: tests/test_node_on_micropython.py.)
"""

from __future__ import annotations

import json
from typing import Any

from gateway.protocol import frames as gateway_frames
from gateway.protocol.crypto import SessionKeys
from gateway.protocol.frames import DownlinkCommand, ReportFrame
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import JoinAccepted, NetworkCore, ReportReceived
from tests.micropython_fixtures import CBOR2, CRYPTOLIB_STAND_IN, NODE_LIBRARY, run_micropython
from tests.node_fixtures import h, load_vectors

NODE_ON_A_BOARD = [NODE_LIBRARY, CBOR2, CRYPTOLIB_STAND_IN]
VECTORS = load_vectors()


def run_with_json(script: str, inputs: Any) -> Any:
    prelude = "import json\nINPUTS = json.loads(" + repr(json.dumps(inputs)) + ")\n"
    printed = run_micropython(prelude + script, NODE_ON_A_BOARD)
    return json.loads(printed.strip().splitlines()[-1])


FRAME_VECTORS = """
from node import cbor, frames, keys
from node.cmac import Cmac
u = bytes.fromhex
V = INPUTS
out = {}
v = V["join_request"]
out["join_request"] = frames.join_request(Cmac(u(v["join_key"])), u(v["eui"]),
                                          u(v["dev_nonce"])).hex()
for name in ("join_accept", "join_accept_encrypted", "join_refused"):
    v = V[name]
    a = frames.open_join_answer(u(v["frame"]), Cmac(u(v["join_key"])), u(v["eui"]),
                                u(v["dev_nonce"]))
    if isinstance(a, frames.JoinAccept):
        out[name] = [a.address, a.gw_nonce.hex(), a.rx_delay_ds, a.encrypt]
    else:
        out[name] = [a.reason, a.retry_after_s]
for name in ("downlink_ack", "downlink_ack_and_command", "downlink_command_encrypted"):
    v = V[name]
    k = keys.SessionKeys(u(v["integrity_key"]), u(v["encryption_key"]))
    d = frames.open_downlink(u(v["frame"]), k, int(v["address"], 16))
    c = d.command
    out[name] = [d.counter, d.ack_counter,
                 None if c is None else [c.ref, c.ttl_ds, c.action, c.params]]
for name in ("report_confirmed", "report_unconfirmed_encrypted"):
    v = V[name]
    k = keys.SessionKeys(u(v["integrity_key"]), u(v["encryption_key"]))
    out[name] = frames.report(k, int(v["address"], 16), int(v["counter"]), json.loads(v["body"]),
                              v["confirmed"] == "true", v["encrypted"] == "true").hex()
for name in ("command_result_executed", "command_result_expired_encrypted"):
    v = V[name]
    k = keys.SessionKeys(u(v["integrity_key"]), u(v["encryption_key"]))
    detail = None if v["detail"] == "null" else v["detail"]
    out[name] = frames.command_result(k, int(v["address"], 16), int(v["counter"]),
                                      int(v["command_ref"]), int(v["status"]), detail,
                                      True, v["encrypted"] == "true").hex()
rejected = []
v = V["downlink_ack_and_command"]
k = keys.SessionKeys(u(v["integrity_key"]), u(v["encryption_key"]))
good = u(v["frame"])
for bit in range(len(good) * 8):
    damaged = bytearray(good)
    damaged[bit // 8] ^= 1 << (bit % 8)
    try:
        frames.open_downlink(bytes(damaged), k, 1)
        rejected.append(None)
    except frames.FrameError as exc:
        rejected.append(exc.reason)
out["bit_flips"] = rejected
out["half_floats"] = [cbor.decode(u(x)) for x in ("f94d60", "f9c150", "f93c00", "f90001")]
print(json.dumps(out))
"""


def test_frame_vectors_in_micropython() -> None:
    out = run_with_json(FRAME_VECTORS, VECTORS)
    assert out["join_request"] == VECTORS["join_request"]["frame"]
    for name in ("join_accept", "join_accept_encrypted"):
        v = VECTORS[name]
        expected = [int(v["address"], 16), v["gw_nonce"], int(v["rx_delay_ds"])]
        assert out[name] == [*expected, v["encrypt"] == "true"]
    assert out["join_refused"] == [1, 600]
    assert out["downlink_ack"] == [0, 0, None]
    assert out["downlink_ack_and_command"] == [1, 2, [42, 300, "relay", {"on": True}]]
    assert out["downlink_command_encrypted"] == [
        2,
        None,
        [44, 1200, "set_interval", {"seconds": 300}],
    ]
    for name in ("command_result_executed", "command_result_expired_encrypted"):
        assert out[name] == VECTORS[name]["frame"]
    # micropython-lib's encoder writes 64-bit floats and dict order: other bytes than the
    # vectors, the same report for the gateway.
    for name in ("report_confirmed", "report_unconfirmed_encrypted"):
        v = VECTORS[name]
        keys = SessionKeys(h(v["integrity_key"]), h(v["encryption_key"]))
        frame = gateway_frames.decode_session(h(out[name]), keys)
        assert isinstance(frame, ReportFrame)
        assert frame.body == json.loads(v["body"])
        assert (frame.counter, frame.confirmed, frame.encrypted) == (
            int(v["counter"]),
            v["confirmed"] == "true",
            v["encrypted"] == "true",
        )
    assert None not in out["bit_flips"]
    assert out["half_floats"] == [21.5, -2.65625, 1.0, 2.0**-24]


def test_the_node_state_machine_runs_in_micropython_against_the_gateway() -> None:
    v = VECTORS["keys"]
    eui = int(v["eui"], 16)
    core = NetworkCore(JoinSettings(), {eui: DeviceCredentials(h(v["root_key"]))})
    script = """
from node import frames, session, storage
u = bytes.fromhex
state = {"n": 0}
def random_bytes(size):
    state["n"] += 1
    return bytes([(state["n"] * 37 + i * 11) & 0xFF for i in range(size)])
node = session.Node(u(INPUTS["eui"]), u(INPUTS["root_key"]), random_bytes,
                    session.NodeConfig(duty_cycle=1.0))
store = storage.NodeStore.at("/node-state")
for action in node.tick(0.0) + node.tick(5.0):
    if isinstance(action, session.Persist):
        store.save(action.record)
    if isinstance(action, session.Transmit):
        request = action.frame
print(json.dumps({"request": request.hex(), "nonce": node.join_nonce.hex()}))
"""
    out = run_with_json(script, {"eui": v["eui"], "root_key": v["root_key"]})
    (accepted,) = core.receive(h(out["request"]), 100.0)
    assert isinstance(accepted, JoinAccepted)
    # Second run: the node hears the accept and reports; the gateway's ack carries a command
    # (built here from the same lease), which the node executes and answers.
    script2 = """
from node import frames, session, storage
u = bytes.fromhex
state = {"n": 0}
def random_bytes(size):
    state["n"] += 1
    return bytes([(state["n"] * 37 + i * 11) & 0xFF for i in range(size)])
node = session.Node(u(INPUTS["eui"]), u(INPUTS["root_key"]), random_bytes,
                    session.NodeConfig(duty_cycle=1.0))
store = storage.NodeStore.at("/node-state")
def carry_out(actions):
    for action in actions:
        if isinstance(action, session.Persist):
            store.save(action.record)
    return actions
def frames_of(actions):
    return [a.frame for a in actions if isinstance(a, session.Transmit)]
carry_out(node.tick(0.0) + node.tick(5.0))
carry_out(node.tx_done(5.05, 0.05))
joined = carry_out(node.received(u(INPUTS["accept"]), 6.1, -70, 8))
report = frames_of(carry_out(node.report({"temperature_c": 21.5}, 8.0)))[0]
carry_out(node.tx_done(8.1, 0.07))
answer = carry_out(node.received(u(INPUTS["downlink"]), 9.2, -70, 8))
execute = [a for a in answer if isinstance(a, session.Execute)][0]
carry_out(node.command_done(execute.command.ref, frames.EXECUTED, "on", 9.3))
result = frames_of(carry_out(node.tick(20.0)))[0]
print(json.dumps({
    "joined": [repr(a) for a in joined],
    "report": report.hex(),
    "execute": [execute.command.ref, execute.command.action, execute.command.params,
                execute.deadline],
    "acked": [repr(a) for a in answer if isinstance(a, session.Acked)],
    "result": result.hex(),
    "writes": store.writes,
}))
"""
    # The node builds the same frames in each run (its random source restarts too), so the
    # gateway's accept of the first run answers the second run's request.
    inputs = {"eui": v["eui"], "root_key": v["root_key"], "accept": accepted.frame.hex()}
    device = accepted.lease.device_id
    command = DownlinkCommand(ref=7, action="relay", params={"on": True}, ttl_ds=100)
    # Report counter 0 is the first uplink of the session: ack it and carry the command.
    inputs["downlink"] = core.build_downlink(device, 0, command).hex()
    out2 = run_with_json(script2, inputs)
    assert out2["joined"][:2] == ["Persist()", "Joined(1)"]
    (report,) = core.receive(h(out2["report"]), 101.0)
    assert isinstance(report, ReportReceived)
    assert report.body == {"temperature_c": 21.5, "counter": 1} and report.counter == 0
    assert out2["execute"][:3] == [7, "relay", {"on": True}]
    assert abs(out2["execute"][3] - (9.2 + 10.0)) < 1e-6
    assert out2["acked"] == ["Acked(report, 1)"]
    (result,) = core.receive(h(out2["result"]), 102.0)
    assert (result.command_ref, result.detail, result.counter) == (7, "on", 1)
    assert out2["writes"] >= 3


def test_pending_uplinks_survive_a_power_cycle_in_micropython() -> None:
    """The journal (node/storage.py) on MicroPython's own files: a node with a session
    queues reports, the head framed; a new node from the files holds the same queue and the
    same head frame; a torn last entry costs that entry only."""
    script = """
from node import session, storage
u = bytes.fromhex
def random_bytes(size):
    return bytes(range(size))
eui, root = u(INPUTS["eui"]), u(INPUTS["root_key"])
config = session.NodeConfig(duty_cycle=1.0)
store = storage.NodeStore.at("/journal")
node = session.Node(eui, root, random_bytes, config)
record = None
for action in node.tick(0.0) + node.tick(9.0):
    if isinstance(action, session.Persist):
        record = action.record
record["session"] = [1, bytes(8), bytes([1] * 8), 10, True]
node = session.Node(eui, root, random_bytes, config, record=record)
sizes = []
def carry_out(actions):
    for action in actions:
        if isinstance(action, session.Persist):
            store.save(action.record)
            sizes.append(len(open("/journal.0", "rb").read()))
for n in range(4):
    carry_out(node.report({"n": n, "t": 21.5}, 10.0 + n))
head = node.queue[0]
loaded = storage.NodeStore.at("/journal").load()
reborn = session.Node(eui, root, random_bytes, config, record=loaded)
whole = open("/journal.0", "rb").read()
storage.FlashFile("/journal.0").write(whole[:-2])
loaded = storage.NodeStore.at("/journal").load()
torn = session.Node(eui, root, random_bytes, config, record=loaded)
print(json.dumps({
    "writes": store.writes,
    "sizes": sizes,
    "queue": [u.body["n"] for u in reborn.queue],
    "same_head": [reborn.queue[0].frame == head.frame, reborn.queue[0].counter == head.counter],
    "torn": [u.body["n"] for u in torn.queue],
}))
"""
    v = VECTORS["keys"]
    out = run_with_json(script, {"eui": v["eui"], "root_key": v["root_key"]})
    assert out["queue"] == [0, 1, 2, 3] and out["same_head"] == [True, True]
    assert out["torn"] == [0, 1, 2]
    assert out["writes"] == 4  # the first report with its frame, then one append per report
    assert out["sizes"] == sorted(out["sizes"])  # appended to, not rewritten
