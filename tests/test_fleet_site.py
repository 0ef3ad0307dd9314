"""The fleet site (tests/fleet_site_fixtures.py) played on one mosquitto: 3 gateways, 64 nodes
with overlapping coverage, a node walking from one gateway to another, a gateway killed.
tests/test_fleet_site_nats.py plays it on a 3-node NATS cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_site_fixtures import (
    GATEWAYS,
    Figures,
    check_commands,
    check_failover,
    check_reports,
    check_walker,
    play_site,
)
from tests.servers import Mosquitto

pytestmark = pytest.mark.timeout(400)  # the site plays out in the first test


def on_mosquitto(workdir: Path) -> Figures:
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    try:
        return play_site(workdir, "mosquitto", dict.fromkeys(GATEWAYS, broker.port), broker.port)
    finally:
        broker.kill()


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Figures]:
    workdir = tmp_path_factory.mktemp("fleet-mosquitto")
    played = on_mosquitto(workdir)
    (workdir / "figures.txt").write_text(played.line() + "\n")
    print(played.line())
    yield played


def test_no_report_acked_on_air_is_lost_and_none_is_published_twice(figures: Figures) -> None:
    check_reports(figures)


def test_every_command_is_executed_once_or_expired(figures: Figures) -> None:
    check_commands(figures)


def test_the_walking_node_keeps_reporting_with_at_most_one_rejoin(figures: Figures) -> None:
    check_walker(figures)


def test_the_killed_gateways_nodes_are_served_by_a_neighbour_within_the_bound(
    figures: Figures,
) -> None:
    check_failover(figures)
