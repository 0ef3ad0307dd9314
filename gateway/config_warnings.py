"""Settings that work but expose the gateway, and the warnings ``run`` logs at start and
``check-config`` prints (a configuration with warnings is accepted; one with problems,
``gateway.config_checks``, is not)."""

from __future__ import annotations

from gateway.config import Config, secret_file_warnings
from gateway.config_checks import is_loopback


def exposure_warnings(config: Config) -> list[str]:
    """Settings that work but expose the gateway; one line each, ``key: what and why``."""
    warnings = []
    join = config.join
    if join.open_join and join.open_join_key is None:
        warnings.append(
            "join.open_join: open join with the public lab key: anyone who hears a node's EUI "
            "can take its address and forge its reports (set join.open_join_key or use a "
            "registry with open_join = false)"
        )
    metrics = config.metrics
    if metrics.enabled and not is_loopback(metrics.host):
        warnings.append(
            f"metrics.host: metrics on {metrics.host}:{metrics.port} have no authentication; "
            "anyone who reaches that address reads them (bind to 127.0.0.1 or firewall it)"
        )
    web = config.web
    if web.enabled and not is_loopback(web.host) and web.password is not None:
        warnings.append(
            f"web.host: the status page on {web.host}:{web.port} takes its password over plain "
            "HTTP (put a TLS reverse proxy in front or bind to 127.0.0.1)"
        )
    console = config.console
    if console.enabled and console.serial_port:
        warnings.append(
            f"console.serial_port: the console on {console.serial_port} has no login; anyone "
            "at that serial line can send commands and change radio settings"
        )
    mqtt = config.mqtt
    if mqtt.enabled and not is_loopback(mqtt.host):
        if mqtt.tls is None and mqtt.password is not None:
            warnings.append(
                f"mqtt.tls: the MQTT password goes to {mqtt.host} unencrypted (set mqtt.tls)"
            )
        elif mqtt.tls is not None and mqtt.tls.insecure_skip_verify:
            warnings.append(
                f"mqtt.tls.insecure_skip_verify: the broker {mqtt.host} is not authenticated; "
                "anyone on the path can pose as it"
            )
    xmpp = config.xmpp
    server = xmpp.host or xmpp.jid.partition("@")[2].partition("/")[0]
    if xmpp.enabled and xmpp.tls == "plaintext_lab_only" and not is_loopback(server):
        warnings.append(
            "xmpp.tls: plaintext_lab_only sends the XMPP password and every report unencrypted"
        )
    return warnings


def startup_warnings(config: Config) -> list[str]:
    """What ``run`` logs and ``check-config`` prints: secret file modes and exposure."""
    return [*secret_file_warnings(config), *exposure_warnings(config)]
