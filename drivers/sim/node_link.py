"""A plain radio on the ``RfMedium`` with an asyncio interface (``NodeAirLink``), for tests of the
medium and of the gateway (a stand-in talker); simulated nodes themselves run the node library
on a register-level chip (``node.py``).

    async transmit(payload) -> airtime_s      returns after TxDone
    async receive(timeout_s) -> (payload, rssi_dbm, snr_db) | None

``receive`` opens a receive window of ``timeout_s``: a frame whose preamble starts inside the
window is awaited to its end even when that is after the window closes; a frame already on the
air when the window opens is not heard. Transmitting and receiving never overlap (half duplex).

A node's radio sends uplinks with normal I/Q and receives downlinks inverted, so nodes do not
hear each other (``role="gateway"`` gives a stand-in for the gateway's radio: the opposite).
A packet with a payload CRC error is dropped, as a node's driver would; the SNR handed on is
the one an SX127x reports (saturated near +10 dB).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from typing import Protocol

from drivers.radio.base import RadioSettings
from drivers.sim.medium import (
    AirParams,
    Frame,
    Position,
    ReceivedPacket,
    RfMedium,
    Role,
    reported_snr_db,
)


class NodeAirLink(Protocol):
    async def transmit(self, payload: bytes) -> float: ...  # returns after TxDone, airtime s

    # (payload, rssi, snr) of a frame whose preamble started within timeout_s, or None
    async def receive(self, timeout_s: float) -> tuple[bytes, float, float] | None: ...


@dataclass(eq=False, slots=True)
class _Window:
    session: int
    closes_at: float
    pending: set[int] = field(default_factory=set)
    result: tuple[bytes, float, float] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MediumNodeLink:
    """A node radio with fixed settings at a position on the medium."""

    def __init__(
        self,
        medium: RfMedium,
        settings: RadioSettings | None = None,
        *,
        distance_m: float = 100.0,
        position: Position | None = None,
        name: str = "node",
        role: Role = "node",
    ) -> None:
        """Placed at ``position``, or ``distance_m`` from the origin (where a gateway sits)."""
        if position is None and not (math.isfinite(distance_m) and distance_m >= 0):
            raise ValueError(f"distance_m must be a finite number >= 0, got {distance_m!r}")
        self.medium = medium
        self.name = name
        self.settings = settings if settings is not None else RadioSettings()
        self.role = role
        self._params = AirParams.from_settings(self.settings, role=role)
        self._windows = 0
        self._window: _Window | None = None
        self._transmitting = False
        medium.attach(self, position=position or (float(distance_m), 0.0), name=name)

    def reconfigure(self, settings: RadioSettings) -> None:
        self.settings = settings
        self._params = AirParams.from_settings(settings, role=self.role)

    def close(self) -> None:
        self.medium.detach(self)

    # --- NodeAirLink -------------------------------------------------------------------------

    async def transmit(self, payload: bytes) -> float:
        if not isinstance(payload, bytes | bytearray) or not 1 <= len(payload) <= 255:
            raise ValueError("payload must be 1..255 bytes")
        if self._transmitting:
            raise RuntimeError(f"{self.name} is already transmitting")
        loop = self.medium.loop
        self._transmitting = True
        try:
            frame = self.medium.transmit(
                self, bytes(payload), self._params, float(self.settings.tx_power_dbm)
            )
            done = loop.create_future()
            handle = loop.call_at(frame.end, _resolve, done)
            try:
                await done
            finally:
                handle.cancel()
                if not done.done() or done.cancelled():
                    self.medium.abort(self)
        finally:
            self._transmitting = False
        return frame.airtime_s

    async def receive(self, timeout_s: float) -> tuple[bytes, float, float] | None:
        if not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s) or timeout_s < 0:
            raise ValueError(f"timeout_s must be a finite number >= 0, got {timeout_s!r}")
        if self._window is not None:
            raise RuntimeError(f"{self.name} is already receiving")
        loop = self.medium.loop
        self._windows += 1
        window = _Window(self._windows, loop.time() + timeout_s)
        self._window = window
        try:
            while window.result is None:
                remaining = window.closes_at - loop.time()
                if remaining <= 0 and not window.pending:
                    return None
                window.changed.clear()
                wait = None if window.pending else remaining
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await window.changed.wait()
            return window.result
        finally:
            self._window = None

    # --- medium endpoint ---------------------------------------------------------------------

    def air_params(self) -> AirParams:
        return self._params

    def rx_session(self) -> int | None:
        window = self._window
        if window is None or self._transmitting or window.result is not None:
            return None
        if self.medium.loop.time() > window.closes_at:
            return None
        return window.session

    def on_frame_detected(self, session: int, frame: Frame) -> None:
        window = self._current(session)
        if window is not None:
            window.pending.add(frame.id)
            window.changed.set()

    def on_frame_received(self, session: int, frame: Frame, rssi_dbm: float, snr_db: float) -> bool:
        packet = ReceivedPacket(
            frame.payload, rssi_dbm, snr_db, True, frame.params.coding_rate, False, False
        )
        return self.on_packet(session, frame, packet)

    def on_packet(self, session: int, frame: Frame, packet: ReceivedPacket) -> bool:
        window = self._current(session)
        if window is None or frame.id not in window.pending or window.result is not None:
            return False
        window.pending.discard(frame.id)
        if not packet.crc_error:
            window.result = (packet.payload, packet.rssi_dbm, reported_snr_db(packet.snr_db))
        window.changed.set()
        return True

    def on_frame_failed(self, session: int, frame: Frame) -> None:
        window = self._current(session)
        if window is not None:
            window.pending.discard(frame.id)
            window.changed.set()

    def _current(self, session: int) -> _Window | None:
        window = self._window
        return window if window is not None and window.session == session else None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
