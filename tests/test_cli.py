"""The command line: help for each subcommand, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway import __version__
from gateway.cli import main

SUBCOMMANDS = ["run", "sim", "check-config", "airtime", "console", "install-service"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"duogate {__version__}"


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_for_each_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as info:
        main([sub, "--help"])
    assert info.value.code == 0
    assert f"usage: duogate {sub}" in capsys.readouterr().out


def test_check_config_ok(tmp_path, capsys):
    path = tmp_path / "ok.toml"
    path.write_text('[gateway]\nid = "gw7"\n')
    assert main(["check-config", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_bad_file_through_the_real_entry_point(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[mqtt]\nport = 70000\n[radio]\nspreading_factor = 4\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == [
        "mqtt.port: must be 1..65535, got 70000",
        "radio.spreading_factor: must be 6..12, got 4",
    ]
    assert "Traceback" not in result.stderr


def test_run_refuses_bad_config_the_same_way(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[mqtt]\nport = 70000\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == "mqtt.port: must be 1..65535, got 70000"


def test_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[mqtt\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "TOML syntax error" in result.stderr


@pytest.mark.parametrize(
    ("args", "reference"),
    [
        (["--sf", "7", "--bw", "125000", "--cr", "4/5", "--payload", "13"], "46.336"),
        (["--sf", "12", "--bw", "125000", "--cr", "4/5", "--payload", "51"], "2465.792"),
    ],
)
def test_airtime_reference_points(args, reference, capsys):
    assert main(["airtime", *args]) == 0
    assert capsys.readouterr().out.strip() == reference


@pytest.mark.parametrize(
    "args",
    [
        ["--sf", "13", "--bw", "125000", "--payload", "10"],
        ["--sf", "7", "--bw", "125000", "--cr", "3/5", "--payload", "10"],
        ["--sf", "7", "--bw", "125000", "--payload", "256"],
        ["--sf", "x", "--bw", "125000", "--payload", "1"],
    ],
)
def test_airtime_bad_arguments_are_one_line(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(["airtime", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("duogate airtime: error: argument")
