"""Shared helpers for the node library's tests: the protocol document's test vectors, and an
in-process air between one node (node/session.py) and the real gateway core
(gateway.protocol.session.NetworkCore + gateway.protocol.downlink.DownlinkScheduler).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_BLOCK = re.compile(r"^```vector\n(.*?)^```", re.MULTILINE | re.DOTALL)


def load_vectors() -> dict[str, dict[str, str]]:
    """Every ```vector block of docs/protocol.md, by name."""
    vectors = {}
    for block in _BLOCK.findall(DOC.read_text()):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        vectors[fields["vector"]] = fields
    return vectors


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def seeded_bytes(seed: int):
    """A repeatable random source for the node core (``random_bytes(n)``)."""
    source = random.Random(seed)
    return source.randbytes
