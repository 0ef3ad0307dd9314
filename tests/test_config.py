"""Config validation: every class of bad input gives one line naming the key path and reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config, secret_file_warnings


def problems_of(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_defaults_are_valid():
    config = parse_config({})
    assert config.radio.driver == "sim"
    assert config.mqtt.port == 1883
    assert config.topic_prefix == "duogate/gw1"
    assert config.commands.default_ttl_s == 60


def test_example_configs_are_valid():
    for path in sorted(Path("examples").glob("*.toml")):
        if path.name.startswith("registry"):
            continue
        load_config(path, check_files=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port: must be 1..65535, got 70000"),
        ("[mqtt]\nport = 0\n", "mqtt.port: must be 1..65535, got 0"),
        ('[mqtt]\nport = "x"\n', "mqtt.port: must be an int, got str 'x'"),
        ("[mqtt]\nprot = 1883\n", "mqtt.prot: unknown key"),
        ("[mqttt]\n", "mqttt: unknown key"),
        ('[radio]\ndriver = "usb"\n', "radio.driver: must be one of 'sx127x', 'serial' or 'sim'"),
        ("[radio]\nspreading_factor = 13\n", "radio.spreading_factor: must be 6..12, got 13"),
        ("[radio]\nbandwidth_hz = 100000\n", "radio.bandwidth_hz: must be one of"),
        ('[radio]\ndriver = "serial"\n', "radio: driver 'serial' needs radio.serial_port"),
        ("[commands]\ndefault_ttl_s = 0\n", "commands.default_ttl_s: must be greater than 0"),
        ('[gateway]\nid = "a b"\n', "gateway.id: does not match"),
        ('[mqtt]\npassword = "hunter2"\n', "mqtt.password: must be a table {file = PATH}"),
        ("[xmpp]\nenabled = true\n", "xmpp: password is required when xmpp is enabled"),
        ('[mqtt]\npassword = {file = "/x", env = "Y"}\n', "mqtt.password: give exactly one"),
        (
            '[[modbus.buses]]\nname = "b"\ntransport = "rtu"\n',
            "modbus.buses[0]: rtu bus needs 'port'",
        ),
        (
            '[[modbus.buses]]\nname = "b"\nhost = "h"\ntransport = "tcp"\n'
            "[[modbus.buses.devices]]\nunit = 300\n",
            "modbus.buses[0].devices[0].unit: must be 0..247, got 300",
        ),
    ],
)
def test_bad_values_give_one_line(text, expected, tmp_path):
    problems = problems_of(text, tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_several_problems_one_line_each(tmp_path):
    problems = problems_of("[mqtt]\nport = 70000\nkeepalive_s = 1\nfoo = 1\n", tmp_path)
    assert sorted(p.split(":")[0] for p in problems) == [
        "mqtt.foo",
        "mqtt.keepalive_s",
        "mqtt.port",
    ]


def test_syntax_error(tmp_path):
    problems = problems_of("[mqtt\nport = 1\n", tmp_path)
    assert len(problems) == 1 and "TOML syntax error" in problems[0]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.problems == [f"{tmp_path / 'nope.toml'}: no such file"]


def test_not_utf8(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe[mqtt]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_missing_secret_file_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("DUOGATE_TEST_NOPE", raising=False)
    problems = problems_of(
        '[mqtt]\npassword = {file = "secret.txt"}\n'
        '[xmpp]\nenabled = true\npassword = {env = "DUOGATE_TEST_NOPE"}\n',
        tmp_path,
    )
    assert problems == [
        f"mqtt.password.file: secret file not found: {tmp_path / 'secret.txt'}",
        "xmpp.password.env: environment variable DUOGATE_TEST_NOPE is not set",
    ]


def test_secret_from_file_relative_to_config_and_from_env(tmp_path, monkeypatch):
    (tmp_path / "secret.txt").write_text("s3cret\n")
    (tmp_path / "secret.txt").chmod(0o600)
    monkeypatch.setenv("DUOGATE_TEST_PW", "fromenv")
    path = tmp_path / "c.toml"
    path.write_text(
        '[mqtt]\npassword = {file = "secret.txt"}\n'
        '[xmpp]\nenabled = true\npassword = {env = "DUOGATE_TEST_PW"}\n'
    )
    config = load_config(path)
    assert config.mqtt.password.read() == "s3cret"
    assert config.xmpp.password.read() == "fromenv"
    assert secret_file_warnings(config) == []


def test_world_readable_secret_is_warned(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("pw")
    os.chmod(secret, 0o644)
    path = tmp_path / "c.toml"
    path.write_text('[mqtt]\npassword = {file = "secret.txt"}\n')
    warnings = secret_file_warnings(load_config(path))
    assert warnings == [f"mqtt.password: {secret} is readable by other users (chmod 600 it)"]


def test_relative_data_dir_resolves_against_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[gateway]\ndata_dir = "state"\n')
    assert load_config(path).gateway.data_dir == tmp_path / "state"


def test_overrides_from_the_command_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[mqtt]\nport = 1883\n")
    config = load_config(path, overrides=["mqtt.port=1884", "gateway.id=lab", "sim.loss=0.5"])
    assert (config.mqtt.port, config.gateway.id, config.sim.loss) == (1884, "lab", 0.5)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=["mqtt.port=70000", "nokey"])
    assert info.value.problems == ["--set 'nokey': expected KEY.PATH=VALUE"]
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=["mqtt.port=70000"])
    assert info.value.problems == ["mqtt.port: must be 1..65535, got 70000"]


def test_open_join_key_is_a_secret_resolved_like_the_others(tmp_path):
    problems = problems_of(
        '[join]\nopen_join = true\nopen_join_key = {file = "lab.key"}\n', tmp_path
    )
    assert problems == [f"join.open_join_key.file: secret file not found: {tmp_path / 'lab.key'}"]
    (tmp_path / "lab.key").write_text("00" * 16)
    (tmp_path / "lab.key").chmod(0o600)
    config = load_config(tmp_path / "c.toml")
    assert config.join.open_join_key.read() == "00" * 16
