from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Command, CommandStatus, IncomingCommand
from gateway.protocol.envelope import (
    MAX_ID_LENGTH,
    REASONS,
    UNREADABLE_ID,
    Rejection,
    parse_envelope,
    validate,
)
from gateway.protocol.expiry import CLOCK_SYNC_EPOCH, ExpiryPolicy, Stage, check
from gateway.timefmt import rfc3339

DEVICE = "lora-0011223344556677"
KNOWN = {DEVICE}
POLICY = ExpiryPolicy(default_ttl_s=60.0, max_ttl_s=3600.0)
WALL = CLOCK_SYNC_EPOCH + 86_400.0
MONO = 1_000.0


def incoming(body: Any, *, device: str = DEVICE, expiry_s: float | None = None) -> IncomingCommand:
    return IncomingCommand(
        origin="mqtt",
        device=device,
        body=body,
        received_mono=MONO,
        expiry_s=expiry_s,
        reply_to={"response_topic": "app/replies"},
    )


def run(body: Any, **kwargs: Any) -> Command | Rejection:
    now_wall = kwargs.pop("now_wall", WALL)
    known = kwargs.pop("known", KNOWN)
    return validate(incoming(body, **kwargs), known, POLICY, now_mono=MONO, now_wall=now_wall)


def rejection(body: Any, **kwargs: Any) -> Rejection:
    got = run(body, **kwargs)
    assert isinstance(got, Rejection), got
    return got


def test_minimal_command_gets_default_ttl() -> None:
    got = run({"id": "c1", "action": "unlock"})
    assert got == Command(
        id="c1",
        device=DEVICE,
        action="unlock",
        params={},
        deadline=MONO + 60.0,
        origin="mqtt",
        reply_to={"response_topic": "app/replies"},
    )


def test_full_command() -> None:
    body = {
        "id": "c2",
        "action": "set",
        "params": {"level": 3},
        "expires_at": rfc3339(WALL + 20.0),
        "ttl_s": 30,
    }
    got = run(body)
    assert isinstance(got, Command)
    assert got.params == {"level": 3}
    assert got.deadline == pytest.approx(MONO + 20.0)


def test_json_text_and_bytes_bodies_are_parsed() -> None:
    body = {"id": "c3", "action": "ping", "ttl_s": 5}
    assert isinstance(run(json.dumps(body)), Command)
    assert isinstance(run(json.dumps(body).encode()), Command)


def test_transport_expiry_applies() -> None:
    got = run({"id": "c4", "action": "ping", "ttl_s": 50}, expiry_s=4)
    assert isinstance(got, Command)
    assert got.deadline == MONO + 4.0


def test_arrival_time_is_the_received_time_not_validation_time() -> None:
    # Validated 3 s after it arrived: ttl counts from arrival, expires_at converts with the
    # wall time of arrival.
    item = incoming({"id": "c5", "action": "ping", "expires_at": rfc3339(WALL + 10.0)})
    got = validate(item, KNOWN, POLICY, now_mono=MONO + 3.0, now_wall=WALL + 3.0)
    assert isinstance(got, Command)
    assert got.deadline == pytest.approx(MONO + 10.0)


def test_expired_command_is_a_command_that_check_reports() -> None:
    got = run({"id": "c6", "action": "ping", "expires_at": rfc3339(WALL - 1.0)})
    assert isinstance(got, Command)
    assert check(got, MONO, stage=Stage.ARRIVAL) == "expired_on_arrival"


@pytest.mark.parametrize(
    ("body", "reason", "command_id"),
    [
        ("{not json", "invalid_json", UNREADABLE_ID),
        (b"\xff\xfe", "invalid_json", UNREADABLE_ID),
        ("[1, 2]", "not_an_object", UNREADABLE_ID),
        (42, "not_an_object", UNREADABLE_ID),
        ({"action": "x"}, "missing_id", UNREADABLE_ID),
        ({"id": "", "action": "x"}, "invalid_id", UNREADABLE_ID),
        ({"id": 7, "action": "x"}, "invalid_id", UNREADABLE_ID),
        ({"id": "x" * (MAX_ID_LENGTH + 1), "action": "x"}, "invalid_id", UNREADABLE_ID),
        ({"id": "a"}, "missing_action", "a"),
        ({"id": "a", "action": ""}, "invalid_action", "a"),
        ({"id": "a", "action": ["x"]}, "invalid_action", "a"),
        ({"id": "a", "action": "x", "params": [1]}, "invalid_params", "a"),
        ({"id": "a", "action": "x", "params": None}, "invalid_params", "a"),
        ({"id": "a", "action": "x", "ttl": 5}, "unknown_field", "a"),
        ({"id": "a", "action": "x", "ttl_s": 0}, "invalid_ttl_s", "a"),
        ({"id": "a", "action": "x", "ttl_s": -3}, "invalid_ttl_s", "a"),
        ({"id": "a", "action": "x", "ttl_s": "5"}, "invalid_ttl_s", "a"),
        ({"id": "a", "action": "x", "ttl_s": True}, "invalid_ttl_s", "a"),
        ({"id": "a", "action": "x", "ttl_s": float("nan")}, "invalid_ttl_s", "a"),
        ({"id": "a", "action": "x", "expires_at": "tomorrow"}, "invalid_expires_at", "a"),
        (
            {"id": "a", "action": "x", "expires_at": "2026-03-01T10:00:00"},
            "invalid_expires_at",
            "a",
        ),
        ({"id": "a", "action": "x", "expires_at": 1767225600}, "invalid_expires_at", "a"),
    ],
)
def test_rejections(body: Any, reason: str, command_id: str) -> None:
    got = rejection(body)
    assert (got.reason, got.command_id, got.device) == (reason, command_id, DEVICE)
    assert got.reason in REASONS


def test_unknown_device() -> None:
    got = rejection({"id": "a", "action": "x"}, device="lora-ffffffffffffffff")
    assert (got.reason, got.command_id) == ("unknown_device", "a")


def test_known_devices_as_predicate() -> None:
    assert isinstance(run({"id": "a", "action": "x"}, known=lambda d: d == DEVICE), Command)
    got = rejection({"id": "a", "action": "x"}, known=lambda d: False)
    assert got.reason == "unknown_device"


def test_invalid_transport_expiry() -> None:
    assert rejection({"id": "a", "action": "x"}, expiry_s=-1).reason == "invalid_transport_expiry"


def test_unsynchronised_clock() -> None:
    only_expires_at = {"id": "a", "action": "x", "expires_at": rfc3339(WALL + 30)}
    got = rejection(only_expires_at, now_wall=60.0)
    assert (got.reason, got.command_id) == ("clock_unsynchronised", "a")
    with_ttl = run({**only_expires_at, "ttl_s": 8}, now_wall=60.0)
    assert isinstance(with_ttl, Command)
    assert with_ttl.deadline == MONO + 8.0


def test_huge_ttl_is_capped_not_rejected() -> None:
    got = run({"id": "a", "action": "x", "ttl_s": 10**400})
    assert isinstance(got, Command)
    assert got.deadline == MONO + 3600.0


def test_rejection_result() -> None:
    result = rejection({"id": "a", "action": "x", "ttl_s": -1}).result(WALL)
    assert result.status is CommandStatus.REJECTED
    assert result.to_wire() == {
        "id": "a",
        "status": "rejected",
        "ts": rfc3339(WALL),
        "detail": "invalid_ttl_s",
    }


def test_rejection_keeps_reply_address() -> None:
    got = rejection("nope")
    assert (got.origin, got.reply_to) == ("mqtt", {"response_topic": "app/replies"})


def test_parse_envelope_for_other_upstreams() -> None:
    env = parse_envelope({"id": "z", "action": "y", "params": {"a": 1}, "ttl_s": 2.5})
    assert (env.id, env.action, env.params, env.expires_at, env.ttl_s) == (
        "z",
        "y",
        {"a": 1},
        None,
        2.5,
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=70), json_values),
        "action": st.one_of(st.text(max_size=70), json_values),
        "params": json_values,
        "expires_at": st.one_of(
            st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=40), json_values
        ),
        "ttl_s": json_values,
        "extra": json_values,
    },
)


@settings(max_examples=400)
@given(
    body=st.one_of(
        envelope_like,
        json_values,
        st.binary(max_size=60),
        st.text(max_size=60),
        envelope_like.map(lambda d: json.dumps(d, default=str)),
    ),
    device=st.sampled_from([DEVICE, "lora-ffffffffffffffff", "", "x/y"]),
    expiry_s=st.none() | st.floats() | st.integers(min_value=-5, max_value=2**32),
    now_wall=st.floats(min_value=0, max_value=4e9),
    delay=st.floats(min_value=0, max_value=100),
)
def test_validate_never_raises(
    body: Any, device: str, expiry_s: float | None, now_wall: float, delay: float
) -> None:
    item = incoming(body, device=device, expiry_s=expiry_s)
    got = validate(item, KNOWN, POLICY, now_mono=MONO + delay, now_wall=now_wall)
    if isinstance(got, Rejection):
        assert got.reason in REASONS
        assert isinstance(got.command_id, str)
        assert len(got.command_id) <= MAX_ID_LENGTH
        got.result(now_wall).to_wire()
    else:
        assert isinstance(got, Command)
        assert got.device in KNOWN
        assert 1 <= len(got.id) <= MAX_ID_LENGTH
        assert isinstance(got.params, dict)
        assert got.deadline <= MONO + POLICY.max_ttl_s


# -- what can be stored and sent on --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "command_id", "reason"),
    [
        ('{"id":"\\ud800x","action":"a"}', UNREADABLE_ID, "invalid_text"),
        ('{"id":"c","action":"\\udc00"}', "c", "invalid_text"),
        ('{"id":"c","action":"a","params":{"s":"\\ud83d"}}', "c", "invalid_text"),
        ('{"id":"c","action":"a","params":{"\\udfff":1}}', "c", "invalid_text"),
        ('{"id":"c","action":"a","params":{"l":["ok",{"s":"\\ud800"}]}}', "c", "invalid_text"),
        ('{"id":"c","action":"a","params":{"n":NaN}}', "c", "invalid_number"),
        ('{"id":"c","action":"a","params":{"n":[-Infinity]}}', "c", "invalid_number"),
        ("{" + '"id":"c","action":"a","params":' + '{"a":' * 20 + "1" + "}" * 21, "c",
         "invalid_params"),
    ],
)  # fmt: skip
def test_text_and_numbers_that_cannot_be_stored_are_rejected(
    body: str, command_id: str, reason: str
) -> None:
    got = rejection(body)
    assert (got.command_id, got.reason) == (command_id, reason)
    assert reason in REASONS


def test_plain_unicode_and_finite_numbers_pass() -> None:
    params = {"name": "Küche 🌡", "level": 2.5, "on": True, "list": [1, None, "x"]}
    got = run({"id": "ü-1", "action": "sét", "params": params})
    assert isinstance(got, Command) and got.params == params


def test_a_message_over_the_size_limit_is_too_large_before_it_is_parsed() -> None:
    text = json.dumps({"id": "big", "action": "a", "params": {"pad": "x" * 5000}})
    decoded = IncomingCommand("mqtt", DEVICE, json.loads(text), MONO, size_bytes=len(text))
    for command in (incoming(text), incoming(text.encode()), incoming("{not json" * 1000), decoded):
        got = validate(command, KNOWN, POLICY, now_mono=MONO, now_wall=WALL, max_bytes=4096)
        assert isinstance(got, Rejection)
        assert (got.command_id, got.reason) == (UNREADABLE_ID, "too_large")
    small = validate(
        incoming(text), KNOWN, POLICY, now_mono=MONO, now_wall=WALL, max_bytes=len(text)
    )
    assert isinstance(small, Command)
