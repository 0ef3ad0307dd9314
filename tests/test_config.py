"""Config validation: every class of bad input gives one line naming the key path and reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import (
    MAX_TOML_BYTES,
    ConfigError,
    ModbusSection,
    load_config,
    parse_config,
    secret_file_warnings,
)
from gateway.config_checks import is_loopback, parse_listen, topic_problem

# The default radio driver runs a simulated world of 5 nodes, which needs devices to join;
# files that test something else run without nodes.
NO_NODES = "[sim]\nnodes = 0\n"


def problems_of(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(NO_NODES + text)
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
        ('[gateway]\nid = "gw1\\n"\n', "gateway.id: does not match ^[A-Za-z0-9_.-]{1,64}$"),
        ("[mqtt]\nport = true\n", "mqtt.port: must be an int, got bool True"),
        ("[mqtt]\nport = 1883.5\n", "mqtt.port: must be an int, got float 1883.5"),
        (
            "[mqtt]\npublish_timeout_s = 700\n",
            "mqtt.publish_timeout_s: must be greater than 0 and at most 600, got 700",
        ),
        ("[join]\nlease_inactive_s = 5\n", "join.lease_inactive_s: must be at least 60, got 5"),
        (
            '[join]\nopen_join_key = "00112233"\n',
            "join.open_join_key: must be a table {file = PATH} or {env = NAME}; secrets are never",
        ),
        ('[ble]\nallow = ["00:11:22:33:44:55", "nope"]\n', "ble.allow[1]: does not match"),
        ('[[modbus.buses]]\nport = "/dev/ttyS1"\n', "modbus.buses[0].name: required"),
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


def test_every_bad_key_of_every_table_is_named(tmp_path):
    problems = problems_of(
        '[gateway]\nid = ""\n[radio]\nspreading_factor = 13\npins = {dio0 = 41}\n'
        '[[modbus.buses]]\nname = "a"\nport = "/dev/ttyS1"\n'
        '[[modbus.buses.devices]]\nunit = 1\n[[modbus.buses.devices.registers]]\nname = "x"\n'
        '[[modbus.buses]]\nname = "B"\nport = "/dev/ttyS2"\n'
        "[web]\nport = -1\n",
        tmp_path,
    )
    assert problems == [
        "gateway.id: does not match ^[A-Za-z0-9_.-]{1,64}$, got ''",
        "radio.spreading_factor: must be 6..12, got 13",
        "radio.pins.dio0: must be 0..40, got 41",
        "modbus.buses[0].devices[0].registers[0].table: required",
        "modbus.buses[0].devices[0].registers[0].address: required",
        "modbus.buses[1].name: does not match ^[a-z0-9_]{1,32}$, got 'B'",
        "web.port: must be 0..65535, got -1",
    ]


def test_a_section_written_back_as_toml_reads_the_same():
    section = ModbusSection.from_table(
        {
            "enabled": True,
            "buses": [
                {
                    "name": "meter",
                    "transport": "tcp",
                    "host": "127.0.0.1",
                    "devices": [
                        {
                            "unit": 3,
                            "registers": [
                                {"name": "v", "table": "input", "address": 2, "scale": 0.1}
                            ],
                        }
                    ],
                }
            ],
        }
    )
    table = section.to_table()
    assert table["buses"][0]["devices"][0] == {
        "unit": 3,
        "registers": [{"name": "v", "table": "input", "address": 2, "scale": 0.1}],
    }
    assert ModbusSection.from_table(table) == section


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
        NO_NODES + '[mqtt]\nusername = "gw"\npassword = {file = "secret.txt"}\n'
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
    path.write_text(NO_NODES + '[mqtt]\nusername = "gw"\npassword = {file = "secret.txt"}\n')
    warnings = secret_file_warnings(load_config(path))
    assert warnings == [f"mqtt.password: {secret} is readable by other users (chmod 600 it)"]


def test_relative_data_dir_resolves_against_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(NO_NODES + '[gateway]\ndata_dir = "state"\n')
    assert load_config(path).gateway.data_dir == tmp_path / "state"


def test_overrides_from_the_command_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(NO_NODES + "[mqtt]\nport = 1883\n")
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


# --- checks across sections (gateway.config_checks), run by load_config for every command ---


def test_an_empty_file_means_the_defaults_and_their_simulated_world_needs_devices(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "sim.nodes: 5 simulated nodes but 0 registry devices and join.open_join is off "
        "(set join.open_join = true, add devices, or lower sim.nodes)"
    ]
    path.write_text("[join]\nopen_join = true\n")
    config = load_config(path)
    assert (config.mqtt.enabled, config.mqtt.host, config.radio.driver) == (
        True,
        "127.0.0.1",
        "sim",
    )


def test_the_simulated_world_is_checked_when_it_runs(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[radio]\ndriver = "sx127x"\nspi = "sim://127.0.0.1:7100"\n')
    assert load_config(path).sim.nodes == 5  # `run` talks to a world served elsewhere
    with pytest.raises(ConfigError, match=r"^sim.nodes: 5 simulated nodes"):
        load_config(path, for_sim=True)  # as `duogate sim` and `check-config --sim` ask


def test_a_world_relays_nothing_and_needs_no_upstream(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(NO_NODES + "[mqtt]\nenabled = false\n")
    with pytest.raises(ConfigError, match=r"^mqtt.enabled: enable mqtt, xmpp or a fleet"):
        load_config(path)
    assert not load_config(path, for_sim=True).mqtt.enabled


def test_the_console_reads_no_secrets_but_gets_the_other_checks(tmp_path):
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xff\xfe")
    path = tmp_path / "c.toml"
    path.write_text(NO_NODES + '[mqtt]\nusername = "gw"\npassword = { file = "pw" }\n')
    assert load_config(path, check_files=False).mqtt.username == "gw"
    with pytest.raises(ConfigError, match=r"^mqtt.password.file: .* is not UTF-8 text$"):
        load_config(path)
    path.write_text(NO_NODES + '[mqtt]\ntopic_prefix = "a/+/b"\n')
    with pytest.raises(ConfigError, match=r"^mqtt.topic_prefix: "):
        load_config(path, check_files=False)


def test_a_binary_secret_is_never_decoded_loosely(tmp_path):
    from gateway.config import Secret

    secret = tmp_path / "pw"
    secret.write_bytes(b"pw\xff\n")
    with pytest.raises(UnicodeDecodeError):
        Secret(file=secret).read()
    secret.write_bytes(" sécret \n".encode())
    assert Secret(file=secret).read() == "sécret"


def test_toml_nested_thousands_deep_is_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert problems_of_file(path) == [f"{path}: nested more than 20 levels deep"]
    path.write_text("a = " + "{ b = " * 3000 + "1" + " }" * 3000 + "\n")
    assert problems_of_file(path) == [f"{path}: nested more than 20 levels deep"]
    path.write_text(NO_NODES)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=["gateway.id=" + "[" * 5000 + "]" * 5000])
    assert len(info.value.problems) == 1
    assert info.value.problems[0].endswith("nested more than 20 levels deep")


def test_files_over_a_mebibyte_are_refused_unread(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"#" * (MAX_TOML_BYTES + 1))
    assert problems_of_file(path) == [f"{path}: larger than 1 MiB"]
    path.write_bytes(b"#" * MAX_TOML_BYTES)  # the limit itself is fine (and all defaults)
    assert problems_of_file(path)[0].startswith("sim.nodes:")


def test_the_registry_has_the_same_limits(tmp_path):
    registry = tmp_path / "devices.toml"
    registry.write_text("device = " + "[" * 5000 + "]" * 5000 + "\n")
    path = tmp_path / "c.toml"
    path.write_text(NO_NODES + '[join]\nregistry = "devices.toml"\n')
    assert problems_of_file(path) == [
        f"join.registry: registry {registry}: nested more than 20 levels deep"
    ]


def test_every_problem_is_one_line_and_long_values_are_cut(tmp_path):
    problems = problems_of(
        '["evil\\nkey"]\nx = 1\n[gateway]\nid = "' + "x" * 10_000 + '"\n', tmp_path
    )
    assert all("\n" not in problem for problem in problems)
    assert "evil\\nkey: unknown key" in problems
    (too_long,) = [problem for problem in problems if problem.startswith("gateway.id")]
    assert len(too_long) < 200 and too_long.endswith("...x'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7100", ("127.0.0.1", 7100)),
        (":7100", ("127.0.0.1", 7100)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:7100", ("::1", 7100)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nonsense", "must be HOST:PORT"),
        ("127.0.0.1:", "must be HOST:PORT"),
        ("127.0.0.1:x", "must be HOST:PORT"),
        ("127.0.0.1:٣", "must be HOST:PORT"),  # a digit, but not an ASCII one
        ("127.0.0.1:65536", "port must be 0..65535"),
        ("127.0.0.1:" + "9" * 5000, "port must be 0..65535, got 999999999999$"),
        ("::1:7000", "in brackets"),
        ("[nope]:7000", "not an IPv6 address"),
        ("my host:7000", "spaces or control characters"),
    ],
)
def test_bad_listen_addresses(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_listen(text)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("duogate/gw1", None),
        ("site a/gateways/gw-1", None),
        ("", "must not be empty"),
        ("site/#", "wildcards"),
        ("site/+/gw", "wildcards"),
        ("site\x00gw", "NUL"),
        ("site\x1bgw", "control characters"),
        ("/site", "empty levels"),
        ("site/", "empty levels"),
        ("site//gw", "empty levels"),
        ("$SYS/gw", "reserved"),
        ("a" * 1025, "at most 1024 bytes"),
    ],
)
def test_topic_prefixes(topic, reason):
    problem = topic_problem(topic)
    assert (problem is None) if reason is None else (reason in (problem or "")), problem


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("gateway.lan", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def problems_of_file(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems
