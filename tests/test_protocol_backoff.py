"""The one backoff formula: MQTT and XMPP reconnects, simulated node joins and retries."""

from __future__ import annotations

import random

import pytest

from gateway.protocol.backoff import backoff_delay


def delay(attempt: int, draw: float, *, first_s: float = 1.0, max_s: float = 60.0) -> float:
    return backoff_delay(attempt, first_s=first_s, max_s=max_s, jitter=0.5, draw=draw)


def test_the_ceiling_doubles_from_the_first_delay_up_to_the_cap() -> None:
    assert [delay(n, 0.0) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert delay(0, 0.0, first_s=0.1, max_s=2.0) == pytest.approx(0.1)
    assert delay(10_000, 0.0) == 60.0  # no overflow however long the outage


def test_the_draw_takes_off_up_to_the_jitter_share() -> None:
    assert delay(0, 1.0) == 0.5
    assert delay(3, 1.0) == 4.0
    assert delay(30, 1.0) == 30.0
    assert delay(30, 0.5, max_s=5.0) == pytest.approx(3.75)
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        for _ in range(50):
            wait = delay(attempt, rng.random(), first_s=0.1, max_s=2.0)
            assert ceiling / 2 <= wait <= ceiling


def test_no_jitter_is_the_bare_ceiling_and_a_negative_attempt_the_first() -> None:
    assert backoff_delay(2, first_s=0.3, max_s=1.5, jitter=0.0, draw=0.9) == pytest.approx(1.2)
    assert backoff_delay(-1, first_s=0.3, max_s=1.5, jitter=0.0, draw=0.9) == pytest.approx(0.3)


def test_the_simulated_node_waits_as_before() -> None:
    """drivers/sim/node.py used ``ceiling * (1 - rng.uniform(0, jitter))``: same numbers."""
    for seed in range(20):
        old, new = random.Random(seed), random.Random(seed)
        for attempt in range(1, 10):
            ceiling = min(300.0, 2.0 * 2 ** max(0, attempt - 1))
            expected = ceiling * (1 - old.uniform(0, 0.2))
            got = backoff_delay(
                attempt - 1, first_s=2.0, max_s=300.0, jitter=0.2, draw=new.random()
            )
            assert got == expected
