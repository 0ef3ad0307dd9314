"""The gateway's XMPP payloads in namespace ``urn:duogate:1``: building and parsing them.

No I/O here. Reports and events ride in ``<message/>`` stanzas, commands arrive in
``<iq type='set'/>`` and results go back in the IQ answer. JSON-valued fields (report data,
event detail, command params) are carried as the JSON text of one child element, so their
types survive unchanged (the same JSON the MQTT upstream publishes).
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, ClassVar

from slixmpp import Iq, Message
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

from gateway.model import CommandResult, DeviceEvent, Report
from gateway.timefmt import parse_rfc3339

NS = "urn:duogate:1"
AMP_NS = "http://jabber.org/protocol/amp"


# Characters XML 1.0 cannot carry at all; one of them in a stanza would end the stream.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` with characters XML cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


class UnsendablePayload(ValueError):
    """A record whose data is not plain JSON (NaN, bytes, ...); sending again will not help."""


class MalformedCommand(ValueError):
    """A command stanza that cannot be turned into an envelope; the text is one line."""


def _json_child(element: ElementBase, name: str, value: Any) -> None:
    child = element.xml.find(f"{{{NS}}}{name}")
    if child is None:
        child = ET.SubElement(element.xml, f"{{{NS}}}{name}")
    try:
        # ASCII-only JSON: every character outside it is a \u escape, so any string is safe XML.
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnsendablePayload(f"{name} is not plain JSON: {exc}") from None
    child.text = text


def _json_child_value(element: ElementBase, name: str) -> Any:
    child = element.xml.find(f"{{{NS}}}{name}")
    if child is None or not (child.text or "").strip():
        return None
    return json.loads(child.text or "")


def _number_text(value: float | None) -> str | None:
    if value is None:
        return None
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class ReportElement(ElementBase):
    """``<report xmlns='urn:duogate:1' id device kind ts seq rssi snr><data>{json}</data>``."""

    namespace = NS
    name = "report"
    plugin_attrib = "duogate_report"
    interfaces: ClassVar[set[str]] = {"id", "device", "kind", "ts", "seq", "rssi", "snr", "data"}

    def set_data(self, value: dict[str, Any]) -> None:
        _json_child(self, "data", value)

    def get_data(self) -> Any:
        return _json_child_value(self, "data")

    def to_wire(self) -> dict[str, Any]:
        """The same dict as ``Report.to_wire()`` on the sending side."""
        rssi, snr = self["rssi"], self["snr"]
        return {
            "id": self["id"],
            "device": self["device"],
            "kind": self["kind"],
            "ts": self["ts"],
            "seq": int(self["seq"]),
            "rssi": float(rssi) if rssi else None,
            "snr": float(snr) if snr else None,
            "data": self["data"],
        }


class EventElement(ElementBase):
    """``<event xmlns='urn:duogate:1' device event ts><detail>{json}</detail></event>``."""

    namespace = NS
    name = "event"
    plugin_attrib = "duogate_event"
    interfaces: ClassVar[set[str]] = {"device", "event", "ts", "detail"}

    def set_detail(self, value: dict[str, Any]) -> None:
        if value:
            _json_child(self, "detail", value)

    def get_detail(self) -> dict[str, Any]:
        return _json_child_value(self, "detail") or {}


class CommandElement(ElementBase):
    """``<command xmlns='urn:duogate:1' device id action expires ttl_s><params>{json}</params>``.

    Its plugin name is ``duogate_command`` because ``command`` belongs to XEP-0050.
    """

    namespace = NS
    name = "command"
    plugin_attrib = "duogate_command"
    interfaces: ClassVar[set[str]] = {"device", "id", "action", "expires", "ttl_s", "params"}

    def set_params(self, value: dict[str, Any]) -> None:
        _json_child(self, "params", value)

    def get_params(self) -> Any:
        return _json_child_value(self, "params")


class ResultElement(ElementBase):
    """``<result xmlns='urn:duogate:1' id device status ts detail/>``."""

    namespace = NS
    name = "result"
    plugin_attrib = "duogate_result"
    interfaces: ClassVar[set[str]] = {"id", "device", "status", "ts", "detail"}


def register_stanza_plugins() -> None:
    """Teach slixmpp our payloads (idempotent); both the gateway and its peers call this."""
    register_stanza_plugin(Message, ReportElement)
    register_stanza_plugin(Message, EventElement)
    register_stanza_plugin(Message, ResultElement)
    register_stanza_plugin(Iq, CommandElement)
    register_stanza_plugin(Iq, ResultElement)


def fill_report(element: ReportElement, report: Report) -> None:
    wire = report.to_wire()
    element["id"] = xml_text(wire["id"])
    element["device"] = xml_text(wire["device"])
    element["kind"] = xml_text(wire["kind"])
    element["ts"] = wire["ts"]
    element["seq"] = str(wire["seq"])
    element["rssi"] = _number_text(wire["rssi"])
    element["snr"] = _number_text(wire["snr"])
    element["data"] = wire["data"]


def fill_event(element: EventElement, event: DeviceEvent) -> None:
    wire = event.to_wire()
    element["device"] = xml_text(event.device)
    element["event"] = xml_text(wire["event"])
    element["ts"] = wire["ts"]
    element["detail"] = dict(event.detail)


def fill_result(element: ResultElement, result: CommandResult) -> None:
    wire = result.to_wire()
    element["id"] = xml_text(wire["id"])
    element["device"] = xml_text(result.device)
    element["status"] = wire["status"]
    element["ts"] = wire["ts"]
    if result.detail is not None:
        element["detail"] = xml_text(result.detail)


def report_summary(report: Report) -> str:
    """A one-line human-readable body for people reading reports in a chat client."""
    readings = ", ".join(f"{key}={value}" for key, value in sorted(report.data.items()))
    return xml_text(f"{report.device}: {readings}" if readings else report.device)


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    device: str
    body: dict[str, Any]
    expiry_s: float | None  # from XEP-0079 expire-at; 0 when it has already passed


def parse_command(iq: ET.Element, *, now: float) -> ParsedCommand:
    """Turn an ``<iq type='set'>`` holding our ``<command/>`` into an envelope.

    Only the XML structure is judged here: a device attribute, params that are a JSON object,
    a readable XEP-0079 ``expire-at``. The envelope (id, action, expiry rules) is judged by
    the bridge. ``now`` is the Unix time of arrival. Raises MalformedCommand.
    """
    command = iq.find(f"{{{NS}}}command")
    if command is None:
        raise MalformedCommand("no <command xmlns='urn:duogate:1'/> element")
    device = (command.get("device") or "").strip()
    if not device:
        raise MalformedCommand("command has no device attribute")
    body: dict[str, Any] = {}
    for attribute in ("id", "action"):
        value = command.get(attribute)
        if value is not None:
            body[attribute] = value
    body["params"] = _parse_params(command.find(f"{{{NS}}}params"))
    expires = command.get("expires")
    if expires is not None:
        body["expires_at"] = expires
    ttl = command.get("ttl_s")
    if ttl is not None:
        body["ttl_s"] = _number_or_text(ttl)
    return ParsedCommand(device=device, body=body, expiry_s=_amp_expiry(iq, now))


def _parse_params(element: ET.Element | None) -> dict[str, Any]:
    if element is None or not (element.text or "").strip():
        return {}
    try:
        params = json.loads(element.text or "")
    except json.JSONDecodeError as exc:
        raise MalformedCommand(f"params is not JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(params, dict):
        raise MalformedCommand(f"params must be a JSON object, got {type(params).__name__}")
    return params


def _number_or_text(text: str) -> float | str:
    """A number when it reads as a finite one, else the text for the envelope check to refuse."""
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _amp_expiry(iq: ET.Element, now: float) -> float | None:
    amp = iq.find(f"{{{AMP_NS}}}amp")
    if amp is None:
        amp = iq.find(f"{{{NS}}}command/{{{AMP_NS}}}amp")
    if amp is None:
        return None
    deadlines = []
    for rule in amp.findall(f"{{{AMP_NS}}}rule"):
        if rule.get("condition") != "expire-at":
            continue
        value = rule.get("value") or ""
        try:
            deadlines.append(parse_rfc3339(value))
        except ValueError as exc:
            raise MalformedCommand(f"amp expire-at: {exc}") from None
    if not deadlines:
        return None
    # Already past gives 0, not a negative number: the command then ends as expired.
    return max(0.0, min(deadlines) - now)
