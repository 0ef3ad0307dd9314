"""The status page's configuration error, importable without loading aiohttp."""

from __future__ import annotations


class WebConfigError(ValueError):
    """A web server that must not start as configured; the message is one line."""
