"""The local status page: an aiohttp app on the gateway's event loop.

Routes: ``/`` (the page and its ``app.js`` / ``style.css``), ``/events`` (Server-Sent
Events), ``/api/status``, ``/api/nodes``, ``/api/frames``, ``/api/history/{device}``,
``POST /api/command`` and ``/api/command/{request}``.

Bound to loopback it may run without a password; bound to anything else it needs one, checked
with HTTP Basic auth on every request. Commands are checked by the console's own parser, so
the page accepts exactly what the console's ``send`` accepts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.config import Config
from gateway.config_checks import is_loopback
from gateway.console.parser import ConsoleInputError, SendRequest, parse_command
from gateway.http_service import HttpService
from gateway.model import CommandResult
from gateway.state import FRAME_LOG_SIZE, Controls, GatewayState
from gateway.web.errors import WebConfigError
from gateway.web.history import SignalHistory
from gateway.web.live import EventHub, resolve_device
from gateway.web.views import (
    StateReader,
    frame_view,
    json_safe,
    nodes_view,
    result_view,
    status_view,
)

log = logging.getLogger(__name__)

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
MAX_BODY = 16 * 1024
MAX_PENDING_COMMANDS = 32
KEPT_RESULTS = 100
SHUTDOWN_TIMEOUT_S = 2.0  # live readers' streams are cut after this on stop
DEFAULT_FRAMES = 100
REALM = 'Basic realm="duogate", charset="UTF-8"'
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(slots=True)
class WebStats:
    bad_requests: int = 0  # refused input: bad JSON, bad command, bad query
    auth_failures: int = 0
    refused_hosts: int = 0  # Host header not a loopback name on an unprotected server
    commands_sent: int = 0
    command_errors: int = 0  # send_command raised instead of returning a result
    results: dict[str, int] = field(default_factory=dict)  # final status -> count


@dataclass(slots=True)
class WebCommand:
    request: str
    device: str
    action: str
    ttl_s: float | None
    submitted: float
    result: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "device": self.device,
            "action": self.action,
            "ttl_s": self.ttl_s,
            "submitted": self.submitted,
            "status": "pending" if self.result is None else self.result["status"],
            "result": self.result,
        }


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    folder = resources.files("gateway.web") / "static"
    files = {}
    for name, content_type in STATIC_FILES.items():
        body = (folder / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        files[name] = StaticFile(body, f"{content_type}; charset=utf-8", etag)
    return files


def page_weight() -> dict[str, int]:
    """Bytes of each static file and their total, uncompressed."""
    sizes = {name: len(item.body) for name, item in load_static().items()}
    return {**sizes, "total": sum(sizes.values())}


class WebServer:
    """The status page on ``host:port`` (port 0 picks a free one; see ``port`` after start)."""

    def __init__(
        self,
        state: GatewayState,
        controls: Controls | None,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        password: str | None = None,
        history: SignalHistory | None = None,
    ) -> None:
        if password is not None and not password:
            raise WebConfigError("web.password is empty")
        if password is None and not is_loopback(host):
            raise WebConfigError(
                f"web.password is required when web.host is not loopback (web.host = {host!r})"
            )
        self._state = state
        self._controls = controls
        self._http = HttpService(host, port, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
        self._password = password.encode() if password is not None else None
        self.history = history or SignalHistory()
        self._hub = EventHub(state, self.history)
        self._reader = StateReader()
        self._static: dict[str, StaticFile] = {}
        self._commands: OrderedDict[str, WebCommand] = OrderedDict()
        self._command_tasks: set[asyncio.Task[None]] = set()
        self.stats = WebStats()

    @classmethod
    def from_config(
        cls, config: Config, state: GatewayState, controls: Controls | None
    ) -> WebServer:
        section = config.web
        password = None
        if section.password is not None:
            try:
                password = section.password.read()
            except OSError as exc:
                raise WebConfigError(
                    f"web.password: cannot read {section.password.file}: {exc.strerror or exc}"
                ) from None
            except KeyError:
                raise WebConfigError(
                    f"web.password: environment variable {section.password.env} is not set"
                ) from None
        return cls(state, controls, host=section.host, port=section.port, password=password)

    @property
    def live_clients(self) -> int:
        return self._hub.client_count

    async def start(self) -> int:
        """Start serving; return the bound port. OSError if the address cannot be bound."""
        self._static = load_static()
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.on_response_prepare.append(self._add_headers)
        app.router.add_get("/", self._page)
        app.router.add_get("/app.js", self._asset)
        app.router.add_get("/style.css", self._asset)
        app.router.add_get("/favicon.ico", self._no_icon)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/status", self._api_status)
        app.router.add_get("/api/nodes", self._api_nodes)
        app.router.add_get("/api/frames", self._api_frames)
        app.router.add_get("/api/history/{device}", self._api_history)
        app.router.add_post("/api/command", self._api_send)
        app.router.add_get("/api/command/{request}", self._api_command)
        port = await self._http.start(app)
        self._hub.start()
        protected = "password required" if self._password is not None else "no password"
        log.info("web status page on http://%s:%d/ (%s)", self.host, port, protected)
        return port

    @property
    def host(self) -> str:
        return self._http.host

    @property
    def port(self) -> int | None:
        return self._http.port

    async def stop(self) -> None:
        """Stop serving. Commands already handed to the controls carry on."""
        await self._hub.stop()
        await self._http.stop()

    # --- request guard and headers ---

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._password is not None:
            if not self._authorized(request.headers.get("Authorization", "")):
                self.stats.auth_failures += 1
                raise web.HTTPUnauthorized(
                    text="password required\n", headers={"WWW-Authenticate": REALM}
                )
        elif not self._loopback_host(request):
            # A page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) must
            # not reach an unprotected server.
            self.stats.refused_hosts += 1
            raise web.HTTPForbidden(text="unexpected Host header\n")
        return await handler(request)

    def _authorized(self, header: str) -> bool:
        assert self._password is not None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _, colon, given = decoded.partition(b":")
        return bool(colon) and hmac.compare_digest(given, self._password)

    def _loopback_host(self, request: web.Request) -> bool:
        try:
            name = request.url.host
        except ValueError:
            return False
        return name is not None and (name in LOOPBACK_NAMES or name == self.host)

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")

    def _bad_request(self, message: str, status: int = 400) -> web.Response:
        self.stats.bad_requests += 1
        return web.json_response({"error": message}, status=status)

    # --- the page ---

    async def _page(self, request: web.Request) -> web.Response:
        return self._serve_static(request, "index.html")

    async def _asset(self, request: web.Request) -> web.Response:
        return self._serve_static(request, request.path.lstrip("/"))

    def _serve_static(self, request: web.Request, name: str) -> web.Response:
        item = self._static[name]
        headers = {"ETag": item.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == item.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=item.body, headers={**headers, "Content-Type": item.content_type})

    async def _no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        client = self._hub.join()
        if client is None:
            raise web.HTTPServiceUnavailable(
                text="too many live readers\n", headers={"Retry-After": "10"}
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            while (batch := await client.next_batch()) is not None:
                await response.write(batch)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self._hub.leave(client)
        return response

    # --- the JSON API ---

    async def _api_status(self, request: web.Request) -> web.Response:
        view = status_view(self._state, self._reader, with_text=True)
        view["web"] = {
            "live_readers": self._hub.client_count,
            "slow_readers_disconnected": self._hub.disconnected_slow,
            "bad_requests": self.stats.bad_requests,
            "auth_failures": self.stats.auth_failures,
            "commands_sent": self.stats.commands_sent,
        }
        return web.json_response(view)

    async def _api_nodes(self, request: web.Request) -> web.Response:
        return web.json_response(nodes_view(self._state, with_text=True))

    async def _api_frames(self, request: web.Request) -> web.Response:
        text = request.query.get("count", str(DEFAULT_FRAMES))
        try:
            count = int(text)
        except ValueError:
            count = -1
        if not 0 <= count <= FRAME_LOG_SIZE:
            return self._bad_request(f"count must be 0..{FRAME_LOG_SIZE}, got {text[:40]!r}")
        frames = [
            frame_view(entry, resolve_device(self._state, entry.node))
            for entry in self._state.frames.recent(count)
        ]
        return web.json_response({"frames": frames})

    async def _api_history(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        now = self._state.now()
        return web.json_response(
            {
                "device": device,
                "now": now,
                "window_s": self.history.window_s,
                "bucket_s": self.history.bucket_s,
                "points": self.history.points(device, now),
            }
        )

    async def _api_command(self, request: web.Request) -> web.Response:
        command = self._commands.get(request.match_info["request"])
        if command is None:
            raise web.HTTPNotFound(text="no such command request\n")
        return web.json_response(command.view())

    async def _api_send(self, request: web.Request) -> web.Response:
        # A JSON body and a matching Origin keep other sites' pages from posting commands
        # with the browser's cached credentials.
        if request.content_type != "application/json":
            return self._bad_request("send a JSON body (Content-Type: application/json)", 415)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return self._bad_request("cross-origin request refused", 403)
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError) as exc:
            return self._bad_request(f"body is not valid JSON: {str(exc).splitlines()[0]}")
        try:
            send = parse_send_body(body)
        except ConsoleInputError as exc:
            return self._bad_request(str(exc))
        if self._controls is None:
            return self._bad_request("not available: the gateway has no controls attached", 503)
        pending = sum(1 for command in self._commands.values() if command.result is None)
        if pending >= MAX_PENDING_COMMANDS:
            return self._bad_request(f"too many commands waiting ({pending}); try again", 429)
        command = WebCommand(
            secrets.token_hex(8), send.device, send.action, send.ttl_s, self._state.now()
        )
        self._remember(command)
        task = asyncio.get_running_loop().create_task(
            self._run_command(self._controls, command, send), name="web-command"
        )
        self._command_tasks.add(task)
        task.add_done_callback(self._command_tasks.discard)
        self.stats.commands_sent += 1
        return web.json_response(command.view(), status=202)

    def _remember(self, command: WebCommand) -> None:
        self._commands[command.request] = command
        # At most MAX_PENDING_COMMANDS (< KEPT_RESULTS) are waiting, so a finished one is there.
        while len(self._commands) > KEPT_RESULTS:
            finished = next(key for key, kept in self._commands.items() if kept.result is not None)
            del self._commands[finished]

    async def _run_command(
        self, controls: Controls, command: WebCommand, send: SendRequest
    ) -> None:
        try:
            result: CommandResult = await controls.send_command(
                send.device, send.action, send.params, send.ttl_s
            )
            view = result_view(result)
        except Exception as exc:
            log.exception("web: sending %s to %s failed", send.action, send.device)
            self.stats.command_errors += 1
            detail = str(exc).splitlines()[0] if str(exc) else ""
            view = {
                "id": None,
                "device": send.device,
                "status": "error",
                "ts": self._state.now(),
                "detail": f"{type(exc).__name__}: {detail}".rstrip(": "),
            }
        command.result = json_safe(view)
        self.stats.results[view["status"]] = self.stats.results.get(view["status"], 0) + 1
        log.info("web command %s to %s: %s", send.action, send.device, view["status"])
        self._hub.broadcast("result", command.view())


def parse_send_body(body: Any) -> SendRequest:
    """``{"device", "action", "params", "ttl_s"}`` to a SendRequest, by the console's rules.

    ``params`` is a JSON object or its text (absent: ``{}``); ``ttl_s`` seconds or null for
    the configured default. Raises ConsoleInputError with a one-line message.
    """
    if not isinstance(body, dict):
        raise ConsoleInputError(f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"device", "action", "params", "ttl_s"})
    if unknown:
        raise ConsoleInputError(f"unknown field {unknown[0]!r} (device, action, params, ttl_s)")
    device, action = body.get("device"), body.get("action")
    for name, value in (("device", device), ("action", action)):
        if not isinstance(value, str) or not value:
            raise ConsoleInputError(f"{name} must be a non-empty string")
        if value.split() != [value]:
            raise ConsoleInputError(
                f"not {'a device id' if name == 'device' else 'an action name'}: {value[:40]!r}"
            )
    params = body.get("params")
    if isinstance(params, str):
        params = _params_from_text(params)
    if params is None:
        params_text = ""
    elif isinstance(params, dict):
        # The console parses it again: one set of rules for both (finite numbers only, ...).
        params_text = json.dumps(params, separators=(",", ":"), ensure_ascii=False)
    else:
        raise ConsoleInputError(f"params must be a JSON object, got {type(params).__name__}")
    ttl_s = body.get("ttl_s")
    if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float)):
        raise ConsoleInputError("ttl_s must be a number of seconds or null")
    line = f"send {device} {action}"
    if params_text:
        line += f" {params_text}"
    if ttl_s is not None:
        line += f" ttl={ttl_s!r}"
    request = parse_command(line)
    if not isinstance(request, SendRequest):  # cannot happen: the line starts with "send"
        raise ConsoleInputError("not a command")
    return request


def _params_from_text(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConsoleInputError(
            f"params are not valid JSON: {exc.msg} at column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ConsoleInputError(f"params are not valid JSON: {exc}") from None
