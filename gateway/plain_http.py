"""A few fixed GET routes served on the event loop without a web framework.

The metrics endpoint needs nothing more, and aiohttp costs a gateway about 12 MB of memory and
a tenth of a second at every start; the status page, which needs more, keeps aiohttp
(``gateway.http_service``). Requests are parsed and answered by the standard library's
``http.server.BaseHTTPRequestHandler`` (already loaded by ``prometheus_client``), fed one
request head at a time from an asyncio stream, so each route runs on the loop like any other
task and reads the live state without locks.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# A route answers with its content type and body.
Route = Callable[[], tuple[str, bytes]]

# Longest request head (request line and headers) read before the connection is dropped.
MAX_HEAD_BYTES = 64 * 1024
# A kept-alive connection that sends nothing for this long is closed (aiohttp's default was 75).
IDLE_TIMEOUT_S = 75.0
END_OF_HEAD = b"\r\n\r\n"


class _Exchange(BaseHTTPRequestHandler):
    """One request head parsed and answered in memory; ``reply`` holds the bytes to send.

    ``BaseHTTPRequestHandler.__init__`` would run a blocking socket loop, so it is not called:
    the handler reads from and writes to byte buffers instead.
    """

    protocol_version = "HTTP/1.1"  # keep-alive unless the client asks otherwise

    def __init__(self, head: bytes, routes: Mapping[str, Route]) -> None:
        self.rfile = io.BytesIO(head)
        self.wfile = io.BytesIO()
        self.routes = routes
        self.close_connection = True
        self.handle_one_request()
        self.reply = self.wfile.getvalue()

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            # The body is not read: the connection cannot carry another request after it.
            self.close_connection = True
        route = self.routes.get(urlsplit(self.path).path)
        if route is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            content_type, body = route()
        except Exception:
            log.exception("http: %s failed", self.path)
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log (the handler's default writes every request to stderr)."""


class PlainHttpServer:
    """Serves ``routes`` (path -> route) on ``host:port``; port 0 picks a free port."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        self.host = host
        self._requested_port = port
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    async def start(self) -> int:
        """Listen; return the bound port. OSError if the address cannot be bound."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port, reuse_address=True, limit=MAX_HEAD_BYTES
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        head = await reader.readuntil(END_OF_HEAD)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return  # closed by the client, a head too long, or idle
                exchange = _Exchange(head, self._routes)
                writer.write(exchange.reply)
                await writer.drain()
                if exchange.close_connection:
                    return
        except ConnectionError:
            return
        finally:
            self._connections.discard(task)
            writer.close()
