"""XMPP payloads and the outcome -> IQ answer table, without a server."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from slixmpp import Message

from gateway.model import CommandResult, CommandStatus, DeviceEvent, EventKind, Report
from gateway.upstreams.xmpp_adhoc import _command_from_form
from gateway.upstreams.xmpp_outcomes import FORBIDDEN, IqAnswer, iq_answer_for
from gateway.upstreams.xmpp_stanzas import (
    AMP_NS,
    NS,
    MalformedCommand,
    UnsendablePayload,
    fill_event,
    fill_report,
    parse_command,
    register_stanza_plugins,
    report_summary,
)

NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def _result(status: CommandStatus, detail: str | None = None) -> CommandResult:
    return CommandResult(
        id="c1", device="lora-0000000000000001", status=status, ts=NOW, detail=detail
    )


@pytest.mark.parametrize(
    ("status", "detail", "expected"),
    [
        (CommandStatus.EXECUTED, None, IqAnswer("result")),
        (
            CommandStatus.FAILED,
            "relay stuck",
            IqAnswer("error", "undefined-condition", "cancel", "relay stuck"),
        ),
        (
            CommandStatus.EXPIRED,
            "expired 2.0 s ago",
            IqAnswer("error", "not-acceptable", "modify", "expired 2.0 s ago", "expired"),
        ),
        (
            CommandStatus.REJECTED,
            "unknown device lora-00000000000000ff",
            IqAnswer("error", "item-not-found", "cancel", "unknown device lora-00000000000000ff"),
        ),
        (
            CommandStatus.REJECTED,
            "unknown_device",
            IqAnswer("error", "item-not-found", "cancel", "unknown_device"),
        ),
        (
            CommandStatus.REJECTED,
            "action is missing",
            IqAnswer("error", "bad-request", "modify", "action is missing"),
        ),
        (
            CommandStatus.REJECTED,
            None,
            IqAnswer("error", "bad-request", "modify", "malformed command"),
        ),
        (
            CommandStatus.TIMEOUT,
            None,
            IqAnswer("error", "remote-server-timeout", "wait", "device did not answer in time"),
        ),
        (CommandStatus.ACCEPTED, None, None),
        (CommandStatus.SENT, None, None),
    ],
)
def test_outcome_table(status, detail, expected):
    assert iq_answer_for(_result(status, detail)) == expected


def test_every_final_status_answers_the_iq():
    for status in CommandStatus:
        assert (iq_answer_for(_result(status)) is not None) == status.final


def test_forbidden_answer_is_an_auth_error():
    assert (FORBIDDEN.condition, FORBIDDEN.error_type) == ("forbidden", "auth")


def _iq(inner: str) -> ET.Element:
    return ET.fromstring(
        f"<iq xmlns='jabber:client' type='set' id='q1' xmlns:d='{NS}' xmlns:amp='{AMP_NS}'>"
        f"{inner}</iq>"
    )


def test_parse_command_with_params_expiry_and_ttl():
    parsed = parse_command(
        _iq(
            "<d:command device='lora-0000000000000001' id='c1' action='relay' "
            "expires='2026-09-21T00:00:00Z' ttl_s='30'>"
            '<d:params>{"on": true, "level": 3}</d:params></d:command>'
        ),
        now=NOW,
    )
    assert parsed.device == "lora-0000000000000001"
    assert parsed.body == {
        "id": "c1",
        "action": "relay",
        "params": {"on": True, "level": 3},
        "expires_at": "2026-09-21T00:00:00Z",
        "ttl_s": 30.0,
    }
    assert parsed.expiry_s is None


def test_parse_command_leaves_envelope_judgement_to_the_bridge():
    parsed = parse_command(_iq("<d:command device='x' ttl_s='soon'/>"), now=NOW)
    assert parsed.body == {"params": {}, "ttl_s": "soon"}


def test_amp_expire_at_becomes_transport_expiry():
    parsed = parse_command(
        _iq(
            "<d:command device='d' id='c' action='a'/>"
            "<amp:amp><amp:rule condition='deliver' action='drop' value='stored'/>"
            "<amp:rule condition='expire-at' action='drop' value='2026-09-21T14:13:30Z'/></amp:amp>"
        ),
        now=NOW,
    )
    assert parsed.expiry_s == pytest.approx(10.0)


def test_amp_expire_at_in_the_past_is_passed_on_for_the_bridge_to_expire():
    parsed = parse_command(
        _iq(
            "<d:command device='d' id='c' action='a'/><amp:amp>"
            "<amp:rule condition='expire-at' action='drop' value='2020-01-01T00:00:00Z'/></amp:amp>"
        ),
        now=NOW,
    )
    assert parsed.expiry_s == 0.0


@pytest.mark.parametrize(
    ("inner", "reason"),
    [
        ("<other xmlns='urn:x'/>", "no <command"),
        ("<d:command id='c' action='a'/>", "no device"),
        ("<d:command device=' ' id='c' action='a'/>", "no device"),
        ("<d:command device='d'><d:params>{nope</d:params></d:command>", "params is not JSON"),
        ("<d:command device='d'><d:params>[1, 2]</d:params></d:command>", "JSON object, got list"),
        (
            "<d:command device='d'/><amp:amp>"
            "<amp:rule condition='expire-at' action='drop' value='tomorrow'/></amp:amp>",
            "amp expire-at",
        ),
    ],
)
def test_malformed_command_stanzas(inner, reason):
    with pytest.raises(MalformedCommand, match=reason):
        parse_command(_iq(inner), now=NOW)


def test_report_element_carries_the_mqtt_report_fields():
    register_stanza_plugins()
    report = Report(
        id="r-7",
        device="lora-0000000000000001",
        kind="lora",
        ts=NOW,
        seq=7,
        data={"t": 21.5, "door": "open", "n": [1, 2]},
        rssi=-87.5,
        snr=7.0,
    )
    message = Message()
    fill_report(message["duogate_report"], report)
    parsed = Message(xml=ET.fromstring(str(message)))
    assert parsed["duogate_report"].to_wire() == report.to_wire()


def test_report_without_radio_fields_omits_them():
    register_stanza_plugins()
    report = Report(id="r", device="modbus-bus1-3", kind="modbus", ts=NOW, seq=1, data={})
    message = Message()
    fill_report(message["duogate_report"], report)
    xml = message.xml.find(f"{{{NS}}}report")
    assert xml is not None and "rssi" not in xml.attrib and "snr" not in xml.attrib
    assert Message(xml=ET.fromstring(str(message)))["duogate_report"].to_wire() == report.to_wire()


def test_text_xml_cannot_carry_is_replaced_not_sent():
    register_stanza_plugins()
    report = Report(
        id="r\x01", device="lora-0000000000000001", kind="lora", ts=NOW, seq=1,
        data={"s": "a\x00b\ud800c", "é": "ü"},
    )  # fmt: skip
    message = Message()
    fill_report(message["duogate_report"], report)
    message["body"] = report_summary(report)
    parsed = Message(xml=ET.fromstring(str(message)))
    assert parsed["duogate_report"]["id"] == "r\ufffd"
    assert parsed["duogate_report"]["data"] == {"s": "a\x00b\ud800c", "é": "ü"}
    assert "\ufffd" in parsed["body"]


@pytest.mark.parametrize("data", [{"x": float("nan")}, {"x": b"raw"}, {"x": {1, 2}}])
def test_data_that_is_not_plain_json_is_refused(data):
    register_stanza_plugins()
    report = Report(id="r", device="modbus-bus1-3", kind="modbus", ts=NOW, seq=1, data=data)
    with pytest.raises(UnsendablePayload, match="data is not plain JSON"):
        fill_report(Message()["duogate_report"], report)


def test_event_element():
    register_stanza_plugins()
    event = DeviceEvent(device="ble-a4c138000001", event=EventKind.OFFLINE, ts=NOW, detail={"x": 1})
    message = Message()
    fill_event(message["duogate_event"], event)
    parsed = Message(xml=ET.fromstring(str(message)))["duogate_event"]
    assert (parsed["device"], parsed["event"], parsed["detail"]) == (
        "ble-a4c138000001",
        "offline",
        {"x": 1},
    )


def test_adhoc_form_values_become_an_envelope():
    device, body = _command_from_form(
        {
            "device": "lora-0000000000000001",
            "action": "relay",
            "params": ['{"on":', "true}"],
            "ttl_s": "15",
        }
    )
    assert device == "lora-0000000000000001"
    assert body["action"] == "relay" and body["params"] == {"on": True} and body["ttl_s"] == 15.0
    assert body["id"].startswith("adhoc-")


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"action": "a"}, "device is required"),
        ({"device": "d"}, "action is required"),
        ({"device": "d", "action": "a", "params": "{"}, "params is not JSON"),
        ({"device": "d", "action": "a", "params": "3"}, "JSON object"),
        ({"device": "d", "action": "a", "ttl_s": "-1"}, "positive"),
        ({"device": "d", "action": "a", "ttl_s": "nan"}, "positive"),
        ({"device": "d", "action": "a", "ttl_s": "abc"}, "number of seconds"),
    ],
)
def test_adhoc_form_errors(values, reason):
    with pytest.raises(ValueError, match=reason):
        _command_from_form(values)
