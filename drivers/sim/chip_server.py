"""Serve one ``SimulatedSX127x`` over the ``sim://`` protocol so a gateway process can drive it.

The gateway opens ``radio.spi = "sim://HOST:PORT"`` and runs its real SX127x driver against this
chip (client: ``drivers.radio.spi_simlink.SimChipLink``). The protocol, from that module's
docstring:

Every message is ``LEN KIND BODY`` with ``LEN`` a big-endian u16 counting ``KIND`` and ``BODY``.
Requests, answered in order: HELLO 0x00 (``duogate-sim-chip/2``, or ``/1``) -> HELLO_OK 0x80;
XFER 0x01 (MOSI bytes) -> XFER_REPLY 0x81 (MISO bytes); RESET 0x02 -> RESET_DONE 0x82; DIO0_READ
0x03 -> DIO0_LEVEL 0x83 (one byte); DIO_READ 0x04 -> DIO_LEVELS 0x84 (six bytes, DIO0..DIO5).
Pushed unasked: DIO_EDGE 0x91 (line, level) for every DIO line to a version 2 client,
DIO0_EDGE 0x90 (the new DIO0 level) to a version 1 client. A request the server cannot carry
out gets ERROR 0xEF (UTF-8 reason) and the connection goes on; a message with an impossible
length ends the connection.

One chip, one client: a second connection while the first is alive gets one ERROR ("chip server
busy: ...") and is closed; the server logs it and the first client goes on undisturbed. A
client that is gone (its process killed: the kernel closes its socket) frees the chip; a new
connection waits up to ``takeover_grace_s`` for the old one's end to be read, so a gateway that
died and came back is served at once. TCP keepalive probes the client, so a peer that vanished
without closing (a pulled cable) frees the chip within about 15 s. The chip keeps its state
across connections. Runs on the event loop that drives the chip; binds 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from drivers.radio.spi_simlink import (
    DIO0_EDGE,
    DIO0_LEVEL,
    DIO0_READ,
    DIO_EDGE,
    DIO_LEVELS,
    DIO_LINES,
    DIO_READ,
    ERROR,
    HELLO,
    HELLO_OK,
    MAX_BODY,
    PROTOCOL_HELLO,
    PROTOCOL_HELLO_V1,
    RESET,
    RESET_DONE,
    XFER,
    XFER_REPLY,
    encode_message,
)

log = logging.getLogger(__name__)

BUSY_REASON = b"chip server busy: another client holds the chip"


class ServedChip(Protocol):
    on_dio: Callable[[int, bool], None] | None

    def dio(self, line: int) -> bool: ...

    def xfer(self, data: list[int]) -> list[int]: ...

    def reset(self) -> None: ...


class ChipServer:
    """``await start()``, then clients reach the chip at ``port``; ``await close()`` to stop."""

    def __init__(
        self,
        chip: ServedChip,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        takeover_grace_s: float = 0.25,
    ) -> None:
        self.chip = chip
        self.host = host
        self.counters: Counter[str] = Counter()
        self._requested_port = port
        self._takeover_grace_s = takeover_grace_s
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: asyncio.StreamWriter | None = None
        self._client_gone: asyncio.Event | None = None
        self._client_version = 2
        self._client_tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("chip server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"sim://{self.host}:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.chip.on_dio = self._on_dio
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port, reuse_address=True
        )
        log.info("simulated SX127x served at %s", self.url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.chip.on_dio == self._on_dio:
            self.chip.on_dio = None
        self._drop_client()
        # Closing the transport ends the handler's read; cancelling it instead would make
        # asyncio's stream protocol log the cancellation as an error.
        if self._client_tasks:
            _, stuck = await asyncio.wait(set(self._client_tasks), timeout=2.0)
            for task in stuck:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def disconnect_client(self) -> None:
        """Drop the current client (tests: the gateway's link must recover on its own)."""
        self._drop_client()

    # --- connections ---

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._client_tasks.add(task)
        peer = writer.get_extra_info("peername")
        if self._client is not None and not await self._previous_client_gone():
            self.counters["refused"] += 1
            log.warning("chip server: refused %s: another client holds the chip", peer)
            # Take its greeting first: closing with unread input would reset the connection
            # and could discard the reason before the client reads it.
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(MAX_BODY), 1.0)
            writer.write(encode_message(ERROR, BUSY_REASON))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            self._client_tasks.discard(task)
            return
        self._keep_alive(writer)
        gone = asyncio.Event()
        self._client, self._client_gone = writer, gone
        self._client_version = 2
        self.counters["connections"] += 1
        greeted = False
        try:
            while True:
                (length,) = struct.unpack(">H", await reader.readexactly(2))
                if not 1 <= length <= MAX_BODY + 1:
                    self.counters["bad_messages"] += 1
                    log.warning(
                        "chip server: %s sent a message of length %d; closing", peer, length
                    )
                    return
                message = await reader.readexactly(length)
                kind, body = message[0], message[1:]
                if kind != HELLO and not greeted:
                    reply = encode_message(ERROR, b"send HELLO first")
                else:
                    reply = self._answer(kind, body)
                    greeted = greeted or (kind == HELLO and reply[2] == HELLO_OK)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self._client is writer:
                self._client = None
            gone.set()
            writer.close()
            self._client_tasks.discard(task)

    async def _previous_client_gone(self) -> bool:
        """Whether the client holding the chip ends within the grace time (its end may be
        waiting in the loop's queue behind this new connection)."""
        gone = self._client_gone
        if gone is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), self._takeover_grace_s)
        return self._client is None

    @staticmethod
    def _keep_alive(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    def _answer(self, kind: int, body: bytes) -> bytes:
        self.counters["requests"] += 1
        try:
            if kind == HELLO:
                if body not in (PROTOCOL_HELLO, PROTOCOL_HELLO_V1):
                    return self._error(f"unsupported protocol {body[:40]!r}")
                self._client_version = 2 if body == PROTOCOL_HELLO else 1
                return encode_message(HELLO_OK, body)
            if kind == XFER:
                if not body:
                    return self._error("empty transfer")
                return encode_message(XFER_REPLY, bytes(self.chip.xfer(list(body))))
            if kind == RESET:
                self.chip.reset()
                return encode_message(RESET_DONE)
            if kind == DIO0_READ:
                return encode_message(DIO0_LEVEL, b"\x01" if self.chip.dio(0) else b"\x00")
            if kind == DIO_READ:
                levels = bytes(int(self.chip.dio(line)) for line in range(DIO_LINES))
                return encode_message(DIO_LEVELS, levels)
        except Exception as exc:
            log.exception("chip server: request %#04x failed", kind)
            return self._error(f"{type(exc).__name__}: {exc}")
        return self._error(f"unknown request kind {kind:#04x}")

    def _error(self, reason: str) -> bytes:
        self.counters["errors"] += 1
        return encode_message(ERROR, reason.encode("utf-8"))

    def _drop_client(self) -> None:
        writer, self._client = self._client, None
        if writer is not None:
            writer.close()

    # --- DIO edges, possibly from another thread ---

    def _on_dio(self, line: int, level: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Always through the loop's queue, so edges leave in the order the chip raised them.
        loop.call_soon_threadsafe(self._push_edge, line, level)

    def _push_edge(self, line: int, level: bool) -> None:
        writer = self._client
        if writer is None or writer.is_closing():
            return
        if self._client_version >= 2:
            writer.write(encode_message(DIO_EDGE, bytes((line, int(level)))))
        elif line == 0:
            writer.write(encode_message(DIO0_EDGE, b"\x01" if level else b"\x00"))
