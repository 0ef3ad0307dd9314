"""``sim://HOST:PORT``: a simulated chip served by ``duogate sim`` (``drivers.sim.chip_server``),
reached over TCP; this module is the client end and the protocol both ends speak.

Wire protocol of ``sim://`` (version 2)
---------------------------------------
Every message, in both directions, is ``LEN KIND BODY``: ``LEN`` is a big-endian u16 giving the
length of ``KIND`` + ``BODY`` (1..4097), ``KIND`` one byte. Requests go client -> server and are
answered strictly in order, one at a time; a request is answered by its reply kind or ERROR.
Version 2 adds every DIO line (DIO_READ, DIO_LEVELS, DIO_EDGE); a client that greets with
version 1 gets DIO0 alone, as before (DIO0_READ, DIO0_EDGE).

=====  ============  =========  ============================================================
kind   name          direction  body
=====  ============  =========  ============================================================
0x00   HELLO         c -> s     ``duogate-sim-chip/2`` (or ``/1``, ASCII); first request on a
                                connection
0x80   HELLO_OK      s -> c     the same text
0x01   XFER          c -> s     bytes clocked out on MOSI (1..4096), chip select held throughout
0x81   XFER_REPLY    s -> c     bytes clocked in on MISO, same length
0x02   RESET         c -> s     empty: the RST line was pulsed; the chip resets
0x82   RESET_DONE    s -> c     empty
0x03   DIO0_READ     c -> s     empty
0x83   DIO0_LEVEL    s -> c     one byte, 0 or 1
0x04   DIO_READ      c -> s     empty (version 2)
0x84   DIO_LEVELS    s -> c     six bytes: the levels of DIO0..DIO5, 0 or 1
0x90   DIO0_EDGE     s -> c     one byte, the new DIO0 level; pushed unasked whenever it changes,
                                between any two messages (version 1 clients only)
0x91   DIO_EDGE      s -> c     two bytes: line (0..5), new level; pushed unasked whenever a DIO
                                line changes, between any two messages (version 2)
0xEF   ERROR         s -> c     UTF-8 reason; answers a request the server could not carry out
=====  ============  =========  ============================================================

The server serves one chip to one client: a second connection while the first is alive is
answered with one ERROR (``chip server busy: ...``) and closed, and the first goes on. A client
whose connection ended (process killed, socket closed) frees the chip at once. The client waits a
bounded time for every reply and reconnects on its next request when the connection was lost,
so a restarted ``duogate sim`` or gateway picks up where it left off.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
from collections.abc import Callable

from drivers.radio.base import RadioError
from drivers.radio.spi import Pins
from drivers.radio.spi_simulated import SimulatedLines


class LinkError(RadioError):
    """The ``sim://`` server is unreachable, did not answer in time, or answered nonsense."""


PROTOCOL_HELLO = b"duogate-sim-chip/2"
PROTOCOL_HELLO_V1 = b"duogate-sim-chip/1"
MAX_BODY = 4096
DIO_LINES = 6

HELLO = 0x00
XFER = 0x01
RESET = 0x02
DIO0_READ = 0x03
DIO_READ = 0x04
HELLO_OK = 0x80
XFER_REPLY = 0x81
RESET_DONE = 0x82
DIO0_LEVEL = 0x83
DIO_LEVELS = 0x84
DIO0_EDGE = 0x90
DIO_EDGE = 0x91
ERROR = 0xEF

REPLY_TO = {
    HELLO: HELLO_OK,
    XFER: XFER_REPLY,
    RESET: RESET_DONE,
    DIO0_READ: DIO0_LEVEL,
    DIO_READ: DIO_LEVELS,
}


def encode_message(kind: int, body: bytes = b"") -> bytes:
    """One message of the ``sim://`` protocol."""
    if len(body) > MAX_BODY:
        raise ValueError(f"message body of {len(body)} bytes exceeds {MAX_BODY}")
    return struct.pack(">HB", len(body) + 1, kind) + body


def split_messages(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Remove and return the complete messages at the front of ``buffer``.

    Raises LinkError for a length no peer of this protocol sends (0 or above the maximum).
    """
    messages = []
    while len(buffer) >= 2:
        (length,) = struct.unpack_from(">H", buffer)
        if not 1 <= length <= MAX_BODY + 1:
            raise LinkError(f"bad message length {length}")
        if len(buffer) < 2 + length:
            break
        messages.append((buffer[2], bytes(buffer[3 : 2 + length])))
        del buffer[: 2 + length]
    return messages


class _Connection:
    """One TCP connection: its socket, its reader thread and the replies read so far."""

    def __init__(self, sock: socket.socket, address: str, on_dio: Callable[[int, int], None]):
        self.sock = sock
        self.address = address
        self.replies: queue.SimpleQueue[tuple[int, bytes] | LinkError] = queue.SimpleQueue()
        self.dead = threading.Event()
        self._on_dio = on_dio
        self.reader = threading.Thread(target=self._read_loop, name="sim-chip-reader", daemon=True)
        self.reader.start()

    def close(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.reader is not threading.current_thread():
            self.reader.join(timeout=2.0)

    def _fail(self, reason: str) -> None:
        self.dead.set()
        self.replies.put(LinkError(f"sim chip at {self.address} {reason}"))

    def _read_loop(self) -> None:
        buffer = bytearray()
        while not self.dead.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._fail("closed the connection")
                return
            buffer += chunk
            try:
                messages = split_messages(buffer)
            except LinkError as exc:
                self._fail(f"sent garbage: {exc}")
                return
            for kind, body in messages:
                if kind == DIO_EDGE:
                    if len(body) == 2 and body[0] < DIO_LINES:
                        self._on_dio(body[0], body[1])
                elif kind == DIO0_EDGE:
                    if len(body) == 1:
                        self._on_dio(0, body[0])
                else:
                    self.replies.put((kind, body))


class SimChipLink:
    """Client end of ``sim://``: requests from any thread, DIO edges from its reader thread.

    ``on_dio(line, level)`` is called with each DIO edge from the reader thread; it must not
    block (hand the edge to a GPIO thread). Every request waits at most ``reply_timeout_s``. A
    lost connection fails the request in flight; the next request connects again. Against a
    server that speaks only version 1 the link falls back to it (DIO0 alone).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 2.0,
        reply_timeout_s: float = 1.0,
    ) -> None:
        self.address = f"{host}:{port}"
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._request_lock = threading.Lock()
        self._conn: _Connection | None = None
        self._closed = False
        self.on_dio: Callable[[int, int], None] | None = None
        self.connects = 0
        self.version = 2

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.dead.is_set()

    def connect(self) -> None:
        """Connect and greet the server; a no-op when already connected."""
        with self._request_lock:
            self._ensure_connected()

    def request(self, kind: int, body: bytes = b"") -> bytes:
        """Send one request and return the body of its reply (LinkError on any failure)."""
        with self._request_lock:
            conn = self._ensure_connected()
            return self._exchange(conn, kind, body)

    def close(self) -> None:
        with self._request_lock:
            self._closed = True
            self._drop()

    def dio_levels(self) -> bytes:
        """The levels of DIO0..DIO5 (DIO0 alone, the rest low, from a version 1 server)."""
        with self._request_lock:
            conn = self._ensure_connected()
            return self._read_levels(conn)

    def _read_levels(self, conn: _Connection) -> bytes:
        if self.version == 1:
            return self._exchange(conn, DIO0_READ) + bytes(DIO_LINES - 1)
        levels = self._exchange(conn, DIO_READ)
        if len(levels) != DIO_LINES:
            self._drop()
            raise LinkError(f"sim chip at {self.address}: {len(levels)} DIO levels, not 6")
        return levels

    def _edge(self, line: int, level: int) -> None:
        callback = self.on_dio
        if callback is not None:
            callback(line, level)

    def _ensure_connected(self) -> _Connection:
        if self._closed:
            raise LinkError(f"sim chip link to {self.address} is closed")
        if self._conn is not None and not self._conn.dead.is_set():
            return self._conn
        self._drop()
        try:
            sock = socket.create_connection(
                (self._host, self._port), timeout=self._connect_timeout_s
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise LinkError(f"sim chip at {self.address} unreachable: {reason}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._reply_timeout_s)
        conn = _Connection(sock, self.address, self._edge)
        self._conn = conn
        try:
            self.version = 2
            try:
                greeting = self._exchange(conn, HELLO, PROTOCOL_HELLO)
            except LinkError as exc:
                if "unsupported protocol" not in str(exc) or not self.connected:
                    raise
                self.version = 1
                greeting = self._exchange(conn, HELLO, PROTOCOL_HELLO_V1)
            if greeting not in (PROTOCOL_HELLO, PROTOCOL_HELLO_V1):
                raise LinkError(f"{self.address} is not a duogate sim chip server")
            levels = self._read_levels(conn)
        except LinkError:
            self._drop()
            raise
        self.connects += 1
        for line, level in enumerate(levels):
            if level:
                # An edge that happened while no one was connected would otherwise be lost.
                self._edge(line, 1)
        return conn

    def _exchange(self, conn: _Connection, kind: int, body: bytes = b"") -> bytes:
        try:
            conn.sock.sendall(encode_message(kind, body))
        except OSError as exc:
            self._drop()
            raise LinkError(f"sim chip at {self.address}: send failed: {exc}") from None
        try:
            reply = conn.replies.get(timeout=self._reply_timeout_s)
        except queue.Empty:
            self._drop()
            raise LinkError(
                f"sim chip at {self.address} did not answer within {self._reply_timeout_s} s"
            ) from None
        if isinstance(reply, LinkError):
            self._drop()
            raise reply
        reply_kind, reply_body = reply
        if reply_kind == ERROR:
            raise LinkError(f"sim chip at {self.address}: {reply_body.decode('utf-8', 'replace')}")
        if reply_kind != REPLY_TO[kind]:
            self._drop()
            raise LinkError(
                f"sim chip at {self.address}: reply kind {reply_kind:#04x} to {kind:#04x}"
            )
        return reply_body

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class SimSpiBus:
    """SPI transfers carried by a ``SimChipLink``."""

    def __init__(self, link: SimChipLink) -> None:
        self._link = link

    def xfer(self, data: list[int]) -> list[int]:
        out = bytes(data)
        reply = self._link.request(XFER, out)
        if len(reply) != len(out):
            raise LinkError(f"sim chip answered {len(reply)} bytes to a {len(out)}-byte transfer")
        return list(reply)

    def close(self) -> None:
        self._link.close()


class SimGpio(SimulatedLines):
    """GPIO lines of a chip behind a ``SimChipLink``: DIO edges arrive from the server."""

    def __init__(self, link: SimChipLink, pins: Pins) -> None:
        super().__init__(pins, self._read_dio, self._pulse_reset)
        self._link = link
        link.on_dio = self.post_dio

    def _read_dio(self, line: int) -> int:
        return 1 if self._link.dio_levels()[line] else 0

    def _pulse_reset(self) -> None:
        self._link.request(RESET)
