"""A fleet of gateways on one broker: who serves each LoRa device, and what they share.

Ownership. Every joined device has one owner, the gateway that answers it on air (acks, join
answers, commands) and publishes its reports on the fleet topics. The owner is named in the
device's session record, retained at ``<fleet>/sessions/<device>``. Records are ordered by
``(epoch, owner)``; every gateway keeps the greatest it has seen, so all of them settle on one
owner whatever order the broker delivers records in.

Moving a device. While the owner is online it alone decides: a neighbour that hears an uplink
tells the owner (a sighting); the owner hands the device to the neighbour when the neighbour
heard an uplink the owner did not, or heard it ``margin_db`` stronger. When the owner is offline
(its will message), the neighbours that hear the device compare their sightings and the best
placed one claims it (epoch + 1).

Duplicates. A report id is ``device:session:counter``, the same on every gateway. A report is
published on the fleet topics only by the owner, and only above the device's floor: the highest
counter an earlier owner published (from the record and from the fleet report topic).

Protection. Records and sightings are sealed with the fleet key (AES-GCM, the topic as
associated data): a broker reader learns nothing of a session and a broker writer cannot forge
or move one. Session keys never travel: each gateway derives them from the root key in its
own registry and the nonces in the record.

Pure: no clocks, no I/O; random bytes are passed in.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.protocol.join import LeaseRecord
from gateway.protocol.session import split_report_id

SEAL_VERSION = 1
NONCE_LEN = 12
KEY_LENGTHS = (16, 32)


class FleetMessageRejected(ValueError):
    """A fleet message that is not sealed with our key, or not well formed."""


# ------------------------------------------------------------------------------------ sealing


class FleetSeal:
    """AES-GCM with the fleet key; the topic is bound in as associated data."""

    def __init__(self, key: bytes, random_bytes: Callable[[int], bytes] = secrets.token_bytes):
        if len(key) not in KEY_LENGTHS:
            raise ValueError(f"fleet key must be 16 or 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._random_bytes = random_bytes

    def seal(self, topic: str, plain: bytes) -> bytes:
        nonce = self._random_bytes(NONCE_LEN)
        return bytes([SEAL_VERSION]) + nonce + self._aead.encrypt(nonce, plain, topic.encode())

    def open(self, topic: str, sealed: bytes) -> bytes:
        if len(sealed) < 1 + NONCE_LEN + 16 or sealed[0] != SEAL_VERSION:
            raise FleetMessageRejected("not a sealed fleet message")
        nonce, body = sealed[1 : 1 + NONCE_LEN], sealed[1 + NONCE_LEN :]
        try:
            return self._aead.decrypt(nonce, body, topic.encode())
        except InvalidTag:
            raise FleetMessageRejected("seal does not match (another fleet key?)") from None


# ------------------------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class Reception:
    """One gateway's reception of one uplink."""

    gateway: str
    rssi: float
    snr: float

    def to_wire(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "rssi": self.rssi, "snr": self.snr}

    def rank(self) -> tuple[float, float, str]:
        return (self.rssi, self.snr, self.gateway)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A device's session as the fleet shares it, and who serves it."""

    device: str
    owner: str
    epoch: int
    lease: LeaseRecord
    floor: int = -1  # reports up to this counter were published by earlier owners

    @property
    def session(self) -> str:
        return self.lease.gw_nonce.hex()

    def outranks(self, other: SessionRecord | None) -> bool:
        return other is None or (self.epoch, self.owner) > (other.epoch, other.owner)


def encode_record(record: SessionRecord) -> bytes:
    lease = record.lease
    return cbor2.dumps(
        {
            "device": record.device,
            "owner": record.owner,
            "epoch": record.epoch,
            "floor": record.floor,
            "lease": [
                lease.eui,
                lease.generation,
                list(lease.recent_nonces),
                lease.last_seen,
                lease.address,
                lease.dev_nonce,
                lease.gw_nonce,
                lease.encrypt,
                lease.rx_delay_ds,
                lease.accept_frame,
                lease.up_last,
                [[counter, tag] for counter, tag in lease.up_recent],
                lease.dl_reserved,
            ],
        }
    )


def decode_record(data: bytes) -> SessionRecord:
    try:
        fields = cbor2.loads(data)
        lease = _lease_record(*fields["lease"])
        return SessionRecord(
            device=str(fields["device"]),
            owner=str(fields["owner"]),
            epoch=int(fields["epoch"]),
            lease=lease,
            floor=int(fields["floor"]),
        )
    except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError) as exc:
        raise FleetMessageRejected(f"bad session record: {exc}") from None


def _lease_record(
    eui: int,
    generation: int,
    nonces: list[bytes],
    last_seen: float,
    address: int | None,
    dev_nonce: bytes,
    gw_nonce: bytes,
    encrypt: bool,
    rx_delay_ds: int,
    accept_frame: bytes,
    up_last: int,
    up_recent: list[list[Any]],
    dl_reserved: int,
) -> LeaseRecord:
    return LeaseRecord(
        eui=int(eui),
        generation=int(generation),
        recent_nonces=tuple(bytes(n) for n in nonces),
        last_seen=float(last_seen),
        address=None if address is None else int(address),
        dev_nonce=bytes(dev_nonce),
        gw_nonce=bytes(gw_nonce),
        encrypt=bool(encrypt),
        rx_delay_ds=int(rx_delay_ds),
        accept_frame=bytes(accept_frame),
        up_last=int(up_last),
        up_recent=tuple((int(c), bytes(t)) for c, t in up_recent),
        dl_reserved=int(dl_reserved),
    )


@dataclass(frozen=True, slots=True)
class Sighting:
    """A gateway heard an authentic uplink of a device (``counter``: its uplink counter in
    ``session``) or a join request of it (``kind`` "join", ``session`` the join nonce)."""

    device: str
    kind: str  # "uplink" or "join"
    session: str
    counter: int
    reception: Reception

    def key(self) -> tuple[str, str, str, int]:
        return (self.device, self.kind, self.session, self.counter)


def encode_sighting(sighting: Sighting) -> bytes:
    r = sighting.reception
    fields = [sighting.device, sighting.kind, sighting.session, sighting.counter]
    return cbor2.dumps([*fields, r.gateway, r.rssi, r.snr])


def decode_sighting(data: bytes) -> Sighting:
    try:
        device, kind, session, counter, gateway, rssi, snr = cbor2.loads(data)
        if kind not in ("uplink", "join"):
            raise ValueError(f"unknown kind {kind!r}")
        return Sighting(
            str(device), kind, str(session), int(counter), Reception(str(gateway), rssi, snr)
        )
    except (cbor2.CBORDecodeError, TypeError, ValueError) as exc:
        raise FleetMessageRejected(f"bad sighting: {exc}") from None


# ---------------------------------------------------------------------------------- decisions


def handover_target(
    own: Reception | None, others: Iterable[Reception], margin_db: float
) -> str | None:
    """The owner's choice after an uplink and the neighbours' sightings of it: None to keep
    serving the device, else the gateway to hand it to (the best that heard it, when the owner
    did not hear it at all, or heard it at least ``margin_db`` weaker)."""
    best = max(others, key=Reception.rank, default=None)
    if best is None or (own is not None and best.gateway == own.gateway):
        return None
    if own is None or best.rssi >= own.rssi + margin_db:
        return best.gateway
    return None


def best_placed(receptions: Iterable[Reception]) -> str | None:
    """The gateway that heard best: strongest signal, then SNR, then name (every gateway
    picks the same one from the same sightings)."""
    best = max(receptions, key=Reception.rank, default=None)
    return None if best is None else best.gateway


def command_ref(device: str, command_id: str, taken: Iterable[int] = ()) -> int:
    """The 16-bit reference a fleet command has on air, the same on every gateway, so a node
    asked again by a new owner answers from memory instead of running it twice. ``taken``:
    references of other commands waiting for the device (skipped, in order)."""
    digest = hashlib.sha256(f"{device}\x00{command_id}".encode()).digest()
    ref = int.from_bytes(digest[:2], "big")
    used = set(taken)
    while ref in used:
        ref = (ref + 1) % 0x10000
    return ref


def former_owner_publishes(record: SessionRecord | None, report_id: str) -> bool:
    """Whether a gateway that does not serve the device now publishes this report: up to the
    floor of the record that moved the device away (the report that decided it, and any
    still queued); and any report of a session other than the record's (two gateways
    answered one join request: the node kept one session, the records chose the other, and
    only the gateway that acked them has the reports of its session)."""
    parts = split_report_id(report_id)
    if parts is None:
        return False
    _, session, counter = parts
    if record is None or record.session != session:
        return True
    return counter <= record.floor


UplinkKey = tuple[str, str, str, int]  # device, "uplink" or "join", session, counter


@dataclass
class Gather:
    """Receptions of one uplink (or join request) by the gateways of the fleet."""

    receptions: dict[str, Reception] = field(default_factory=dict)
    checked: bool = False  # the owner looked whether to hand the device over


class Gatherings:
    """The receptions of the latest ``kept`` uplinks and join requests; the oldest go."""

    def __init__(self, kept: int = 4096) -> None:
        self._gathers: OrderedDict[UplinkKey, Gather] = OrderedDict()
        self._kept = kept

    def __len__(self) -> int:
        return len(self._gathers)

    def get(self, key: UplinkKey) -> Gather | None:
        return self._gathers.get(key)

    def of(self, key: UplinkKey) -> Gather:
        """The gathering of ``key``, begun if there is none."""
        gather = self._gathers.get(key)
        if gather is None:
            gather = self._gathers[key] = Gather()
            while len(self._gathers) > self._kept:
                self._gathers.popitem(last=False)
        return gather
