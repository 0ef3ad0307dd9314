"""Command envelope validation: an ``IncomingCommand`` becomes a ``Command`` or a ``Rejection``.

The envelope is a JSON object ``{"id", "action", "params"?, "expires_at"?, "ttl_s"?}`` and
nothing else: an unknown key is rejected, because a misspelt ``ttl`` silently replaced by the
default lifetime is exactly how a stale command gets executed. Every problem gives a stable
reason string (see ``REASONS``); validation never raises.

A command whose ``id`` cannot be read is rejected with ``command_id`` ``""``
(``UNREADABLE_ID``), so the rejection can still be published on the device's result topic
(and matched by MQTT 5 correlation data).

Everything accepted here can be stored and sent on unchanged: a message larger than the
configured limit is refused before it is parsed (``too_large``), every string must be valid
Unicode (a lone UTF-16 surrogate from a ``"\\ud800"`` escape cannot be written as UTF-8 to
SQLite, JSON or XML: ``invalid_text``) and every number finite (``NaN`` and ``Infinity`` are
not JSON: ``invalid_number``).

Pure: the clocks are passed in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.model import Command, CommandResult, CommandStatus, IncomingCommand
from gateway.protocol.expiry import ExpiryPolicy, ExpiryRejected, compute_deadline
from gateway.timefmt import parse_rfc3339

MAX_ID_LENGTH = 64
MAX_ACTION_LENGTH = 64
MAX_PARAMS_DEPTH = 16
UNREADABLE_ID = ""

ENVELOPE_KEYS = frozenset({"id", "action", "params", "expires_at", "ttl_s"})

REASONS = (
    "too_large",  # the message is longer than commands.max_message_bytes
    "invalid_json",  # body text that is not JSON (or not UTF-8)
    "not_an_object",  # JSON, but not an object
    "unknown_field",  # a key other than ENVELOPE_KEYS
    "missing_id",
    "invalid_id",  # not a string of 1..64 characters
    "missing_action",
    "invalid_action",  # not a string of 1..64 characters
    "unknown_device",
    "invalid_params",  # not an object, or nested deeper than MAX_PARAMS_DEPTH
    "invalid_text",  # a string (or key) that is not valid Unicode, e.g. a lone surrogate
    "invalid_number",  # NaN or Infinity in params
    "invalid_expires_at",  # not an RFC 3339 timestamp with offset
    "invalid_ttl_s",  # not a number > 0
    "invalid_transport_expiry",  # negative or NaN transport expiry from the upstream
    "clock_unsynchronised",  # only expires_at given while the wall clock is not set
)

KnownDevices = Callable[[str], bool] | Container[str]


class EnvelopeRejected(ValueError):
    def __init__(self, reason: str, command_id: str = UNREADABLE_ID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a command was refused. ``command_id`` is ``""`` when the id was unreadable."""

    command_id: str
    device: str
    reason: str
    origin: str = ""
    reply_to: dict[str, Any] = field(default_factory=dict)

    def result(self, ts: float) -> CommandResult:
        return CommandResult(
            id=self.command_id,
            device=self.device,
            status=CommandStatus.REJECTED,
            ts=ts,
            detail=self.reason,
        )


@dataclass(frozen=True, slots=True)
class Envelope:
    """The fields of a well-formed envelope; ``expires_at`` as a Unix time."""

    id: str
    action: str
    params: dict[str, Any]
    expires_at: float | None
    ttl_s: float | None


def parse_envelope(body: object, *, max_bytes: int | None = None) -> Envelope:
    """Check the envelope's shape and fields; raise EnvelopeRejected on the first problem.

    ``max_bytes`` limits a body given as text or bytes; a decoded body is measured by the
    upstream that decoded it (``IncomingCommand.size_bytes``).
    """
    if (
        max_bytes is not None
        and isinstance(body, str | bytes | bytearray | memoryview)
        and len(body) > max_bytes
    ):
        raise EnvelopeRejected("too_large")
    obj = _as_object(body)
    command_id = _read_id(obj)
    try:
        unknown = set(obj) - ENVELOPE_KEYS
        if unknown:
            raise EnvelopeRejected("unknown_field")
        action = _bounded_text(obj, "action", MAX_ACTION_LENGTH)
        params = obj.get("params", {})
        if not isinstance(params, dict):
            raise EnvelopeRejected("invalid_params")
        _check_plain(params, MAX_PARAMS_DEPTH)
        expires_at = _read_expires_at(obj.get("expires_at"))
        ttl_s = _read_ttl(obj.get("ttl_s"))
    except EnvelopeRejected as exc:
        raise EnvelopeRejected(exc.reason, command_id) from None
    return Envelope(command_id, action, params, expires_at, ttl_s)


def validate(
    incoming: IncomingCommand,
    known_devices: KnownDevices,
    policy: ExpiryPolicy,
    *,
    now_mono: float,
    now_wall: float,
    max_bytes: int | None = None,
) -> Command | Rejection:
    """Validate ``incoming`` into a Command with a monotonic deadline, or a Rejection.

    ``max_bytes`` is the largest command message taken (``commands.max_message_bytes``).

    The deadline counts from ``incoming.received_mono``; the wall time of arrival is derived
    from ``now_wall``/``now_mono`` read together. A command whose deadline has already passed
    is returned as a Command: check it with ``expiry.check(..., stage=Stage.ARRIVAL)`` and
    answer ``expired``, not ``rejected``.
    """

    def reject(reason: str, command_id: str = UNREADABLE_ID) -> Rejection:
        return Rejection(command_id, incoming.device, reason, incoming.origin, incoming.reply_to)

    if max_bytes is not None and (incoming.size_bytes or 0) > max_bytes:
        return reject("too_large")
    try:
        envelope = parse_envelope(incoming.body, max_bytes=max_bytes)
    except EnvelopeRejected as exc:
        return reject(exc.reason, exc.command_id)
    if not _is_known(known_devices, incoming.device):
        return reject("unknown_device", envelope.id)
    transport = incoming.expiry_s
    if transport is not None and (
        isinstance(transport, bool)
        or not isinstance(transport, int | float)
        or math.isnan(transport)
        or transport < 0
    ):
        return reject("invalid_transport_expiry", envelope.id)
    arrival_wall = now_wall - (now_mono - incoming.received_mono)
    try:
        deadline = compute_deadline(
            policy,
            arrival_mono=incoming.received_mono,
            arrival_wall=arrival_wall,
            expires_at=envelope.expires_at,
            ttl_s=envelope.ttl_s,
            transport_expiry_s=None if transport is None else float(transport),
        )
    except ExpiryRejected as exc:
        return reject(exc.reason, envelope.id)
    return Command(
        id=envelope.id,
        device=incoming.device,
        action=envelope.action,
        params=envelope.params,
        deadline=deadline,
        origin=incoming.origin,
        reply_to=incoming.reply_to,
        carried=incoming.carried,
    )


def _as_object(body: object) -> Mapping[str, Any]:
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeRejected("invalid_json") from None
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            raise EnvelopeRejected("invalid_json") from None
    if not isinstance(body, dict):
        raise EnvelopeRejected("not_an_object")
    return body


def _read_id(obj: Mapping[str, Any]) -> str:
    if "id" not in obj:
        raise EnvelopeRejected("missing_id")
    value = obj["id"]
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH:
        raise EnvelopeRejected("invalid_id")
    if not _is_unicode(value):
        raise EnvelopeRejected("invalid_text")  # an id that cannot be echoed is unreadable
    return value


def _bounded_text(obj: Mapping[str, Any], key: str, max_length: int) -> str:
    if key not in obj:
        raise EnvelopeRejected(f"missing_{key}")
    value = obj[key]
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise EnvelopeRejected(f"invalid_{key}")
    if not _is_unicode(value):
        raise EnvelopeRejected("invalid_text")
    return value


def _is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate, which no UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_plain(value: object, depth: int) -> None:
    """Raise EnvelopeRejected unless ``value`` is plain JSON that can be stored and sent on."""
    if isinstance(value, str):
        if not _is_unicode(value):
            raise EnvelopeRejected("invalid_text")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise EnvelopeRejected("invalid_number")
    elif isinstance(value, dict | list):
        if depth <= 0:
            raise EnvelopeRejected("invalid_params")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and not _is_unicode(key):
                raise EnvelopeRejected("invalid_text")
            _check_plain(item, depth - 1)
    elif value is not None and not isinstance(value, bool | int):
        raise EnvelopeRejected("invalid_params")


def _read_expires_at(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)  # type: ignore[arg-type]
    except (ValueError, OverflowError, OSError):
        raise EnvelopeRejected("invalid_expires_at") from None


def _read_ttl(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnvelopeRejected("invalid_ttl_s")
    try:
        ttl = float(value)
    except OverflowError:
        ttl = math.inf  # a huge integer: capped by max_ttl_s like any long lifetime
    if math.isnan(ttl) or ttl <= 0:
        raise EnvelopeRejected("invalid_ttl_s")
    return ttl


def _is_known(known_devices: KnownDevices, device: str) -> bool:
    if callable(known_devices):
        return bool(known_devices(device))
    return device in known_devices
