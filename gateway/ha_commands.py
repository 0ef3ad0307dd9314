"""Home Assistant's plain command payloads, turned into our command envelope (pure).

Every control duogate announces to Home Assistant has a command topic of its own,
``<prefix>/devices/<device>/ha/<entity>/set``, that takes exactly what Home Assistant
publishes there when the entity has no ``command_template``, which is the same on every
release with MQTT discovery:

=========  ====================  ================================================
platform   payload               envelope ``params``
=========  ====================  ================================================
switch     ``ON`` / ``OFF``      ``{"on": true}`` (an action's own parameter) or
                                 ``{"register": "relay", "value": true}`` (write)
number     ``21.5``, ``21``      ``{"seconds": 21}`` or ``{"register": ..., "value": 21.5}``
select     the option's text     ``{"register": ..., "value": "eco"}``
button     ``PRESS``             ``{}`` (the action alone, e.g. ``ping``)
=========  ====================  ================================================

The envelope gets a generated id (``ha-<milliseconds>-<random>``) and the configured
``commands.default_ttl_s`` and is handled like any other MQTT command (origin ``mqtt``); its
results go to ``<prefix>/devices/<device>/command/result``. A payload the entity does not take
(``MAYBE`` for a switch, text for a number) is answered there ``rejected`` with a detail that
says what was expected; it never reaches the device.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from gateway.devices import DeviceInfo
from gateway.ha_catalogue import describe_action, platform_for
from gateway.model import CommandResult, CommandStatus, IncomingCommand

ORIGIN: Final = "mqtt"
CONTROL_PLATFORMS: Final = frozenset({"switch", "number", "select", "button"})
PAYLOAD_ON, PAYLOAD_OFF, PAYLOAD_PRESS = "ON", "OFF", "PRESS"
MAX_PAYLOAD_BYTES: Final = 256  # Home Assistant's payloads here are a few bytes
INVALID_PAYLOAD, UNKNOWN_ENTITY, UNKNOWN_DEVICE = (
    "invalid_payload",
    "unknown_entity",
    "unknown_device",
)
_INTEGER_TYPES: Final = frozenset({"int", "int16", "uint16", "int32", "uint32"})
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_WHOLE_NUMBER = re.compile(r"[+-]?\d+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_id(text: str) -> str:
    """``text`` as a topic level and object id (letters, digits, ``_``, ``-``)."""
    return _UNSAFE.sub("_", text)


def command_topic(topic_prefix: str, device: str, object_id: str) -> str:
    return f"{topic_prefix.rstrip('/')}/devices/{device}/ha/{object_id}/set"


def command_filter(topic_prefix: str) -> str:
    """The one subscription that covers every entity's command topic."""
    return command_topic(topic_prefix, "+", "+")


class PayloadRejected(ValueError):
    """A payload the entity does not take; the message says what it takes."""


@dataclass(frozen=True, slots=True)
class Control:
    """One Home Assistant control of a device and the command it sends."""

    object_id: str
    platform: str  # switch | number | select | button
    action: str
    param: str | None = None  # the action's own parameter: {param: value}
    register: str | None = None  # a write of this reading: {"register": ..., "value": ...}
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    options: tuple[str, ...] = ()

    def params(self, payload: str) -> dict[str, Any]:
        """The envelope's ``params`` for ``payload``; PayloadRejected if it does not fit."""
        if self.platform == "button":
            if payload != PAYLOAD_PRESS:
                raise PayloadRejected(
                    f"{self.object_id} takes {PAYLOAD_PRESS}, got {_shown(payload)}"
                )
            return {}
        value: bool | int | float | str
        if self.platform == "switch":
            if payload not in (PAYLOAD_ON, PAYLOAD_OFF):
                raise PayloadRejected(
                    f"{self.object_id} takes {PAYLOAD_ON} or {PAYLOAD_OFF}, got {_shown(payload)}"
                )
            value = payload == PAYLOAD_ON
        elif self.platform == "select":
            if payload not in self.options:
                choices = ", ".join(self.options)
                raise PayloadRejected(
                    f"{self.object_id} takes one of {choices}, got {_shown(payload)}"
                )
            value = payload
        else:
            value = self._number(payload)
        if self.param is not None:
            return {self.param: value}
        return {"register": self.register, "value": value}

    def _number(self, payload: str) -> int | float:
        if not _NUMBER.fullmatch(payload):
            raise PayloadRejected(f"{self.object_id} takes a number, got {_shown(payload)}")
        number = float(payload)
        if not math.isfinite(number):
            raise PayloadRejected(f"{self.object_id} takes a finite number, got {_shown(payload)}")
        if self.integer and not number.is_integer():
            raise PayloadRejected(f"{self.object_id} takes a whole number, got {_shown(payload)}")
        low, high = self.minimum, self.maximum
        if (low is not None and number < low) or (high is not None and number > high):
            span = f"{_plain(low)}..{_plain(high)}"
            raise PayloadRejected(f"{self.object_id} takes {span}, got {_shown(payload)}")
        if _WHOLE_NUMBER.fullmatch(payload):
            return int(payload)
        return int(number) if self.integer else number


def controls_for(info: DeviceInfo) -> dict[str, Control]:
    """Every control of ``info`` by object id: writable readings, then actions."""
    controls: dict[str, Control] = {}
    for field, meta in sorted(info.fields.items()):
        meta = meta or {}
        platform = platform_for(meta)
        if platform not in CONTROL_PLATFORMS:
            continue
        param = meta.get("param")
        object_id = safe_id(field)
        controls[object_id] = Control(
            object_id=object_id,
            platform=platform,
            action=str(meta.get("action") or "write"),
            param=param if isinstance(param, str) else None,
            register=None if isinstance(param, str) else field,
            minimum=_number_or_none(meta.get("min")),
            maximum=_number_or_none(meta.get("max")),
            integer=meta.get("type") in _INTEGER_TYPES
            and float(meta.get("step") or 1).is_integer(),
            options=tuple(str(option) for option in meta.get("options") or ()),
        )
    for action in info.actions:
        if action == "write":
            continue  # offered through the writable readings
        entry = describe_action(action)
        object_id = f"action_{safe_id(action)}"
        controls[object_id] = Control(
            object_id=object_id,
            platform="number" if entry.param else "button",
            action=action,
            param=entry.param,
            minimum=entry.minimum,
            maximum=entry.maximum,
            integer=float(entry.step).is_integer(),
        )
    return controls


def generated_id(now_wall: float) -> str:
    """Milliseconds and 24 random bits: unlike earlier ids also when the clock was set back
    (a board without a real-time clock boots with an old time until NTP answers)."""
    return f"ha-{int(now_wall * 1000)}-{secrets.token_hex(3)}"


class HaCommands:
    """Turns a message on an entity's command topic into an IncomingCommand, or a rejection.

    ``devices`` gives the devices as discovery announced them (every driver's ``devices()``).
    """

    origin = ORIGIN

    def __init__(
        self,
        *,
        topic_prefix: str,
        ttl_s: float,
        devices: Callable[[], Iterable[DeviceInfo]],
        new_id: Callable[[float], str] = generated_id,
    ) -> None:
        self.topic_prefix = topic_prefix.rstrip("/")
        self.ttl_s = ttl_s
        self._devices = devices
        self._new_id = new_id

    @property
    def topic_filter(self) -> str:
        return command_filter(self.topic_prefix)

    def parse_topic(self, topic: str) -> tuple[str, str] | None:
        """``(device, object_id)`` of an entity command topic, else None."""
        head = f"{self.topic_prefix}/devices/"
        if not (topic.startswith(head) and topic.endswith("/set")):
            return None
        parts = topic[len(head) : -len("/set")].split("/")
        if len(parts) != 3 or parts[1] != "ha" or not parts[0] or not parts[2]:
            return None
        return parts[0], parts[2]

    def incoming(
        self, topic: str, payload: bytes, *, received_mono: float, now_wall: float
    ) -> IncomingCommand | CommandResult | None:
        """The command for ``payload`` on ``topic``; a ``rejected`` result if it does not fit;
        None for a topic that is not an entity's command topic."""
        where = self.parse_topic(topic)
        if where is None:
            return None
        device, object_id = where
        command_id = self._new_id(now_wall)

        def rejected(detail: str) -> CommandResult:
            return CommandResult(command_id, device, CommandStatus.REJECTED, now_wall, detail)

        info = next((d for d in self._devices() if d.device == device), None)
        if info is None:
            return rejected(UNKNOWN_DEVICE)
        control = controls_for(info).get(object_id)
        if control is None:
            return rejected(f"{UNKNOWN_ENTITY}: {device} has no control {object_id!r}")
        if len(payload) > MAX_PAYLOAD_BYTES:
            return rejected(f"{INVALID_PAYLOAD}: {len(payload)} bytes, at most {MAX_PAYLOAD_BYTES}")
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            return rejected(
                f"{INVALID_PAYLOAD}: {object_id} takes text, got bytes that are not UTF-8"
            )
        try:
            params = control.params(text)
        except PayloadRejected as exc:
            return rejected(f"{INVALID_PAYLOAD}: {exc}")
        body = {"id": command_id, "action": control.action, "params": params, "ttl_s": self.ttl_s}
        return IncomingCommand(ORIGIN, device, body, received_mono)


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _plain(number: float | None) -> str:
    return "" if number is None else f"{number:g}"


def _shown(payload: str) -> str:
    return repr(payload if len(payload) <= 32 else payload[:32] + "…")
