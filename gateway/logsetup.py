"""Logging that suits journald and a terminal alike.

Under systemd (``JOURNAL_STREAM`` set) journald adds its own timestamps, so lines carry none
and start with a syslog priority prefix (``<6>``) that journald turns into the level.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>" + super().format(record).replace("\n", " | ")


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str = "info", verbosity: int = 0) -> None:
    """Configure the root logger once; ``-v`` lowers the level to debug."""
    numeric = LEVELS.get(level, logging.INFO)
    if verbosity > 0:
        numeric = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Third-party clients are chatty at debug; keep them at warning unless -vv.
    for noisy in ("slixmpp", "pymodbus", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


def set_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    logging.getLogger().setLevel(LEVELS[level])
