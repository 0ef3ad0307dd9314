"""Settings that work but expose the gateway (``gateway.config_warnings``)."""

from gateway.config import parse_config
from gateway.config_warnings import exposure_warnings


def test_exposure_warnings():
    assert exposure_warnings(parse_config({})) == []
    warnings = exposure_warnings(
        parse_config(
            {
                "join": {"open_join": True},
                "metrics": {"host": "0.0.0.0"},
                "web": {"enabled": True, "host": "192.168.1.20", "password": {"env": "PW"}},
                "console": {"serial_port": "/dev/ttyGS0"},
                "mqtt": {"host": "broker.lan", "username": "gw", "password": {"env": "PW"}},
            },
            check_files=False,
        )
    )
    assert [warning.split(":")[0] for warning in warnings] == [
        "join.open_join",
        "metrics.host",
        "web.host",
        "console.serial_port",
        "mqtt.tls",
    ]
    assert "public lab key" in warnings[0] and "0.0.0.0:9108" in warnings[1]
    private = parse_config(
        {"join": {"open_join": True, "open_join_key": {"env": "KEY"}}}, check_files=False
    )
    assert exposure_warnings(private) == []
