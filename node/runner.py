"""The host loop: carries out node/session.py's actions on a radio (node/radio.py).

Step-based and non-blocking, so one source serves a board's main loop and an asyncio task::

    runner = Runner(node, radio, store=store, execute=execute)
    while True:
        wake = runner.step(now())
        sleep until ``wake`` (None: until the application has news) or DIO0

``step(now)`` does whatever is due and returns the time it wants to be called again.
``interrupt()`` may be called on DIO0 (from an IRQ handler: it only sets a flag); the next
``step`` then polls the radio at once. Without DIO0 the runner polls every ``poll_s`` while
the radio is transmitting or receiving.

``report(data, now)`` queues a report; ``execute(command) -> (status, detail)`` runs a
command (frames.EXECUTED / FAILED; a command whose time ran out is answered EXPIRED without
being run); ``on_event(action)`` gets the session's news (Joined, JoinRefused, SessionLost,
Acked, Dropped); ``store.save(record)`` (node/storage.py) keeps the node's record across
power cycles. ``before_transmit(kind, frame)`` is called just before a frame goes on air.

Times are seconds on one steady clock: ``loop.time()`` in asyncio; on a board a
``TickClock`` over the millisecond tick counter. Boards' floats are single precision (24
bits of mantissa on MicroPython, 22 on CircuitPython): seconds since boot would resolve only
8 to 30 ms after a day, too coarse for a receive window opened 20 ms early. A ``TickClock``
counts from an epoch it moves an hour forward whenever an hour has passed, and calls
``runner.rebase(3600)`` (and the application's own shift), so every time stays below about
an hour and resolves to a millisecond or better::

    clock = TickClock(time.ticks_ms, time.ticks_diff, time.ticks_add)
    clock.on_rebase.append(runner.rebase)
    while True:
        wake = runner.step(clock.now())
        time.sleep_ms(clock.ms_until(wake, 500))
"""

from node import frames
from node import session as ns

_IDLE = 0
_TRANSMITTING = 1
_WAITING = 2  # a Listen is due: the receiver opens at ``_rx_opens``
_RECEIVING = 3

# A frame whose header arrived inside the window is awaited to its end, at most this long
# (a 255-byte frame at SF12/125 kHz lasts about 9 s).
_LONGEST_FRAME_S = 10.0


def _execute_nothing(command):
    return frames.FAILED, "no command handler"


class Runner:
    def __init__(
        self,
        node,
        radio,
        store=None,
        execute=None,
        on_event=None,
        before_transmit=None,
        poll_s: float = 0.01,
    ) -> None:
        self.node = node
        self.radio = radio
        self.store = store
        self.execute = execute if execute is not None else _execute_nothing
        self.on_event = on_event
        self.before_transmit = before_transmit
        self.poll_s = poll_s
        self.last_transmit = None  # the session's last Transmit action
        self._state = _IDLE
        self._tick_at = 0.0  # when the session wants ``tick``; None: not before news
        self._tx_started = 0.0
        self._rx_opens = 0.0
        self._rx_closes = 0.0
        self._interrupted = False
        self._listens = 0
        self._actions = []

    # ------------------------------------------------------------------------- events

    def interrupt(self) -> None:
        """DIO0 rose (TxDone or RxDone): safe to call from an IRQ handler."""
        self._interrupted = True

    def report(self, data: dict, now: float, confirmed: bool = True) -> None:
        """Queue a report of ``data``; ValueError if it cannot go on air."""
        self._carry_out(self.node.report(data, now, confirmed), now)

    def rebase(self, shift_s: float) -> None:
        """The clock's origin moved ``shift_s`` seconds later: every time held here and in the
        session moves with it. Call between steps (``TickClock`` does)."""
        self.node.rebase(shift_s)
        if self._tick_at is not None:
            self._tick_at -= shift_s
        self._tx_started -= shift_s
        self._rx_opens -= shift_s
        self._rx_closes -= shift_s

    @property
    def busy(self) -> bool:
        """The radio is transmitting or a receive window is due or open."""
        return self._state != _IDLE

    # --------------------------------------------------------------------------- step

    def step(self, now: float):
        """Do what is due at ``now``; the time to be called again (None: only on news)."""
        self._interrupted = False
        for _ in range(16):  # each round moves the radio on; a few are enough
            if not self._advance(now):
                break
        return self._next_wake(now)

    def _advance(self, now: float) -> bool:
        """One thing that is due; False when nothing was."""
        state = self._state
        radio = self.radio
        if state == _TRANSMITTING:
            if not radio.tx_finished():
                return False
            self._state = _IDLE
            self._carry_out(self.node.tx_done(now, now - self._tx_started), now)
            return True
        if state == _WAITING:
            if now < self._rx_opens:
                return False
            radio.start_receive()
            self._state = _RECEIVING
            return True
        if state == _RECEIVING:
            packet = radio.received()
            if packet is not None:
                listens = self._listens
                phy, rssi, snr = packet
                self._carry_out(self.node.received(bytes(phy), now, rssi, snr), now)
                if self._state == _RECEIVING and self._listens == listens:
                    self._state = _IDLE  # the window is over: the frame was ours
                    radio.sleep()
                return True
            if now < self._rx_closes:
                return False
            if radio.receiving() and now < self._rx_closes + _LONGEST_FRAME_S:
                return False  # a frame that started inside the window is still arriving
            self._state = _IDLE
            radio.sleep()
            self._carry_out(self.node.rx_timeout(now), now)
            return True
        if self._tick_at is not None and now >= self._tick_at:
            self._tick_at = None
            self._carry_out(self.node.tick(now), now)
            return True
        return False

    def _next_wake(self, now: float):
        state = self._state
        if state == _TRANSMITTING:
            return now + self.poll_s
        if state == _WAITING:
            return self._rx_opens
        if state == _RECEIVING:
            if now < self._rx_closes:
                return min(now + self.poll_s, self._rx_closes)
            return now + self.poll_s
        return self._tick_at

    # ----------------------------------------------------------------------- actions

    def _carry_out(self, actions: list, now: float) -> None:
        # Actions may come back while earlier ones are carried out (a command's answer):
        # one queue keeps them in order.
        self._actions.extend(actions)
        if len(self._actions) > len(actions):
            return  # an outer call is working through the queue
        while self._actions:
            self._do(self._actions[0], now)
            self._actions.pop(0)

    def _do(self, action, now: float) -> None:
        if isinstance(action, ns.Persist):
            if self.store is not None:
                self.store.save(action.record)
        elif isinstance(action, ns.Transmit):
            self.last_transmit = action
            if self.before_transmit is not None:
                self.before_transmit(action.kind, action.frame)
            self.radio.start_transmit(action.frame)
            self._state = _TRANSMITTING
            self._tx_started = now
        elif isinstance(action, ns.Listen):
            self._listens += 1
            self._rx_closes = action.at + action.duration
            if self._state == _RECEIVING:
                return  # the receiver stays on for the rest of the window
            self._rx_opens = action.at
            self._state = _WAITING
            self.radio.standby()
        elif isinstance(action, ns.WakeAt):
            self._tick_at = action.at
        elif isinstance(action, ns.Execute):
            command = action.command
            if now > action.deadline:
                status, detail = frames.EXPIRED, None
            else:
                status, detail = self.execute(command)
            self._actions.extend(self.node.command_done(command.ref, status, detail, now))
        elif self.on_event is not None:
            self.on_event(action)


class TickClock:
    """Seconds on a wrapping millisecond tick counter (``time.ticks_ms`` with ``ticks_diff``
    and ``ticks_add`` on MicroPython; ``adafruit_ticks``' on CircuitPython), counted from an
    epoch that moves ``span_s`` forward whenever that much has passed, so the seconds stay
    small enough for a single-precision float to resolve a millisecond (0.25 ms at an hour
    with 24 bits of mantissa, 1 ms with 22).

    Each move calls every function in ``on_rebase`` with the seconds moved: ``runner.rebase``
    and whatever shifts the application's own times. ``now()`` must be called at least every
    few days (the tick counter's half period: 6.2 days for 30-bit ticks).
    """

    def __init__(self, ticks_ms, ticks_diff, ticks_add, span_s: int = 3600) -> None:
        if span_s < 1:
            raise ValueError("span_s must be at least 1 second")
        self._ticks_ms = ticks_ms
        self._ticks_diff = ticks_diff
        self._ticks_add = ticks_add
        self._span_ms = int(span_s) * 1000
        self._epoch = ticks_ms()
        self.on_rebase = []

    def now(self) -> float:
        """Seconds since the epoch, moving the epoch (and calling ``on_rebase``) first when
        a whole span has passed."""
        elapsed = self._ticks_diff(self._ticks_ms(), self._epoch)
        while elapsed >= self._span_ms:
            self._epoch = self._ticks_add(self._epoch, self._span_ms)
            elapsed -= self._span_ms
            for shift in self.on_rebase:
                shift(self._span_ms // 1000)
        return elapsed / 1000

    def ms_until(self, at, longest_ms: int) -> int:
        """Whole milliseconds from now until ``at`` (a time of this clock, None: no time),
        between 0 and ``longest_ms``. Never moves the epoch, so ``at`` may come from a
        ``now()`` earlier in the same turn of the loop."""
        if at is None:
            return longest_ms
        elapsed = self._ticks_diff(self._ticks_ms(), self._epoch)
        wait = int(at * 1000) - elapsed
        if wait < 0:
            return 0
        return wait if wait < longest_ms else longest_ms
