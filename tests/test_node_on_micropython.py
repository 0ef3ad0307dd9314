"""The node library in a real MicroPython (the WebAssembly port under Node.js, see
tests/micropython_fixtures.py): its AES-CMAC, key derivation and frames against RFC 4493, the
protocol document's vectors and the gateway's own code run here on CPython.

Each MicroPython run gets its inputs as JSON in the script and prints its results as one JSON
line; the gateway's side of every comparison is computed in this process.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from gateway.model import CommandStatus
from gateway.protocol import crypto
from gateway.protocol.frames import DownlinkCommand
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    NetworkCore,
    ReportReceived,
)
from node import cbor as node_cbor
from tests.micropython_fixtures import (
    CBOR2,
    CRYPTOLIB_STAND_IN,
    NODE_LIBRARY,
    MicroPythonError,
    port_version,
    run_micropython,
)
from tests.node_fixtures import h, load_vectors

NODE_ON_A_BOARD = [NODE_LIBRARY, CBOR2, CRYPTOLIB_STAND_IN]
VECTORS = load_vectors()


def run_with_json(script: str, inputs: Any, packages: list) -> Any:
    """Run ``script`` with ``INPUTS`` bound to ``inputs``; it prints one JSON line last."""
    prelude = "import json\nINPUTS = json.loads(" + repr(json.dumps(inputs)) + ")\n"
    printed = run_micropython(prelude + script, packages)
    return json.loads(printed.strip().splitlines()[-1])


# ------------------------------------------------------------------------ the interpreter

FEATURES = """
import sys
try:
    import cryptolib
    has_cryptolib = True
except ImportError:
    has_cryptolib = False
body = bytearray(6)
body[1:3] = b"\\xab\\xcd"
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": ".".join(str(part) for part in sys.implementation.version[:3]),
    "from_bytes": int.from_bytes(b"\\x01\\x02\\x03\\x04", "big"),
    "to_bytes": (0x0102).to_bytes(2, "big").hex(),
    "slice": bytes(b"\\x00\\x01\\x02\\x03\\x04"[1:-1]).hex(),
    "bytearray": bytes(body).hex(),
    "fromhex": list(bytes.fromhex("00ff")),
    "big_int": (1 << 64) - 1,
    "cryptolib": has_cryptolib,
}))
"""


def test_micropython_runs_with_what_the_node_core_needs() -> None:
    result = run_with_json(FEATURES, None, [])
    assert result == {
        "implementation": "micropython",
        "version": port_version(),
        "from_bytes": 0x01020304,
        "to_bytes": "0102",
        "slice": "010203",
        "bytearray": "00abcd000000",
        "fromhex": [0, 255],
        "big_int": 2**64 - 1,
        # The port is built without an SSL library, and cryptolib comes with one: the tests
        # that need AES copy in CRYPTOLIB_STAND_IN. A port that has it makes the stand-in moot.
        "cryptolib": False,
    }


def test_an_exception_in_micropython_comes_back_with_its_traceback() -> None:
    script = "print('before')\ndef fail():\n    raise ValueError('boom')\nfail()\n"
    with pytest.raises(MicroPythonError) as caught:
        run_micropython(script, [])
    assert caught.value.stdout == "before\n"
    assert 'File "<stdin>", line 3, in fail' in caught.value.traceback
    assert caught.value.traceback.rstrip().endswith("ValueError: boom")


def test_what_micropython_lacks_is_refused_there() -> None:
    for code, error in (
        ("import dataclasses", "ImportError"),
        ("import typing", "ImportError"),
        ("from __future__ import annotations", "ImportError"),
        ("int.from_bytes(b'\\x01', byteorder='big')", "TypeError"),
        ("match 1:\n    case 1:\n        pass", "SyntaxError"),
    ):
        with pytest.raises(MicroPythonError) as caught:
            run_micropython(code + "\n", [])
        assert error in caught.value.traceback, code


CRYPTOLIB_CHECKS = """
import cryptolib
key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
plain = bytes.fromhex("00112233445566778899aabbccddeeff")
out = bytearray(16)
cipher = cryptolib.aes(key, 1)
returned = cipher.encrypt(plain, out)
refusals = []
for attempt in (
    lambda: cipher.decrypt(plain),
    lambda: cryptolib.aes(key[:15], 1),
    lambda: cryptolib.aes(key, 2, bytes(16)),
    lambda: cryptolib.aes(key, 1).encrypt(plain[:15]),
    lambda: cryptolib.aes(key, 1).encrypt(plain, bytearray(15)),
):
    try:
        attempt()
        refusals.append(None)
    except ValueError as exc:
        refusals.append(str(exc))
print(json.dumps({
    "aes128": cryptolib.aes(key, 1).encrypt(plain + plain).hex(),
    "aes256": cryptolib.aes(key + bytes(range(16, 32)), 1).encrypt(plain).hex(),
    "decrypted": cryptolib.aes(key, 1).decrypt(bytes(out)).hex(),
    "into": bytes(out).hex(),
    "returned_out": returned is out,
    "refusals": refusals,
}))
"""


def test_the_cryptolib_stand_in_encrypts_and_refuses_like_the_c_module() -> None:
    result = run_with_json(CRYPTOLIB_CHECKS, None, [CRYPTOLIB_STAND_IN])
    fips197_aes128 = "69c4e0d86a7b0430d8cdb78070b4c55a"  # FIPS-197 appendix C.1
    assert result["aes128"] == fips197_aes128 * 2
    assert result["aes256"] == "8ea2b7ca516745bfeafc49904b496089"  # appendix C.3
    assert result["into"] == fips197_aes128
    assert result["returned_out"] is True
    assert result["decrypted"] == "00112233445566778899aabbccddeeff"
    assert result["refusals"] == [
        "can't encrypt & decrypt",
        "key",
        "mode (this stand-in serves ECB only)",
        "blksize % 16",
        "output too small",
    ]


# ------------------------------------------------------------------------- the node core

RFC4493_KEY = "2b7e151628aed2a6abf7158809cf4f3c"
RFC4493_MESSAGE = (
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
RFC4493_TAGS = {
    0: "bb1d6929e95937287fa37d129b756746",
    16: "070a16b46b4d4144f79bdd9dd04a287c",
    40: "dfa66747de9ae63030ca32611497c827",
    64: "51f0bebf7e3b9d92fc49741779363cfe",
}

NODE_CRYPTO = """
from node import aes, cmac, keys
u = bytes.fromhex
rfc = {}
for length in INPUTS["rfc_lengths"]:
    rfc[str(length)] = cmac.cmac(u(INPUTS["rfc_key"]), u(INPUTS["rfc_message"])[:length]).hex()
macs = []
for key, data in INPUTS["cmac"]:
    mac = cmac.Cmac(u(key))
    macs.append([mac.mac(u(data)).hex(), mac.tag(u(data)).hex()])
derived = [cmac.derive_key(u(k), u(l), u(c)).hex() for k, l, c in INPUTS["kdf"]]
v = INPUTS["keys"]
session = keys.session_keys(u(v["root_key"]), u(v["eui"]), u(v["dev_nonce"]), u(v["gw_nonce"]))
ctr = []
for integrity, encryption, direction, address, counter, data in INPUTS["ctr"]:
    session_keys = keys.SessionKeys(u(integrity), u(encryption))
    ctr.append(session_keys.crypt(direction, address, counter, u(data)).hex())
fips197 = aes.Aes128(u("000102030405060708090a0b0c0d0e0f"))
print(json.dumps({
    "backend": aes.backend(),
    "fips197": fips197.encrypt_block(u("00112233445566778899aabbccddeeff")).hex(),
    "rfc4493": rfc,
    "cmac": macs,
    "kdf": derived,
    "join_key": keys.join_key(u(v["root_key"]), u(v["eui"])).hex(),
    "integrity_key": session.integrity.hex(),
    "encryption_key": session.encryption.hex(),
    "ctr": ctr,
}))
"""


def test_node_crypto_in_micropython_agrees_with_rfc4493_and_the_gateway() -> None:
    source = random.Random(4493)
    cmac_cases = [(source.randbytes(16), source.randbytes(length)) for length in range(100)]
    kdf_cases = [
        (source.randbytes(16), source.randbytes(source.randrange(1, 30)), source.randbytes(n))
        for n in range(0, 40, 3)
    ]
    ctr_cases = [
        (
            source.randbytes(16),
            source.randbytes(16),
            source.choice((crypto.AirDirection.UPLINK, crypto.AirDirection.DOWNLINK)),
            source.randrange(0x10000),
            source.randrange(2**32),
            source.randbytes(source.randrange(0, 244)),
        )
        for _ in range(20)
    ]
    inputs = {
        "rfc_key": RFC4493_KEY,
        "rfc_message": RFC4493_MESSAGE,
        "rfc_lengths": list(RFC4493_TAGS),
        "cmac": [[key.hex(), data.hex()] for key, data in cmac_cases],
        "kdf": [[k.hex(), label.hex(), c.hex()] for k, label, c in kdf_cases],
        "keys": VECTORS["keys"],
        "ctr": [[i.hex(), e.hex(), int(d), a, c, data.hex()] for i, e, d, a, c, data in ctr_cases],
    }
    result = run_with_json(NODE_CRYPTO, inputs, NODE_ON_A_BOARD)

    assert result["backend"] == "cryptolib"
    assert result["fips197"] == "69c4e0d86a7b0430d8cdb78070b4c55a"
    assert result["rfc4493"] == {str(length): tag for length, tag in RFC4493_TAGS.items()}
    assert result["cmac"] == [
        [crypto.cmac(key, data).hex(), crypto.tag(key, data).hex()] for key, data in cmac_cases
    ]
    assert result["kdf"] == [crypto.derive_key(k, label, c).hex() for k, label, c in kdf_cases]
    v = VECTORS["keys"]
    assert (result["join_key"], result["integrity_key"], result["encryption_key"]) == (
        v["join_key"],
        v["integrity_key"],
        v["encryption_key"],
    )
    expected_ctr = []
    for integrity, encryption, direction, address, counter, data in ctr_cases:
        ciphers = crypto.SessionKeys(integrity, encryption)
        expected_ctr.append(ciphers.crypt(direction, address, counter, data).hex())
    assert result["ctr"] == expected_ctr


# ------------------------------------------------------------------------------- frames

NODE_FRAMES = """
from node import frames, keys
from node.cmac import Cmac
u = bytes.fromhex
v = INPUTS["keys"]
root, eui, dev_nonce = u(v["root_key"]), u(v["eui"]), u(v["dev_nonce"])
join_mac = Cmac(keys.join_key(root, eui))
out = {"join_request": frames.join_request(join_mac, eui, dev_nonce).hex()}

answers = {}
for name in ("join_accept", "join_accept_encrypted", "join_refused"):
    w = INPUTS["vectors"][name]
    w_mac = Cmac(u(w["join_key"]))
    answer = frames.open_join_answer(u(w["frame"]), w_mac, u(w["eui"]), u(w["dev_nonce"]))
    if isinstance(answer, frames.JoinAccept):
        answers[name] = [answer.address, answer.gw_nonce.hex(), answer.rx_delay_ds, answer.encrypt]
    else:
        answers[name] = [answer.reason, answer.retry_after_s]
out["vector_answers"] = answers

accept = frames.open_join_answer(u(INPUTS["accept"]), join_mac, eui, dev_nonce)
session = keys.session_keys(root, eui, dev_nonce, accept.gw_nonce)
address = accept.address
out["accept"] = [address, accept.encrypt]
encrypted = accept.encrypt

def command_of(downlink):
    c = downlink.command
    return None if c is None else [c.ref, c.ttl_ds, c.action, c.params]

opened = []
for phy in INPUTS["downlinks"]:
    d = frames.open_downlink(u(phy), session, address)
    opened.append([d.counter, d.encrypted, d.ack_counter, command_of(d)])
out["downlinks"] = opened

vector_downlinks = {}
for name in ("downlink_ack", "downlink_ack_and_command", "downlink_command_encrypted"):
    w = INPUTS["vectors"][name]
    vector_keys = keys.SessionKeys(u(w["integrity_key"]), u(w["encryption_key"]))
    d = frames.open_downlink(u(w["frame"]), vector_keys, int(w["address"], 16))
    vector_downlinks[name] = [d.counter, d.encrypted, d.ack_counter, command_of(d)]
out["vector_downlinks"] = vector_downlinks

refused = []
for phy in INPUTS["damaged"]:
    try:
        frames.open_downlink(u(phy), session, address)
        refused.append(None)
    except frames.FrameError as exc:
        refused.append(exc.reason)
out["damaged"] = refused

uplinks = []
for counter, body in enumerate(INPUTS["report_bodies"]):
    confirmed = counter % 2 == 0
    uplinks.append(frames.report(session, address, counter, body, confirmed, encrypted).hex())
for counter, (ref, status, detail) in enumerate(INPUTS["results"], len(uplinks)):
    result = frames.command_result(session, address, counter, ref, status, detail, True, encrypted)
    uplinks.append(result.hex())
out["uplinks"] = uplinks
print(json.dumps(out))
"""

REPORT_BODIES = [
    {"counter": 1, "temperature_c": 21.5, "relay": False},
    {"counter": 2, "temperature_c": -3.25, "relay": True, "note": "é ü", "list": [1, -2, None]},
    {"nested": {"deep": [1.0e-7, 65504.0, 2**63 - 1, -(2**63)]}, "empty": {}, "text": ""},
]
RESULTS = [(42, 0, "pong"), (43, 1, "no such action"), (44, 2, None)]
RESULT_STATUSES = [CommandStatus.EXECUTED, CommandStatus.FAILED, CommandStatus.EXPIRED]


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_node_frames_in_micropython_against_the_vectors_and_the_gateway(encrypt: bool) -> None:
    keys_vector = VECTORS["keys"]
    eui = h(keys_vector["eui"])
    gw_nonce = h(keys_vector["gw_nonce"])
    core = NetworkCore(
        JoinSettings(),
        {
            int.from_bytes(eui, "big"): DeviceCredentials(
                h(keys_vector["root_key"]), encrypt=encrypt
            )
        },
        random_bytes=lambda size: gw_nonce[:size],
    )
    # The join request of the protocol document, the one MicroPython must build byte for byte.
    (accepted,) = core.receive(h(VECTORS["join_request"]["frame"]), 10.0)
    assert isinstance(accepted, JoinAccepted)
    device = accepted.lease.device_id
    command = DownlinkCommand(
        ref=65535, action="set_interval", params={"seconds": 1.5, "why": ["a", None]}, ttl_ds=65535
    )
    sent = [(0, None), (None, command), (2**32 - 1, command)]
    downlinks = [core.build_downlink(device, ack, cmd) for ack, cmd in sent]
    # The command-only downlink with its tag cut short, its ack flag set, a body bit flipped.
    phy = downlinks[1]
    damaged = [
        phy[:-1],
        phy[:1] + bytes([phy[1] ^ 0x04]) + phy[2:],
        phy[:8] + bytes([phy[8] ^ 1]) + phy[9:],
    ]
    inputs = {
        "keys": keys_vector,
        "vectors": VECTORS,
        "accept": accepted.frame.hex(),
        "downlinks": [phy.hex() for phy in downlinks],
        "damaged": [phy.hex() for phy in damaged],
        "report_bodies": REPORT_BODIES,
        "results": RESULTS,
    }
    result = run_with_json(NODE_FRAMES, inputs, NODE_ON_A_BOARD)

    assert result["join_request"] == VECTORS["join_request"]["frame"]
    for name in ("join_accept", "join_accept_encrypted"):
        v = VECTORS[name]
        assert result["vector_answers"][name] == [
            int(v["address"], 16),
            v["gw_nonce"],
            int(v["rx_delay_ds"]),
            v["encrypt"] == "true",
        ]
    v = VECTORS["join_refused"]
    assert result["vector_answers"]["join_refused"] == [int(v["reason"]), int(v["retry_after_s"])]
    assert result["accept"] == [accepted.lease.address, encrypt]

    assert result["downlinks"] == [
        [
            counter,
            encrypt,
            ack,
            None if cmd is None else [cmd.ref, cmd.ttl_ds, cmd.action, cmd.params],
        ]
        for counter, (ack, cmd) in enumerate(sent)
    ]
    for name, opened in result["vector_downlinks"].items():
        v = VECTORS[name]
        ack = None if v["ack_counter"] == "null" else int(v["ack_counter"])
        expected_command = None
        if "command_ref" in v:
            expected_command = [
                int(v["command_ref"]),
                int(v["ttl_ds"]),
                v["action"],
                json.loads(v["params"]),
            ]
        assert opened == [int(v["counter"]), v["encrypted"] == "true", ack, expected_command]
    assert result["damaged"] == ["bad_tag", "bad_tag", "bad_tag"]

    # Every uplink MicroPython built is accepted by the gateway, with what the node meant.
    uplinks = [h(frame) for frame in result["uplinks"]]
    assert len(uplinks) == len(REPORT_BODIES) + len(RESULTS)
    for counter, body in enumerate(REPORT_BODIES):
        (received,) = core.receive(uplinks[counter], 11.0 + counter)
        assert isinstance(received, ReportReceived), received
        assert (received.body, received.counter) == (body, counter)
        assert (received.confirmed, received.encrypted) == (counter % 2 == 0, encrypt)
    for offset, ((ref, _, detail), status) in enumerate(zip(RESULTS, RESULT_STATUSES, strict=True)):
        (answer,) = core.receive(uplinks[len(REPORT_BODIES) + offset], 20.0 + offset)
        assert isinstance(answer, CommandResultReceived), answer
        assert (answer.command_ref, answer.status, answer.detail) == (ref, status, detail)


# ----------------------------------------------------------------------------------- CBOR

CBOR_CASES = [
    "a16178f93e00",  # {"x": 1.5}, a half float as the gateway writes it
    "a26161fb4004000000000000616201",  # float64 and two keys, as micropython-lib writes
    "1bffffffffffffffff",  # the largest integer JSON-mappable here
    "3bffffffffffffffff",  # below the 64-bit range
    "5f41614162ff",  # indefinite byte string
    "9f01ff",  # indefinite array
    "bf616101ff",  # indefinite map
    "a2616101616102",  # duplicate key
    "a1616101616102",  # an item after the item
    "c074323031332d30332d32315432303a30343a30305a",  # tag 0
    "4161",  # byte string
    "f97e00",  # NaN
    "a10102",  # integer key
    "f7",  # undefined
    "f818",  # simple value in two bytes
    "",
]

CBOR_DECODE = """
from node import cbor
outcomes = []
for data in INPUTS:
    try:
        outcomes.append(["value", cbor.decode(bytes.fromhex(data))])
    except cbor.CborError as exc:
        outcomes.append(["refused", exc.reason])
print(json.dumps(outcomes))
"""


def test_node_cbor_decodes_alike_on_micropython_and_cpython() -> None:
    expected = []
    for data in CBOR_CASES:
        try:
            expected.append(["value", node_cbor.decode(h(data))])
        except node_cbor.CborError as exc:
            expected.append(["refused", exc.reason])
    outcomes = run_with_json(CBOR_DECODE, CBOR_CASES, NODE_ON_A_BOARD)
    assert dict(zip(CBOR_CASES, outcomes, strict=True)) == dict(
        zip(CBOR_CASES, expected, strict=True)
    )
