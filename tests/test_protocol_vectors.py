"""The test vectors of docs/protocol.md, parsed from the document and checked both ways."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.protocol import crypto, frames
from gateway.protocol.crypto import SessionKeys
from gateway.protocol.frames import (
    CommandResultFrame,
    Downlink,
    DownlinkCommand,
    JoinAccept,
    JoinAnswerKey,
    JoinRefusedFrame,
    JoinRequest,
    ReportFrame,
    ResultCode,
)
from gateway.protocol.join import PUBLIC_LAB_KEY, DeviceCredentials, JoinSettings
from gateway.protocol.session import JoinAccepted, NetworkCore, ReportReceived

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
BLOCK = re.compile(r"^```vector\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXPECTED = {
    "keys",
    "lab_root_key",
    "join_request",
    "join_accept",
    "join_accept_encrypted",
    "join_refused",
    "report_confirmed",
    "report_unconfirmed_encrypted",
    "command_result_executed",
    "command_result_expired_encrypted",
    "downlink_ack",
    "downlink_ack_and_command",
    "downlink_command_encrypted",
}


def load_vectors() -> dict[str, dict[str, str]]:
    vectors = {}
    for block in BLOCK.findall(DOC.read_text()):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        vectors[fields["vector"]] = fields
    return vectors


VECTORS = load_vectors()


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def flag(text: str) -> bool:
    assert text in ("true", "false"), text
    return text == "true"


def test_the_document_holds_every_vector() -> None:
    assert set(VECTORS) == EXPECTED


def test_key_derivation_vectors() -> None:
    v = VECTORS["keys"]
    eui = int(v["eui"], 16)
    assert crypto.join_key(h(v["root_key"]), eui) == h(v["join_key"])
    keys = crypto.session_keys(h(v["root_key"]), eui, h(v["dev_nonce"]), h(v["gw_nonce"]))
    assert keys == SessionKeys(h(v["integrity_key"]), h(v["encryption_key"]))
    lab = VECTORS["lab_root_key"]
    assert h(lab["lab_key"]) == PUBLIC_LAB_KEY
    assert crypto.lab_root_key(h(lab["lab_key"]), int(lab["eui"], 16)) == h(lab["root_key"])


def frame_and_key(name: str) -> tuple[frames.Frame, frames.FrameKey]:
    v = VECTORS[name]
    if name == "join_request":
        return JoinRequest(int(v["eui"], 16), h(v["dev_nonce"])), h(v["join_key"])
    if name.startswith("join_"):
        key = JoinAnswerKey(h(v["join_key"]), int(v["eui"], 16), h(v["dev_nonce"]))
        if name == "join_refused":
            return JoinRefusedFrame(int(v["reason"]), int(v["retry_after_s"])), key
        accept = JoinAccept(
            int(v["address"], 16), h(v["gw_nonce"]), int(v["rx_delay_ds"]), flag(v["encrypt"])
        )
        return accept, key
    keys = SessionKeys(h(v["integrity_key"]), h(v["encryption_key"]))
    address, counter = int(v["address"], 16), int(v["counter"])
    if name.startswith("report"):
        body = json.loads(v["body"])
        return ReportFrame(address, counter, body, flag(v["confirmed"]), flag(v["encrypted"])), keys
    if name.startswith("command_result"):
        result = CommandResultFrame(
            address,
            counter,
            int(v["command_ref"]),
            ResultCode(int(v["status"])),
            None if v["detail"] == "null" else v["detail"],
            flag(v["confirmed"]),
            flag(v["encrypted"]),
        )
        return result, keys
    command = None
    if "command_ref" in v:
        command = DownlinkCommand(
            int(v["command_ref"]), v["action"], json.loads(v["params"]), int(v["ttl_ds"])
        )
    ack = None if v["ack_counter"] == "null" else int(v["ack_counter"])
    return Downlink(address, counter, ack, command, flag(v["encrypted"])), keys


@pytest.mark.parametrize("name", sorted(EXPECTED - {"keys", "lab_root_key"}))
def test_frame_vectors_encode_and_decode(name: str) -> None:
    frame, key = frame_and_key(name)
    phy = h(VECTORS[name]["frame"])
    assert frames.encode(frame, key) == phy
    assert frames.decode(phy, key) == frame


def test_the_vectors_describe_one_consistent_exchange() -> None:
    """The gateway, given the vector nonce, answers the vector request with the vector accept;
    the first report vector is accepted under the resulting session."""
    keys = VECTORS["keys"]
    eui, root = int(keys["eui"], 16), h(keys["root_key"])
    core = NetworkCore(
        JoinSettings(),
        {eui: DeviceCredentials(root)},
        random_bytes=lambda size: h(keys["gw_nonce"])[:size],
    )
    request = h(VECTORS["join_request"]["frame"])
    assert join_request(eui, root, h(keys["dev_nonce"])) == request
    (accepted,) = core.receive(request, 1.0)
    assert isinstance(accepted, JoinAccepted)
    assert accepted.frame == h(VECTORS["join_accept"]["frame"])
    answer = open_join_answer(accepted.frame, eui, root, h(keys["dev_nonce"]))
    assert isinstance(answer, JoinAccept)
    node = NodeSession.from_accept(eui, root, h(keys["dev_nonce"]), answer)
    assert (node.keys.integrity, node.keys.encryption) == (
        h(keys["integrity_key"]),
        h(keys["encryption_key"]),
    )
    (report,) = core.receive(h(VECTORS["report_confirmed"]["frame"]), 2.0)
    assert isinstance(report, ReportReceived)
    assert report.report_id == f"lora-{keys['eui']}:{keys['gw_nonce']}:0"
    assert core.build_downlink(report.device_id, 0, None) == h(VECTORS["downlink_ack"]["frame"])
