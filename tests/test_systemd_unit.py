from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.install import (
    DEFAULT_EXEC,
    SAMPLE_CONFIG,
    find_unit_file,
    install_service,
    unit_text,
)

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "duogate.service"


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys kept in order."""
    found = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, equals, value = line.partition("=")
        assert equals, f"not an assignment: {raw!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def values(section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if (s, k) == (section, key)]


def single(section: str, key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{section}.{key}: {found}"
    return found[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("User", "duogate"),
        ("Group", "duogate"),
        ("StateDirectory", "duogate"),
        ("ConfigurationDirectory", "duogate"),
        ("ExecStart", "/opt/duogate/venv/bin/duogate run --config /etc/duogate/duogate.toml"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("DevicePolicy", "closed"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_BLUETOOTH AF_NETLINK"),
    ],
)
def test_service_directive(key: str, value: str) -> None:
    assert single("Service", key) == value


def test_groups_and_devices() -> None:
    assert single("Service", "SupplementaryGroups").split() == [
        "gpio",
        "spi",
        "dialout",
        "bluetooth",
    ]
    allowed = {entry.split()[0]: entry.split()[1] for entry in values("Service", "DeviceAllow")}
    for device in (
        "char-spi",
        "char-gpiochip",
        "/dev/gpiomem",
        "char-ttyGS",
        "char-ttyUSB",
        "char-ttyACM",
        "char-ttyAMA",
    ):
        assert allowed.get(device) == "rw", device
    assert values("Install", "WantedBy") == ["multi-user.target"]


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit as installed, with ExecStart on an executable that exists here."""
    executable = tmp_path / "duogate"
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    copy = tmp_path / "duogate.service"
    copy.write_text(unit_text(UNIT, executable))
    assert f"ExecStart={executable} run --config" in copy.read_text()
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd)")
    copy = _verifiable_copy(tmp_path)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if "duogate" in line
    ]
    assert result.returncode == 0, result.stderr
    assert complaints == []  # unknown keys and bad values are warnings, not failures


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd)")
    version = subprocess.run(
        [analyze, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.match(r"systemd (\d+)", version)
    if match is None or int(match.group(1)) < 250:
        pytest.skip(f"systemd-analyze security --offline needs systemd 250+: {version[:40]!r}")
    copy = _verifiable_copy(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert level is not None, result.stdout[-500:] + result.stderr
    assert float(level.group(1)) < 4.0


def test_install_finds_the_unit_and_points_it_at_the_environment(tmp_path: Path) -> None:
    assert find_unit_file() == UNIT
    assert find_unit_file(UNIT) == UNIT
    with pytest.raises(Exception, match="unit file not found"):
        find_unit_file(tmp_path / "missing.service")
    assert unit_text(UNIT, Path(DEFAULT_EXEC)) == UNIT.read_text()
    moved = unit_text(UNIT, Path("/srv/gw/venv/bin/duogate"))
    assert "ExecStart=/srv/gw/venv/bin/duogate run --config /etc/duogate/duogate.toml" in moved


def test_sample_config_is_valid_and_matches_the_wiring() -> None:
    config = parse_config(tomllib.loads(SAMPLE_CONFIG), check_files=False)
    assert config.gateway.data_dir == Path("/var/lib/duogate")
    assert config.radio.spi == "spidev://0.0"
    assert (config.radio.pins.dio0, config.radio.pins.reset) == (25, 17)
    assert config.metrics.host == "127.0.0.1"


def test_dry_run_prints_the_steps_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = Path("/etc/systemd/system/duogate.service").exists()
    assert install_service(argparse.Namespace(dry_run=True)) == 0
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("would: ")]
    assert steps[-1] == "would: systemctl daemon-reload"
    assert any("/etc/systemd/system/duogate.service" in step for step in steps)
    assert any("/etc/duogate" in step for step in steps)
    try:
        import pwd

        pwd.getpwnam("duogate")
    except KeyError:
        assert any(step.startswith("would: useradd --system") for step in steps)
    assert Path("/etc/systemd/system/duogate.service").exists() == before


def test_refuses_clearly_when_not_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        # Tests may run as root in a container; the process identity is the one thing faked.
        monkeypatch.setattr(os, "geteuid", lambda: 65534)
    assert install_service(argparse.Namespace(dry_run=False)) == 1
    captured = capsys.readouterr()
    assert "must run as root" in captured.err
    assert captured.out == ""
