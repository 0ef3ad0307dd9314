"""``duogate sim``: a simulated world in its own process, its gateway chips served on sockets.

A gateway with ``radio.spi = "sim://HOST:PORT"`` runs its real SX127x driver against a chip
(``drivers.sim.chip_server``); the world keeps running while gateways come and go.

Without ``sim.gateways`` the world has one gateway chip at the origin, served on
``sim.listen`` (or ``--listen``). With them it is a site: each named chip stands at its
position and is served on its own ``listen``, for a gateway process of its own; the schedule
(``sim.moves``, each chip's ``off`` periods) counts from the world's start, or with
``sim.schedule_from = "gateways"`` from the moment every gateway chip has been taken by a
gateway (its first SPI request), so gateway processes that start slowly miss nothing.

``sim.external_nodes`` adds node chips on the same medium, each served on its own port: a node
program in another process (the node library on SPI and pin stand-ins, see docs/NODE.md) drives
one register by register, as firmware drives the radio of a board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal

from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from drivers.sim.ledger import Ledger
from drivers.sim.settings import ExternalChipPlan, GatewayChipPlan
from drivers.sim.world import DEFAULT_GATEWAY, SimWorld
from gateway.config import Config, ConfigError
from gateway.config_checks import parse_listen
from gateway.driver_settings import external_chip_plans, world_settings

log = logging.getLogger("duogate.sim")

SUMMARY_INTERVAL_S = 30.0
TAKEN_POLL_S = 0.05  # how often the chips are looked at until every gateway took its own


async def run_world(config: Config, listen: str | None = None) -> int:
    """Serve the gateway chips (one on ``listen``, else ``sim.listen``, without a site) and
    run the nodes and the schedule until SIGINT or SIGTERM."""
    settings = world_settings(config)
    plans = list(settings.gateways) or [_single_chip(config, listen)]
    if listen and settings.gateways:
        raise ConfigError(["--listen: sim.gateways gives each gateway chip its own listen"])
    externals = external_chip_plans(config)
    for index, plan in enumerate(externals):
        if listen and plans[0].port and plan.port == plans[0].port:
            raise ConfigError(
                [f"--listen: port {plan.port} is also sim.external_nodes[{index}].listen"]
            )
    world = SimWorld(settings, ledger=_open_ledger(config))
    served: list[tuple[SimulatedSX127x | None, ChipServer]] = []
    try:
        for plan in plans:
            server = ChipServer(world.gateways[plan.name], host=plan.host, port=plan.port)
            served.append((None, server))
            await server.start()
        gateway_servers = [server for _, server in served]
        served += await _serve_external_chips(world, externals)
    except BaseException:
        await _close(served)
        await world.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    world.start(schedule=settings.schedule_from == "start")
    _log_world_up(world, plans, gateway_servers)
    waiting = None
    if settings.schedule_from == "gateways":
        log.info("the schedule starts when a gateway has taken every gateway chip")
        waiting = loop.create_task(_start_schedule_when_taken(world, gateway_servers))
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=SUMMARY_INTERVAL_S)
            log.info("%s", world.summary())
    finally:
        if waiting is not None:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        await world.stop()
        await _close(served)
    return 0


def _single_chip(config: Config, listen: str | None) -> GatewayChipPlan:
    try:
        host, port = parse_listen(listen or config.sim.listen)
    except ValueError as exc:
        raise ConfigError([f"{'--listen' if listen else 'sim.listen'}: {exc}"]) from None
    return GatewayChipPlan(DEFAULT_GATEWAY.name, host, port, DEFAULT_GATEWAY.position)


def _open_ledger(config: Config) -> Ledger:
    path = config.sim.ledger
    try:
        return Ledger(path)
    except OSError as exc:
        raise ConfigError([f"sim.ledger: cannot open {path}: {exc.strerror or exc}"]) from None


def _log_world_up(world: SimWorld, plans: list[GatewayChipPlan], servers: list[ChipServer]) -> None:
    if not world.settings.gateways:
        url = servers[0].url
        log.info(
            "simulated world up: %d nodes, gateway chip at %s (radio.spi = %r)",
            len(world.nodes),
            url,
            url,
        )
        return
    radio = world.settings.radio
    log.info(
        "simulated site up: %d nodes, %d gateway chips, range about %.0f m "
        "(SF%d, %d kHz, %d dBm, path loss exponent %g)",
        len(world.nodes),
        len(plans),
        world.range_m(),
        radio.spreading_factor,
        radio.bandwidth_hz // 1000,
        radio.tx_power_dbm,
        world.medium.path_loss_exponent,
    )
    for plan, server in zip(plans, servers, strict=True):
        off = ", ".join(
            f"{start:g} s to {end:g} s" if math.isfinite(end) else f"from {start:g} s for good"
            for start, end in plan.off
        )
        log.info(
            "gateway chip %s at (%g m, %g m) served at %s%s",
            plan.name,
            plan.position[0],
            plan.position[1],
            server.url,
            f"; off {off}" if off else "",
        )


async def _start_schedule_when_taken(world: SimWorld, servers: list[ChipServer]) -> None:
    """Second 0 of the schedule: once a gateway has sent requests to every chip."""
    while not all(server.counters["requests"] for server in servers):
        await asyncio.sleep(TAKEN_POLL_S)
    log.info("every gateway chip is taken: the schedule starts")
    world.start_schedule()


async def _close(served: list[tuple[SimulatedSX127x | None, ChipServer]]) -> None:
    for chip, server in served:
        await server.close()
        if chip is not None:
            chip.detach()


async def _serve_external_chips(
    world: SimWorld, plans: list[ExternalChipPlan]
) -> list[tuple[SimulatedSX127x | None, ChipServer]]:
    """A node chip on the world's medium per ``sim.external_nodes``, each on its own port."""
    served: list[tuple[SimulatedSX127x | None, ChipServer]] = []
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
        await _close(served)
        raise
    return served
