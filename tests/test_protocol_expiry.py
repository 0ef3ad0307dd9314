from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import CommandsSection
from gateway.protocol.expiry import (
    CLOCK_SYNC_EPOCH,
    CLOCK_UNSYNCHRONISED,
    ExpiryPolicy,
    ExpiryRejected,
    Stage,
    check,
    compute_deadline,
    seconds_left_for_node,
)

SYNCED_WALL = CLOCK_SYNC_EPOCH + 10 * 86_400.0  # a wall clock set by NTP
UNSYNCED_WALL = 120.0  # a Pi that booted without RTC: 1970-01-01T00:02:00Z
MONO = 5_000.0
POLICY = ExpiryPolicy(default_ttl_s=60.0, max_ttl_s=3600.0)


@dataclass(frozen=True)
class Deadlined:
    deadline: float


def deadline(**hints: float | None) -> float:
    return compute_deadline(POLICY, arrival_mono=MONO, arrival_wall=SYNCED_WALL, **hints)


def test_default_ttl_when_no_hint() -> None:
    assert deadline() == MONO + 60.0


def test_ttl_counts_from_arrival() -> None:
    assert deadline(ttl_s=12.5) == MONO + 12.5


def test_expires_at_converted_to_monotonic_at_arrival() -> None:
    assert deadline(expires_at=SYNCED_WALL + 30.0) == pytest.approx(MONO + 30.0)


def test_transport_expiry_counts_from_arrival() -> None:
    assert deadline(transport_expiry_s=7.0) == MONO + 7.0


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ({"ttl_s": 10.0, "expires_at": SYNCED_WALL + 20.0}, 10.0),
        ({"ttl_s": 30.0, "expires_at": SYNCED_WALL + 20.0}, 20.0),
        ({"ttl_s": 30.0, "transport_expiry_s": 5.0}, 5.0),
        ({"ttl_s": 30.0, "expires_at": SYNCED_WALL + 20.0, "transport_expiry_s": 25.0}, 20.0),
    ],
)
def test_earliest_hint_wins(hints: dict[str, float], expected: float) -> None:
    assert deadline(**hints) == pytest.approx(MONO + expected)


@pytest.mark.parametrize(
    "hints",
    [
        {"ttl_s": 86_400.0},
        {"expires_at": SYNCED_WALL + 86_400.0},
        {"transport_expiry_s": 86_400.0},
        {"ttl_s": math.inf},
    ],
)
def test_capped_by_max_ttl(hints: dict[str, float]) -> None:
    assert deadline(**hints) == MONO + 3600.0


def test_default_ttl_above_max_is_capped() -> None:
    policy = ExpiryPolicy(default_ttl_s=600.0, max_ttl_s=100.0)
    got = compute_deadline(policy, arrival_mono=MONO, arrival_wall=SYNCED_WALL)
    assert got == MONO + 100.0


def test_expires_at_in_the_past_gives_a_past_deadline() -> None:
    got = deadline(expires_at=SYNCED_WALL - 5.0)
    assert got == pytest.approx(MONO - 5.0)
    assert check(Deadlined(got), MONO, stage=Stage.ARRIVAL) == "expired_on_arrival"


def test_unsynchronised_clock_rejects_expires_at_alone() -> None:
    with pytest.raises(ExpiryRejected) as caught:
        compute_deadline(
            POLICY, arrival_mono=MONO, arrival_wall=UNSYNCED_WALL, expires_at=SYNCED_WALL + 30
        )
    assert caught.value.reason == CLOCK_UNSYNCHRONISED


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ({"ttl_s": 15.0}, 15.0),
        ({"transport_expiry_s": 9.0}, 9.0),
    ],
)
def test_unsynchronised_clock_ignores_expires_at_when_another_hint_exists(
    hints: dict[str, float], expected: float
) -> None:
    # expires_at alone would be far in the future relative to a 1970 clock; it must not count.
    got = compute_deadline(
        POLICY,
        arrival_mono=MONO,
        arrival_wall=UNSYNCED_WALL,
        expires_at=UNSYNCED_WALL + 1.0,
        **hints,
    )
    assert got == MONO + expected


def test_clock_exactly_at_epoch_counts_as_synchronised() -> None:
    got = compute_deadline(
        POLICY, arrival_mono=MONO, arrival_wall=CLOCK_SYNC_EPOCH, expires_at=CLOCK_SYNC_EPOCH + 3
    )
    assert got == MONO + 3.0


def test_policy_from_config() -> None:
    policy = ExpiryPolicy.from_config(CommandsSection(default_ttl_s=5.0, max_ttl_s=50.0))
    assert (policy.default_ttl_s, policy.max_ttl_s) == (5.0, 50.0)


def test_nan_hint_rejected() -> None:
    with pytest.raises(ExpiryRejected):
        deadline(ttl_s=math.nan)


@given(
    ttl=st.floats(min_value=0.001, max_value=3000.0),
    wall=st.floats(min_value=0.0, max_value=4e9),
    transport=st.none() | st.floats(min_value=0.0, max_value=3000.0),
)
def test_relative_hints_do_not_depend_on_the_wall_clock(
    ttl: float, wall: float, transport: float | None
) -> None:
    got = compute_deadline(
        POLICY, arrival_mono=MONO, arrival_wall=wall, ttl_s=ttl, transport_expiry_s=transport
    )
    assert got == deadline(ttl_s=ttl, transport_expiry_s=transport)


@given(
    ttl=st.floats(min_value=0.001, max_value=3000.0),
    jump=st.floats(min_value=-1e8, max_value=1e8),
    elapsed=st.floats(min_value=0.0, max_value=4000.0),
)
def test_wall_clock_jump_after_acceptance_does_not_change_the_verdict(
    ttl: float, jump: float, elapsed: float
) -> None:
    accepted = Deadlined(deadline(expires_at=SYNCED_WALL + ttl))
    assert accepted.deadline == pytest.approx(MONO + ttl)
    # The same expires_at seen with a jumped wall clock would give another deadline; the
    # accepted command keeps its own and expires on monotonic time alone.
    jumped = compute_deadline(
        POLICY,
        arrival_mono=MONO,
        arrival_wall=SYNCED_WALL + abs(jump),
        expires_at=SYNCED_WALL + ttl,
    )
    assert jumped <= accepted.deadline
    verdict = check(accepted, MONO + elapsed)
    assert verdict == (None if MONO + elapsed < accepted.deadline else "expired_in_queue")


def test_check_stages_and_airtime() -> None:
    cmd = Deadlined(MONO + 10.0)
    assert check(cmd, MONO) is None
    assert check(cmd, MONO + 10.0) == "expired_in_queue"
    assert check(cmd, MONO + 9.5, airtime_s=0.6) == "expired_in_queue"
    assert check(cmd, MONO + 9.5, airtime_s=0.4) is None
    assert check(cmd, MONO + 11.0, stage=Stage.ARRIVAL) == "expired_on_arrival"
    assert check(cmd, MONO + 8.5, stage=Stage.TRANSMISSION) is None  # 1.5 s -> 1 s left
    assert check(cmd, MONO + 8.5, 0.6, stage=Stage.TRANSMISSION) == "expired_before_transmission"
    assert check(cmd, MONO + 9.5, stage=Stage.TRANSMISSION) == "expired_before_transmission"


@pytest.mark.parametrize(
    ("now", "airtime", "expected"),
    [
        (MONO, 0.0, 10),
        (MONO + 0.001, 0.0, 9),
        (MONO, 0.2, 9),
        (MONO + 9.999, 0.0, 0),
        (MONO + 10.0, 0.0, 0),
        (MONO + 50.0, 0.0, 0),
    ],
)
def test_seconds_left_for_node_rounds_down(now: float, airtime: float, expected: int) -> None:
    assert seconds_left_for_node(Deadlined(MONO + 10.0), now, airtime) == expected


@given(
    left=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    airtime=st.floats(min_value=0.0, max_value=10.0),
)
def test_seconds_left_never_rounds_up(left: float, airtime: float) -> None:
    got = seconds_left_for_node(Deadlined(MONO + left), MONO, airtime)
    assert isinstance(got, int)
    assert got >= 0
    assert got <= max(left - airtime, 0.0)
    # Alive before transmission exactly when the node would get at least one whole second.
    alive = check(Deadlined(MONO + left), MONO, airtime, stage=Stage.TRANSMISSION) is None
    assert alive == (got >= 1)
