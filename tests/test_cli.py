"""The command line: help for each subcommand, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway import __version__
from gateway.cli import main
from gateway.protocol.airtime import BANDWIDTHS_HZ, SPREADING_FACTORS, time_on_air_s
from tests.servers import free_port

SUBCOMMANDS = ["run", "sim", "check-config", "airtime", "console", "install-service"]
# The default radio driver runs a simulated world that needs devices; most tests need none.
NO_NODES = "[sim]\nnodes = 0\n"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=timeout
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
    path.write_text(NO_NODES + '[gateway]\nid = "gw7"\n')
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{path}: ok (gateway gw7, radio sim)\n"
    assert captured.err == ""


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


# --- airtime: every coding rate as typed, over every SF x BW -------------------------------

CODING_RATE_SPELLINGS = {f"4/{rate}": rate for rate in range(5, 9)} | {
    str(rate): rate for rate in range(5, 9)
}


@pytest.mark.parametrize("spelling", sorted(CODING_RATE_SPELLINGS))
def test_airtime_every_sf_bw_and_coding_rate_as_typed(spelling, capsys):
    rate = CODING_RATE_SPELLINGS[spelling]
    for sf in SPREADING_FACTORS:
        for bw in BANDWIDTHS_HZ:
            for payload in (0, 13, 255):
                argv = ["--sf", str(sf), "--bw", str(bw), "--cr", spelling]
                assert main(["airtime", *argv, "--payload", str(payload)]) == 0
                expected = time_on_air_s(payload, sf=sf, bw_hz=bw, cr=rate) * 1000
                assert capsys.readouterr().out == f"{expected:.3f}\n", (sf, bw, spelling)


def test_airtime_default_coding_rate_is_4_5(capsys):
    assert main(["airtime", "--sf", "9", "--bw", "125000", "--payload", "20"]) == 0
    default = capsys.readouterr().out
    assert main(["airtime", "--sf", "9", "--bw", "125000", "--cr", "4/5", "--payload", "20"]) == 0
    assert capsys.readouterr().out == default


def test_airtime_help_lists_the_spellings(capsys):
    with pytest.raises(SystemExit):
        main(["airtime", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "4/5, 4/6, 4/7 or 4/8, or just the denominator 5..8" in text
    assert "7800, 10400, 15600, 20800, 31250, 41700, 62500, 125000, 250000, 500000" in text


# --- user errors: one line, exit 2, for every command ----------------------------------------

DEEP = "a = " + "[" * 5000 + "]" * 5000 + "\n"
WEB_EVERYWHERE = NO_NODES + '[web]\nenabled = true\nhost = "0.0.0.0"\n'
SIM_SERVED = '[radio]\ndriver = "sx127x"\nspi = "sim://127.0.0.1:7100"\n'


def bad_input_cases() -> list[tuple[str, dict[str, str], list[str], str]]:
    """(id, files to write, argv with {dir} for the folder, expected text in the line)."""
    return [
        ("check-config-missing", {}, ["check-config", "{dir}/absent.toml"], "no such file"),
        ("check-config-deep", {"c.toml": DEEP}, ["check-config", "{dir}/c.toml"], "nested"),
        (
            "check-config-web-everywhere",
            {"c.toml": WEB_EVERYWHERE},
            ["check-config", "{dir}/c.toml"],
            "web.password: required when web.host is not loopback (web.host = '0.0.0.0')",
        ),
        ("check-config-no-path", {}, ["check-config"], "required: path"),
        (
            "run-web-everywhere",
            {"c.toml": WEB_EVERYWHERE},
            ["run", "--config", "{dir}/c.toml"],
            "web.password: required when web.host is not loopback",
        ),
        ("run-deep", {"c.toml": DEEP}, ["run", "--config", "{dir}/c.toml"], "nested"),
        ("run-missing", {}, ["run", "--config", "{dir}/absent.toml"], "no such file"),
        (
            "run-bad-set",
            {"c.toml": NO_NODES},
            ["run", "--config", "{dir}/c.toml", "--set", "nokey"],
            "--set 'nokey': expected KEY.PATH=VALUE",
        ),
        (
            "run-topic-prefix",
            {"c.toml": NO_NODES},
            ["run", "--config", "{dir}/c.toml", "--set", "mqtt.topic_prefix=site/#/gw"],
            "mqtt.topic_prefix: must not hold the wildcards",
        ),
        (
            "sim-listen",
            {"c.toml": NO_NODES + 'listen = "nonsense"\n'},
            ["sim", "--config", "{dir}/c.toml"],
            "sim.listen: must be HOST:PORT, got 'nonsense'",
        ),
        (
            "sim-listen-option",
            {"c.toml": NO_NODES},
            ["sim", "--config", "{dir}/c.toml", "--listen", "nonsense"],
            "--listen: must be HOST:PORT, got 'nonsense'",
        ),
        (
            "sim-nodes-without-devices",
            {"c.toml": SIM_SERVED},
            ["sim", "--config", "{dir}/c.toml"],
            "sim.nodes: 5 simulated nodes but 0 registry devices",
        ),
        ("sim-no-config", {}, ["sim"], "the following arguments are required: --config"),
        ("console-missing", {}, ["console", "--config", "{dir}/absent.toml"], "no such file"),
        (
            "console-syntax",
            {"c.toml": "[mqtt\n"},
            ["console", "--config", "{dir}/c.toml", "-c", "status"],
            "TOML syntax error",
        ),
        ("console-deep", {"c.toml": DEEP}, ["console", "--config", "{dir}/c.toml"], "nested"),
        (
            "airtime-cr",
            {},
            ["airtime", "--sf", "7", "--bw", "125000", "--cr", "4/9", "--payload", "1"],
            "coding rate must be 4/5, 4/6, 4/7 or 4/8 (or 5..8), got '4/9'",
        ),
        (
            "airtime-cr-fraction",
            {},
            ["airtime", "--sf", "7", "--bw", "125000", "--cr", "8/10", "--payload", "1"],
            "coding rate must be",
        ),
        (
            "airtime-bw",
            {},
            ["airtime", "--sf", "7", "--bw", "100000", "--payload", "1"],
            "bandwidth must be one of 7800,",
        ),
        (
            "airtime-sf",
            {},
            ["airtime", "--sf", "13", "--bw", "125000", "--payload", "1"],
            "spreading factor must be 6..12, got 13",
        ),
        (
            "airtime-payload",
            {},
            ["airtime", "--sf", "7", "--bw", "125000", "--payload", "256"],
            "payload must be 0..255, got 256",
        ),
        ("airtime-missing", {}, ["airtime", "--sf", "7"], "required: --bw, --payload"),
        ("no-command", {}, [], "required: COMMAND"),
        ("unknown-command", {}, ["fly"], "invalid choice: 'fly'"),
    ]


@pytest.mark.parametrize(
    ("files", "argv", "expected"),
    [case[1:] for case in bad_input_cases()],
    ids=[case[0] for case in bad_input_cases()],
)
def test_user_errors_are_one_line_and_exit_2(files, argv, expected, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = run_cli(*(arg.replace("{dir}", str(tmp_path)) for arg in argv), timeout=30)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert result.returncode == 2, result
    assert result.stdout == ""


def test_check_config_with_sim_checks_as_the_sim_does(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(SIM_SERVED)
    assert run_cli("check-config", str(path)).returncode == 0  # what `run` accepts
    checked = run_cli("check-config", "--sim", str(path))
    simulated = run_cli("sim", "--config", str(path))
    assert checked.returncode == simulated.returncode == 2
    assert checked.stderr == simulated.stderr
    assert checked.stderr.startswith("sim.nodes: 5 simulated nodes but 0 registry devices")
    # A world-only file needs no upstream: refused for run, fine for the world.
    path.write_text(NO_NODES + "[mqtt]\nenabled = false\n")
    assert run_cli("check-config", str(path)).returncode == 2
    assert run_cli("check-config", "--sim", str(path)).returncode == 0


def test_exposure_is_warned_by_check_config_and_logged_by_run(tmp_path):
    nobody = free_port()
    path = tmp_path / "c.toml"
    path.write_text(
        f'[gateway]\ndata_dir = "data"\n[radio]\ndriver = "sx127x"\n'
        f'spi = "sim://127.0.0.1:{nobody}"\n[join]\nopen_join = true\n'
        "[console]\nenabled = false\n[metrics]\nenabled = false\n"
    )
    checked = run_cli("check-config", str(path))
    assert checked.returncode == 0
    assert checked.stdout == f"{path}: ok (gateway gw1, radio sx127x)\n"
    assert checked.stderr.splitlines() == [
        "warning: join.open_join: open join with the public lab key: anyone who hears a "
        "node's EUI can take its address and forge its reports (set join.open_join_key or use "
        "a registry with open_join = false)"
    ]
    # run logs it as it starts, then fails on the missing chip: a failure of the world (1).
    ran = run_cli("run", "--config", str(path))
    lines = ran.stderr.splitlines()
    assert ran.returncode == 1, ran.stderr
    assert "join.open_join: open join with the public lab key" in lines[0]
    assert lines[-1].startswith("duogate: error: ") and f"127.0.0.1:{nobody}" in lines[-1]
    assert "Traceback" not in ran.stderr


def test_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "2 a mistake in the command line or the configuration" in text
    assert "1 a failure of the world at run time" in text
