"""The fleet site (tests/fleet_site_fixtures.py) on one mosquitto: 3 gateways, 64 nodes with
overlapping coverage, a node walking from one gateway to another, a gateway killed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet_site_fixtures import FAILOVER_BOUND_S, KILLED, Figures, play_site
from tests.servers import Mosquitto

pytestmark = pytest.mark.timeout(400)  # the site plays out in the first test's fixture


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Figures]:
    workdir = tmp_path_factory.mktemp("fleet-mosquitto")
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    try:
        ports = dict.fromkeys(("gw-a", "gw-b", "gw-c"), broker.port)
        played = play_site(workdir, "mosquitto", ports, broker.port)
    finally:
        broker.kill()
    print(played.line())
    yield played


def test_no_report_acked_on_air_is_lost_and_none_is_published_twice(figures: Figures) -> None:
    assert figures.acked > 5 * figures.nodes, figures.explain()
    assert figures.lost == [], figures.explain()
    assert figures.duplicated == [], figures.explain()
    assert sum(n for k, n in figures.coverage.items() if k >= 2) >= figures.nodes // 3


def test_every_command_is_executed_once_or_expired(figures: Figures) -> None:
    assert figures.command_faults == [], figures.explain()
    assert figures.commands["executed"] >= 10, figures.explain()


def test_the_walking_node_keeps_reporting_with_at_most_one_rejoin(figures: Figures) -> None:
    assert 1 <= figures.walker_joins <= 2, figures.explain()
    assert figures.walker_lost == [], figures.explain()


def test_the_killed_gateways_nodes_are_served_by_a_neighbour_within_the_bound(
    figures: Figures,
) -> None:
    assert figures.failover_s, f"{KILLED} served no node\n{figures.explain()}"
    assert figures.orphans == [], figures.explain()
    assert max(figures.failover_s.values()) <= FAILOVER_BOUND_S, figures.explain()
