"""A node's time base on a board: node/runner.py's ``TickClock`` keeps the seconds the session and
the runner work with below an hour, so single-precision floats still resolve the 20 ms by which
a receive window opens early after a week of running.

A simulated week on a virtual board: a MicroPython-like 30-bit millisecond tick counter, every
time the program sees rounded to a 32-bit float (``struct`` 'f', as MicroPython's floats on
ESP32 and RP2040), the runner polling a radio that hands uplinks to the real gateway core and
plays its downlinks back at the moment the gateway would transmit them. The same board counting
float seconds since boot is the control: it misses receive windows after a few days.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

from gateway.protocol.airtime import time_on_air_s
from gateway.protocol.downlink import DownlinkScheduler, DownlinkSettings, Transmit
from gateway.protocol.dutycycle import DutyCycle
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    NetworkCore,
    ReportReceived,
)
from node import session as ns
from node.runner import Runner, TickClock
from tests.micropython_fixtures import CBOR2, CRYPTOLIB_STAND_IN, NODE_LIBRARY, run_micropython
from tests.node_fixtures import seeded_bytes

EUI = bytes.fromhex("70b3d57ed0009abc")
ROOT_KEY = bytes(range(16))
TICKS_PERIOD = 1 << 30  # MicroPython's ticks_ms wraps here on ESP32 and RP2040
WEEK_MS = 7 * 86_400_000
REPORT_EVERY_S = 600
LONGEST_SLEEP_MS = 60_000
# The receiver must be on within this long after the downlink's preamble starts to lock onto it
# (about half of the 12.25 symbols of 1.024 ms at SF7/125 kHz left).
PREAMBLE_GRACE_MS = 6


def f32(value: float) -> F32:
    """``value`` as a 32-bit float holds it."""
    return F32(struct.unpack("f", struct.pack("f", value))[0])


class F32(float):
    """A float whose arithmetic rounds every result to 32 bits, as a board's does: the times
    the session and the runner derive from a ``now`` of this type stay 32-bit floats."""

    def __add__(self, other: float) -> F32:  # type: ignore[override]
        return f32(float(self) + float(other))

    def __radd__(self, other: float) -> F32:  # type: ignore[override]
        return f32(float(other) + float(self))

    def __sub__(self, other: float) -> F32:  # type: ignore[override]
        return f32(float(self) - float(other))

    def __rsub__(self, other: float) -> F32:  # type: ignore[override]
        return f32(float(other) - float(self))

    def __mul__(self, other: float) -> F32:  # type: ignore[override]
        return f32(float(self) * float(other))

    def __rmul__(self, other: float) -> F32:  # type: ignore[override]
        return f32(float(other) * float(self))

    def __truediv__(self, other: float) -> F32:  # type: ignore[override]
        return f32(float(self) / float(other))


def ticks_diff(end: int, start: int) -> int:
    half = TICKS_PERIOD // 2
    return ((end - start + half) % TICKS_PERIOD) - half


def ticks_add(ticks: int, delta: int) -> int:
    return (ticks + delta) % TICKS_PERIOD


def airtime_s(size: int) -> float:
    return time_on_air_s(size, 7, 125_000)


class VirtualBoard:
    """True time in whole milliseconds; a radio (node/radio.py) on an air where the real gateway
    core answers each uplink in its receive window."""

    def __init__(self) -> None:
        self.ms = 1_000  # boot
        registry = {int.from_bytes(EUI, "big"): DeviceCredentials(ROOT_KEY)}
        self.core = NetworkCore(JoinSettings(), registry)
        self.scheduler = DownlinkScheduler(
            self.core,
            DownlinkSettings(),
            time_on_air=airtime_s,
            frequency_hz=lambda: 869_525_000,
            duty=DutyCycle("none"),
        )
        self._uplink: bytes | None = None
        self._tx_ends_ms = 0.0
        self._downlink: tuple[float, float, bytes] | None = None  # start, end (ms), frame
        self._rx_on_ms: int | None = None
        self.downlinks_sent = 0
        self.downlinks_heard = 0

    def ticks_ms(self) -> int:
        return self.ms % TICKS_PERIOD

    # ------------------------------------------------------------- node/radio.py interface

    def start_transmit(self, frame: bytes) -> None:
        self._uplink = bytes(frame)
        self._tx_ends_ms = self.ms + airtime_s(len(frame)) * 1000
        self._rx_on_ms = None

    def tx_finished(self) -> bool:
        if self._uplink is None:
            return True
        if self.ms < self._tx_ends_ms:
            return False
        self._gateway_hears(self._uplink, self._tx_ends_ms / 1000)
        self._uplink = None
        return True

    def start_receive(self) -> None:
        self._rx_on_ms = self.ms

    def received(self) -> tuple[bytes, float, float] | None:
        downlink = self._downlink
        if downlink is None or not self._locked(downlink) or self.ms < downlink[1]:
            return None
        self._downlink = None
        self.downlinks_heard += 1
        return downlink[2], -80.0, 8.0

    def receiving(self) -> bool:
        downlink = self._downlink
        return downlink is not None and self._locked(downlink) and self.ms < downlink[1]

    def standby(self) -> None:
        self._rx_on_ms = None

    def sleep(self) -> None:
        self._rx_on_ms = None

    # ------------------------------------------------------------------------- the gateway

    def _locked(self, downlink: tuple[float, float, bytes]) -> bool:
        on = self._rx_on_ms
        return on is not None and on <= downlink[0] + PREAMBLE_GRACE_MS

    def _gateway_hears(self, frame: bytes, rx_done: float) -> None:
        for action in self.core.receive(frame, rx_done):
            if isinstance(action, JoinAccepted):
                answers = self.scheduler.join_answered(action, rx_done)
            elif isinstance(action, (ReportReceived, CommandResultReceived)):
                answers = self.scheduler.uplink_received(action, rx_done)
            else:
                answers = []
            for answer in answers:
                if isinstance(answer, Transmit):
                    starts = answer.at * 1000
                    ends = starts + airtime_s(len(answer.frame)) * 1000
                    self._downlink = (starts, ends, answer.frame)
                    self.downlinks_sent += 1


class Outcome:
    def __init__(self) -> None:
        self.reports = 0
        self.acked = 0
        self.joined = False
        self.largest_now = 0.0
        self.rebases = 0


def run_week(board: VirtualBoard, make_clock: Callable[[Runner], Any]) -> Outcome:
    """The sensor example's main loop for a week: a report every 10 minutes, sleeps of at most a
    minute between steps. ``make_clock(runner)`` gives ``(now, ms_until, on_rebase)``."""
    outcome = Outcome()
    work = random.Random(7)

    def on_event(event: Any) -> None:
        if isinstance(event, ns.Acked):
            outcome.acked += 1
        elif isinstance(event, ns.Joined):
            outcome.joined = True

    node = ns.Node(EUI, ROOT_KEY, seeded_bytes(3), config=ns.NodeConfig(duty_cycle=0.1))
    runner = Runner(node, board, on_event=on_event)
    now, ms_until, on_rebase = make_clock(runner)
    next_report = [now()]

    def shift(seconds: float) -> None:
        next_report[0] -= seconds
        outcome.rebases += 1

    on_rebase.append(shift)
    while board.ms < WEEK_MS:
        current = now()
        outcome.largest_now = max(outcome.largest_now, current)
        if current >= next_report[0]:
            if node.joined:
                runner.report({"temperature_c": 21.5}, current)
                outcome.reports += 1
            next_report[0] = f32(current + REPORT_EVERY_S)
        wake = runner.step(current)
        board.ms += work.randrange(3)  # the step itself: SPI, a sensor read, flash
        until = next_report[0] if wake is None else min(wake, next_report[0])
        board.ms += max(1, ms_until(until, LONGEST_SLEEP_MS))
    return outcome


def tick_clock(board: VirtualBoard) -> Callable[[Runner], Any]:
    def make(runner: Runner) -> Any:
        clock = TickClock(board.ticks_ms, ticks_diff, ticks_add)
        clock.on_rebase.append(runner.rebase)
        return (lambda: f32(clock.now())), clock.ms_until, clock.on_rebase

    return make


def seconds_since_boot(board: VirtualBoard) -> Callable[[Runner], Any]:
    """What a board gets from unwrapping ``ticks_ms`` into a float: seconds since boot."""

    def make(runner: Runner) -> Any:
        boot = board.ticks_ms()
        elapsed = [0, boot]

        def now() -> float:
            ticks = board.ticks_ms()
            elapsed[0] += ticks_diff(ticks, elapsed[1])
            elapsed[1] = ticks
            return f32(elapsed[0] / 1000)

        def ms_until(at: float | None, longest_ms: int) -> int:
            if at is None:
                return longest_ms
            return max(0, min(int(f32(at - now()) * 1000), longest_ms))

        return now, ms_until, []

    return make


def test_a_tick_clock_keeps_every_receive_window_for_a_week_of_float32_time() -> None:
    board = VirtualBoard()
    outcome = run_week(board, tick_clock(board))
    assert outcome.joined
    assert outcome.reports >= 7 * 24 * 6 - 2
    # Every downlink the gateway sent was heard, every report acked at the first try.
    assert board.downlinks_heard == board.downlinks_sent == outcome.reports + 1  # + the accept
    assert outcome.acked == outcome.reports
    # The clock moved its epoch every hour and never counted past it.
    assert outcome.rebases == 7 * 24 - 1 or outcome.rebases == 7 * 24
    assert outcome.largest_now < 3601


def test_float32_seconds_since_boot_miss_receive_windows_within_the_week() -> None:
    board = VirtualBoard()
    outcome = run_week(board, seconds_since_boot(board))
    assert outcome.joined
    assert outcome.largest_now > 6 * 86_400
    missed = board.downlinks_sent - board.downlinks_heard
    # A day in, float32 seconds resolve 7.8 ms; after four days 31 ms, after a week 62 ms: the
    # window opens late and acks go unheard (the reports are sent again, and again).
    assert missed > outcome.reports / 10, (missed, outcome.reports)


MICROPYTHON_SCRIPT = """
import time
from node.runner import TickClock

ticks = [time.ticks_add(0, -5000)]  # 5 s before the counter wraps
shifts = []
clock = TickClock(lambda: ticks[0], time.ticks_diff, time.ticks_add)
clock.on_rebase.append(shifts.append)
seen = []
for step_ms in (1000, 3599000, 1500, 7200000, 250):
    ticks[0] = time.ticks_add(ticks[0], step_ms)
    seen.append(clock.now())
print(seen, shifts, clock.ms_until(seen[-1] + 0.75, 60000), clock.ms_until(None, 500))
"""


def test_the_tick_clock_in_micropython_with_its_own_wrapping_ticks() -> None:
    out = run_micropython(MICROPYTHON_SCRIPT, [NODE_LIBRARY, CBOR2, CRYPTOLIB_STAND_IN]).strip()
    assert out == "[1.0, 0.0, 1.5, 1.5, 1.75] [3600, 3600, 3600] 750 500"
