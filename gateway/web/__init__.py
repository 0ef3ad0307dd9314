"""The local web status page: health, nodes, signal charts, live frames and commands."""

from gateway.web.server import WebConfigError, WebServer, page_weight

__all__ = ["WebConfigError", "WebServer", "page_weight"]
