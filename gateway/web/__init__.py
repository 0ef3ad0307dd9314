"""The local web status page: health, nodes, signal charts, live frames and commands.

``WebServer`` and ``page_weight`` load aiohttp, so they are imported on first use: a gateway
with the page off, or a command line that only names ``WebConfigError``, never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.web.errors import WebConfigError

if TYPE_CHECKING:
    from gateway.web.server import WebServer, page_weight

__all__ = ["WebConfigError", "WebServer", "page_weight"]


def __getattr__(name: str) -> Any:
    if name in ("WebServer", "page_weight"):
        from gateway.web import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
