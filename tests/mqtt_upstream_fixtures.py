"""Shared pieces of the MQTT upstream tests: a config for a test broker, numbered reports."""

from __future__ import annotations

from typing import Any

from gateway.config import Config, parse_config
from gateway.model import Report

DEVICE = "lora-0011223344556677"


def mqtt_config(gateway_id: str, host: str, port: int, **mqtt: Any) -> Config:
    """A gateway ``gateway_id`` with only an MQTT upstream at ``host:port``, quick to reconnect;
    ``mqtt`` overrides any [mqtt] key."""
    settings = {
        "host": host,
        "port": port,
        "keepalive_s": 5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "publish_timeout_s": 3.0,
        "connect_timeout_s": 3.0,
        **mqtt,
    }
    return parse_config({"gateway": {"id": gateway_id}, "mqtt": settings}, check_files=False)


def report(n: int) -> Report:
    return Report(
        id=f"{DEVICE}-{n}",
        device=DEVICE,
        kind="telemetry",
        ts=1_780_000_000.0 + n,
        seq=n,
        data={"temperature": 20 + n / 10},
        rssi=-90.0,
        snr=6.5,
    )
