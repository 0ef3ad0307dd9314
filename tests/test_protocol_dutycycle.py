from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.dutycycle import REGIONS, DutyCycle

F_1PCT = 868_100_000  # 868.0-868.6 MHz, 1 %
F_01PCT = 868_900_000  # 868.7-869.2 MHz, 0.1 %
F_10PCT = 869_525_000  # 869.4-869.65 MHz, 10 %
F_1PCT_HIGH = 869_850_000  # 869.7-870.0 MHz, 1 %


@pytest.mark.parametrize(
    ("freq", "budget_s"),
    [(F_1PCT, 36.0), (F_01PCT, 3.6), (F_10PCT, 360.0), (F_1PCT_HIGH, 36.0)],
)
def test_eu868_budgets(freq: int, budget_s: float) -> None:
    dc = DutyCycle("EU868")
    assert dc.can_transmit(freq, budget_s, now=0.0)
    assert not dc.can_transmit(freq, budget_s + 0.001, now=0.0)
    dc.record(freq, budget_s, now=0.0)
    assert dc.used_fraction(freq, 0.0) == pytest.approx(budget_s / 3600.0)
    assert not dc.can_transmit(freq, 0.001, now=1.0)


def test_band_edges() -> None:
    dc = DutyCycle("EU868")
    assert dc.sub_band(868_000_000) is dc.sub_band(868_600_000) is REGIONS["EU868"][0]
    assert dc.sub_band(868_650_000) is None
    assert dc.sub_band(869_300_000) is None
    assert dc.sub_band(870_000_001) is None


def test_frequency_outside_sub_bands_never_transmits() -> None:
    dc = DutyCycle("EU868")
    assert not dc.can_transmit(869_300_000, 0.01, now=0.0)
    with pytest.raises(ValueError):
        dc.record(869_300_000, 0.01, now=0.0)


def test_sub_bands_are_accounted_separately() -> None:
    dc = DutyCycle("EU868")
    dc.record(F_1PCT, 36.0, now=0.0)
    assert not dc.can_transmit(868_500_000, 0.1, now=0.0)  # same sub-band, other channel
    assert dc.can_transmit(F_1PCT_HIGH, 36.0, now=0.0)
    assert dc.used_fraction(F_1PCT_HIGH, 0.0) == 0.0


def test_sliding_window() -> None:
    dc = DutyCycle("EU868")
    dc.record(F_1PCT, 20.0, now=0.0)
    dc.record(F_1PCT, 16.0, now=1800.0)
    assert not dc.can_transmit(F_1PCT, 1.0, now=3599.0)
    assert dc.wait_s(F_1PCT, 1.0, now=3599.0) == pytest.approx(1.0)
    # The first transmission leaves the window at t=3600.
    assert dc.can_transmit(F_1PCT, 20.0, now=3600.0)
    assert not dc.can_transmit(F_1PCT, 20.1, now=3600.0)
    assert dc.used_fraction(F_1PCT, 3600.0) == pytest.approx(16.0 / 3600.0)
    assert dc.used_fraction(F_1PCT, 5400.0) == 0.0


def test_wait_when_impossible() -> None:
    dc = DutyCycle("EU868")
    assert dc.wait_s(F_01PCT, 4.0, now=0.0) is None  # more than the whole 3.6 s budget
    assert dc.wait_s(869_300_000, 0.1, now=0.0) is None
    assert dc.wait_s(F_01PCT, 1.0, now=0.0) == 0.0


@pytest.mark.parametrize("region", ["US915", "none"])
def test_unregulated_regions(region: str) -> None:
    dc = DutyCycle(region)
    assert not dc.limited
    for _ in range(100):
        assert dc.can_transmit(915_000_000, 100.0, now=0.0)
        dc.record(915_000_000, 100.0, now=0.0)
    assert dc.used_fraction(915_000_000, 0.0) == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DutyCycle("EU433")
    dc = DutyCycle()
    assert not dc.can_transmit(F_1PCT, -1.0, now=0.0)
    assert not dc.can_transmit(F_1PCT, math.nan, now=0.0)
    with pytest.raises(ValueError):
        dc.record(F_1PCT, math.inf, now=0.0)


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=300.0),  # gap before the attempt
            st.floats(min_value=0.001, max_value=5.0),  # airtime
        ),
        min_size=1,
        max_size=300,
    )
)
def test_never_exceeds_budget_in_any_window(attempts: list[tuple[float, float]]) -> None:
    dc = DutyCycle("EU868")
    now = 0.0
    sent: list[tuple[float, float]] = []
    for gap, airtime in attempts:
        now += gap
        if dc.can_transmit(F_1PCT, airtime, now):
            dc.record(F_1PCT, airtime, now)
            sent.append((now, airtime))
    # Every window [t, t + 3600) that starts at a transmission holds at most 36 s of airtime.
    for start, _ in sent:
        in_window = sum(a for t, a in sent if start <= t < start + 3600.0)
        assert in_window <= 36.0 + 1e-6


def test_use_is_named_by_its_sub_band() -> None:
    dc = DutyCycle("EU868")
    dc.record(F_1PCT, 7.2, 0.0)
    assert dc.used_by_band(F_1PCT, 1.0) == {"868.0-868.60MHz": 0.002}
    assert dc.used_by_band(869_300_000, 1.0) == {"none": 0.0}  # between sub-bands
