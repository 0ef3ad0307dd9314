"""`duogate run`: build every part from the config and run it on one event loop.

Start order: store and radio first (readiness means they are up), then upstreams, console,
metrics and web page. systemd is told READY only after that, and the watchdog is pinged only
while the loop is responsive and the radio answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.radio.base import Radio
from gateway import __version__
from gateway.bridge import Bridge, DriverDirectory
from gateway.config import Config
from gateway.devices import DeviceDriver
from gateway.lora import LoraNetwork
from gateway.sdnotify import Notifier, Watchdog
from gateway.state import GatewayState
from gateway.store.journal import Journal
from gateway.upstreams.base import Upstream

log = logging.getLogger("duogate")

# radio.driver -> "module:factory" of the settings ``radio_driver_settings`` gives; the module
# is imported only when chosen.
RADIO_DRIVERS = {
    "sx127x": "drivers.radio.sx127x:Sx127xRadio.from_settings",
    "serial": "drivers.radio.serial_radio:SerialRadio.from_settings",
    "sim": "drivers.sim.inprocess:InProcessSimRadio",
}


def build_radio(config: Config) -> Radio:
    from gateway.driver_settings import radio_driver_settings

    module_name, _, attribute = RADIO_DRIVERS[config.radio.driver].partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target(radio_driver_settings(config))


def build_upstreams(
    config: Config, list_devices: Callable[[], list[dict[str, Any]]]
) -> list[Upstream]:
    upstreams: list[Upstream] = []
    if config.mqtt.enabled:
        from gateway.upstreams.mqtt import MqttUpstream

        upstreams.append(MqttUpstream(config))
    if config.xmpp.enabled:
        from gateway.upstreams.xmpp import XmppUpstream

        upstreams.append(XmppUpstream(config.xmpp, list_devices))
    return upstreams


def build_bus_drivers(config: Config) -> list[DeviceDriver]:
    from gateway.driver_settings import ble_settings, modbus_settings

    drivers: list[DeviceDriver] = []
    if config.modbus.enabled:
        from drivers.modbus.driver import ModbusDriver

        drivers.append(ModbusDriver(modbus_settings(config.modbus)))
    if config.ble.enabled:
        from drivers.ble.driver import BleDriver

        drivers.append(BleDriver(ble_settings(config.ble)))
    return drivers


@dataclass
class Gateway:
    """Everything a running gateway is made of; ``start``/``stop`` in the right order."""

    config: Config
    state: GatewayState = field(default_factory=GatewayState)
    radio: Radio | None = None
    bridge: Bridge | None = None
    services: list[Any] = field(default_factory=list)
    lora: LoraNetwork | None = None
    fleet: Any = None  # gateway.fleet.coordinator.FleetCoordinator, in a fleet

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        radio: Radio | None = None,
        upstreams: Sequence[Upstream] | None = None,
    ) -> Gateway:
        """The gateway the config describes; ``radio`` and ``upstreams`` replace the ones it
        names (a test's twins)."""
        gateway = cls(config)
        gateway.radio = radio if radio is not None else build_radio(config)
        # The drivers are registered below, once the LoRa driver can be given the bridge's
        # progress callback; the XMPP device list reads the directory when asked.
        drivers = DriverDirectory()
        # load_config refuses a file with no upstream (gateway.config_checks).
        if upstreams is None:
            upstreams = build_upstreams(config, drivers.rows)
        fleet_link = None
        if config.fleet is not None:
            from gateway.fleet.link import FleetLink

            fleet_link = FleetLink(config, config.fleet)
            upstreams = [*upstreams, fleet_link]
        # The outbox and the LoRa leases share one database connection and its commits.
        journal = Journal(config.gateway.data_dir)
        gateway.bridge = Bridge(
            config, gateway.state, upstreams, drivers, radio=gateway.radio, journal=journal
        )
        gateway.lora = LoraNetwork(
            config,
            gateway.radio,
            gateway.state,
            progress=gateway.bridge.on_driver_progress,
            journal=journal,
        )
        drivers.add(gateway.lora, *build_bus_drivers(config))
        if fleet_link is not None:
            from gateway.fleet.coordinator import FleetCoordinator

            lora = gateway.lora
            gateway.fleet = FleetCoordinator.from_config(
                config,
                lora,
                fleet_link,
                owns_locally=lambda device: drivers.owner(device) not in (None, lora),
            )
        return gateway

    async def start(self) -> None:
        assert self.bridge is not None
        await self.bridge.start()
        if self.fleet is not None:
            await self.fleet.start()
            self.services.append(self.fleet)
        config = self.config
        if config.console.enabled:
            from gateway.console.server import ConsoleServer

            controls = self.bridge.controls_for("console")
            console = ConsoleServer.from_config(config, self.state, controls)
            await console.start()
            self.services.append(console)
        if config.metrics.enabled:
            from gateway.metrics import MetricsServer

            metrics = MetricsServer.from_config(config.metrics, self.state)
            with _naming("metrics", config.metrics.host, config.metrics.port):
                port = await metrics.start()
            log.info("metrics on http://%s:%d/metrics", config.metrics.host, port)
            self.services.append(metrics)
        if config.web.enabled:
            from gateway.web import WebServer

            web = WebServer.from_config(config, self.state, self.bridge.controls_for("web"))
            with _naming("web page", config.web.host, config.web.port):
                port = await web.start()
            log.info("status page on http://%s:%d/", config.web.host, port)
            self.services.append(web)

    async def stop(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                await service.stop()
        self.services.clear()
        if self.bridge is not None:
            await self.bridge.stop()

    def healthy(self) -> bool:
        return self.radio is not None and self.radio.healthy()


@contextlib.contextmanager
def _naming(service: str, host: str, port: int) -> Iterator[None]:
    """A socket error while starting ``service`` says which setting to look at."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"{service} cannot listen on {host}:{port}: {reason}") from None


async def run_daemon(config: Config) -> int:
    notifier = Notifier()
    gateway = Gateway.build(config)
    watchdog = Watchdog.from_environment(notifier, gateway.healthy)
    if watchdog is not None:
        watchdog.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
        upstreams = ", ".join(gateway.bridge.upstreams) if gateway.bridge else ""
        log.info(
            "duogate %s up: gateway %s, radio %s, upstreams: %s",
            __version__,
            config.gateway.id,
            config.radio.driver,
            upstreams or "none",
        )
        notifier.ready(f"relaying to {upstreams or 'no upstream'}")
        await stop.wait()
        log.info("stopping")
        notifier.stopping()
    finally:
        if watchdog is not None:
            await watchdog.stop()
        await gateway.stop()
        notifier.close()
    return 0
