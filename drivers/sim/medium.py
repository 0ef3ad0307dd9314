"""A shared LoRa radio medium: time on air, path loss, sensitivity, collisions and capture.

Endpoints (simulated chips, simulated nodes) attach at a position. A transmission occupies the
air from ``loop.time()`` for its time on air (``gateway.protocol.airtime``). Every other endpoint
whose radio is tuned to the frame (frequency within a quarter of the bandwidth, same spreading
factor, bandwidth and sync word, and I/Q polarity: the receiver's RegInvertIQ bit 6 equal to
the sender's inverted bit 0) and is receiving when the frame starts detects it, provided the
received power reaches the sensitivity for its spreading factor and bandwidth and the SNR the
demodulation floor of its spreading factor (``SNR_FLOOR_DB``). A receiver in explicit header
mode never finds a header in an implicit-header frame, and one programmed with a shorter
preamble than the frame's restarts its preamble detection before the sync word comes (datasheet
4.1.1.6: program the receiver with the transmitter's length, or the longest one expected): both
hear nothing (``lost_header``, ``lost_preamble``). The frame is settled at its end:

* lost if the receiver transmitted meanwhile (half duplex);
* lost (``lost_collision``) if another frame on the same channel and spreading factor that was
  not at least ``capture_threshold_db`` weaker at that receiver (for a frame of the opposite
  I/Q polarity, which the demodulator sees as noise: not below the SNR floor) overlapped its
  preamble, sync word or explicit header, or if the receiver had already locked onto an earlier
  frame when it began (one demodulator); a frame that beats every overlapping one by the
  threshold survives (capture);
* lost if a random loss hits it (``loss_probability``);
* damaged if such an interferer only overlapped the payload, after the receiver had locked
  onto the frame, or at random near the SNR floor (``crc_error_probability``): the receiver
  gets it with PayloadCrcError when it checks the CRC, corrupted bytes when it does not.

What the receiver gets follows its own registers where silicon does (``demodulate``): in
explicit header mode the length, coding rate and CRC-on come from the frame's header; in
implicit header mode from the receiver's RegPayloadLength, RegModemConfig1 and RxPayloadCrcOn,
so a receiver whose settings differ from the sender's gets RegPayloadLength bytes that are not
the payload (and a CRC error when it checks). Endpoints implementing ``on_packet`` get every
packet the receiver would report; the others get intact ones through ``on_frame_received``.

Received power follows a log-distance path loss model; the SNR is taken against the thermal
noise floor ``-174 + 10 log10(BW) + NF``. All randomness comes from ``random.Random(seed)``
and is drawn in a fixed order (per frame, per endpoint in attach order), so a scenario replays
the same way under the same seed.

Everything runs on the event loop's thread, except ``channel_power_dbm``, which only reads and
may be called from any thread.
"""

from __future__ import annotations

import asyncio
import binascii
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Literal, Protocol

from drivers.radio.base import RadioSettings
from gateway.protocol.airtime import exact_bandwidth_hz, time_on_air_s

Position = tuple[float, float]

SPEED_OF_LIGHT_M_S = 299_792_458.0
# SX1276 sensitivity at 125 kHz (datasheet receiver table); other bandwidths scale with BW.
SENSITIVITY_125KHZ_DBM = {
    6: -118.0,
    7: -123.0,
    8: -126.0,
    9: -129.0,
    10: -132.0,
    11: -134.5,
    12: -137.0,
}


# Demodulation SNR floor per spreading factor (datasheet 4.1.1.2, Table 13): below it nothing
# is demodulated; just above it packets come through with payload CRC errors now and then.
SNR_FLOOR_DB = {6: -5.0, 7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
# RegPktSnrValue of a strong packet: the SX127x's estimator saturates around +10 dB however
# strong the signal (the register itself could show +31.75).
PACKET_SNR_CEILING_DB = 10.0
PREAMBLE_SYNC_SYMBOLS = 4.25  # sync word and start-of-frame symbols after the preamble
HEADER_BLOCK_SYMBOLS = 8  # the first block, holding the explicit header (datasheet 4.1.1.6)
EXPLICIT_HEADER_BITS = 20  # length, coding rate, CRC-on, header checksum

Role = Literal["gateway", "node"]


def reported_snr_db(snr_db: float) -> float:
    """The packet SNR an SX127x reports for a true SNR: saturated at the ceiling."""
    return min(snr_db, PACKET_SNR_CEILING_DB)


def crc_error_probability(snr_db: float, sf: int) -> float:
    """Chance that a frame received ``snr_db`` above nothing else fails its payload CRC.

    Half of them at the spreading factor's floor, falling e-fold per dB above it (a packet
    error curve as steep as LoRa's: a few dB from most to almost none).
    """
    margin = snr_db - SNR_FLOOR_DB[sf]
    return 1.0 if margin < 0 else 0.5 * math.exp(-margin)


def sensitivity_dbm(sf: int, bw_hz: int) -> float:
    """Weakest receivable signal for a spreading factor and bandwidth."""
    return SENSITIVITY_125KHZ_DBM[sf] + 10 * math.log10(float(exact_bandwidth_hz(bw_hz)) / 125e3)


def noise_floor_dbm(bw_hz: int, noise_figure_db: float = 6.0) -> float:
    return -174.0 + 10 * math.log10(float(exact_bandwidth_hz(bw_hz))) + noise_figure_db


@dataclass(frozen=True, slots=True)
class AirParams:
    """The modem settings a frame is sent with, or a receiver listens with."""

    frequency_hz: int
    spreading_factor: int
    bandwidth_hz: int
    coding_rate: int = 5  # 4/5 .. 4/8 as 5 .. 8
    sync_word: int = 0x12
    preamble_length: int = 8
    explicit_header: bool = True
    crc: bool = True
    low_data_rate: bool | None = None  # None: on when mandatory (symbol time > 16 ms)
    invert_iq_tx: bool = False  # frames go out with I and Q swapped (RegInvertIQ bit 0 clear)
    invert_iq_rx: bool = False  # the receiver expects swapped I and Q (RegInvertIQ bit 6)
    payload_length: int = 1  # RegPayloadLength: what an implicit-header receiver takes

    @classmethod
    def from_settings(cls, settings: RadioSettings, *, role: Role | None = None) -> AirParams:
        """``role`` sets the I/Q polarity as the air protocol wants it: a gateway transmits
        inverted and receives normal, a node the other way round; None leaves both normal (a
        chip's reset state)."""
        return cls(
            frequency_hz=settings.frequency_hz,
            spreading_factor=settings.spreading_factor,
            bandwidth_hz=settings.bandwidth_hz,
            coding_rate=settings.coding_rate,
            sync_word=settings.sync_word,
            preamble_length=settings.preamble_length,
            explicit_header=not settings.implicit_header,
            crc=settings.crc,
            invert_iq_tx=role == "gateway",
            invert_iq_rx=role == "node",
        )

    def symbol_s(self) -> float:
        return float(2**self.spreading_factor / exact_bandwidth_hz(self.bandwidth_hz))

    def lock_s(self) -> float:
        """From a frame's start until a receiver is locked onto it: preamble and sync word,
        and the header with an explicit header (a hit before then loses the frame, later only
        its payload)."""
        symbols = self.preamble_length + PREAMBLE_SYNC_SYMBOLS
        if self.explicit_header:
            symbols += HEADER_BLOCK_SYMBOLS
        return symbols * self.symbol_s()

    def time_on_air_s(self, payload_len: int) -> float:
        return time_on_air_s(
            payload_len,
            self.spreading_factor,
            self.bandwidth_hz,
            self.coding_rate,
            self.preamble_length,
            self.explicit_header,
            self.crc,
            self.low_data_rate,
        )

    def same_channel(self, other: AirParams) -> bool:
        """Frequencies within a quarter of the narrower bandwidth (the LoRa offset tolerance)."""
        tolerance = min(self.bandwidth_hz, other.bandwidth_hz) / 4
        return abs(self.frequency_hz - other.frequency_hz) <= tolerance

    def hears(self, frame: AirParams) -> bool:
        """Whether a receiver with these settings is tuned to a frame sent with ``frame``."""
        return (
            self.same_channel(frame)
            and self.spreading_factor == frame.spreading_factor
            and self.bandwidth_hz == frame.bandwidth_hz
            and self.sync_word == frame.sync_word
            and self.invert_iq_rx == frame.invert_iq_tx
        )

    def cannot_lock(self, frame: AirParams) -> Literal["header", "preamble"] | None:
        """Why a receiver tuned to ``frame`` still never locks onto it, or None."""
        if self.explicit_header and not frame.explicit_header:
            return "header"
        if self.preamble_length < frame.preamble_length:
            return "preamble"
        return None

    def interferes_with(self, other: AirParams) -> bool:
        """Frames collide when they share the channel and the spreading factor."""
        return self.same_channel(other) and self.spreading_factor == other.spreading_factor


@dataclass(frozen=True, slots=True)
class Frame:
    id: int
    sender: str
    payload: bytes
    params: AirParams
    tx_power_dbm: float
    start: float  # loop.time() when the preamble started
    airtime_s: float

    @property
    def end(self) -> float:
        return self.start + self.airtime_s


@dataclass(frozen=True, slots=True)
class ReceivedPacket:
    """What a receiver's modem makes of a frame: the bytes for its FIFO and its flags."""

    payload: bytes
    rssi_dbm: float  # power at the antenna
    snr_db: float  # true SNR (a chip reports ``reported_snr_db`` of it)
    explicit_header: bool  # length, coding rate and CRC-on were taken from a header
    coding_rate: int  # from the header, or the receiver's own in implicit header mode
    crc_on: bool  # the payload CRC was checked (CrcOnPayload)
    crc_error: bool  # ... and failed (PayloadCrcError)


def demodulate(
    receiver: AirParams,
    frame: Frame,
    *,
    damaged: bool,
    rng: random.Random,
    rssi_dbm: float,
    snr_db: float,
) -> ReceivedPacket:
    """The packet a receiver with ``receiver`` settings reports for ``frame``.

    Explicit header (both sides, checked at detection): the frame's payload, with the header's
    coding rate and CRC-on. Implicit header: the receiver reads RegPayloadLength bytes of
    whatever came after the sync word (the sender's header bits, if it sent one, then its
    payload, its CRC, then noise), decoded at its own coding rate (a different one decodes
    nothing but noise), and checks a CRC when its RxPayloadCrcOn says so. Whitening and
    interleaving are not modelled: the wrong bytes are plausible, not the chip's. ``damaged``
    corrupts bytes picked with ``rng``; with a CRC check that is a CRC error.
    """
    params = frame.params
    if receiver.explicit_header:
        payload = _corrupt(frame.payload, rng) if damaged else frame.payload
        return ReceivedPacket(
            payload, rssi_dbm, snr_db, True, params.coding_rate, params.crc, damaged and params.crc
        )
    length = receiver.payload_length
    if receiver.coding_rate != params.coding_rate:
        stream = rng.randbytes(length)
    else:
        stream = frame.payload
        if params.crc:
            stream += binascii.crc_hqx(frame.payload, 0).to_bytes(2, "big")
        if params.explicit_header:
            header = (
                (len(frame.payload) << 12) | ((params.coding_rate - 4) << 9) | (params.crc << 8)
            )
            bits = (header << (8 * len(stream) + 4)) | (int.from_bytes(stream, "big") << 4)
            stream = bits.to_bytes(len(stream) + 3, "big")
        if len(stream) < length:
            stream += rng.randbytes(length - len(stream))
    payload = stream[:length]
    if damaged:
        payload = _corrupt(payload, rng)
    intact = payload == frame.payload and not params.explicit_header and params.crc
    crc_error = receiver.crc and not intact
    return ReceivedPacket(
        payload, rssi_dbm, snr_db, False, receiver.coding_rate, receiver.crc, crc_error
    )


def _corrupt(payload: bytes, rng: random.Random) -> bytes:
    """A few bytes (about one in eight, at least one) changed."""
    if not payload:
        return payload
    damaged = bytearray(payload)
    for _ in range(1 + len(payload) // 8):
        damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
    return bytes(damaged)


class RadioEndpoint(Protocol):
    """What the medium needs from a radio attached to it."""

    def air_params(self) -> AirParams:
        """The current modem settings (whatever the operating mode)."""

    def rx_session(self) -> int | None:
        """An id of the current receive period if a new preamble can be detected now, else None."""

    def on_frame_detected(self, session: int, frame: Frame) -> None:
        """A receivable frame started during receive period ``session``."""

    def on_frame_received(self, session: int, frame: Frame, rssi_dbm: float, snr_db: float) -> bool:
        """The frame ended intact; return False if ``session`` is over (the frame is dropped).

        Not called on an endpoint that has ``on_packet``."""

    def on_frame_failed(self, session: int, frame: Frame) -> None:
        """A detected frame was lost (collision, half duplex, random loss, sender stopped)."""


class PacketEndpoint(RadioEndpoint, Protocol):
    """An endpoint that takes every packet its modem reports, CRC errors and wrong bytes too
    (the medium calls ``on_packet`` on any endpoint that has it)."""

    def on_packet(self, session: int, frame: Frame, packet: ReceivedPacket) -> bool:
        """RxDone for ``frame``; return False if ``session`` is over (the packet is dropped)."""


@dataclass(slots=True)
class MediumStats:
    frames_sent: int = 0
    delivered: int = 0  # handed over intact
    captured: int = 0  # delivered although another frame overlapped it
    crc_errors: int = 0  # handed over with PayloadCrcError (partial collision, near the floor)
    corrupted: int = 0  # handed over with wrong bytes and no CRC check to tell
    lost_collision: int = 0
    lost_sensitivity: int = 0
    lost_header: int = 0  # an explicit-header receiver found no header (implicit frame)
    lost_preamble: int = 0  # the receiver's programmed preamble was shorter than the frame's
    lost_random: int = 0
    lost_half_duplex: int = 0
    lost_receiver_left: int = 0  # the receiver stopped receiving or retuned before the end
    lost_aborted: int = 0  # the sender stopped transmitting before the end
    not_listening: int = 0  # tuned to the frame but not receiving when it started

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Attachment:
    name: str
    position: Position


@dataclass(eq=False, slots=True)
class _Reception:
    session: int
    rssi_dbm: float
    snr_db: float
    random_loss: bool
    near_floor_error: bool  # the payload fails near the SNR floor
    rng: random.Random  # bytes this receiver gets wrong, if any
    half_duplex: bool = False


@dataclass(eq=False, slots=True)
class _Transmission:
    frame: Frame
    sender: RadioEndpoint
    end: float
    power_at: dict[RadioEndpoint, float]
    loss_roll: dict[RadioEndpoint, float]
    error_roll: dict[RadioEndpoint, float] = field(default_factory=dict)
    damage_seed: dict[RadioEndpoint, int] = field(default_factory=dict)
    receptions: dict[RadioEndpoint, _Reception] = field(default_factory=dict)
    finished: bool = False
    aborted: bool = False
    handle: asyncio.TimerHandle | None = None

    def overlaps(self, other: _Transmission) -> bool:
        return self.frame.start < other.end and other.frame.start < self.end


class RfMedium:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        seed: int = 0,
        path_loss_exponent: float = 2.7,
        reference_distance_m: float = 1.0,
        reference_loss_db: float | None = None,
        noise_figure_db: float = 6.0,
        capture_threshold_db: float = 6.0,
        loss_probability: float = 0.0,
        shadowing_sigma_db: float = 0.0,
    ) -> None:
        """``reference_loss_db`` is the loss at ``reference_distance_m``; None uses free space."""
        if not path_loss_exponent > 0:
            raise ValueError(f"path_loss_exponent must be > 0, got {path_loss_exponent}")
        if not reference_distance_m > 0:
            raise ValueError(f"reference_distance_m must be > 0, got {reference_distance_m}")
        if not 0.0 <= loss_probability <= 1.0:
            raise ValueError(f"loss_probability must be in 0..1, got {loss_probability}")
        if not shadowing_sigma_db >= 0:
            raise ValueError(f"shadowing_sigma_db must be >= 0, got {shadowing_sigma_db}")
        self.loop = loop
        self.path_loss_exponent = path_loss_exponent
        self.reference_distance_m = reference_distance_m
        self.reference_loss_db = reference_loss_db
        self.noise_figure_db = noise_figure_db
        self.capture_threshold_db = capture_threshold_db
        self.loss_probability = loss_probability
        self.shadowing_sigma_db = shadowing_sigma_db
        self.stats = MediumStats()
        self._rng = random.Random(seed)
        self._endpoints: dict[RadioEndpoint, _Attachment] = {}
        self._transmissions: list[_Transmission] = []
        self._next_id = 1

    # --- endpoints ---------------------------------------------------------------------------

    def attach(
        self, endpoint: RadioEndpoint, *, position: Position = (0.0, 0.0), name: str | None = None
    ) -> None:
        if endpoint in self._endpoints:
            raise ValueError(f"{self._endpoints[endpoint].name} is already attached")
        label = name if name is not None else f"endpoint-{len(self._endpoints) + 1}"
        self._endpoints[endpoint] = _Attachment(label, _position(position))

    def detach(self, endpoint: RadioEndpoint) -> None:
        self._endpoints.pop(endpoint, None)

    def move(self, endpoint: RadioEndpoint, position: Position) -> None:
        self._attachment(endpoint).position = _position(position)

    def position(self, endpoint: RadioEndpoint) -> Position:
        return self._attachment(endpoint).position

    def name(self, endpoint: RadioEndpoint) -> str:
        return self._attachment(endpoint).name

    def _attachment(self, endpoint: RadioEndpoint) -> _Attachment:
        try:
            return self._endpoints[endpoint]
        except KeyError:
            raise ValueError("endpoint is not attached to this medium") from None

    # --- propagation -------------------------------------------------------------------------

    def path_loss_db(self, distance_m: float, frequency_hz: float) -> float:
        d0 = self.reference_distance_m
        if self.reference_loss_db is None:
            wavelength = SPEED_OF_LIGHT_M_S / frequency_hz
            reference = 20 * math.log10(4 * math.pi * d0 / wavelength)
        else:
            reference = self.reference_loss_db
        return reference + 10 * self.path_loss_exponent * math.log10(max(distance_m, d0) / d0)

    def received_power_dbm(
        self,
        sender: RadioEndpoint,
        receiver: RadioEndpoint,
        tx_power_dbm: float,
        frequency_hz: float,
    ) -> float:
        """Mean received power between two attached endpoints (no shadowing)."""
        (x1, y1), (x2, y2) = self.position(sender), self.position(receiver)
        return tx_power_dbm - self.path_loss_db(math.hypot(x2 - x1, y2 - y1), frequency_hz)

    def noise_floor_dbm(self, bw_hz: int) -> float:
        return noise_floor_dbm(bw_hz, self.noise_figure_db)

    # --- air ---------------------------------------------------------------------------------

    def transmit(
        self, sender: RadioEndpoint, payload: bytes, params: AirParams, tx_power_dbm: float
    ) -> Frame:
        """Put a frame on the air now; it ends ``params.time_on_air_s(len(payload))`` later."""
        self._attachment(sender)
        if not isinstance(payload, bytes | bytearray) or len(payload) > 255:
            raise ValueError("payload must be at most 255 bytes")
        now = self.loop.time()
        frame = Frame(
            id=self._next_id,
            sender=self.name(sender),
            payload=bytes(payload),
            params=params,
            tx_power_dbm=float(tx_power_dbm),
            start=now,
            airtime_s=params.time_on_air_s(len(payload)),
        )
        self._next_id += 1
        self.stats.frames_sent += 1
        # A radio that starts transmitting loses whatever it was receiving.
        for other in self._active():
            reception = other.receptions.get(sender)
            if reception is not None:
                reception.half_duplex = True
        tx = _Transmission(frame, sender, frame.end, {}, {})
        for endpoint in self._endpoints:
            if endpoint is sender:
                continue
            power = self.received_power_dbm(sender, endpoint, tx_power_dbm, params.frequency_hz)
            if self.shadowing_sigma_db > 0:
                power += self._rng.gauss(0.0, self.shadowing_sigma_db)
            tx.power_at[endpoint] = power
            tx.loss_roll[endpoint] = self._rng.random()
            tx.error_roll[endpoint] = self._rng.random()
            tx.damage_seed[endpoint] = self._rng.getrandbits(32)
        self._transmissions.append(tx)
        self._detect(tx)
        tx.handle = self.loop.call_at(tx.end, self._finish, tx)
        return frame

    def abort(self, sender: RadioEndpoint) -> None:
        """The sender stopped transmitting early: its frame ends now and reaches nobody."""
        now = self.loop.time()
        for tx in self._active():
            if tx.sender is sender:
                tx.aborted = True
                tx.end = min(tx.end, now)
                if tx.handle is not None:
                    tx.handle.cancel()
                tx.handle = self.loop.call_soon(self._finish, tx)

    def transmitting(self, endpoint: RadioEndpoint) -> bool:
        return any(tx.sender is endpoint for tx in self._active())

    def channel_busy(self, endpoint: RadioEndpoint, params: AirParams) -> bool:
        """A frame receivable with ``params`` is on the air at ``endpoint`` now (for CAD)."""
        now = self.loop.time()
        limit = sensitivity_dbm(params.spreading_factor, params.bandwidth_hz)
        return any(
            tx.frame.start <= now < tx.end
            and params.hears(tx.frame.params)
            and tx.power_at.get(endpoint, -math.inf) >= limit
            for tx in list(self._transmissions)
        )

    def channel_power_dbm(self, endpoint: RadioEndpoint, params: AirParams) -> float:
        """Noise plus every frame on the channel at ``endpoint`` now (for the RSSI register)."""
        now = self.loop.time()
        total_mw = 10 ** (self.noise_floor_dbm(params.bandwidth_hz) / 10)
        for tx in list(self._transmissions):
            if tx.frame.start <= now < tx.end and params.same_channel(tx.frame.params):
                total_mw += 10 ** (tx.power_at.get(endpoint, -math.inf) / 10)
        return 10 * math.log10(total_mw)

    def _active(self) -> Iterator[_Transmission]:
        return (tx for tx in list(self._transmissions) if not tx.finished)

    def _detect(self, tx: _Transmission) -> None:
        params = tx.frame.params
        for endpoint, power in tx.power_at.items():
            rx_params = endpoint.air_params()
            if not rx_params.hears(params):
                continue
            if self.transmitting(endpoint):
                self.stats.lost_half_duplex += 1
                continue
            session = endpoint.rx_session()
            if session is None:
                self.stats.not_listening += 1
                continue
            snr = power - self.noise_floor_dbm(rx_params.bandwidth_hz)
            sf = rx_params.spreading_factor
            if power < sensitivity_dbm(sf, rx_params.bandwidth_hz) or snr < SNR_FLOOR_DB[sf]:
                self.stats.lost_sensitivity += 1
                continue
            why_not = rx_params.cannot_lock(params)
            if why_not == "header":
                self.stats.lost_header += 1
                continue
            if why_not == "preamble":
                self.stats.lost_preamble += 1
                continue
            tx.receptions[endpoint] = _Reception(
                session=session,
                rssi_dbm=power,
                snr_db=snr,
                random_loss=tx.loss_roll[endpoint] < self.loss_probability,
                near_floor_error=tx.error_roll[endpoint] < crc_error_probability(snr, sf),
                rng=random.Random(tx.damage_seed[endpoint]),
            )
            endpoint.on_frame_detected(session, tx.frame)

    def _finish(self, tx: _Transmission) -> None:
        if tx.finished:
            return
        tx.finished = True
        for endpoint, reception in tx.receptions.items():
            self._settle(tx, endpoint, reception)
        self._prune()

    def _settle(self, tx: _Transmission, endpoint: RadioEndpoint, reception: _Reception) -> None:
        """Decide one detected frame's fate at one receiver, count it and tell the receiver."""
        stats = self.stats
        fatal, payload_hit, overlapped = self._interference(tx, endpoint, reception)
        if tx.aborted:
            stats.lost_aborted += 1
        elif reception.half_duplex:
            stats.lost_half_duplex += 1
        elif endpoint not in self._endpoints or not endpoint.air_params().hears(tx.frame.params):
            stats.lost_receiver_left += 1
        elif fatal:
            stats.lost_collision += 1
        elif reception.random_loss:
            stats.lost_random += 1
        else:
            packet = demodulate(
                endpoint.air_params(),
                tx.frame,
                damaged=payload_hit or reception.near_floor_error,
                rng=reception.rng,
                rssi_dbm=reception.rssi_dbm,
                snr_db=reception.snr_db,
            )
            intact = packet.payload == tx.frame.payload and not packet.crc_error
            if not self._hand_over(endpoint, reception.session, tx.frame, packet, intact):
                stats.lost_receiver_left += 1  # the endpoint knows its receive period is over
            elif packet.crc_error:
                stats.crc_errors += 1
            elif not intact:
                stats.corrupted += 1
            else:
                stats.delivered += 1
                if overlapped:
                    stats.captured += 1
            return
        endpoint.on_frame_failed(reception.session, tx.frame)

    def _interference(
        self, tx: _Transmission, endpoint: RadioEndpoint, reception: _Reception
    ) -> tuple[bool, bool, bool]:
        """(lost, payload damaged, anything overlapped) for ``tx`` at ``endpoint``."""
        params = tx.frame.params
        locked_at = tx.frame.start + params.lock_s()
        fatal = payload_hit = overlapped = False
        for other in self._transmissions:
            if (
                other is tx
                or other.sender is endpoint
                or endpoint not in other.power_at
                or not other.frame.params.interferes_with(params)
                or not other.overlaps(tx)
            ):
                continue
            overlapped = True
            earlier = other.receptions.get(endpoint)
            if (
                earlier is not None
                and earlier.session == reception.session
                and other.frame.start + other.frame.params.lock_s() <= tx.frame.start
            ):
                fatal = True  # the receiver was locked onto the other frame when this began
                continue
            if other.frame.params.invert_iq_tx == params.invert_iq_tx:
                margin_needed = self.capture_threshold_db
            else:
                margin_needed = SNR_FLOOR_DB[params.spreading_factor]
            if reception.rssi_dbm - other.power_at[endpoint] >= margin_needed:
                continue
            if other.frame.start >= locked_at:
                payload_hit = True
            else:
                fatal = True
        return fatal, payload_hit, overlapped

    @staticmethod
    def _hand_over(
        endpoint: RadioEndpoint, session: int, frame: Frame, packet: ReceivedPacket, intact: bool
    ) -> bool:
        on_packet = getattr(endpoint, "on_packet", None)
        if on_packet is not None:
            return on_packet(session, frame, packet)
        if intact:
            return endpoint.on_frame_received(session, frame, packet.rssi_dbm, packet.snr_db)
        endpoint.on_frame_failed(session, frame)  # its radio drops what it cannot use
        return True

    def _prune(self) -> None:
        """Forget finished frames that can no longer overlap a frame still on the air."""
        active_starts = [tx.frame.start for tx in self._transmissions if not tx.finished]
        if not active_starts:
            self._transmissions.clear()
            return
        horizon = min(active_starts)
        self._transmissions = [
            tx for tx in self._transmissions if not tx.finished or tx.end > horizon
        ]


def _position(position: Position) -> Position:
    x, y = position
    return (float(x), float(y))
