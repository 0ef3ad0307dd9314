"""Join storm: 20 nodes powered on in the same instant all join and report within 90 s.

The simulated bench at the deployed timing, nothing scaled: SF7/125 kHz on 869.525 MHz (EU868,
10 % sub-band), receive delays of 1 s, the nodes' own duty cycle of 10 %, the node library's
real-time join backoff (node.session.NodeConfig's defaults) and every frame its real time on
air; the gateway is the real SX127x driver and LoRa stack. The first join requests collide,
the half-duplex gateway is deaf while it sends accepts, and the random backoff spreads the
crowd out (docs/NODE.md, "Join storm", has the arithmetic). Seeded: the nodes' nonces and
backoff draws and the medium's randomness repeat.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hil_tests.join_storm_fixtures import run_storm

NODES = 20
GOAL_S = 90.0
SEED = 1


@pytest.mark.timeout(GOAL_S + 60)
async def test_twenty_nodes_powered_on_together_join_and_report_within_90_s(
    tmp_path: Path,
) -> None:
    run = await run_storm(tmp_path, NODES, GOAL_S, seed=SEED)
    figures = run.summary()
    assert run.all_joined_s is not None, figures
    assert run.all_reported_s is not None and run.all_reported_s <= GOAL_S, figures
    # The crowd really collided and backed off: not a polite queue.
    assert run.air["lost_collision"] > 0, figures
    assert sum(run.join_attempts) > NODES, figures
    # The gateway answered every join it heard in its window, within its duty cycle.
    for counter in ("missed_window", "duty_cycle_blocked", "tx_failed"):
        assert run.gateway.get(counter, 0) == 0, figures
