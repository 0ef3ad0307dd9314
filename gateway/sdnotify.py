"""systemd's sd_notify protocol: readiness, status text and watchdog pings.

Messages are datagrams of ``KEY=value`` lines sent to the socket named in ``NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). Without ``NOTIFY_SOCKET`` every call is a
no-op, so the gateway runs the same from a shell.

The watchdog pings only while the gateway is healthy: the pinging task measures how late the
event loop woke it and skips the ping when the loop lagged, and it asks a health callable
(the radio still answers). A hung loop or a dead radio stops the pings, and systemd restarts
the service after ``WatchdogSec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]


class Notifier:
    """Sends sd_notify messages; every method returns False when nothing was delivered."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines, e.g. ``send(READY=1, STATUS="up")``."""
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")  # one field per line
            lines.append(f"{key}={text}")
        return self._send("\n".join(lines))

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.send(STOPPING=1, STATUS=status) if status else self.send(STOPPING=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> bool:
        if not self.address:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        elif not target.startswith("/"):
            self._warn_once(f"unsupported NOTIFY_SOCKET address {self.address!r}")
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), target)
        except OSError as exc:
            self._warn_once(f"cannot notify systemd at {self.address}: {exc.strerror or exc}")
            return False
        return True

    def _warn_once(self, text: str) -> None:
        if not self._warned:
            log.warning("%s", text)
            self._warned = True
        else:
            log.debug("%s", text)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog interval in seconds systemd asked for, or None when it asked for none.

    ``WATCHDOG_PID``, when set, must name this process (it is meant for a specific child).
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_PID=%r", owner)
            return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    return value / 1_000_000 if value > 0 else None


class Watchdog:
    """Pings systemd every ``interval_s / 2`` while the loop keeps time and ``healthy()`` holds."""

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        healthy: HealthCheck | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"watchdog interval must be positive, got {interval_s}")
        self._notifier = notifier
        self.interval_s = interval_s
        self.period_s = interval_s / 2
        self._healthy = healthy
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.pings = 0
        self.skipped_lag = 0
        self.skipped_unhealthy = 0
        self.last_lag_s = 0.0

    @classmethod
    def from_environment(
        cls, notifier: Notifier, healthy: HealthCheck | None = None
    ) -> Watchdog | None:
        """A watchdog when systemd asked for one and a notify socket is set, else None."""
        interval = watchdog_interval()
        if interval is None or not notifier.enabled:
            return None
        return cls(notifier, interval, healthy)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="sd-watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        self._ping_if_healthy(lag=0.0)
        while True:
            expected = self._clock() + self.period_s
            await asyncio.sleep(self.period_s)
            self._ping_if_healthy(lag=max(0.0, self._clock() - expected))

    def _ping_if_healthy(self, lag: float) -> None:
        self.last_lag_s = lag
        if lag > self.period_s:
            self.skipped_lag += 1
            log.warning("event loop lagged %.1f s; withholding the watchdog ping", lag)
            return
        if not self._check_health():
            self.skipped_unhealthy += 1
            log.warning("gateway unhealthy; withholding the watchdog ping")
            return
        if self._notifier.watchdog():
            self.pings += 1

    def _check_health(self) -> bool:
        if self._healthy is None:
            return True
        try:
            return bool(self._healthy())
        except Exception as exc:
            log.warning("health check failed: %s: %s", type(exc).__name__, exc)
            return False
