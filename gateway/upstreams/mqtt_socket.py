"""paho's socket on the asyncio event loop, with no paho thread (the aiomqtt pattern).

The socket is watched with ``loop.add_reader`` and ``loop_misc`` runs once a second for
keepalive. What paho queues for sending is written on the next turn of the loop, every packet
queued in the turn before at once; only when the socket cannot take it all is it watched for
writing (``add_writer``) until paho's queue is empty, so a publish costs no registration with
the selector. paho may open the socket from the executor thread that runs its blocking
connect; its socket callbacks are then handed to the loop.

Each read notes when the messages it brings reached the gateway (``arrival.ArrivalClock``):
the socket is checked empty after the read (``FIONREAD``, plus decrypted bytes TLS holds), so
a stall is charged to the messages that waited through it and not to later ones. TLS may hold
decrypted bytes the socket no longer signals; they are read out at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from gateway.tasks import cancel_and_wait, describe
from gateway.upstreams.arrival import ArrivalClock

log = logging.getLogger("gateway.upstreams.mqtt")

_MAX_BUFFERED_READS = 1000


class LoopSocket:
    def __init__(self, arrival: ArrivalClock, *, on_broken: Callable[[], None]) -> None:
        self.arrival = arrival
        self.read_arrival = time.monotonic()  # stamp of the messages being read now
        self._on_broken = on_broken  # paho failed in a way it does not handle: drop the link
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._watched_fd: int | None = None
        self._write_due = False  # a write is scheduled for the next turn of the loop
        self._watching_writable = False
        self._misc: asyncio.Task[None] | None = None

    def install(self, client: paho.Client) -> None:
        """Take over ``client``'s socket callbacks."""
        self._client = client
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop (and its thread) to drive the socket from; starts the arrival clock."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.arrival.start(loop)

    def unwatch(self, fd: int | None = None) -> None:
        """Stop watching ``fd`` (the watched socket by default)."""
        if self._loop is None:
            return
        fd = self._watched_fd if fd is None else fd
        if fd is None or fd < 0:
            return
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        if fd == self._watched_fd:
            self._watched_fd = None
            self._watching_writable = False

    async def close(self) -> None:
        await cancel_and_wait(self._misc)
        self.arrival.stop()
        self.unwatch()

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop: directly there, else scheduled from another thread."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._watch, sock.fileno())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self.unwatch, sock.fileno())

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._write_soon, sock.fileno())

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._unwatch_writable, sock.fileno())

    def _watch(self, fd: int) -> None:
        assert self._loop is not None
        self._watched_fd = fd
        self._watching_writable = False
        self._loop.add_reader(fd, self._readable)
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(self._misc_loop(), name="mqtt-misc")

    def _write_soon(self, fd: int) -> None:
        assert self._loop is not None
        if fd == self._watched_fd and not self._write_due and not self._watching_writable:
            self._write_due = True
            self._loop.call_soon(self._write_queued, fd)

    def _write_queued(self, fd: int) -> None:
        self._write_due = False
        client = self._client
        assert client is not None and self._loop is not None
        if fd != self._watched_fd:
            return  # the connection it was for is gone
        self._drive(client.loop_write)
        if fd == self._watched_fd and client.want_write():  # the socket took only part of it
            self._watching_writable = True
            self._loop.add_writer(fd, self._writable)

    def _unwatch_writable(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0 and fd == self._watched_fd and self._watching_writable:
            self._watching_writable = False
            self._loop.remove_writer(fd)

    def _readable(self) -> None:
        client = self._client
        assert client is not None
        self.read_arrival = self.arrival.arrival()
        self._drive(client.loop_read)
        # TLS may hold decrypted bytes the socket no longer signals: read them out now.
        sock = client.socket()
        for _ in range(_MAX_BUFFERED_READS):
            if not isinstance(sock, ssl.SSLSocket) or client.socket() is not sock:
                break
            if sock.pending() <= 0:
                break
            self._drive(client.loop_read)
        if sock is not None and client.socket() is sock and _unread_bytes(sock) == 0:
            self.arrival.drained()

    def _writable(self) -> None:
        assert self._client is not None
        self._drive(self._client.loop_write)

    def _drive(self, step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception as exc:
            # paho handles ordinary socket errors itself; anything else: drop the connection.
            log.warning("mqtt: socket error: %s", describe(exc))
            self.unwatch()
            self._on_broken()

    async def _misc_loop(self) -> None:
        assert self._client is not None
        while self._client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)


def _unread_bytes(sock: Any) -> int:
    """Bytes waiting to be read on ``sock`` (decrypted TLS bytes included); -1 if unknown."""
    try:
        waiting = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    except (OSError, ValueError):
        return -1
    if isinstance(sock, ssl.SSLSocket):
        waiting += sock.pending()
    return waiting
