"""Every parser that takes bytes from outside the gateway, as a fuzz target.

A target feeds one input to one parser and lets only that parser's documented rejection end
the call quietly; any other exception propagates and is a crash. The same targets run under
atheris (``python -m fuzz.run``, coverage-guided, ``make fuzz``) and under hypothesis
(``tests/test_fuzz_parsers.py``, bounded, ``make test``).

==============  =============================================================  ==================
target          what it parses                                                 rejection
==============  =============================================================  ==================
air_frames      a received PHY payload: ``NetworkCore.receive`` with a joined  FrameRejected
                node, and the node's side (``frames.decode``); part of the
                inputs get a valid tag so that bodies are reached
serial_framing  bytes from the USB-serial modem: ``FrameDecoder.feed`` split   none (BadFrame);
                at a chosen point; ``decode_body``                             FrameError
command_json    an MQTT command payload: ``envelope.validate``, then the       none (Rejection)
                expiry checks
xmpp_command    an ``<iq type='set'>`` stanza: ``xmpp_stanzas.parse_command``  MalformedCommand
                then ``envelope.validate``
config          a TOML config file: ``load_config``                            ConfigError
console_lines   bytes typed on the bench console: ``LineEditor.feed`` then     ConsoleInputError
                ``parse_command``
==============  =============================================================  ==================
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from drivers.radio.serial_frames import FrameDecoder, FrameError, decode_body
from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.config import ConfigError, load_config
from gateway.console.editor import LineEditor
from gateway.console.parser import ConsoleInputError, parse_command
from gateway.model import Command, IncomingCommand
from gateway.protocol import crypto, envelope, expiry, frames
from gateway.protocol.frames import FrameRejected, JoinAccept, JoinAnswerKey
from gateway.protocol.join import DeviceCredentials, JoinSettings, LeaseRecord
from gateway.protocol.session import NetworkCore
from gateway.upstreams.xmpp_stanzas import NS, MalformedCommand
from gateway.upstreams.xmpp_stanzas import parse_command as parse_xmpp_command

NOW = 1_800_000_000.0
EUI = 0x0011_2233_4455_6677
ROOT_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
DEV_NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08"
KNOWN_DEVICES = frozenset({"lora-0011223344556677", "modbus-bus1-3", "ble-a4c138000001"})


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    rejection: str
    seeds: list[bytes] = field(default_factory=list)
    max_len: int = 1024  # longest input worth trying


# ------------------------------------------------------------------------------ air frames


@dataclass(frozen=True, slots=True)
class _Network:
    settings: JoinSettings
    registry: dict[int, DeviceCredentials]
    records: list[LeaseRecord]
    node: NodeSession


@cache
def _network() -> _Network:
    """A core with one joined node, built once; each input starts again from its records."""
    # A small address pool: a core is rebuilt from its records for every input.
    settings = JoinSettings(pool_start=1, pool_end=64, open_join=False)
    registry = {EUI: DeviceCredentials(ROOT_KEY)}
    core = NetworkCore(settings, registry, random_bytes=lambda n: bytes(range(n)))
    accepted = core.receive(join_request(EUI, ROOT_KEY, DEV_NONCE), NOW)
    answer = open_join_answer(accepted[-1].frame, EUI, ROOT_KEY, DEV_NONCE)  # type: ignore[union-attr]
    assert isinstance(answer, JoinAccept)
    node = NodeSession.from_accept(EUI, ROOT_KEY, DEV_NONCE, answer)
    return _Network(settings, registry, core.records(), node)


def _with_tag(unsigned: bytes, key: bytes) -> bytes:
    return unsigned + crypto.tag(key, unsigned)


def air_frames(data: bytes) -> None:
    """First byte picks the path; the rest is the frame (or what its tag is computed over)."""
    if not data:
        return
    net = _network()
    mode, phy = data[0] % 5, data[1:]
    try:
        if mode == 0:  # as received from the air
            _receive(net, phy)
        elif mode == 1:  # a session uplink of the joined node with a valid tag
            head = bytearray(phy[: frames.SESSION_HEADER_LEN].ljust(frames.SESSION_HEADER_LEN))
            head[2:4] = net.node.address.to_bytes(2, "big")
            unsigned = bytes(head) + phy[frames.SESSION_HEADER_LEN :]
            _receive(net, _with_tag(unsigned, net.node.keys.integrity))
        elif mode == 2:  # a join request of the registered EUI with a valid tag
            unsigned = phy[:2] + crypto.eui_bytes(EUI) + phy[10:18]
            _receive(net, _with_tag(unsigned, crypto.join_key(ROOT_KEY, EUI)))
        elif mode == 3:  # the node's side: a downlink with a valid tag
            node = NodeSession.from_json(EUI, ROOT_KEY, net.node.to_json())
            node.open_downlink(_with_tag(phy, net.node.keys.integrity))
        else:  # the node's side: a join answer with a valid tag
            key = JoinAnswerKey(crypto.join_key(ROOT_KEY, EUI), EUI, DEV_NONCE)
            signed = crypto.eui_bytes(EUI) + DEV_NONCE + phy
            frames.decode(phy + crypto.tag(key.key, signed), key)
    except FrameRejected:
        pass


def _receive(net: _Network, phy: bytes) -> None:
    core = NetworkCore(
        net.settings, net.registry, records=net.records, random_bytes=lambda n: bytes(n)
    )
    core.receive(phy, NOW + 10.0)
    core.take_dirty()


def _air_seeds() -> list[bytes]:
    net = _network()
    node = NodeSession.from_json(EUI, ROOT_KEY, net.node.to_json())
    report = node.report({"counter": 1, "temperature_c": 21.5, "relay": False})[1]
    result = node.result(7, frames.ResultCode.EXECUTED, "pong")[1]
    downlink = frames.encode_session(
        frames.Downlink(
            node.address,
            3,
            ack_counter=1,
            command=frames.DownlinkCommand(9, "relay", {"on": True}, 120),
        ),
        node.keys,
    )
    request = join_request(EUI, ROOT_KEY, b"\x09" * 8)
    return [
        b"\x00" + report,
        b"\x00" + request,
        b"\x01" + report[:-4],
        b"\x01" + result[:-4],
        b"\x02" + request[:-4],
        b"\x03" + downlink[:-4],
        b"\x04" + bytes([0x12, 0x00, 0x00, 0x01]) + b"\x00" * 8 + bytes([3, 10]),
    ]


# -------------------------------------------------------------------------- serial framing


def serial_framing(data: bytes) -> None:
    """The first byte says where to split the rest between two reads."""
    decoder = FrameDecoder()
    cut = data[0] if data else 0
    for piece in (data[1 : 1 + cut], data[1 + cut :]):
        for item in decoder.feed(piece):
            assert item is not None
    if len(data) > 1:
        with contextlib.suppress(FrameError):
            decode_body(data[1:])


def _serial_seeds() -> list[bytes]:
    from cobs import cobs

    from drivers.radio.serial_frames import RxPacketFrame, TxDone, encode_frame

    good = encode_frame(RxPacketFrame(-80, 24, b"\x14\x02payload"))
    done = encode_frame(TxDone(5, 41_216))
    return [
        b"\x05" + good + done,
        b"\x00" + good[:-3] + b"\x00" + done,
        b"\x03" + b"\x00" + cobs.encode(b"\x04" + b"\x00" * 5) + b"\x00",
    ]


# ---------------------------------------------------------------------------- command JSON


def _policy() -> expiry.ExpiryPolicy:
    return expiry.ExpiryPolicy(default_ttl_s=60.0, max_ttl_s=3600.0)


def _validate(body: object, device: str, transport: float | None) -> None:
    incoming = IncomingCommand("mqtt", device, body, 100.0, expiry_s=transport)
    outcome = envelope.validate(
        incoming, KNOWN_DEVICES, _policy(), now_mono=100.5, now_wall=NOW + 0.5
    )
    if isinstance(outcome, Command):
        assert not math.isnan(outcome.deadline) and outcome.deadline <= 100.0 + 3600.0
        expiry.check(outcome, 101.0, stage=expiry.Stage.ARRIVAL)
        expiry.check(outcome, 101.0, 0.05, stage=expiry.Stage.TRANSMISSION)
    else:
        assert outcome.reason in envelope.REASONS, outcome.reason


def command_json(data: bytes) -> None:
    """First byte: device and transport expiry; the rest is the MQTT payload as sent."""
    if not data:
        return
    selector = data[0]
    device = sorted(KNOWN_DEVICES)[selector % 3] if selector & 0x80 else "lora-00000000000000ff"
    transport = None if selector & 0x40 == 0 else (selector & 0x3F) - 8.5
    _validate(data[1:], device, transport)


_COMMAND_SEEDS = [
    b'\x80{"id":"c1","action":"relay","params":{"on":true},"ttl_s":30}',
    b'\xc9{"id":"c2","action":"ping","expires_at":"2027-01-15T08:00:00.000Z"}',
    b'\x81{"id":"c3","action":"set_interval","params":{"seconds":60},"ttl_s":1e308}',
    b'\x82{"id":"","action":"x","ttl":5}',
    b'\x80[1, 2, {"id": "c4"}]',
]


# ---------------------------------------------------------------------------- XMPP command


def xmpp_command(data: bytes) -> None:
    try:
        iq = ET.fromstring(data)
    except (ET.ParseError, ValueError):
        return  # not XML: the XMPP library never hands such a stanza over
    try:
        parsed = parse_xmpp_command(iq, now=NOW)
    except MalformedCommand:
        return
    _validate(parsed.body, parsed.device, parsed.expiry_s)


_IQ = (
    "<iq xmlns='jabber:client' type='set' id='x1' from='alice@localhost/desk'>"
    "<command xmlns='{ns}' device='lora-0011223344556677' id='c1' action='relay' {extra}>"
    "<params>{params}</params>{amp}</command></iq>"
)
_AMP = (
    "<amp xmlns='http://jabber.org/protocol/amp'>"
    "<rule condition='expire-at' action='drop' value='{when}'/></amp>"
)
_XMPP_SEEDS = [
    _IQ.format(ns=NS, extra="ttl_s='30'", params='{"on": true}', amp="").encode(),
    _IQ.format(
        ns=NS,
        extra="expires='2027-01-15T08:00:00Z'",
        params="",
        amp=_AMP.format(when="2027-01-15T08:00:00.5+01:00"),
    ).encode(),
    _IQ.format(ns=NS, extra="ttl_s='nan'", params="[1]", amp="").encode(),
]


# ---------------------------------------------------------------------------------- config


@cache
def _config_path() -> Path:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="duogate-fuzz-", dir=base))
    return folder / "duogate.toml"


def config(data: bytes) -> None:
    path = _config_path()
    path.write_bytes(data)
    try:
        load_config(path, check_files=False)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


def _config_seeds() -> list[bytes]:
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.toml"
    seeds = [
        b'[gateway]\nid = "gw1"\n[mqtt]\nport = 70000\n[radio]\nspreading_factor = 13\n',
        b'[mqtt]\npassword = "inline"\n[xmpp]\nenabled = true\n',
        b'[modbus]\nenabled = true\n[[modbus.buses]]\nname = "bus1"\ntransport = "rtu"\n'
        b'[[modbus.buses.devices]]\nunit = 3\n[[modbus.buses.devices.registers]]\nname = "t"\n'
        b'table = "input"\naddress = 1\ntype = "float32"\nscale = 0\n',
    ]
    if demo.is_file():
        seeds.append(demo.read_bytes())
    return seeds


# ---------------------------------------------------------------------------- console lines


def console_lines(data: bytes) -> None:
    editor = LineEditor(echo=bool(data[:1]) and data[0] & 1 == 1)
    lines, _echo = editor.feed(data + b"\r")
    for line in lines:
        if not isinstance(line, str):
            continue
        try:
            parse_command(line)
        except ConsoleInputError as exc:
            assert "\n" not in str(exc)


_CONSOLE_SEEDS = [
    b'send lora-0011223344556677 relay {"on": true} ttl=30',
    b"radio set sf=9 bw=125khz freq=868.1mhz",
    b"radio\x1b[A show\x7f\x7fw",
    b"log debug\rstatus\nnodes\r\nleases",
    b'send modbus-bus1-3 write {"register": "setpoint", "value": 1e999} ttl=-1',
]


# ---------------------------------------------------------------------------------- table


def all_targets() -> dict[str, Target]:
    return {
        target.name: target
        for target in (
            Target("air_frames", air_frames, "FrameRejected", _air_seeds(), 300),
            Target("serial_framing", serial_framing, "none / FrameError", _serial_seeds(), 1200),
            Target("command_json", command_json, "none (Rejection)", list(_COMMAND_SEEDS)),
            Target("xmpp_command", xmpp_command, "MalformedCommand", list(_XMPP_SEEDS), 2048),
            Target("config", config, "ConfigError", _config_seeds(), 4096),
            Target("console_lines", console_lines, "ConsoleInputError", list(_CONSOLE_SEEDS)),
        )
    }
