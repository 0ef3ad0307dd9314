"""Delays between retries: capped exponential growth with jitter (pure, no clock, no random).

The random draw is passed in, so one formula serves the upstreams' reconnects (MQTT, XMPP)
and the simulated nodes' join and uplink retries, each with its own source of randomness.
"""

from __future__ import annotations

_MAX_DOUBLINGS = 64  # beyond this the cap has long been reached; keeps 2**n small


def backoff_delay(
    attempt: int, *, first_s: float, max_s: float, jitter: float, draw: float
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    The ceiling doubles from ``first_s`` with each attempt up to ``max_s``; ``jitter`` (0..1)
    is the share of it that the draw (0..1) may take off, so that many clients that lost
    the same server do not come back in step: the wait lies in
    ``[ceiling * (1 - jitter), ceiling]``.
    """
    ceiling = min(max_s, first_s * 2 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    return ceiling * (1 - jitter * draw)
