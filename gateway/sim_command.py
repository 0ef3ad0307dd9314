"""``duogate sim``: a simulated world in its own process, its gateway chip served on a socket.

A gateway with ``radio.spi = "sim://HOST:PORT"`` runs its real SX127x driver against the chip
(``drivers.sim.chip_server``); the world keeps running while gateways come and go.

``sim.external_nodes`` adds node chips on the same medium, each served on its own port: a node
program in another process (the node library on SPI and pin stand-ins, see docs/NODE.md) drives
one register by register, as firmware drives the radio of a board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from drivers.sim.settings import ExternalChipPlan
from drivers.sim.world import SimWorld
from gateway.config import Config, ConfigError
from gateway.config_checks import parse_listen
from gateway.driver_settings import external_chip_plans, world_settings

log = logging.getLogger("duogate.sim")

SUMMARY_INTERVAL_S = 30.0


async def run_world(config: Config, listen: str | None = None) -> int:
    """Serve the gateway chip on ``listen`` (else ``sim.listen``) and run the nodes until
    SIGINT or SIGTERM."""
    try:
        host, port = parse_listen(listen or config.sim.listen)
    except ValueError as exc:
        raise ConfigError([f"{'--listen' if listen else 'sim.listen'}: {exc}"]) from None
    plans = external_chip_plans(config)
    for index, plan in enumerate(plans):
        if port and plan.port == port:
            raise ConfigError([f"--listen: port {port} is also sim.external_nodes[{index}].listen"])
    world = SimWorld(world_settings(config))
    server = ChipServer(world.chip, host=host, port=port)
    await server.start()
    try:
        external = await _serve_external_chips(world, plans)
    except BaseException:
        await server.close()
        raise
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
        for chip, chip_server in external:
            await chip_server.close()
            chip.detach()
        await server.close()
    return 0


async def _serve_external_chips(
    world: SimWorld, plans: list[ExternalChipPlan]
) -> list[tuple[SimulatedSX127x, ChipServer]]:
    """A node chip on the world's medium per ``sim.external_nodes``, each on its own port."""
    served: list[tuple[SimulatedSX127x, ChipServer]] = []
    try:
        for index, plan in enumerate(plans):
            chip = SimulatedSX127x(
                world.loop, world.medium, position=plan.position, name=f"external-{index}"
            )
            server = ChipServer(chip, host=plan.host, port=plan.port)
            served.append((chip, server))
            await server.start()
            log.info(
                "external node chip %d at (%g m, %g m) served at %s",
                index,
                plan.position[0],
                plan.position[1],
                server.url,
            )
    except BaseException:
        for chip, server in served:
            await server.close()
            chip.detach()
        raise
    return served
