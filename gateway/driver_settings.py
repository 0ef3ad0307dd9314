"""The checked config turned into the plain settings records the drivers take.

Drivers never see a config model: ``gateway.config`` checks the file, and this
module copies each section's values into the frozen records the drivers define
(``drivers/*/settings.py``, ``drivers.radio.base``). A record's fields are the section's fields
of the same names; config-only keys (``enabled``, ``driver``, ``region``, ...) stay behind.

Importing this module loads no driver's libraries (pymodbus, bleak, pyserial, pyLoRa): only
the records.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, TypeVar

from drivers.ble.settings import BleSettings
from drivers.modbus.settings import BusSettings, DeviceSettings, ModbusSettings, RegisterSettings
from drivers.radio.base import RadioSettings, SerialRadioSettings, Sx127xSettings
from drivers.sim.node import NodeConfig
from drivers.sim.settings import (
    ExternalChipPlan,
    GatewayChipPlan,
    NodeMove,
    NodePlan,
    PathLoss,
    Point,
    SimRadioSettings,
    WorldSettings,
)
from gateway.config import (
    BleSection,
    Config,
    ConfigError,
    ModbusRegister,
    ModbusSection,
    RadioSection,
    Section,
    SimSection,
)
from gateway.config_checks import parse_listen
from gateway.protocol import crypto
from gateway.registry import load_join

Record = TypeVar("Record")

# EUIs of simulated nodes: a private-use OUI block, numbered from 1.
SIM_EUI_BASE = 0x00_16_C0_01_00_00_00_00

RadioDriverSettings = Sx127xSettings | SerialRadioSettings | SimRadioSettings


def record_from(cls: type[Record], section: Section, **values: Any) -> Record:
    """A ``cls`` record holding ``section``'s values of its field names; ``values`` first."""
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in values:
            value = getattr(section, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def radio_settings(section: RadioSection) -> RadioSettings:
    """The ``RadioSettings`` a ``[radio]`` section asks for."""
    return record_from(RadioSettings, section, implicit_header=False)


def sx127x_settings(section: RadioSection) -> Sx127xSettings:
    """The chip the section names and how it is wired (``radio.spi``, ``radio.pins``)."""
    return Sx127xSettings(
        radio_settings(section),
        section.spi,
        dio0_pin=section.pins.dio0,
        reset_pin=section.pins.reset,
    )


def radio_driver_settings(config: Config) -> RadioDriverSettings:
    """What the driver ``radio.driver`` names is built from."""
    section = config.radio
    radio = radio_settings(section)
    match section.driver:
        case "sx127x":
            return sx127x_settings(section)
        case "serial":
            assert section.serial_port is not None  # the config requires it for this driver
            return SerialRadioSettings(radio, section.serial_port, section.serial_baud)
        case "sim":
            return sim_radio_settings(config)
    raise ValueError(f"unknown radio driver {section.driver!r}")


def modbus_settings(section: ModbusSection) -> ModbusSettings:
    return ModbusSettings(
        buses=tuple(
            record_from(
                BusSettings,
                bus,
                devices=tuple(
                    record_from(
                        DeviceSettings,
                        device,
                        registers=tuple(register_settings(r) for r in device.registers),
                    )
                    for device in bus.devices
                ),
            )
            for bus in section.buses
        )
    )


def register_settings(register: ModbusRegister) -> RegisterSettings:
    return record_from(RegisterSettings, register)


def ble_settings(section: BleSection) -> BleSettings:
    return record_from(BleSettings, section)


# --- the simulated world ([sim], [join] and the registry) ---


def plan_nodes(config: Config, count: int | None = None) -> list[NodePlan]:
    """Which nodes the world runs: registry devices first, else open-join lab nodes.

    Distances spread from 50 m to 2 km on a log scale, reproducibly from ``sim.seed``; nodes
    in ``sim.node_area`` or ``sim.node_positions`` stand where those say (``place_nodes``).
    """
    count = config.sim.nodes if count is None else count
    rng = random.Random(config.sim.seed)
    settings, registry = load_join(config)
    keys = [(eui, cred.root_key) for eui, cred in sorted(registry.items())][:count]
    if len(keys) < count:
        if not settings.open_join:
            raise ConfigError(
                [
                    f"sim.nodes: {count} nodes but the registry has {len(keys)} devices "
                    "and join.open_join is off"
                ]
            )
        known = {eui for eui, _ in keys}
        eui = SIM_EUI_BASE
        while len(keys) < count:
            eui += 1
            if eui not in known:
                keys.append((eui, crypto.lab_root_key(settings.lab_key, eui)))
    plans = [
        NodePlan(eui, key, round(math.exp(rng.uniform(math.log(50), math.log(2000))), 1))
        for eui, key in keys
    ]
    places = place_nodes(config.sim, count)
    return [
        dataclasses.replace(plan, position=place) for plan, place in zip(plans, places, strict=True)
    ]


def place_nodes(sim: SimSection, count: int) -> list[Point | None]:
    """Each node's position: drawn in ``node_area`` (reproducibly from ``seed``), or pinned by
    ``node_positions``; None leaves a node on the world's circle around the origin."""
    places: list[Point | None] = [None] * count
    if sim.node_area is not None:
        (x0, y0), (x1, y1) = sim.node_area
        rng = random.Random(f"node_area:{sim.seed}")
        places = [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(count)]
    for pinned in sim.node_positions:
        if pinned.node < count:
            x, y = pinned.position
            places[pinned.node] = (x, y)
    return places


def node_config(config: Config) -> NodeConfig:
    """Node firmware timing from ``[sim]`` (and the join window from ``[join]``)."""
    sim = config.sim
    return NodeConfig(
        report_interval_s=sim.report_interval_s,
        join_rx_delay_s=config.join.join_rx_delay_s,
        join_backoff_min_s=sim.join_backoff_min_s,
        join_backoff_max_s=sim.join_backoff_max_s,
        retry_min_s=sim.retry_min_s,
        retry_max_s=sim.retry_max_s,
        next_uplink_gap_s=sim.next_uplink_gap_s,
        rejoin_after_unacked=sim.rejoin_after_unacked,
    )


def sim_radio_settings(config: Config) -> SimRadioSettings:
    """A world in the gateway process, its chip wired as ``radio.pins`` says."""
    pins = config.radio.pins
    return SimRadioSettings(world_settings(config), dio0_pin=pins.dio0, reset_pin=pins.reset)


def external_chip_plans(config: Config) -> list[ExternalChipPlan]:
    """``sim.external_nodes``: node chips ``duogate sim`` serves on their own ports."""
    plans = []
    for chip in config.sim.external_nodes:
        host, port = parse_listen(chip.listen)
        plans.append(ExternalChipPlan(host, port, (chip.x_m, chip.y_m)))
    return plans


def gateway_chip_plans(config: Config) -> list[GatewayChipPlan]:
    """``sim.gateways``: the chips of a site, each served on its own port."""
    plans = []
    for gateway in config.sim.gateways:
        host, port = parse_listen(gateway.listen)
        x, y = gateway.position
        plans.append(
            GatewayChipPlan(gateway.name, host, port, (x, y), tuple(gateway.off_periods()))
        )
    return plans


def world_settings(config: Config) -> WorldSettings:
    sim = config.sim
    return WorldSettings(
        radio=radio_settings(config.radio),
        nodes=tuple(plan_nodes(config)),
        state_dir=sim.state_dir or config.gateway.data_dir / "sim",
        node=node_config(config),
        seed=sim.seed,
        loss=sim.loss,
        start_spread_s=sim.start_spread_s,
        gateways=tuple(gateway_chip_plans(config)),
        moves=tuple(NodeMove(move.node, move.at_s, (move.to[0], move.to[1])) for move in sim.moves),
        path_loss=PathLoss(sim.path_loss_exponent, sim.reference_loss_db, sim.shadowing_sigma_db),
        ledger=sim.ledger,
        schedule_from=sim.schedule_from,
    )
