"""``duogate sim``: a simulated world in its own process, its gateway chip served on a socket.

A gateway with ``radio.spi = "sim://HOST:PORT"`` runs its real SX127x driver against the chip
(``drivers.sim.chip_server``); the world keeps running while gateways come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from drivers.sim.chip_server import ChipServer
from drivers.sim.world import SimWorld
from gateway.config import Config, ConfigError
from gateway.config_checks import parse_listen
from gateway.driver_settings import world_settings

log = logging.getLogger("duogate.sim")

SUMMARY_INTERVAL_S = 30.0


async def run_world(config: Config, listen: str | None = None) -> int:
    """Serve the gateway chip on ``listen`` (else ``sim.listen``) and run the nodes until
    SIGINT or SIGTERM."""
    try:
        host, port = parse_listen(listen or config.sim.listen)
    except ValueError as exc:
        raise ConfigError([f"{'--listen' if listen else 'sim.listen'}: {exc}"]) from None
    world = SimWorld(world_settings(config))
    server = ChipServer(world.chip, host=host, port=port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    world.start()
    log.info(
        "simulated world up: %d nodes, gateway chip at %s (radio.spi = %r)",
        len(world.nodes),
        server.url,
        server.url,
    )
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=SUMMARY_INTERVAL_S)
            log.info("%s", world.summary())
    finally:
        await world.stop()
        await server.close()
    return 0
