"""The ``[fleet]`` section through ``duogate check-config`` and ``duogate run`` as typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config

KEY_HEX = "00112233445566778899aabbccddeeff"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def fleet_file(
    tmp_path: Path, *, key: str = KEY_HEX, extra: str = "", gateway_id: str = "gw-a"
) -> Path:
    key_file = tmp_path / "fleet.key"
    key_file.write_text(key + "\n")
    path = tmp_path / "gw.toml"
    path.write_text(
        "[sim]\nnodes = 0\n"
        f'[gateway]\nid = "{gateway_id}"\n'
        "[join]\naddress_pool_start = 0x0100\naddress_pool_end = 0x01ff\n"
        "[mqtt]\nenabled = false\n"
        f'[fleet]\nname = "farm"\nkey = {{ file = "{key_file}" }}\n'
        '[fleet.broker]\nhost = "127.0.0.1"\nport = 1883\n' + extra
    )
    return path


def test_a_fleet_gateway_without_its_own_broker_is_accepted(tmp_path: Path) -> None:
    result = run_cli("check-config", str(fleet_file(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok (gateway gw-a, radio sim)")


def test_the_fleet_broker_defaults_suit_a_cluster(tmp_path: Path) -> None:
    config = load_config(fleet_file(tmp_path))
    assert config.fleet is not None
    broker = config.fleet.broker
    assert (broker.protocol, broker.keepalive_s, broker.discovery) == ("3.1.1", 10, False)


@pytest.mark.parametrize(
    ("key", "extra", "line"),
    [
        ("abcd", "", "fleet.key: expected 32 or 64 hex digits (a 128- or 256-bit key)"),
        ("zz" * 16, "", "fleet.key: expected 32 or 64 hex digits (a 128- or 256-bit key)"),
        (KEY_HEX, "gather_s = 5\n", "fleet.broker.gather_s: unknown key"),
        (KEY_HEX, 'topic_prefix = "x"\n', "fleet.broker.topic_prefix: the fleet's topics"),
        (KEY_HEX, "keepalive_s = 1\n", "fleet.broker.keepalive_s: must be 5..3600"),
        (KEY_HEX, "qos_reports = 2\n", "fleet.broker.qos_reports: 0 or 1"),
    ],
)
def test_check_config_and_run_refuse_a_bad_fleet_alike(
    tmp_path: Path, key: str, extra: str, line: str
) -> None:
    path = fleet_file(tmp_path, key=key, extra=extra)
    for args in (("check-config", str(path)), ("run", "--config", str(path))):
        result = run_cli(*args)
        assert result.returncode == 2, result.stdout
        assert any(problem.startswith(line) for problem in result.stderr.splitlines()), (
            result.stderr
        )
        assert "Traceback" not in result.stderr


def test_a_fleet_needs_each_gateway_to_hand_out_its_own_addresses(tmp_path: Path) -> None:
    path = fleet_file(tmp_path)
    path.write_text(path.read_text().replace("address_pool_start = 0x0100\n", ""))
    path.write_text(path.read_text().replace("address_pool_end = 0x01ff\n", ""))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(
        "join.address_pool_start: in a fleet each gateway hands out addresses from its own range"
    )


def test_a_fleet_without_a_name_or_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[sim]\nnodes = 0\n[fleet]\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "fleet.name" in result.stderr and "fleet.key" in result.stderr, result.stderr


def test_a_gateway_id_that_a_nats_topic_cannot_hold_is_refused_in_a_fleet(tmp_path: Path) -> None:
    result = run_cli("check-config", str(fleet_file(tmp_path, gateway_id="gw.a")))
    assert result.returncode == 2
    assert result.stderr.startswith("gateway.id: in a fleet the id is part of topics"), (
        result.stderr
    )
