"""Join handling and the 16-bit address pool.

A node sends its EUI and a fresh random nonce, tagged with a key derived from its root key.
The gateway answers with an address, its own nonce and the session parameters; both sides
derive the session keys from the root key and the two nonces. Everything here is pure: the
time (Unix seconds, so leases survive a reboot) and the random source are passed in.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gateway.model import lora_device_id
from gateway.protocol import crypto, frames
from gateway.protocol.crypto import SessionKeys
from gateway.protocol.frames import FrameRejected, Header, JoinAnswerKey, RefusalReason

JOIN_RX_DELAY_S = 1.0
# Open join without a configured lab key: public, so anyone may join (lab use only).
PUBLIC_LAB_KEY = b"duogate open lab"
# Downlink counters are reserved in blocks: the store holds a bound no used counter reaches,
# so a restart continues above it and never repeats one.
DOWNLINK_RESERVATION = 1024
RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """What the gateway knows about a node before it joins."""

    root_key: bytes
    encrypt: bool = False  # the session encrypts every body in both directions
    enabled: bool = True  # a disabled device is refused with an authenticated answer

    def __post_init__(self) -> None:
        if len(self.root_key) != crypto.KEY_LEN:
            raise ValueError(f"root key must be {crypto.KEY_LEN} bytes")

    def __repr__(self) -> str:
        return f"DeviceCredentials(<redacted>, encrypt={self.encrypt}, enabled={self.enabled})"


@dataclass(frozen=True, slots=True)
class JoinSettings:
    pool_start: int = 0x0001
    pool_end: int = 0xFFFE
    lease_inactive_s: float = 30 * 24 * 3600
    rx_delay_s: float = 1.0
    join_rx_delay_s: float = JOIN_RX_DELAY_S
    open_join: bool = False
    lab_key: bytes = PUBLIC_LAB_KEY  # open join: root key of an unknown EUI = KDF(lab_key, EUI)
    open_join_encrypt: bool = False
    recent_nonces: int = 16
    recent_uplinks: int = 16
    refusal_retry_after_s: int = 600

    def __post_init__(self) -> None:
        if not 0 <= self.pool_start <= self.pool_end <= 0xFFFF:
            raise ValueError("address pool must satisfy 0 <= start <= end <= 0xFFFF")
        if not 0.1 <= self.rx_delay_s <= 25.5:
            raise ValueError("rx_delay_s must be 0.1..25.5")
        if len(self.lab_key) != crypto.KEY_LEN:
            raise ValueError("the lab key must be 16 bytes")
        if self.recent_nonces < 1 or self.recent_uplinks < 1:
            raise ValueError("recent_nonces and recent_uplinks must be at least 1")
        if not 0 <= self.refusal_retry_after_s <= 0xFFFF:
            raise ValueError("refusal_retry_after_s must be 0..65535")

    @property
    def rx_delay_ds(self) -> int:
        return round(self.rx_delay_s * 10)


@dataclass(slots=True)
class Lease:
    """A joined device: its address and the live state of its session."""

    eui: int
    address: int
    generation: int
    dev_nonce: bytes
    gw_nonce: bytes
    keys: SessionKeys
    encrypt: bool
    rx_delay_ds: int
    accept_frame: bytes  # sent again, byte for byte, to a repeated request
    last_seen: float
    up_last: int = -1  # highest accepted uplink counter
    up_recent: dict[int, bytes] = field(default_factory=dict)  # counter -> tag, oldest first
    dl_next: int = 0
    dl_reserved: int = 0  # durable bound: no downlink counter at or above it was ever used
    # Named once, not per frame: neither the EUI nor the join nonce of a lease ever changes.
    device_id: str = field(init=False)
    session_id: str = field(init=False)  # names the session in report ids: the join nonce

    def __post_init__(self) -> None:
        self.device_id = lora_device_id(self.eui)
        self.session_id = self.gw_nonce.hex()


@dataclass(slots=True)
class JoinHistory:
    """Kept per EUI even without a lease, so generations and nonces are never reused."""

    generation: int = 0
    nonces: list[bytes] = field(default_factory=list)  # most recent last


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """Everything the store keeps for one EUI; session keys are derived again on restore."""

    eui: int
    generation: int
    recent_nonces: tuple[bytes, ...]
    last_seen: float
    address: int | None = None
    dev_nonce: bytes = b""
    gw_nonce: bytes = b""
    encrypt: bool = False
    rx_delay_ds: int = 10
    accept_frame: bytes = b""
    up_last: int = -1
    up_recent: tuple[tuple[int, bytes], ...] = ()
    dl_reserved: int = 0


class AddressPool:
    """Free addresses of [start, end], lowest first."""

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self._free = list(range(start, end + 1))  # ascending, so already a heap
        self._free_set = set(self._free)

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def free_count(self) -> int:
        return len(self._free_set)

    def allocate(self) -> int | None:
        while self._free:
            address = heapq.heappop(self._free)
            if address in self._free_set:
                self._free_set.remove(address)
                return address
        return None

    def claim(self, address: int) -> bool:
        """Take a specific address (restoring a lease); False if not free in this pool."""
        if address not in self._free_set:
            return False
        self._free_set.remove(address)  # its heap entry is skipped lazily
        return True

    def release(self, address: int) -> None:
        if self.start <= address <= self.end and address not in self._free_set:
            self._free_set.add(address)
            heapq.heappush(self._free, address)


@dataclass(frozen=True, slots=True)
class Accepted:
    lease: Lease
    frame: bytes
    rejoin: bool  # the EUI held a lease before this join
    repeated: bool  # same nonce as the last join: the cached accept, nothing changed
    reclaimed: Lease | None = None  # an inactive lease taken to free an address


@dataclass(frozen=True, slots=True)
class Refused:
    eui: int
    reason: RefusalReason
    frame: bytes


class JoinServer:
    """Answers join requests and owns the leases (by EUI and by address)."""

    def __init__(
        self,
        settings: JoinSettings,
        registry: Mapping[int, DeviceCredentials],
        random_bytes: RandomBytes = secrets.token_bytes,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self._random_bytes = random_bytes
        self.pool = AddressPool(settings.pool_start, settings.pool_end)
        self.by_eui: dict[int, Lease] = {}
        self.by_address: dict[int, Lease] = {}
        self.history: dict[int, JoinHistory] = {}
        self.dirty: set[int] = set()  # EUIs whose record changed since the last take

    def credentials(self, eui: int) -> DeviceCredentials | None:
        known = self.registry.get(eui)
        if known is not None:
            return known
        if self.settings.open_join:
            return DeviceCredentials(
                root_key=crypto.lab_root_key(self.settings.lab_key, eui),
                encrypt=self.settings.open_join_encrypt,
            )
        return None

    def handle(self, phy: bytes, header: Header, now: float) -> Accepted | Refused:
        """Answer one join request (already peeked); raise FrameRejected to stay silent."""
        assert header.eui is not None
        eui = header.eui
        device_id = lora_device_id(eui)
        credentials = self.credentials(eui)
        if credentials is None:
            raise FrameRejected("unknown_eui", device_id=device_id)
        key = crypto.join_key(credentials.root_key, eui)
        try:
            request = frames.decode_join_request(phy, key)
        except FrameRejected as exc:
            exc.device_id = device_id
            raise
        history = self.history.get(eui)
        lease = self.by_eui.get(eui)
        if history is not None and request.dev_nonce in history.nonces:
            if lease is not None and lease.dev_nonce == request.dev_nonce:
                lease.last_seen = max(lease.last_seen, now)
                self.dirty.add(eui)
                return Accepted(lease, lease.accept_frame, rejoin=False, repeated=True)
            raise FrameRejected("join_replay", "nonce used before", device_id=device_id)
        if history is None:
            history = self.history[eui] = JoinHistory()
        history.nonces.append(request.dev_nonce)
        del history.nonces[: -self.settings.recent_nonces]
        self.dirty.add(eui)
        answer_key = JoinAnswerKey(key, eui, request.dev_nonce)
        if not credentials.enabled:
            self.drop(eui)
            return self._refuse(eui, RefusalReason.DEVICE_DISABLED, answer_key)
        reclaimed = None
        if lease is not None:
            address = lease.address
        else:
            allocated, reclaimed = self._allocate(now)
            if allocated is None:
                return self._refuse(eui, RefusalReason.POOL_EXHAUSTED, answer_key)
            address = allocated
        gw_nonce = self._random_bytes(crypto.NONCE_LEN)
        accept = frames.JoinAccept(
            address=address,
            gw_nonce=gw_nonce,
            rx_delay_ds=self.settings.rx_delay_ds,
            encrypt=credentials.encrypt,
        )
        history.generation += 1
        new_lease = Lease(
            eui=eui,
            address=address,
            generation=history.generation,
            dev_nonce=request.dev_nonce,
            gw_nonce=gw_nonce,
            keys=crypto.session_keys(credentials.root_key, eui, request.dev_nonce, gw_nonce),
            encrypt=credentials.encrypt,
            rx_delay_ds=accept.rx_delay_ds,
            accept_frame=frames.encode_join_answer(accept, answer_key),
            last_seen=now,
            dl_reserved=DOWNLINK_RESERVATION,
        )
        self.by_eui[eui] = new_lease
        self.by_address[address] = new_lease
        return Accepted(
            new_lease,
            new_lease.accept_frame,
            rejoin=lease is not None,
            repeated=False,
            reclaimed=reclaimed,
        )

    def _refuse(self, eui: int, reason: RefusalReason, key: JoinAnswerKey) -> Refused:
        answer = frames.JoinRefusedFrame(reason, self.settings.refusal_retry_after_s)
        return Refused(eui, reason, frames.encode_join_answer(answer, key))

    def _allocate(self, now: float) -> tuple[int | None, Lease | None]:
        address = self.pool.allocate()
        if address is not None:
            return address, None
        # Pool exhausted: take the address of the longest-inactive expired lease, if any.
        cutoff = now - self.settings.lease_inactive_s
        expired = [
            lease
            for lease in self.by_eui.values()
            if lease.last_seen <= cutoff and self.pool.start <= lease.address <= self.pool.end
        ]
        if not expired:
            return None, None
        oldest = min(expired, key=lambda lease: (lease.last_seen, lease.address))
        self.drop(oldest.eui)
        return self.pool.allocate(), oldest

    def set_registry(self, registry: Mapping[int, DeviceCredentials]) -> list[Lease]:
        """Use new credentials; end the leases of devices now missing or disabled."""
        self.registry = registry
        ended = []
        for eui in list(self.by_eui):
            credentials = self.credentials(eui)
            if credentials is None or not credentials.enabled:
                lease = self.drop(eui)
                assert lease is not None
                ended.append(lease)
        return ended

    def drop(self, eui: int) -> Lease | None:
        """End a lease and free its address (the EUI's history stays)."""
        lease = self.by_eui.pop(eui, None)
        if lease is None:
            return None
        del self.by_address[lease.address]
        self.pool.release(lease.address)
        self.dirty.add(eui)
        return lease

    # ------------------------------------------------------------------------- persistence

    def record(self, eui: int) -> LeaseRecord:
        history = self.history.get(eui, JoinHistory())
        lease = self.by_eui.get(eui)
        if lease is None:
            return LeaseRecord(
                eui=eui,
                generation=history.generation,
                recent_nonces=tuple(history.nonces),
                last_seen=0.0,
            )
        return LeaseRecord(
            eui=eui,
            generation=history.generation,
            recent_nonces=tuple(history.nonces),
            last_seen=lease.last_seen,
            address=lease.address,
            dev_nonce=lease.dev_nonce,
            gw_nonce=lease.gw_nonce,
            encrypt=lease.encrypt,
            rx_delay_ds=lease.rx_delay_ds,
            accept_frame=lease.accept_frame,
            up_last=lease.up_last,
            up_recent=tuple(lease.up_recent.items()),
            dl_reserved=lease.dl_reserved,
        )

    def restore(self, records: Iterable[LeaseRecord]) -> None:
        """Rebuild leases from stored records.

        Keys are derived again from the current credentials; a lease whose device has no
        credentials any more is dropped. Downlink counters continue from the stored
        reservation, and a fresh reservation is marked dirty so the store writes it before
        any downlink is sent.
        """
        for record in records:
            self.history[record.eui] = JoinHistory(
                generation=record.generation,
                nonces=list(record.recent_nonces[-self.settings.recent_nonces :]),
            )
            if record.address is None:
                continue
            credentials = self.credentials(record.eui)
            if credentials is None or not credentials.enabled or record.address in self.by_address:
                self.dirty.add(record.eui)
                continue
            self.pool.claim(record.address)  # an address outside the pool stays with its lease
            lease = Lease(
                eui=record.eui,
                address=record.address,
                generation=record.generation,
                dev_nonce=record.dev_nonce,
                gw_nonce=record.gw_nonce,
                keys=crypto.session_keys(
                    credentials.root_key, record.eui, record.dev_nonce, record.gw_nonce
                ),
                encrypt=record.encrypt,
                rx_delay_ds=record.rx_delay_ds,
                accept_frame=record.accept_frame,
                last_seen=record.last_seen,
                up_last=record.up_last,
                up_recent=dict(record.up_recent),
                dl_next=record.dl_reserved,
                dl_reserved=min(record.dl_reserved + DOWNLINK_RESERVATION, frames.MAX_COUNTER + 1),
            )
            self.dirty.add(record.eui)
            self.by_eui[record.eui] = lease
            self.by_address[record.address] = lease

    def adopt(self, record: LeaseRecord, dl_from: int = 0) -> Lease | None:
        """Take a session another gateway of a fleet wrote (its record), keeping what this
        gateway learnt of the same session meanwhile: the highest uplink counter, the highest
        downlink counter. A lease of another session of the EUI, or of another EUI on the
        record's address, ends. Downlink counters continue at or above ``dl_from``.

        Returns the lease, or None when the record names no session or the device is unknown
        here (no credentials: the registry differs between gateways).
        """
        history = self.history.setdefault(record.eui, JoinHistory())
        history.generation = max(history.generation, record.generation)
        for nonce in record.recent_nonces:
            if nonce not in history.nonces:
                history.nonces.append(nonce)
        del history.nonces[: -self.settings.recent_nonces]
        self.dirty.add(record.eui)
        current = self.by_eui.get(record.eui)
        if record.address is None:
            self.drop(record.eui)
            return None
        if current is not None and current.gw_nonce == record.gw_nonce:
            current.up_last = max(current.up_last, record.up_last)
            for counter, tag in record.up_recent:
                current.up_recent.setdefault(counter, tag)
            while len(current.up_recent) > self.settings.recent_uplinks:
                del current.up_recent[min(current.up_recent)]
            current.last_seen = max(current.last_seen, record.last_seen)
            start = max(current.dl_next, record.dl_reserved, dl_from)
            current.dl_next = start
            current.dl_reserved = min(
                max(current.dl_reserved, start + DOWNLINK_RESERVATION), frames.MAX_COUNTER + 1
            )
            return current
        self.drop(record.eui)
        holder = self.by_address.get(record.address)
        if holder is not None:
            self.drop(holder.eui)
        self.restore([record])
        self.history[record.eui] = history  # restore() keeps the record's alone
        lease = self.by_eui.get(record.eui)
        if lease is not None and dl_from > lease.dl_next:
            lease.dl_next = dl_from
            lease.dl_reserved = min(dl_from + DOWNLINK_RESERVATION, frames.MAX_COUNTER + 1)
        return lease
