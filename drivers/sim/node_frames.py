"""A node's half of a session at frame level, on the node library (``node.frames``, ``node.keys``).

For tests, the benchmark and attack scenarios that need exact frames in hand rather than a
running node: ``join_request``, ``open_join_answer`` and ``NodeSession`` (report, result,
open_downlink) build and open frames with the node library's code, and speak the gateway's
vocabulary: EUIs as integers, answers as ``gateway.protocol.frames`` records, refusals as
``FrameRejected`` with the protocol's reasons. Counters are the caller's to set (``up_next``),
so a test can reuse or skip them on purpose.
"""

from __future__ import annotations

from typing import Any

from gateway.protocol.frames import (
    Downlink,
    DownlinkCommand,
    FrameRejected,
    JoinAccept,
    JoinRefusedFrame,
    ResultCode,
)
from node import frames
from node.cmac import Cmac
from node.keys import SessionKeys, join_key, session_keys


def _eui(eui: int) -> bytes:
    return eui.to_bytes(8, "big")


def join_request(eui: int, root_key: bytes, dev_nonce: bytes) -> bytes:
    return frames.join_request(Cmac(join_key(root_key, _eui(eui))), _eui(eui), dev_nonce)


def open_join_answer(
    phy: bytes, eui: int, root_key: bytes, dev_nonce: bytes
) -> JoinAccept | JoinRefusedFrame:
    """The gateway's answer to our request with this nonce; FrameRejected if it is not."""
    mac = Cmac(join_key(root_key, _eui(eui)))
    try:
        answer = frames.open_join_answer(phy, mac, _eui(eui), dev_nonce)
    except frames.FrameError as exc:
        raise FrameRejected(exc.reason, exc.detail) from None
    if isinstance(answer, frames.JoinRefused):
        return JoinRefusedFrame(answer.reason, answer.retry_after_s)
    return JoinAccept(answer.address, answer.gw_nonce, answer.rx_delay_ds, answer.encrypt)


class NodeSession:
    """The node's half of a session: keys, address and both frame counters."""

    def __init__(
        self,
        eui: int,
        root_key: bytes,
        address: int,
        dev_nonce: bytes,
        gw_nonce: bytes,
        encrypt: bool,
        rx_delay_ds: int,
        up_next: int = 0,
        dl_last: int = -1,
    ) -> None:
        self.eui = eui
        self.root_key = root_key
        self.address = address
        self.dev_nonce = dev_nonce
        self.gw_nonce = gw_nonce
        self.encrypt = encrypt
        self.rx_delay_ds = rx_delay_ds
        self.up_next = up_next  # counter of the next new uplink frame
        self.dl_last = dl_last  # highest downlink counter accepted
        self.keys: SessionKeys = session_keys(root_key, _eui(eui), dev_nonce, gw_nonce)

    @classmethod
    def from_accept(
        cls, eui: int, root_key: bytes, dev_nonce: bytes, accept: JoinAccept
    ) -> NodeSession:
        return cls(
            eui, root_key, accept.address, dev_nonce, accept.gw_nonce, accept.encrypt,
            accept.rx_delay_ds,
        )  # fmt: skip

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
        frame = frames.report(self.keys, self.address, counter, body, confirmed, self.encrypt)
        return counter, frame

    def result(
        self, command_ref: int, status: ResultCode, detail: str | None = None
    ) -> tuple[int, bytes]:
        counter = self._take_counter()
        frame = frames.command_result(
            self.keys, self.address, counter, command_ref, int(status), detail, True, self.encrypt
        )
        return counter, frame

    def open_downlink(self, phy: bytes) -> Downlink:
        """Authenticate a downlink meant for us; FrameRejected for anything else."""
        try:
            downlink = frames.open_downlink(phy, self.keys, self.address)
        except frames.FrameError as exc:
            raise FrameRejected(exc.reason, exc.detail) from None
        if downlink.counter <= self.dl_last:
            raise FrameRejected("replayed_counter", f"{downlink.counter} <= {self.dl_last}")
        if self.encrypt and not downlink.encrypted:
            raise FrameRejected("unencrypted", "session requires encryption")
        self.dl_last = downlink.counter
        command = downlink.command
        return Downlink(
            downlink.address,
            downlink.counter,
            downlink.ack_counter,
            None
            if command is None
            else DownlinkCommand(command.ref, command.action, command.params, command.ttl_ds),
            downlink.encrypted,
        )

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
            eui,
            root_key,
            int(data["address"]),
            bytes.fromhex(data["dev_nonce"]),
            bytes.fromhex(data["gw_nonce"]),
            bool(data["encrypt"]),
            int(data["rx_delay_ds"]),
            int(data["up_next"]),
            int(data["dl_last"]),
        )
