"""Device registry file: key forms, and one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.protocol.join import PUBLIC_LAB_KEY, DeviceCredentials
from gateway.registry import join_settings, load_join, load_registry

KEY_A = "000102030405060708090a0b0c0d0e0f"
KEY_B = "ffeeddccbbaa99887766554433221100"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_registry(path)
    return caught.value.problems


def test_every_key_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").mkdir()
    write(tmp_path / "keys" / "b.key", KEY_B + "\n")
    monkeypatch.setenv("DUOGATE_TEST_ROOT_KEY", "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff")
    registry = load_registry(
        write(
            tmp_path / "devices.toml",
            f"""
[[device]]
eui = "0011223344556677"
root_key = "{KEY_A}"
name = "greenhouse"

[[device]]
eui = "70B3D57ED0000001"
root_key_file = "keys/b.key"
encrypt = true

[[device]]
eui = "70b3d57ed0000002"
root_key_env = "DUOGATE_TEST_ROOT_KEY"
enabled = false
""",
        )
    )
    assert registry == {
        0x0011223344556677: DeviceCredentials(bytes.fromhex(KEY_A)),
        0x70B3D57ED0000001: DeviceCredentials(bytes.fromhex(KEY_B), encrypt=True),
        0x70B3D57ED0000002: DeviceCredentials(
            bytes.fromhex("00112233445566778899aabbccddeeff"), enabled=False
        ),
    }
    assert KEY_A not in repr(registry)


def test_an_empty_file_is_an_empty_registry(tmp_path: Path) -> None:
    assert load_registry(write(tmp_path / "d.toml", "")) == {}


def test_problems_are_one_line_each_with_their_place(tmp_path: Path) -> None:
    path = write(
        tmp_path / "devices.toml",
        f"""
colour = "blue"

[[device]]
eui = "0011223344556677"
root_key = "{KEY_A}"

[[device]]
eui = "00112233445566"
root_key = "{KEY_A}"

[[device]]
eui = "0011223344556677"
root_key = "{KEY_B}"

[[device]]
eui = "0011223344556688"
root_key = "abc"
encrypt = "yes"
colour = 3

[[device]]
eui = "0011223344556699"
root_key = "{KEY_A}"
root_key_env = "X"

[[device]]
eui = "00112233445566aa"
root_key_file = "missing.key"

[[device]]
eui = "00112233445566bb"
root_key_env = "DUOGATE_TEST_SURELY_UNSET"

[[device]]
root_key = "{KEY_A}"
""",
    )
    assert problems(path) == [
        "registry.colour: unknown key (expected [[device]] tables)",
        "registry.device[1].eui: must be 16 hex digits, got '00112233445566'",
        "registry.device[2].eui: 0011223344556677 repeats device[0]",
        "registry.device[3].colour: unknown key",
        "registry.device[3].encrypt: must be true or false, got 'yes'",
        "registry.device[3].root_key: must be 32 hex digits, got 3 characters",
        "registry.device[4]: give exactly one of root_key, root_key_file, root_key_env",
        "registry.device[5].root_key_file: cannot read "
        f"{tmp_path / 'missing.key'}: No such file or directory",
        "registry.device[6].root_key_env: environment variable DUOGATE_TEST_SURELY_UNSET "
        "is not set",
        "registry.device[7].eui: required",
    ]
    assert all("\n" not in line for line in problems(path))


def test_file_level_errors(tmp_path: Path) -> None:
    assert problems(tmp_path / "absent.toml")[0].endswith("cannot read: No such file or directory")
    assert "TOML syntax error" in problems(write(tmp_path / "bad.toml", "[[device]\n"))[0]
    assert problems(write(tmp_path / "t.toml", "device = 3\n")) == [
        "registry.device: must be an array of tables ([[device]])"
    ]
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    assert problems(tmp_path / "bin.toml") == [f"registry {tmp_path / 'bin.toml'}: not UTF-8 text"]


def test_join_settings_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = write(
        tmp_path / "devices.toml", f'[[device]]\neui = "0000000000000001"\nroot_key = "{KEY_A}"\n'
    )
    config = parse_config(
        {
            "radio": {"rx_delay_s": 2.0},
            "join": {
                "registry": str(registry),
                "open_join": True,
                "address_pool_start": 16,
                "address_pool_end": 32,
                "lease_inactive_s": 3600,
                "join_rx_delay_s": 1.5,
                "open_join_key": {"env": "DUOGATE_TEST_LAB_KEY"},
            },
        },
        check_files=False,
    )
    monkeypatch.setenv("DUOGATE_TEST_LAB_KEY", KEY_B)
    settings, devices = load_join(config)
    assert (settings.pool_start, settings.pool_end, settings.lease_inactive_s) == (16, 32, 3600)
    assert (settings.rx_delay_s, settings.join_rx_delay_s) == (2.0, 1.5)
    assert settings.open_join and settings.lab_key == bytes.fromhex(KEY_B)
    assert list(devices) == [1]
    monkeypatch.setenv("DUOGATE_TEST_LAB_KEY", "short")
    with pytest.raises(ConfigError) as caught:
        join_settings(config)
    assert caught.value.problems == ["join.open_join_key: must be 32 hex digits, got 5 characters"]
    monkeypatch.delenv("DUOGATE_TEST_LAB_KEY")
    with pytest.raises(ConfigError) as caught:
        join_settings(config)
    assert caught.value.problems[0].startswith("join.open_join_key: cannot read")


def test_without_a_lab_key_open_join_uses_the_public_one() -> None:
    settings, devices = load_join(parse_config({"join": {"open_join": True}}, check_files=False))
    assert settings.lab_key == PUBLIC_LAB_KEY and devices == {}
