"""Simulated node firmware speaking the duogate air protocol.

``NodeSession`` and the join helpers are the node's side of the protocol with no I/O (the
rules are in docs/protocol.md, "Node rules"). ``SimNode`` runs them as asyncio firmware over
a ``NodeAirLink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.model import lora_device_id
from gateway.protocol import crypto, frames
from gateway.protocol.backoff import backoff_delay
from gateway.protocol.crypto import SessionKeys
from gateway.protocol.frames import (
    AirFrameType,
    CommandResultFrame,
    Downlink,
    DownlinkCommand,
    FrameRejected,
    JoinAccept,
    JoinAnswerKey,
    JoinRefusedFrame,
    JoinRequest,
    ReportFrame,
    ResultCode,
)
from gateway.protocol.join import JOIN_RX_DELAY_S

# ------------------------------------------------------------------------- node-side protocol


def join_request(eui: int, root_key: bytes, dev_nonce: bytes) -> bytes:
    return frames.encode_join_request(JoinRequest(eui, dev_nonce), crypto.join_key(root_key, eui))


def open_join_answer(
    phy: bytes, eui: int, root_key: bytes, dev_nonce: bytes
) -> JoinAccept | JoinRefusedFrame:
    """The gateway's answer to our request with this nonce; FrameRejected if it is not."""
    key = JoinAnswerKey(crypto.join_key(root_key, eui), eui, dev_nonce)
    return frames.decode_join_answer(phy, key)


@dataclass(slots=True)
class NodeSession:
    """The node's half of a session: keys, address and both frame counters."""

    eui: int
    root_key: bytes
    address: int
    dev_nonce: bytes
    gw_nonce: bytes
    encrypt: bool
    rx_delay_ds: int
    up_next: int = 0  # counter of the next new uplink frame
    dl_last: int = -1  # highest downlink counter accepted
    keys: SessionKeys = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = crypto.session_keys(self.root_key, self.eui, self.dev_nonce, self.gw_nonce)

    @classmethod
    def from_accept(
        cls, eui: int, root_key: bytes, dev_nonce: bytes, accept: JoinAccept
    ) -> NodeSession:
        return cls(
            eui=eui,
            root_key=root_key,
            address=accept.address,
            dev_nonce=dev_nonce,
            gw_nonce=accept.gw_nonce,
            encrypt=accept.encrypt,
            rx_delay_ds=accept.rx_delay_ds,
        )

    @property
    def rx_delay_s(self) -> float:
        return self.rx_delay_ds / 10

    def _take_counter(self) -> int:
        if self.up_next > frames.MAX_COUNTER:
            raise OverflowError("uplink counter exhausted: join again")
        counter = self.up_next
        self.up_next += 1
        return counter

    def report(self, body: dict[str, Any], confirmed: bool = True) -> tuple[int, bytes]:
        """A new report frame and its counter."""
        counter = self._take_counter()
        frame = ReportFrame(
            self.address, counter, body, confirmed=confirmed, encrypted=self.encrypt
        )
        return counter, frames.encode_session(frame, self.keys)

    def result(
        self, command_ref: int, status: ResultCode, detail: str | None = None
    ) -> tuple[int, bytes]:
        counter = self._take_counter()
        frame = CommandResultFrame(
            self.address, counter, command_ref, status, detail, encrypted=self.encrypt
        )
        return counter, frames.encode_session(frame, self.keys)

    def open_downlink(self, phy: bytes) -> Downlink:
        """Authenticate a downlink meant for us; FrameRejected for anything else."""
        header = frames.peek(phy)
        if header.type is not frames.AirFrameType.DOWNLINK:
            raise FrameRejected("bad_type", header.type.name.lower())
        if header.address != self.address:
            raise FrameRejected("unknown_address", f"0x{header.address:04x}")
        frame = frames.decode_session(phy, self.keys)
        assert isinstance(frame, Downlink)
        if frame.counter <= self.dl_last:
            raise FrameRejected("replayed_counter", f"{frame.counter} <= {self.dl_last}")
        if self.encrypt and not frame.encrypted:
            raise FrameRejected("unencrypted", "session requires encryption")
        self.dl_last = frame.counter
        return frame

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "dev_nonce": self.dev_nonce.hex(),
            "gw_nonce": self.gw_nonce.hex(),
            "encrypt": self.encrypt,
            "rx_delay_ds": self.rx_delay_ds,
            "up_next": self.up_next,
            "dl_last": self.dl_last,
        }

    @classmethod
    def from_json(cls, eui: int, root_key: bytes, data: dict[str, Any]) -> NodeSession:
        return cls(
            eui=eui,
            root_key=root_key,
            address=int(data["address"]),
            dev_nonce=bytes.fromhex(data["dev_nonce"]),
            gw_nonce=bytes.fromhex(data["gw_nonce"]),
            encrypt=bool(data["encrypt"]),
            rx_delay_ds=int(data["rx_delay_ds"]),
            up_next=int(data["up_next"]),
            dl_last=int(data["dl_last"]),
        )


# ------------------------------------------------------------------------------ node firmware


class NodeAirLink(Protocol):
    async def transmit(self, payload: bytes) -> float: ...  # returns after TxDone, airtime s

    async def receive(self, timeout_s: float) -> tuple[bytes, float, float] | None: ...

    # (payload, rssi, snr) of a frame whose preamble started within timeout_s, or None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Firmware constants. The defaults are for real time; tests scale them down."""

    report_interval_s: float = 60.0  # until a set_interval command changes it
    join_rx_delay_s: float = JOIN_RX_DELAY_S  # must match the gateway's join.join_rx_delay_s
    rx_early_s: float = 0.02  # open the receiver this much before the window is due
    rx_window_s: float = 0.25  # a preamble must start within this long after opening
    join_backoff_min_s: float = 2.0
    join_backoff_max_s: float = 300.0
    retry_min_s: float = 2.0  # first retransmission of an unacked uplink
    retry_max_s: float = 60.0
    next_uplink_gap_s: float = 1.0  # after an ack, before the next queued uplink
    jitter: float = 0.25  # every wait is shortened by up to this fraction, at random
    queue_size: int = 16  # unacked uplinks kept; the oldest report is dropped beyond it
    max_attempts: int = 30  # transmissions of one uplink before it is given up
    rejoin_after_unacked: int = 12  # consecutive unacked transmissions that end the session
    remembered_commands: int = 16  # command refs whose result is kept to answer repeats

    def __post_init__(self) -> None:
        if self.queue_size < 16:
            raise ValueError("queue_size must be at least 16")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be 0 <= jitter < 1")


@dataclass(slots=True)
class PendingUplink:
    """A report or command result waiting for its ack.

    Its frame is built (and its counter taken) at the first transmission; every
    retransmission sends the same bytes, so the gateway recognises it as the same uplink.
    """

    kind: Literal["report", "result"]
    body: dict[str, Any] = field(default_factory=dict)  # report body
    command_ref: int = 0
    status: ResultCode = ResultCode.EXECUTED
    detail: str | None = None
    counter: int | None = None
    frame: bytes | None = None
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "body": self.body,
            "command_ref": self.command_ref,
            "status": int(self.status),
            "detail": self.detail,
            "counter": self.counter,
            "frame": self.frame.hex() if self.frame is not None else None,
            "attempts": self.attempts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingUplink:
        kind = data["kind"]
        if kind not in ("report", "result"):
            raise ValueError(f"unknown pending kind {kind!r}")
        return cls(
            kind=kind,
            body=dict(data["body"]),
            command_ref=int(data["command_ref"]),
            status=ResultCode(data["status"]),
            detail=data["detail"],
            counter=data["counter"],
            frame=bytes.fromhex(data["frame"]) if data["frame"] is not None else None,
            attempts=int(data["attempts"]),
        )


@dataclass(frozen=True, slots=True)
class ExecutedCommand:
    ref: int
    action: str
    params: dict[str, Any]
    arrival_ttl_s: float  # time left to live as received
    status: ResultCode


@dataclass(slots=True)
class NodeStats:
    join_attempts: int = 0
    joins: int = 0
    join_refusals: int = 0
    transmissions: int = 0
    reports_sent: int = 0  # distinct reports transmitted at least once
    retransmissions: int = 0
    acks_received: int = 0
    reports_dropped: int = 0  # dropped from a full queue
    uplinks_given_up: int = 0  # max_attempts reached
    results_sent: int = 0
    commands_executed: int = 0
    commands_failed: int = 0
    commands_expired: int = 0
    commands_repeated: int = 0  # a ref seen before: result sent again, not executed again
    downlinks_rejected: int = 0
    foreign_frames: int = 0  # heard in a receive window but meant for someone else
    sessions_lost: int = 0  # rejoin_after_unacked reached


class NodeStateError(ValueError):
    """A node state file that cannot be used (corrupt, or another node's)."""


class SimNode:
    """Simulated node firmware: joins, periodic confirmed reports, commands.

    State (EUI, root key, session and counters, report counter, pending uplinks, relay,
    interval, recent commands) is written to ``state_path`` (JSON) before every transmission
    that depends on it, so a restarted node continues where it stopped.
    """

    def __init__(
        self,
        eui: int,
        root_key: bytes,
        link: NodeAirLink,
        *,
        config: NodeConfig | None = None,
        state_path: Path | None = None,
        rng: random.Random | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.eui = eui
        self.root_key = root_key
        self.link = link
        self.config = config or NodeConfig()
        self.state_path = state_path
        self._rng = rng or random.Random(eui)
        self._random_bytes = random_bytes
        self.stats = NodeStats()
        self.session: NodeSession | None = None
        self.dev_nonce: bytes | None = None
        self.report_counter = 0
        self.pending: list[PendingUplink] = []
        self.recent_commands: list[tuple[int, ResultCode, str | None]] = []
        self.executed: list[ExecutedCommand] = []
        self.relay = False
        self.interval_s = self.config.report_interval_s
        self.last_rssi: float | None = None
        self._join_failures = 0
        self._unacked_in_a_row = 0
        self._next_report_at = 0.0
        self._next_uplink_at = 0.0
        self._next_join_at = 0.0
        self._stopping = asyncio.Event()
        if state_path is not None and state_path.exists():
            self._load(state_path)

    @property
    def device_id(self) -> str:
        return lora_device_id(self.eui)

    @property
    def joined(self) -> bool:
        return self.session is not None

    @property
    def address(self) -> int | None:
        return self.session.address if self.session is not None else None

    # ----------------------------------------------------------------------------- main loop

    async def run(self) -> None:
        """Run until ``stop()`` (or cancellation; the state file is always consistent).

        A stop requested before ``run`` starts ends it at once; a node that stopped can be
        run again (powered on), continuing from its state.
        """
        loop = asyncio.get_running_loop()
        self._next_report_at = self._next_uplink_at = self._next_join_at = loop.time()
        while not self._stopping.is_set():
            now = loop.time()
            if now >= self._next_report_at:
                self._enqueue_report()
                self._next_report_at = now + self.interval_s
            wake = self._next_report_at
            if self.session is None:
                if now >= self._next_join_at:
                    await self._join()
                    continue
                wake = min(wake, self._next_join_at)
            elif self.pending:
                if now >= self._next_uplink_at:
                    await self._send_head()
                    continue
                wake = min(wake, self._next_uplink_at)
            await self._sleep(wake - now)
        self._stopping.clear()  # the stop is used up: a later run() powers the node on again

    def stop(self) -> None:
        self._stopping.set()

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    def _wait(self, seconds: float) -> float:
        return seconds * (1 - self._rng.uniform(0, self.config.jitter))

    def _backoff(self, attempt: int, low: float, high: float) -> float:
        """Before retry ``attempt`` (1, 2, ...): doubling from ``low`` up to ``high``, jittered."""
        return backoff_delay(
            attempt - 1,
            first_s=low,
            max_s=high,
            jitter=self.config.jitter,
            draw=self._rng.random(),
        )

    async def _listen(
        self, tx_done: float, delay_s: float, wanted: Callable[[bytes], bool]
    ) -> tuple[bytes, float, float] | None:
        """Receive window: open ``delay_s`` after TxDone, a little early for clock error.

        A frame that is not for this node (another node's uplink, another node's downlink)
        does not close the window: the receiver is armed again until the window ends.
        """
        loop = asyncio.get_running_loop()
        opens = tx_done + delay_s - self.config.rx_early_s
        closes = opens + self.config.rx_window_s + self.config.rx_early_s
        await asyncio.sleep(max(0.0, opens - loop.time()))
        while (left := closes - loop.time()) > 0:
            heard = await self.link.receive(left)
            if heard is None or wanted(heard[0]):
                return heard
            self.stats.foreign_frames += 1
        return None

    # ---------------------------------------------------------------------------------- join

    async def _join(self) -> None:
        loop = asyncio.get_running_loop()
        dev_nonce = self._random_bytes(crypto.NONCE_LEN)
        self.dev_nonce = dev_nonce
        self._save()  # a nonce is never sent before it is stored
        self.stats.join_attempts += 1
        await self.link.transmit(join_request(self.eui, self.root_key, dev_nonce))
        heard = await self._listen(loop.time(), self.config.join_rx_delay_s, _is_join_answer)
        wait_at_least = 0.0
        if heard is not None:
            try:
                answer = open_join_answer(heard[0], self.eui, self.root_key, dev_nonce)
            except FrameRejected:
                answer = None
            if isinstance(answer, JoinAccept):
                self._start_session(
                    NodeSession.from_accept(self.eui, self.root_key, dev_nonce, answer)
                )
                return
            if isinstance(answer, JoinRefusedFrame):
                self.stats.join_refusals += 1
                wait_at_least = float(answer.retry_after_s)
        self._join_failures += 1
        cfg = self.config
        delay = self._backoff(self._join_failures, cfg.join_backoff_min_s, cfg.join_backoff_max_s)
        self._next_join_at = loop.time() + max(delay, wait_at_least)

    def _start_session(self, session: NodeSession) -> None:
        self.session = session
        self.stats.joins += 1
        self._join_failures = 0
        self._unacked_in_a_row = 0
        for uplink in self.pending:  # frames of the old session are built again
            uplink.counter = None
            uplink.frame = None
            uplink.attempts = 0
        # The gateway is still turning from transmit back to receive: leave it a moment.
        self._next_uplink_at = asyncio.get_running_loop().time() + self.config.next_uplink_gap_s
        self._save()

    def _lose_session(self) -> None:
        self.stats.sessions_lost += 1
        self.session = None
        self._next_join_at = asyncio.get_running_loop().time()
        for uplink in self.pending:
            uplink.counter = None
            uplink.frame = None
        self._save()

    # ------------------------------------------------------------------------------- uplinks

    def _temperature(self) -> float:
        return round(20.0 + self._rng.gauss(0.0, 1.5), 1)

    def _enqueue_report(self) -> None:
        self.report_counter += 1
        body = {
            "counter": self.report_counter,
            "temperature_c": self._temperature(),
            "relay": self.relay,
        }
        self._make_room()
        self.pending.append(PendingUplink(kind="report", body=body))
        self._save()

    def _make_room(self) -> None:
        """Keep the queue bounded: drop the oldest report not yet on air (else the oldest)."""
        if len(self.pending) < self.config.queue_size:
            return
        unsent = [i for i, p in enumerate(self.pending) if p.kind == "report" and p.frame is None]
        dropped = self.pending.pop(unsent[0] if unsent else 0)
        if dropped.kind == "report":
            self.stats.reports_dropped += 1
        else:
            self.stats.uplinks_given_up += 1

    def _enqueue_result(self, ref: int, status: ResultCode, detail: str | None) -> None:
        if any(p.kind == "result" and p.command_ref == ref for p in self.pending):
            return
        self._make_room()
        # Results go ahead of queued reports (never ahead of a frame already on air).
        position = 0
        while position < len(self.pending) and (
            self.pending[position].frame is not None or self.pending[position].kind == "result"
        ):
            position += 1
        self.pending.insert(
            position, PendingUplink(kind="result", command_ref=ref, status=status, detail=detail)
        )

    async def _send_head(self) -> None:
        session = self.session
        assert session is not None
        loop = asyncio.get_running_loop()
        head = self.pending[0]
        if head.frame is None:
            if head.kind == "report":
                head.counter, head.frame = session.report(head.body)
            else:
                head.counter, head.frame = session.result(
                    head.command_ref, head.status, head.detail
                )
            self._save()  # the counter is stored before the frame is on air
        head.attempts += 1
        self.stats.transmissions += 1
        if head.attempts == 1:
            if head.kind == "report":
                self.stats.reports_sent += 1
            else:
                self.stats.results_sent += 1
        else:
            self.stats.retransmissions += 1
        await self.link.transmit(head.frame)
        heard = await self._listen(
            loop.time(), session.rx_delay_s, partial(_is_downlink_for, session.address)
        )
        arrived = loop.time()
        downlink = self._open(session, heard)
        acked = downlink is not None and downlink.ack_counter == head.counter
        cfg = self.config
        if acked:
            self.stats.acks_received += 1
            self._unacked_in_a_row = 0
            self.pending.remove(head)
            self._next_uplink_at = arrived + self._wait(cfg.next_uplink_gap_s)
        else:
            self._unacked_in_a_row += 1
            if head.attempts >= cfg.max_attempts:
                self.pending.remove(head)
                self.stats.uplinks_given_up += 1
            backoff = self._backoff(head.attempts, cfg.retry_min_s, cfg.retry_max_s)
            self._next_uplink_at = arrived + backoff
        if downlink is not None and downlink.command is not None:
            self._on_command(downlink.command, arrived)
        if self._unacked_in_a_row >= cfg.rejoin_after_unacked:
            self._lose_session()
        self._save()

    def _open(
        self, session: NodeSession, heard: tuple[bytes, float, float] | None
    ) -> Downlink | None:
        if heard is None:
            return None
        phy, rssi, _snr = heard
        try:
            downlink = session.open_downlink(phy)
        except FrameRejected:
            self.stats.downlinks_rejected += 1
            return None
        self.last_rssi = rssi
        return downlink

    # ------------------------------------------------------------------------------ commands

    def _on_command(self, command: DownlinkCommand, arrived: float) -> None:
        for ref, status, detail in self.recent_commands:
            if ref == command.ref:
                self.stats.commands_repeated += 1
                self._enqueue_result(ref, status, detail)
                return
        left = command.ttl_s - (asyncio.get_running_loop().time() - arrived)
        if left <= 0:
            status, detail = ResultCode.EXPIRED, None
            self.stats.commands_expired += 1
        else:
            status, detail = self._execute(command.action, command.params)
            if status is ResultCode.EXECUTED:
                self.stats.commands_executed += 1
            else:
                self.stats.commands_failed += 1
            self.executed.append(
                ExecutedCommand(command.ref, command.action, command.params, command.ttl_s, status)
            )
        self.recent_commands.append((command.ref, status, detail))
        del self.recent_commands[: -self.config.remembered_commands]
        self._enqueue_result(command.ref, status, detail)

    def _execute(self, action: str, params: dict[str, Any]) -> tuple[ResultCode, str | None]:
        if action == "relay":
            on = params.get("on")
            if not isinstance(on, bool) or set(params) != {"on"}:
                return ResultCode.FAILED, 'params must be {"on": true|false}'
            self.relay = on
            return ResultCode.EXECUTED, None
        if action == "set_interval":
            seconds = params.get("seconds")
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not 0 < seconds <= 86_400
                or set(params) != {"seconds"}
            ):
                return ResultCode.FAILED, 'params must be {"seconds": 0 < n <= 86400}'
            self.interval_s = float(seconds)
            self._next_report_at = asyncio.get_running_loop().time() + self.interval_s
            return ResultCode.EXECUTED, None
        if action == "ping":
            return ResultCode.EXECUTED, "pong"
        return ResultCode.FAILED, f"unknown action {action[:32]!r}"

    # --------------------------------------------------------------------------------- state

    def _state(self) -> dict[str, Any]:
        return {
            "eui": f"{self.eui:016x}",
            "root_key": self.root_key.hex(),
            "dev_nonce": self.dev_nonce.hex() if self.dev_nonce is not None else None,
            "session": self.session.to_json() if self.session is not None else None,
            "report_counter": self.report_counter,
            "pending": [uplink.to_json() for uplink in self.pending],
            "recent_commands": [[r, int(s), d] for r, s, d in self.recent_commands],
            "relay": self.relay,
            "interval_s": self.interval_s,
        }

    def _save(self) -> None:
        if self.state_path is None:
            return
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(self._state(), indent=1))
        os.replace(temporary, self.state_path)

    def _load(self, path: Path) -> None:
        try:
            self._restore(json.loads(path.read_text()))
        except NodeStateError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NodeStateError(f"{path}: unreadable node state: {exc!r}") from None

    def _restore(self, data: dict[str, Any]) -> None:
        if int(data["eui"], 16) != self.eui or bytes.fromhex(data["root_key"]) != self.root_key:
            raise NodeStateError(f"{self.state_path}: holds the state of another node")
        self.dev_nonce = bytes.fromhex(data["dev_nonce"]) if data["dev_nonce"] else None
        session = data["session"]
        self.session = NodeSession.from_json(self.eui, self.root_key, session) if session else None
        self.report_counter = int(data["report_counter"])
        self.pending = [PendingUplink.from_json(item) for item in data["pending"]]
        self.recent_commands = [(int(r), ResultCode(s), d) for r, s, d in data["recent_commands"]]
        self.relay = bool(data["relay"])
        self.interval_s = float(data["interval_s"])


def _is_join_answer(phy: bytes) -> bool:
    try:
        return frames.peek(phy).type in frames.JOIN_ANSWER_TYPES
    except FrameRejected:
        return False


def _is_downlink_for(address: int, phy: bytes) -> bool:
    try:
        header = frames.peek(phy)
    except FrameRejected:
        return False
    return header.type is AirFrameType.DOWNLINK and header.address == address
