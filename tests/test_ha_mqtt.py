"""Home Assistant's commands through a real mosquitto, published exactly as it publishes them.

Home Assistant without a ``command_template`` (every switch before 2024.8) publishes plain
payloads at QoS 0 without the retain flag over MQTT 3.1.1: a bare ``ON``/``OFF``, a number as
text, ``PRESS``. ``mosquitto_pub``'s defaults are the same, so it stands in for Home Assistant
here, publishing on the command topic read from the retained discovery config. The gateway
runs from its config: LoRa through the in-process simulated world, Modbus against pymodbus's
own server.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from drivers.modbus.sim import SimModbusServer
from drivers.sim.node import SimNode
from gateway.config import Config, ModbusRegister, parse_config
from gateway.discovery import DiscoveryMessage
from tests.bridge_fixtures import (
    GATEWAY_ID,
    MqttWatcher,
    fast_settings,
    running_gateway,
    world_of,
)
from tests.ha_schema import check_schema
from tests.servers import Mosquitto

FINAL = {"executed", "failed", "expired", "rejected", "timeout"}
METER = "modbus-plant-1"
REGISTERS: list[dict[str, Any]] = [
    {"name": "setpoint", "table": "holding", "address": 0, "type": "int16", "scale": 0.1,
     "unit": "°C", "device_class": "temperature", "writable": True, "min": 5, "max": 30},
    {"name": "relay", "table": "coil", "address": 0, "writable": True},
]  # fmt: skip


def publish_as_home_assistant(broker: Mosquitto, topic: str, payload: str) -> None:
    """What Home Assistant's MQTT client sends for a command: QoS 0, not retained, MQTT 3.1.1."""
    subprocess.run(
        ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv311",
         "-q", "0", "-t", topic, "-m", payload],
        check=True, timeout=10, capture_output=True,
    )  # fmt: skip


class HomeAssistant:
    """Reads the discovery configs the way Home Assistant does and sends what it sends."""

    def __init__(self, broker: Mosquitto, watcher: MqttWatcher) -> None:
        self.broker = broker
        self.watcher = watcher

    async def config(self, platform: str, device: str, object_id: str) -> dict[str, Any]:
        topic = f"homeassistant/{platform}/{GATEWAY_ID}_{device}/{object_id}/config"
        await self.watcher.wait_until(lambda: any(m.payload for m in self.watcher.on(topic)), topic)
        message = [m for m in self.watcher.on(topic) if m.payload][-1]
        checked, config = check_schema(DiscoveryMessage(topic, message.payload.decode(), True))
        assert checked == platform
        return config

    def results(self, device: str) -> list[dict[str, Any]]:
        return self.watcher.results(device)

    async def send(self, device: str, command_topic: str, payload: str) -> list[dict[str, Any]]:
        """Publish ``payload``; every result of the command it became, up to its final one."""
        before = {result["id"] for result in self.results(device)}
        publish_as_home_assistant(self.broker, command_topic, payload)

        def new_results() -> list[dict[str, Any]]:
            return [r for r in self.results(device) if r["id"] not in before]

        await self.watcher.wait_until(
            lambda: any(r["status"] in FINAL for r in new_results()),
            f"the result of {payload!r} on {command_topic}",
        )
        found = new_results()
        assert len({r["id"] for r in found}) == 1, found  # one command per message
        assert found[0]["id"].startswith("ha-")
        return found


async def test_lora_relay_interval_and_ping_from_home_assistant(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    home = HomeAssistant(mosquitto, watcher)
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=1)
    settings["commands"]["default_ttl_s"] = 600.0
    async with running_gateway(parse_config(settings)) as gateway:
        node: SimNode = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 1)
        relay = await home.config("switch", device, "relay")
        interval = await home.config("number", device, "action_set_interval")
        ping = await home.config("button", device, "action_ping")
        assert "command_template" not in relay | interval | ping

        on = await home.send(device, relay["command_topic"], relay["payload_on"])
        assert [r["status"] for r in on] == ["accepted", "sent", "executed"]
        assert node.relay is True
        await watcher.wait_until(
            lambda: any(r["data"]["relay"] for r in watcher.reports()[device]),
            "a report with the relay on, the state Home Assistant shows",
        )
        off = await home.send(device, relay["command_topic"], "OFF")
        assert off[-1]["status"] == "executed" and node.relay is False

        maybe = await home.send(device, relay["command_topic"], "MAYBE")
        assert [(r["status"], r["detail"]) for r in maybe] == [
            ("rejected", "invalid_payload: relay takes ON or OFF, got 'MAYBE'")
        ]

        seconds = await home.send(device, interval["command_topic"], "2")
        assert seconds[-1]["status"] == "executed"
        assert node.interval_s == 2.0
        pressed = await home.send(device, ping["command_topic"], ping["payload_press"])
        assert pressed[-1]["status"] == "executed"

        # Switched on and off in quick succession: executed in the order sent.
        publish_as_home_assistant(mosquitto, relay["command_topic"], "ON")
        publish_as_home_assistant(mosquitto, relay["command_topic"], "OFF")
        await watcher.wait_until(
            lambda: sum(c.action == "relay" for c in node.executed) == 4, "both switchings"
        )
        assert node.relay is False
    watcher.drop()
    assert [(c.action, c.params) for c in node.executed] == [
        ("relay", {"on": True}),
        ("relay", {"on": False}),
        ("set_interval", {"seconds": 2}),
        ("ping", {}),
        ("relay", {"on": True}),
        ("relay", {"on": False}),
    ]
    # Each lived by the configured commands.default_ttl_s (600 s; the built-in default is 60).
    assert all(60 < c.arrival_ttl_s <= 600 for c in node.executed)


def meter_config(tmp_path: Path, broker: Mosquitto, server: SimModbusServer) -> Config:
    settings = fast_settings(tmp_path / "data", broker.port, nodes=0)
    settings["modbus"] = {
        "enabled": True,
        "buses": [
            {
                "name": "plant",
                "transport": "tcp",
                "host": server.host,
                "tcp_port": server.port,
                "timeout_s": 1.5,
                "retries": 0,
                "devices": [
                    {"unit": 1, "name": "Meter", "poll_interval_s": 0.3, "registers": REGISTERS}
                ],
            }
        ],
    }
    return parse_config(settings)


def register(name: str) -> ModbusRegister:
    return ModbusRegister.from_table(next(r for r in REGISTERS if r["name"] == name))


async def test_modbus_number_and_switch_from_home_assistant(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    home = HomeAssistant(mosquitto, watcher)
    async with SimModbusServer(units=[1]) as server:
        await server.set_value(1, register("setpoint"), 20.0)
        await server.set_value(1, register("relay"), True)
        async with running_gateway(meter_config(tmp_path, mosquitto, server)):
            setpoint = await home.config("number", METER, "setpoint")
            relay = await home.config("switch", METER, "relay")
            assert (setpoint["min"], setpoint["max"], setpoint["step"]) == (5.0, 30.0, 0.1)

            written = await home.send(METER, setpoint["command_topic"], "21.5")
            assert (written[-1]["status"], written[-1]["detail"]) == ("executed", "setpoint=21.5")
            assert await server.read_words(1, "holding", 0) == [215]
            whole = await home.send(METER, setpoint["command_topic"], "22")
            assert whole[-1]["status"] == "executed"
            assert await server.get_value(1, register("setpoint")) == 22.0

            switched = await home.send(METER, relay["command_topic"], "OFF")
            assert switched[-1]["status"] == "executed"
            assert await server.read_words(1, "coil", 0) == [False]

            for payload, detail in [
                ("warm", "invalid_payload: setpoint takes a number, got 'warm'"),
                ("31", "invalid_payload: setpoint takes 5..30, got '31'"),
            ]:
                refused = await home.send(METER, setpoint["command_topic"], payload)
                assert [(r["status"], r["detail"]) for r in refused] == [("rejected", detail)]
            assert await server.get_value(1, register("setpoint")) == 22.0
            await watcher.wait_until(
                lambda: any(
                    r["data"] == {"setpoint": 22.0, "relay": False}
                    for r in watcher.reports().get(METER, [])
                ),
                "a report with the values Home Assistant set",
            )
    watcher.drop()
