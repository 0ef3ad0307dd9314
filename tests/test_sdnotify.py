from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier, Watchdog, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A systemd-like notify socket bound to a path."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock, str(path)
    finally:
        sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    """A notify socket in the abstract namespace, named as systemd names it: ``@name``."""
    name = f"duogate-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def receive(sock: socket.socket, timeout: float = 5.0) -> str:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), timeout)
    return data.decode()


def test_messages_on_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier(address)
    assert notifier.enabled
    assert notifier.ready("listening; 3 upstreams")
    assert notifier.status("mqtt connected")
    assert notifier.watchdog()
    assert notifier.stopping()
    notifier.close()
    assert received(sock) == [
        "READY=1\nSTATUS=listening; 3 upstreams",
        "STATUS=mqtt connected",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_messages_on_an_abstract_socket(abstract_listener: tuple[socket.socket, str]) -> None:
    sock, address = abstract_listener
    notifier = Notifier(address)
    assert notifier.ready()
    assert notifier.send(STATUS="two\nlines")
    notifier.close()
    assert received(sock) == ["READY=1", "STATUS=two lines"]


def test_address_comes_from_notify_socket(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = Notifier()
    assert notifier.ready()
    notifier.close()
    assert received(sock) == ["READY=1"]


def test_without_notify_socket_everything_is_a_quiet_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready("up")
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not Notifier("relative/path").ready()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, os.getpid()) == expected


def test_watchdog_from_environment(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, address = listener
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    watchdog = Watchdog.from_environment(Notifier(address))
    assert watchdog is not None and watchdog.period_s == 10.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert Watchdog.from_environment(Notifier(address)) is None
    with pytest.raises(ValueError):
        Watchdog(Notifier(address), 0)


async def test_watchdog_pings_while_healthy(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    watchdog = Watchdog(Notifier(address), interval_s=0.2)
    watchdog.start()
    try:
        for _ in range(3):
            assert await receive(sock) == "WATCHDOG=1"
    finally:
        await watchdog.stop()
    assert watchdog.pings >= 3


async def test_watchdog_stops_pinging_while_unhealthy(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    healthy = True
    watchdog = Watchdog(Notifier(address), interval_s=0.1, healthy=lambda: healthy)
    watchdog.start()
    try:
        assert await receive(sock) == "WATCHDOG=1"
        healthy = False
        checks = watchdog.skipped_unhealthy
        received(sock)  # a ping already sent before the change
        while watchdog.skipped_unhealthy < checks + 3:
            await asyncio.sleep(0.02)
        assert received(sock) == []
        healthy = True
        assert await receive(sock) == "WATCHDOG=1"
    finally:
        await watchdog.stop()


async def test_a_failing_health_check_counts_as_unhealthy(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener

    def radio_healthy() -> bool:
        raise OSError("spi bus gone")

    watchdog = Watchdog(Notifier(address), interval_s=0.1, healthy=radio_healthy)
    watchdog.start()
    try:
        while watchdog.skipped_unhealthy < 2:
            await asyncio.sleep(0.02)
    finally:
        await watchdog.stop()
    assert received(sock) == []
    assert watchdog.pings == 0


async def test_watchdog_withholds_the_ping_after_the_loop_was_blocked(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    watchdog = Watchdog(Notifier(address), interval_s=0.2)
    watchdog.start()
    try:
        assert await receive(sock) == "WATCHDOG=1"
        received(sock)
        skipped = watchdog.skipped_lag
        time.sleep(4 * watchdog.period_s)  # a hang: nothing on the loop runs
        assert received(sock) == []
        while watchdog.skipped_lag == skipped:
            await asyncio.sleep(0.01)
        assert watchdog.last_lag_s > watchdog.period_s
        # Once the loop keeps time again, pings resume.
        assert await receive(sock) == "WATCHDOG=1"
    finally:
        await watchdog.stop()
