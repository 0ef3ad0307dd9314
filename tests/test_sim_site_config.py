"""Site mistakes in ``[sim]`` (gateway chips, node placement, moves, the ledger) are one line
each, the same from ``duogate check-config --sim`` and from ``duogate sim`` (tests/test_sim_site.py
runs the site itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.bridge_fixtures import ROOT

SITE = """
[join]
open_join = true

[radio]
driver = "sx127x"
spi = "sim://127.0.0.1:7101"

[sim]
nodes = 3
{sim}

[[sim.gateways]]
name = "A"
listen = "127.0.0.1:{a}"
position = [0, 0]
{a_extra}

[[sim.gateways]]
name = "{b_name}"
listen = "127.0.0.1:{b}"
position = {b_position}
"""


def site_text(**changes: str) -> str:
    values = {"sim": "", "a": "7101", "a_extra": "", "b_name": "B", "b": "7102"}
    values["b_position"] = "[600, 0]"
    return SITE.format(**{**values, **changes})


BAD_SITES = [
    (
        "names-twice",
        site_text(b_name="A"),
        "sim.gateways[1].name: 'A' is also sim.gateways[0].name; give each gateway its own name",
    ),
    (
        "ports-twice",
        site_text(b="7101"),
        "sim.gateways[1].listen: port 7101 is also sim.gateways[0].listen; give each chip its "
        "own port",
    ),
    (
        "external-node-on-a-gateway-port",
        site_text() + '\n[[sim.external_nodes]]\nlisten = "127.0.0.1:7102"\n',
        "sim.external_nodes[0].listen: port 7102 is also sim.gateways[1].listen; give each "
        "chip its own port",
    ),
    (
        "position-of-three",
        site_text(b_position="[600, 0, 3]"),
        "sim.gateways[1]: position must be [x, y] in metres, got 3 numbers",
    ),
    (
        "position-not-numbers",
        site_text(b_position='[600, "north"]'),
        "sim.gateways[1].position[1]: must be a float, got str 'north'",
    ),
    (
        "off-overlapping",
        site_text(a_extra="off = [[10, 30], [20, 40]]"),
        "sim.gateways[0]: off[1] must start after off[0] ends",
    ),
    (
        "off-backwards",
        site_text(a_extra="off = [[30, 10]]"),
        "sim.gateways[0]: off[0]: to_s must be after from_s, got [30.0, 10.0]",
    ),
    (
        "name-with-space",
        site_text(b_name="gate B"),
        "sim.gateways[1].name: does not match ^[A-Za-z0-9_.-]{1,32}$, got 'gate B'",
    ),
    (
        "pinned-node-beyond-the-nodes",
        site_text(sim="node_positions = [{node = 3, position = [1, 1]}]"),
        "sim.node_positions[0].node: node 3 but sim.nodes = 3 (nodes are numbered from 0)",
    ),
    (
        "node-pinned-twice",
        site_text(
            sim="node_positions = [{node = 1, position = [1, 1]}, {node = 1, position = [2, 2]}]"
        ),
        "sim.node_positions[1].node: node 1 is also placed by sim.node_positions[0]",
    ),
    (
        "move-of-no-node",
        site_text(sim="moves = [{node = 5, at_s = 10, to = [1, 1]}]"),
        "sim.moves[0].node: node 5 but sim.nodes = 3 (nodes are numbered from 0)",
    ),
    (
        "move-at-a-negative-time",
        site_text(sim="moves = [{node = 1, at_s = -1, to = [1, 1]}]"),
        "sim.moves[0].at_s: must be 0..1000000000.0, got -1",
    ),
    (
        "area-of-one-corner",
        site_text(sim="node_area = [[0, 0]]"),
        "sim: node_area must be two corners [[x0, y0], [x1, y1]] in metres",
    ),
    (
        "listen-beside-gateways",
        site_text(sim='listen = "127.0.0.1:7100"'),
        "sim.listen: not used with sim.gateways (each gateway chip has its own listen)",
    ),
    (
        "schedule-from-nowhere",
        site_text(sim='schedule_from = "later"'),
        "sim.schedule_from: must be one of 'start' or 'gateways', got 'later'",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in BAD_SITES], ids=[case[0] for case in BAD_SITES]
)
def test_site_mistakes_are_one_line_from_check_config_and_sim_alike(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text)
    assert main(["check-config", "--sim", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [expected]
    simulated = subprocess.run(
        [sys.executable, "-m", "gateway", "sim", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (simulated.returncode, simulated.stderr.splitlines()) == (2, [expected])


def test_the_good_site_is_accepted_by_check_config_sim_and_refused_for_an_inner_world(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site_text(a_extra="off = [[10, 20], [30]]"))
    assert main(["check-config", "--sim", str(path)]) == 0
    capsys.readouterr()
    # radio.driver = "sim" would run one chip inside `duogate run`: not a site.
    path.write_text(site_text().replace('driver = "sx127x"', 'driver = "sim"'))
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sim.gateways: a site runs in `duogate sim`, with a gateway process per chip; "
        "radio.driver = 'sim' runs a single chip inside the gateway"
    ]


def test_listen_option_and_unusable_ledger_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site_text())

    def sim(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "sim", "--config", str(path), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ran = sim("--listen", "127.0.0.1:7200")
    assert (ran.returncode, ran.stderr.splitlines()) == (
        2,
        ["--listen: sim.gateways gives each gateway chip its own listen"],
    )
    (tmp_path / "ledger").mkdir()
    path.write_text(site_text(sim='ledger = "ledger"'))
    ran = sim()
    assert (ran.returncode, ran.stderr.splitlines()) == (
        2,
        [f"sim.ledger: {tmp_path / 'ledger'} is a directory"],
    )
    (tmp_path / "file").write_text("")
    path.write_text(site_text(sim='ledger = "file/ledger.jsonl"'))
    ran = sim()
    assert ran.returncode == 2 and len(ran.stderr.splitlines()) == 1, ran.stderr
    assert ran.stderr.startswith(f"sim.ledger: cannot open {tmp_path / 'file/ledger.jsonl'}: ")
