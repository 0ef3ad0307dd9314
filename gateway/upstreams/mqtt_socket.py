"""paho's socket on the asyncio event loop, with no paho thread (the aiomqtt pattern).

The socket is watched with ``loop.add_reader`` and ``loop_misc`` runs once a second for
keepalive. paho's own reads and writes go through ``BufferedClient``:

* Every packet paho queues during one turn of the loop is sent on the next turn with one
  write: paho hands each packet to ``_sock_send``, which keeps it, and ``LoopSocket`` sends
  what was kept at once. Only when the socket cannot take it all is the rest kept (paho queues
  anything newer behind it) and the socket watched for writing (``add_writer``) until both are
  out, so a publish costs no registration with the selector.
* paho reads a packet with two or three ``recv`` calls (type, length, body); ``_sock_recv``
  reads whatever the socket holds and hands paho those small reads from memory, so a batch of
  PUBACKs costs one system call.

paho may open the socket from the executor thread that runs its blocking connect; its socket
callbacks are then handed to the loop.

Each read notes when the messages it brings reached the gateway (``arrival.ArrivalClock``):
the socket is checked empty after the read (``FIONREAD``, plus bytes read ahead and decrypted
bytes TLS holds), so a stall is charged to the messages that waited through it and not to
later ones. Bytes held in memory are not signalled by the socket; they are read out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
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
READ_AHEAD_BYTES = 65536


class BufferedClient(paho.Client):
    """A paho client whose packet writes are kept for ``LoopSocket`` to send together and whose
    reads come from one larger read of the socket.

    ``_sock_send`` and ``_sock_recv`` are private to paho, but they are the only two places its
    packet code touches the socket, so its protocol handling stays untouched. The paho versions
    this was checked with are pinned in pyproject.toml; tests/test_upstreams_mqtt_socket.py
    fails if paho stops calling them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: list[bytes | bytearray] = []  # packets paho wrote, not yet sent
        self._ahead = b""  # bytes read from the socket that paho has not asked for yet
        self._ahead_pos = 0

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        self._kept.append(buf)
        return len(buf)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._ahead_pos < len(self._ahead):
            start = self._ahead_pos
            self._ahead_pos = min(start + bufsize, len(self._ahead))
            return self._ahead[start : self._ahead_pos]
        data = super()._sock_recv(max(bufsize, READ_AHEAD_BYTES))
        if len(data) <= bufsize:
            return data
        self._ahead, self._ahead_pos = data, bufsize
        return data[:bufsize]

    def take_kept(self) -> bytes | bytearray:
        """Everything paho wrote since the last call, in order (empty if nothing)."""
        kept = self._kept
        if not kept:
            return b""
        self._kept = []
        return kept[0] if len(kept) == 1 else b"".join(kept)

    def read_ahead(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._ahead) - self._ahead_pos

    def drop_buffers(self) -> None:
        """Forget what was kept and read ahead: the connection they belong to is gone."""
        self._kept = []
        self._ahead, self._ahead_pos = b"", 0


class _Sent(enum.Enum):
    ALL = enum.auto()
    WAIT_WRITABLE = enum.auto()
    WAIT_READABLE = enum.auto()  # TLS must read before it can write
    FAILED = enum.auto()


class LoopSocket:
    def __init__(self, arrival: ArrivalClock, *, on_broken: Callable[[], None]) -> None:
        self.arrival = arrival
        self.read_arrival = time.monotonic()  # stamp of the messages being read now
        self._on_broken = on_broken  # paho failed in a way it does not handle: drop the link
        self._client: BufferedClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._watched_fd: int | None = None
        self._write_due = False  # a write is scheduled for the next turn of the loop
        self._watching_writable = False
        self._unsent = memoryview(b"")  # taken from paho, not yet taken by the socket
        self._send_waits_for_read = False
        self._misc: asyncio.Task[None] | None = None

    def install(self, client: BufferedClient) -> None:
        """Take over ``client``'s socket callbacks. Writability is this class's business:
        paho's unregister callback is left unset, as paho drops its interest as soon as it
        has handed its packets over, before the socket has taken them."""
        self._client = client
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write

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
            self._forget_buffers()

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

    def _forget_buffers(self) -> None:
        self._unsent = memoryview(b"")
        self._send_waits_for_read = False
        if self._client is not None:
            self._client.drop_buffers()

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._watch, sock.fileno())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        if threading.get_ident() == self._loop_thread and fd == self._watched_fd:
            # paho closes right after writing its DISCONNECT, which is still kept here.
            self._send_before_close(sock)
        self._in_loop(self.unwatch, fd)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._write_soon, sock.fileno())

    def _watch(self, fd: int) -> None:
        assert self._loop is not None
        self._watched_fd = fd
        self._watching_writable = False
        self._forget_buffers()
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
        if fd == self._watched_fd:  # else the connection it was for is gone
            self._send(fd)

    def _writable(self) -> None:
        fd = self._watched_fd
        if fd is not None:
            self._send(fd)

    def _send(self, fd: int) -> None:
        """Send what is left over, then what paho queued since, until the socket is full."""
        client = self._client
        assert client is not None and self._loop is not None
        outcome = _Sent.ALL
        while True:
            if not self._unsent:
                if not client.want_write():
                    break
                self._drive(client.loop_write)  # paho hands every queued packet over
                if fd != self._watched_fd:
                    return  # closed (its DISCONNECT went out) or dropped
                self._unsent = memoryview(client.take_kept())
                if not self._unsent:
                    break
            outcome = self._send_unsent(client.socket())
            if outcome is not _Sent.ALL:
                break
        if outcome is _Sent.FAILED or fd != self._watched_fd:
            return
        self._send_waits_for_read = outcome is _Sent.WAIT_READABLE
        want_writable = outcome is _Sent.WAIT_WRITABLE
        if want_writable != self._watching_writable:
            self._watching_writable = want_writable
            if want_writable:
                self._loop.add_writer(fd, self._writable)
            else:
                self._loop.remove_writer(fd)

    def _send_unsent(self, sock: Any) -> _Sent:
        try:
            sent = sock.send(self._unsent)
        except (BlockingIOError, ssl.SSLWantWriteError):
            return _Sent.WAIT_WRITABLE
        except ssl.SSLWantReadError:
            return _Sent.WAIT_READABLE
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("mqtt: sending to the broker failed: %s", describe(exc))
            self.unwatch()
            self._on_broken()
            return _Sent.FAILED
        self._unsent = self._unsent[sent:]
        # A short write means the socket is full: trying again now would only fail.
        return _Sent.WAIT_WRITABLE if self._unsent else _Sent.ALL

    def _send_before_close(self, sock: Any) -> None:
        """One last non-blocking write of what is kept; the socket is closed next either way."""
        assert self._client is not None
        data = bytes(self._unsent) + self._client.take_kept()
        self._unsent = memoryview(b"")
        if data:
            with contextlib.suppress(OSError, ValueError):
                sock.send(data)

    def _readable(self) -> None:
        self.read_arrival = self.arrival.arrival()
        self._read_out()

    def _read_out(self) -> None:
        """Let paho read until neither the socket nor memory holds anything for it."""
        client = self._client
        assert client is not None and self._loop is not None
        if self._watched_fd is None:
            return  # dropped since this was scheduled
        sock = client.socket()
        for _ in range(_MAX_BUFFERED_READS):
            self._drive(client.loop_read)
            if sock is None or client.socket() is not sock:
                return
            if _held_in_memory(client, sock) <= 0:
                break
        else:
            self._loop.call_soon(self._read_out)  # more waits in memory: go on next turn
            return
        if _unread_bytes(sock) == 0:
            self.arrival.drained()
        fd = self._watched_fd
        if self._send_waits_for_read and fd is not None:
            self._send(fd)

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


def _held_in_memory(client: BufferedClient, sock: Any) -> int:
    """Bytes read from the socket (and decrypted by TLS) that paho has not taken yet."""
    held = client.read_ahead()
    if isinstance(sock, ssl.SSLSocket):
        held += sock.pending()
    return held


def _unread_bytes(sock: Any) -> int:
    """Bytes waiting to be read on ``sock`` (decrypted TLS bytes included); -1 if unknown."""
    try:
        waiting = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    except (OSError, ValueError):
        return -1
    if isinstance(sock, ssl.SSLSocket):
        waiting += sock.pending()
    return waiting
