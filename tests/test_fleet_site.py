"""The fleet site (tests/fleet_site_fixtures.py) played on one mosquitto and on a 3-node NATS
cluster with each gateway on its own cluster node: 3 gateways, 64 nodes with overlapping
coverage, a node walking from one gateway to another, a gateway killed; on NATS also the
cluster node of gw-b killed mid-run and started again (its clients' will messages are never
sent: gw-b keeps serving its nodes on air and publishes what it kept once it is back).

The NATS site is not part of `make test` yet (docs/FLEET.md, "Measured"): `make fleet` runs it
(DUOGATE_FLEET_NATS=1)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_site_fixtures import FAILOVER_BOUND_S, GATEWAYS, KILLED, Figures, play_site
from tests.servers import Mosquitto, NatsCluster, nats_server_binary

pytestmark = pytest.mark.timeout(400)  # the site plays out in each broker's first test

CLUSTER_NODE_DOWN_S = 10.0
GATEWAY_NODES = {"gw-a": 0, "gw-b": 1, "gw-c": 2}
FAULTY_NODE = GATEWAY_NODES["gw-b"]


def on_mosquitto(workdir: Path) -> Figures:
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    try:
        return play_site(workdir, "mosquitto", dict.fromkeys(GATEWAYS, broker.port), broker.port)
    finally:
        broker.kill()


def on_nats(workdir: Path) -> Figures:
    if os.environ.get("DUOGATE_FLEET_NATS") != "1":
        pytest.skip("the site on NATS runs with make fleet")
    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed: run `make test` (installs it via apt-get)")
    cluster = NatsCluster(workdir / "nats")
    cluster.start()
    restarts: list[threading.Timer] = []

    def kill_and_restart() -> None:
        cluster.kill(FAULTY_NODE)
        restart = threading.Timer(CLUSTER_NODE_DOWN_S, cluster.start, (FAULTY_NODE,))
        restart.start()
        restarts.append(restart)

    try:
        ports = {name: cluster.mqtt_port(node) for name, node in GATEWAY_NODES.items()}
        return play_site(workdir, "nats", ports, cluster.mqtt_port(0), kill_and_restart)
    finally:
        for restart in restarts:
            restart.join()
        cluster.stop()


@pytest.fixture(scope="module", params=["mosquitto", "nats"])
def figures(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Figures]:
    workdir = tmp_path_factory.mktemp(f"fleet-{request.param}")
    played = on_mosquitto(workdir) if request.param == "mosquitto" else on_nats(workdir)
    print(played.line())
    yield played


def test_no_report_acked_on_air_is_lost_and_none_is_published_twice(figures: Figures) -> None:
    assert figures.acked > 5 * figures.nodes, figures.explain()
    assert figures.lost == [], figures.explain()
    assert figures.duplicated == [], figures.explain()
    assert sum(n for k, n in figures.coverage.items() if k >= 2) >= figures.nodes // 3
    if figures.broker == "nats":  # gw-b lost its cluster node for a while and came back
        assert figures.reconnects["gw-b"] >= 2, figures.explain()


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
