"""Arrival stamps after a stall (gateway/upstreams/arrival.py), on a clock the test moves."""

from __future__ import annotations

import asyncio
import time

from gateway.upstreams.arrival import ArrivalClock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_running_loop_stamps_messages_when_they_are_read() -> None:
    clock = Clock()
    arrival = ArrivalClock(period_s=0.5, stall_s=2.0, monotonic=clock)
    for _ in range(10):
        clock.now += 0.5
        arrival.tick()
    assert arrival.arrival() == clock.now
    assert arrival.stalls == 0


def test_a_message_read_after_a_stall_before_the_next_tick_is_stamped_at_its_start() -> None:
    clock = Clock()
    arrival = ArrivalClock(period_s=0.5, stall_s=2.0, monotonic=clock)
    clock.now += 0.5
    arrival.tick()
    stalled_at = clock.now
    clock.now += 30.0  # SIGSTOP
    assert arrival.arrival() == stalled_at


def test_a_message_read_after_the_tick_that_saw_the_stall_is_stamped_at_its_start() -> None:
    clock = Clock()
    arrival = ArrivalClock(period_s=0.5, stall_s=2.0, monotonic=clock)
    clock.now += 0.5
    arrival.tick()
    stalled_at = clock.now
    clock.now += 30.0
    arrival.tick()  # the timer ran first after the resume
    assert arrival.stalls == 1
    clock.now += 0.01
    assert arrival.arrival() == stalled_at
    # Once everything waiting was read, later messages are stamped as they come.
    arrival.drained()
    clock.now += 0.2
    assert arrival.arrival() == clock.now


def test_the_stall_stops_counting_when_it_is_long_over() -> None:
    clock = Clock()
    arrival = ArrivalClock(period_s=0.5, stall_s=2.0, monotonic=clock)
    clock.now += 30.0
    arrival.tick()
    for _ in range(5):
        clock.now += 0.5
        arrival.tick()
    assert arrival.arrival() == clock.now


def test_a_stamp_is_never_before_the_last_read() -> None:
    clock = Clock()
    arrival = ArrivalClock(period_s=0.5, stall_s=2.0, monotonic=clock)
    clock.now += 0.5
    arrival.tick()
    clock.now += 10.0
    arrival.drained()  # read everything that waited, before the timer noticed the stall
    read_at = clock.now
    clock.now += 0.05
    arrival.tick()
    clock.now += 0.05
    assert arrival.arrival() == read_at


async def test_the_timer_ticks_on_the_event_loop() -> None:
    arrival = ArrivalClock(period_s=0.01, stall_s=0.05)
    arrival.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.05)
        arrival.drained()
        await asyncio.sleep(0.05)
        assert arrival.stalls == 0
        before = asyncio.get_running_loop().time()
        time.sleep(0.2)  # the loop stands still
        await asyncio.sleep(0.03)
        assert arrival.stalls == 1
        assert arrival.arrival() <= before + 0.02
    finally:
        arrival.stop()
