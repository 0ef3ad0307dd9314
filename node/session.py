"""The node's protocol state machine: events in, actions out (docs/protocol.md, Node rules).

Pure: no radio, no clock, no file. The caller passes the time (seconds on any steady clock;
``rebase(shift_s)`` when that clock's origin moves later) and a random source, and carries
out the actions it gets back, in order:

  ``Persist(record)``   write the record (node/storage.py) before going on
  ``Transmit(frame)``   send now; call ``tx_done(now, airtime_s)`` at TxDone
  ``Listen(at, s)``     open the receiver at ``at``; if a preamble starts within ``s`` seconds
                        call ``received(phy, now, rssi, snr)`` at RxDone, else ``rx_timeout(now)``
  ``Execute(command)``  run the command, then call ``command_done(ref, status, detail, now)``
  ``WakeAt(at)``        call ``tick(now)`` at ``at`` (None: only when the application has news)
  ``Joined``, ``SessionLost``, ``Acked``, ``Dropped``: news for the application

Events: ``tick(now)``, ``report(data, now)``, ``tx_done``, ``received``, ``rx_timeout``,
``command_done``. Counters are reserved in blocks (``counter_block``), so a frame costs no
flash write; after a power cycle the node continues from the stored reservation.
"""

from node import cbor, frames
from node.cmac import Cmac
from node.keys import EUI_LEN, KEY_LEN, NONCE_LEN, join_key, session_keys

RECORD_VERSION = 1
_EXECUTING = -1  # status of a command handed to the application and not answered yet

# --------------------------------------------------------------------------------- actions


class Transmit:
    """Send ``frame`` now. ``kind``: "join", "report" or "result"."""

    def __init__(self, frame: bytes, kind: str) -> None:
        self.frame = frame
        self.kind = kind

    def __repr__(self) -> str:
        return "Transmit(" + self.kind + ", " + str(len(self.frame)) + " bytes)"


class Listen:
    """Open the receiver at ``at`` and wait up to ``duration`` seconds for a preamble."""

    def __init__(self, at: float, duration: float) -> None:
        self.at = at
        self.duration = duration

    def __repr__(self) -> str:
        return "Listen(" + str(self.at) + ", " + str(self.duration) + ")"


class WakeAt:
    """Call ``tick`` at ``at``; None: nothing is due until the application calls again."""

    def __init__(self, at) -> None:
        self.at = at

    def __repr__(self) -> str:
        return "WakeAt(" + str(self.at) + ")"


class Persist:
    """Write ``record`` to flash before carrying out the actions after this one."""

    def __init__(self, record: dict) -> None:
        self.record = record

    def __repr__(self) -> str:
        return "Persist()"


class Execute:
    """Run ``command`` (a frames.Command) unless ``deadline`` (same clock as ``now``) has
    passed by the time it would start; answer with ``command_done``."""

    def __init__(self, command, deadline: float) -> None:
        self.command = command
        self.deadline = deadline

    def __repr__(self) -> str:
        return "Execute(" + str(self.command.ref) + ", " + self.command.action + ")"


class Joined:
    def __init__(self, address: int) -> None:
        self.address = address

    def __repr__(self) -> str:
        return "Joined(" + str(self.address) + ")"


class JoinRefused:
    """The gateway refused the join (1 pool exhausted, 2 device disabled)."""

    def __init__(self, reason: int, retry_after_s: int) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return "JoinRefused(" + str(self.reason) + ")"


class SessionLost:
    def __repr__(self) -> str:
        return "SessionLost()"


class Acked:
    """An uplink was acknowledged: a report (its CBOR ``counter``) or a command's result."""

    def __init__(self, kind: str, number: int) -> None:
        self.kind = kind
        self.number = number  # the report counter, or the command reference

    def __repr__(self) -> str:
        return "Acked(" + self.kind + ", " + str(self.number) + ")"


class Dropped:
    """An uplink left the queue undelivered: ``full`` queue or ``max_attempts`` reached."""

    def __init__(self, kind: str, number: int, reason: str) -> None:
        self.kind = kind
        self.number = number
        self.reason = reason

    def __repr__(self) -> str:
        return "Dropped(" + self.kind + ", " + str(self.number) + ", " + self.reason + ")"


def _persists(actions: list) -> bool:
    return any(isinstance(action, Persist) for action in actions)


# ---------------------------------------------------------------------------------- config


class NodeConfig:
    """The node's constants (names as in docs/protocol.md, Node rules)."""

    def __init__(
        self,
        join_rx_delay_s: float = 1.0,  # must match the gateway's join.join_rx_delay_s
        rx_early_s: float = 0.02,  # open the receiver this much before the window is due
        rx_window_s: float = 0.25,  # a preamble must start within this long
        # Join retries: a ceiling doubling from min to max, the wait drawn at random below it
        # (join_jitter 1: anywhere in 0..ceiling), so a crowd powered on together spreads out
        # and its last nodes are not left waiting minutes (docs/NODE.md, Join storm).
        join_backoff_min_s: float = 2.0,
        join_backoff_max_s: float = 60.0,
        join_jitter: float = 1.0,  # share of a join wait taken off at random
        join_start_spread_s: float = 5.0,  # first join after power-on: within this, at random
        retry_min_s: float = 2.0,  # first retransmission of an unacked uplink
        retry_max_s: float = 60.0,
        next_uplink_gap_s: float = 1.0,  # after a receive window, before the next uplink
        # Share of an uplink wait taken off at random: nodes whose frames collided once must
        # not retry in step (a join storm's first reports collide in crowds).
        jitter: float = 0.5,
        queue_size: int = 16,
        max_attempts: int = 30,  # transmissions of one uplink before it is given up
        rejoin_after_unacked: int = 12,  # consecutive unacked transmissions end the session
        remembered_commands: int = 16,
        counter_block: int = 64,  # counters reserved per flash write
        duty_cycle: float = 0.01,  # share of time on air allowed (1 % in most EU868 bands)
        # Pending confirmed uplinks kept in the record (docs/protocol.md, Storage): about two
        # writes a report; off, a power cut loses what was not acked (docs/NODE.md).
        persist_queue: bool = True,
    ) -> None:
        if queue_size < 1 or max_attempts < 1 or rejoin_after_unacked < 1:
            raise ValueError("queue_size, max_attempts and rejoin_after_unacked must be >= 1")
        if not 0 <= jitter < 1 or not 0 <= join_jitter <= 1:
            raise ValueError("jitter must be 0 <= jitter < 1 and join_jitter 0 <= join_jitter <= 1")
        if counter_block < 2:
            raise ValueError("counter_block must be at least 2")
        if not 0 < duty_cycle <= 1:
            raise ValueError("duty_cycle must be 0 < duty_cycle <= 1")
        self.join_rx_delay_s = join_rx_delay_s
        self.rx_early_s = rx_early_s
        self.rx_window_s = rx_window_s
        self.join_backoff_min_s = join_backoff_min_s
        self.join_backoff_max_s = join_backoff_max_s
        self.join_jitter = join_jitter
        self.join_start_spread_s = join_start_spread_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.next_uplink_gap_s = next_uplink_gap_s
        self.jitter = jitter
        self.queue_size = queue_size
        self.max_attempts = max_attempts
        self.rejoin_after_unacked = rejoin_after_unacked
        self.remembered_commands = remembered_commands
        self.counter_block = counter_block
        self.duty_cycle = duty_cycle
        self.persist_queue = persist_queue


def backoff_delay(attempt: int, first_s: float, max_s: float, jitter: float, draw: float) -> float:
    """Wait before retry ``attempt`` (1, 2, ...): doubling from ``first_s`` up to ``max_s``,
    shortened by up to ``jitter`` of itself (``draw`` in 0..1) so nodes drift apart."""
    ceiling = min(max_s, first_s * 2 ** min(max(attempt - 1, 0), 30))
    return ceiling * (1 - jitter * draw)


class _Uplink:
    """A queued report or command result. Its frame is built (and its counter taken) at the
    first transmission; retransmissions send the same bytes."""

    def __init__(self, kind: str, number: int, body=None, status=0, detail=None) -> None:
        self.kind = kind  # "report" or "result"
        self.number = number  # report counter, or command reference
        self.body = body
        self.status = status
        self.detail = detail
        self.confirmed = True
        self.counter = -1
        self.frame = None
        self.attempts = 0

    def reset(self) -> None:
        self.counter = -1
        self.frame = None
        self.attempts = 0


class _Session:
    def __init__(
        self,
        root_key: bytes,
        eui: bytes,
        address: int,
        dev_nonce: bytes,
        gw_nonce: bytes,
        rx_delay_ds: int,
        encrypt: bool,
    ) -> None:
        self.address = address
        self.dev_nonce = dev_nonce
        self.gw_nonce = gw_nonce
        self.rx_delay_ds = rx_delay_ds
        self.encrypt = encrypt
        self.keys = session_keys(root_key, eui, dev_nonce, gw_nonce)


_IDLE = 0
_TRANSMITTING = 1
_LISTENING = 2


class Node:
    """One node: joins, sends reports and command results, takes acks and commands.

    ``random_bytes(n)`` gives n random bytes (a hardware RNG on a board); nonces and every
    jitter come from it. ``record`` is what the last ``Persist`` wrote, after a power cycle.
    """

    def __init__(
        self,
        eui: bytes,
        root_key: bytes,
        random_bytes,
        config=None,
        record=None,
    ) -> None:
        if len(eui) != EUI_LEN or len(root_key) != KEY_LEN:
            raise ValueError("EUI must be 8 bytes and the root key 16")
        self.eui = bytes(eui)
        self.root_key = bytes(root_key)
        self.config = config if config is not None else NodeConfig()
        self._random_bytes = random_bytes
        self._join_mac = Cmac(join_key(self.root_key, self.eui))
        self.session = None
        self.join_nonce = None
        self.up_next = 0
        self.up_reserved = 0
        self.dl_last = -1
        self.report_next = 1
        self.report_reserved = 0
        self.queue = []
        self.commands = []  # [ref, status, detail], oldest first; status _EXECUTING meanwhile
        self.stats = {
            "join_attempts": 0,
            "joins": 0,
            "join_refusals": 0,
            "transmissions": 0,
            "retransmissions": 0,
            "acks": 0,
            "dropped": 0,
            "commands_executed": 0,
            "commands_expired": 0,
            "commands_repeated": 0,
            "downlinks_rejected": 0,
            "foreign_frames": 0,
            "sessions_lost": 0,
        }
        self.last_rssi = None  # signal of the last frame accepted from the gateway
        self.last_snr = None
        self._phase = _IDLE
        self._on_air = None  # the _Uplink being sent, or None for a join request
        self._window_closes = 0.0
        self._started = False
        self._next_join_at = 0.0
        self._next_uplink_at = 0.0
        self._tx_allowed_at = 0.0
        self._join_failures = 0
        self._unacked_in_a_row = 0
        if record is not None:
            self._restore(record)

    # ---------------------------------------------------------------------- properties

    @property
    def joined(self) -> bool:
        return self.session is not None

    @property
    def address(self):
        return self.session.address if self.session is not None else None

    # -------------------------------------------------------------------------- events

    def tick(self, now: float) -> list:
        """Whatever is due at ``now``: a join request, the head of the queue, or a WakeAt."""
        self._start(now)
        if self._phase != _IDLE:
            return []  # the radio is busy: tx_done, received or rx_timeout comes next
        if self.session is None:
            at = max(self._next_join_at, self._tx_allowed_at)
            if now >= at:
                return self._send_join()
            return [WakeAt(at)]
        if self.queue:
            at = max(self._next_uplink_at, self._tx_allowed_at)
            if now >= at:
                return self._send_head(now)
            return [WakeAt(at)]
        return [WakeAt(None)]

    def report(self, data: dict, now: float, confirmed: bool = True) -> list:
        """Queue a report of ``data`` (a JSON-mappable map); the node adds ``counter``, which
        counts reports across sessions. ValueError if it cannot go on air."""
        if not isinstance(data, dict):
            raise ValueError("a report is a map")
        body = dict(data)
        body["counter"] = self.report_next
        size = len(cbor.encode(body))  # CborError (a ValueError) if JSON cannot hold it
        if size > frames.MAX_SESSION_BODY:
            raise ValueError("report body of " + str(size) + " bytes, at most 243")
        self.report_next += 1
        write = self.report_next > self.report_reserved
        uplink = _Uplink("report", body["counter"], body=body)
        uplink.confirmed = confirmed
        actions = self._make_room()
        self.queue.append(uplink)
        if self.config.persist_queue and (confirmed or actions):
            write = True  # a pending uplink came (or a dropped one went)
        if write:
            return actions + self._persist_before(self.tick(now))
        return actions + self.tick(now)

    def tx_done(self, now: float, airtime_s: float = 0.0) -> list:
        """The frame of the last Transmit ended on air at ``now`` (TxDone)."""
        if self._phase != _TRANSMITTING:
            return []
        duty = self.config.duty_cycle
        self._tx_allowed_at = now + airtime_s * (1.0 / duty - 1.0)
        if self._on_air is None:
            delay = self.config.join_rx_delay_s
        else:
            delay = self.session.rx_delay_ds / 10
        opens = now + delay - self.config.rx_early_s
        duration = self.config.rx_window_s + self.config.rx_early_s
        self._window_closes = opens + duration
        self._phase = _LISTENING
        return [Listen(opens, duration)]

    def received(self, phy: bytes, now: float, rssi=None, snr=None) -> list:
        """A frame ended (RxDone) at ``now`` during a Listen."""
        if self._phase != _LISTENING:
            self.stats["foreign_frames"] += 1
            return []
        if self._on_air is None:
            try:
                answer = frames.open_join_answer(phy, self._join_mac, self.eui, self.join_nonce)
            except frames.FrameError:
                self.stats["foreign_frames"] += 1
                return self._listen_on(now)
            self._phase = _IDLE
            self.last_rssi, self.last_snr = rssi, snr
            return self._join_answered(answer, now)
        session = self.session
        try:
            downlink = frames.open_downlink(phy, session.keys, session.address)
        except frames.FrameError as exc:
            if exc.reason in ("unknown_address", "bad_type"):
                self.stats["foreign_frames"] += 1
            else:
                self.stats["downlinks_rejected"] += 1
            return self._listen_on(now)
        if downlink.counter <= self.dl_last or (session.encrypt and not downlink.encrypted):
            self.stats["downlinks_rejected"] += 1
            return self._listen_on(now)
        self.dl_last = downlink.counter
        self.last_rssi, self.last_snr = rssi, snr
        self._phase = _IDLE
        return self._window_over(downlink, now)

    def rx_timeout(self, now: float) -> list:
        """The receive window of the last Listen passed with nothing for this node."""
        if self._phase != _LISTENING:
            return []
        self._phase = _IDLE
        if self._on_air is None:
            return self._join_failed(now, 0)
        return self._window_over(None, now)

    def command_done(self, ref: int, status: int, detail, now: float) -> list:
        """The application's answer to ``Execute``: frames.EXECUTED, FAILED or EXPIRED,
        with an optional text detail. It goes out as a confirmed uplink, ahead of reports."""
        if status not in (frames.EXECUTED, frames.FAILED, frames.EXPIRED):
            raise ValueError("status must be EXECUTED, FAILED or EXPIRED")
        if detail is not None and not isinstance(detail, str):
            raise ValueError("a result detail is a text string")
        for entry in self.commands:
            if entry[0] == ref and entry[1] == _EXECUTING:
                entry[1] = status
                entry[2] = detail
                if status == frames.EXPIRED:
                    self.stats["commands_expired"] += 1
                else:
                    self.stats["commands_executed"] += 1
                actions = self._queue_result(ref, status, detail)
                return actions + self._persist_before(self.tick(now))
        return []

    def rebase(self, shift_s: float) -> None:
        """The caller's clock now counts from ``shift_s`` seconds later: every time held here
        moves with it (node/runner.py, ``TickClock``: keeps a board's float times small)."""
        self._window_closes -= shift_s
        self._next_join_at -= shift_s
        self._next_uplink_at -= shift_s
        self._tx_allowed_at -= shift_s

    # ------------------------------------------------------------------------ joining

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        spread = self.config.join_start_spread_s * self._draw()
        self._next_join_at = now + spread
        self._next_uplink_at = now

    def _send_join(self) -> list:
        nonce = bytes(self._random_bytes(NONCE_LEN))
        self.join_nonce = nonce
        self.stats["join_attempts"] += 1
        self.stats["transmissions"] += 1
        self._on_air = None
        self._phase = _TRANSMITTING
        frame = frames.join_request(self._join_mac, self.eui, nonce)
        # The nonce is stored before it is sent (docs/protocol.md, Node rules: Joining).
        return [self._persist(), Transmit(frame, "join")]

    def _join_answered(self, answer, now: float) -> list:
        if isinstance(answer, frames.JoinRefused):
            self.stats["join_refusals"] += 1
            event = JoinRefused(answer.reason, answer.retry_after_s)
            actions = [event]
            return actions + self._join_failed(now, answer.retry_after_s)
        self.session = _Session(
            self.root_key,
            self.eui,
            answer.address,
            self.join_nonce,
            answer.gw_nonce,
            answer.rx_delay_ds,
            answer.encrypt,
        )
        self.up_next = 0
        self.up_reserved = 0
        self.dl_last = -1
        self.stats["joins"] += 1
        self._join_failures = 0
        self._unacked_in_a_row = 0
        for uplink in self.queue:  # frames of an old session are built again
            uplink.reset()
        self._next_uplink_at = now + self._jittered(self.config.next_uplink_gap_s)
        actions = [self._persist(), Joined(answer.address)]
        return actions + self.tick(now)

    def _join_failed(self, now: float, wait_at_least: float) -> list:
        self._join_failures += 1
        cfg = self.config
        delay = backoff_delay(
            self._join_failures,
            cfg.join_backoff_min_s,
            cfg.join_backoff_max_s,
            cfg.join_jitter,
            self._draw(),
        )
        self._next_join_at = now + max(delay, wait_at_least)
        return self.tick(now)

    def _lose_session(self, now: float) -> list:
        self.stats["sessions_lost"] += 1
        self.session = None
        self._unacked_in_a_row = 0
        self._join_failures = 0
        # Nodes that lost the gateway together do not all come back in the same instant.
        self._next_join_at = now + self.config.join_start_spread_s * self._draw()
        for uplink in self.queue:
            uplink.reset()
        return [SessionLost(), self._persist()]

    # ------------------------------------------------------------------------ uplinks

    def _make_room(self) -> list:
        """Keep the queue bounded: drop the oldest report not on air yet (else the oldest)."""
        if len(self.queue) < self.config.queue_size:
            return []
        victim = None
        for uplink in self.queue:
            if uplink.kind == "report" and uplink.frame is None:
                victim = uplink
                break
        if victim is None:
            victim = self.queue[0]
        self.queue.remove(victim)
        self.stats["dropped"] += 1
        return [Dropped(victim.kind, victim.number, "full")]

    def _queue_result(self, ref: int, status: int, detail) -> list:
        for uplink in self.queue:
            if uplink.kind == "result" and uplink.number == ref:
                return []
        actions = self._make_room()
        position = 0  # ahead of waiting reports, never ahead of a frame already on air
        while position < len(self.queue) and (
            self.queue[position].frame is not None or self.queue[position].kind == "result"
        ):
            position += 1
        self.queue.insert(position, _Uplink("result", ref, status=status, detail=detail))
        return actions

    def _send_head(self, now: float) -> list:
        session = self.session
        head = self.queue[0]
        actions = []
        if head.frame is None:
            if self.up_next > frames.MAX_COUNTER:
                return self._lose_session(now) + self.tick(now)
            head.counter = self.up_next
            self.up_next += 1
            if head.kind == "report":
                head.frame = frames.report(
                    session.keys,
                    session.address,
                    head.counter,
                    head.body,
                    head.confirmed,
                    session.encrypt,
                )
            else:
                head.frame = frames.command_result(
                    session.keys,
                    session.address,
                    head.counter,
                    head.number,
                    head.status,
                    head.detail,
                    True,
                    session.encrypt,
                )
            # The counter, and with persist_queue the frame itself, are stored before they are
            # on air: after a power cycle the same bytes go out again.
            if self.up_next > self.up_reserved or (head.confirmed and self.config.persist_queue):
                actions.append(self._persist())
        head.attempts += 1
        self.stats["transmissions"] += 1
        if head.attempts > 1:
            self.stats["retransmissions"] += 1
        self._on_air = head
        self._phase = _TRANSMITTING
        actions.append(Transmit(head.frame, head.kind))
        return actions

    def _listen_on(self, now: float) -> list:
        """A frame that was not for us: keep listening for the rest of the window."""
        left = self._window_closes - now
        if left > 0:
            return [Listen(now, left)]
        return self.rx_timeout(now)

    def _window_over(self, downlink, now: float) -> list:
        cfg = self.config
        sent = self._on_air
        actions = []
        stored = sent in self.queue and sent.confirmed and cfg.persist_queue
        if sent in self.queue:
            if not sent.confirmed:
                self.queue.remove(sent)
                self._next_uplink_at = now + self._jittered(cfg.next_uplink_gap_s)
            elif downlink is not None and downlink.ack_counter == sent.counter:
                self.queue.remove(sent)
                self.stats["acks"] += 1
                self._unacked_in_a_row = 0
                actions.append(Acked(sent.kind, sent.number))
                self._next_uplink_at = now + self._jittered(cfg.next_uplink_gap_s)
            else:
                self._unacked_in_a_row += 1
                if sent.attempts >= cfg.max_attempts:
                    self.queue.remove(sent)
                    self.stats["dropped"] += 1
                    actions.append(Dropped(sent.kind, sent.number, "max_attempts"))
                delay = backoff_delay(
                    sent.attempts, cfg.retry_min_s, cfg.retry_max_s, cfg.jitter, self._draw()
                )
                self._next_uplink_at = now + delay
        if downlink is not None and downlink.command is not None:
            actions += self._command_arrived(downlink.command, now)
        if self._unacked_in_a_row >= cfg.rejoin_after_unacked:
            actions += self._lose_session(now)
        if stored and sent not in self.queue and not _persists(actions):
            return actions + self._persist_before(self.tick(now))
        return actions + self.tick(now)

    # ----------------------------------------------------------------------- commands

    def _command_arrived(self, command, now: float) -> list:
        for entry in self.commands:
            if entry[0] == command.ref:
                # Seen before: never run twice. Answer from memory once the answer exists.
                self.stats["commands_repeated"] += 1
                if entry[1] == _EXECUTING:
                    return []
                return self._queue_result(entry[0], entry[1], entry[2])
        entry = [command.ref, _EXECUTING, None]
        self.commands.append(entry)
        del self.commands[: -self.config.remembered_commands]
        if command.ttl_ds == 0:
            entry[1] = frames.EXPIRED
            self.stats["commands_expired"] += 1
            # Stored with the downlink counter, so a replay after a power cycle is refused.
            actions = self._queue_result(command.ref, frames.EXPIRED, None)
            actions.append(self._persist())
            return actions
        # ttl_ds counts from the end of the downlink on air, which is RxDone: ``now``.
        return [self._persist(), Execute(command, now + command.ttl_ds / 10)]

    # ------------------------------------------------------------------------- storage

    def _persist(self) -> Persist:
        """A record of everything kept across power cycles, reserving counters ahead."""
        block = self.config.counter_block
        if self.up_next + block // 2 > self.up_reserved:
            self.up_reserved = min(self.up_next + block, frames.MAX_COUNTER + 1)
        if self.report_next + block // 2 > self.report_reserved:
            self.report_reserved = self.report_next + block
        session = self.session
        stored_session = None
        if session is not None:
            stored_session = [
                session.address,
                session.dev_nonce,
                session.gw_nonce,
                session.rx_delay_ds,
                session.encrypt,
            ]
        return Persist(
            {
                "version": RECORD_VERSION,
                "eui": self.eui,
                "join_nonce": self.join_nonce,
                "session": stored_session,
                "up_reserved": self.up_reserved,
                "dl_last": self.dl_last,
                "report_reserved": self.report_reserved,
                "commands": [list(entry) for entry in self.commands],
                "queue": self._stored_queue(),
            }
        )

    def _persist_before(self, later: list) -> list:
        """``later`` with one write ahead of what it sends: its own Persist (built after this
        change, so it holds it) or one put in front."""
        if _persists(later):
            return later
        actions = [self._persist()]
        actions += later
        return actions

    def _stored_queue(self) -> list:
        """The pending confirmed uplinks as stored: frames only of the current session."""
        if not self.config.persist_queue:
            return []
        stored = []
        for uplink in self.queue:
            if uplink.confirmed:
                framed = uplink.frame is not None and self.session is not None
                stored.append(
                    [
                        uplink.kind,
                        uplink.number,
                        uplink.body,
                        uplink.status,
                        uplink.detail,
                        uplink.counter if framed else -1,
                        uplink.frame if framed else None,
                    ]
                )
        return stored

    def _restore(self, record: dict) -> None:
        if record.get("version") != RECORD_VERSION:
            raise ValueError("unknown node record version")
        if bytes(record["eui"]) != self.eui:
            raise ValueError("the stored record belongs to another node")
        nonce = record["join_nonce"]
        self.join_nonce = bytes(nonce) if nonce is not None else None
        stored = record["session"]
        if stored is not None:
            self.session = _Session(
                self.root_key,
                self.eui,
                int(stored[0]),
                bytes(stored[1]),
                bytes(stored[2]),
                int(stored[3]),
                bool(stored[4]),
            )
        # Skip to the reservations: no counter at or above them was ever used.
        self.up_next = self.up_reserved = int(record["up_reserved"])
        self.report_next = self.report_reserved = int(record["report_reserved"])
        self.dl_last = int(record["dl_last"])
        self.queue = []
        for kind, number, body, status, detail, counter, frame in record.get("queue", ()):
            uplink = _Uplink(kind, int(number), body=body, status=int(status), detail=detail)
            if frame is not None and self.session is not None:
                # Sent again byte for byte: the gateway takes it as new or acks a duplicate.
                uplink.counter = int(counter)
                uplink.frame = bytes(frame)
            self.queue.append(uplink)
        self.commands = []
        for ref, status, detail in record["commands"]:
            if status == _EXECUTING:  # the power went while it ran: its outcome is unknown
                status, detail = frames.FAILED, "interrupted by a restart"
                if len(self.queue) < self.config.queue_size:
                    self._queue_result(int(ref), status, detail)
            self.commands.append([int(ref), int(status), detail])

    # ------------------------------------------------------------------------ helpers

    def _draw(self) -> float:
        """A random number in 0..1 from two random bytes."""
        return int.from_bytes(bytes(self._random_bytes(2)), "big") / 65536

    def _jittered(self, seconds: float) -> float:
        return seconds * (1 - self.config.jitter * self._draw())
