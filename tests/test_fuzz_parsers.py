"""Every outside-facing parser under hypothesis: mutated seeds and random bytes never raise
anything but the parser's documented rejection.

The targets are the ones ``make fuzz`` runs under atheris (``fuzz/targets.py``); here the
number of examples is bounded (``DUOGATE_FUZZ_EXAMPLES``, 300 by default) so the suite stays
fast.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import all_targets

EXAMPLES = int(os.environ.get("DUOGATE_FUZZ_EXAMPLES", "300"))
TARGETS = all_targets()


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few byte-level edits: flips, overwrites, insertions, deletions, cuts."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if edit == "flip" and data:
            data[min(position, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and data:
            data[min(position, len(data) - 1)] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif edit == "cut":
            del data[position:]
    return bytes(data)


def test_every_parser_has_a_target_with_seeds() -> None:
    assert set(TARGETS) == {
        "air_frames",
        "serial_framing",
        "command_json",
        "xmpp_command",
        "config",
        "console_lines",
    }
    for target in TARGETS.values():
        assert target.seeds, target.name
        for seed in target.seeds:
            target.run(seed)


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fuzz_parser_rejects_only_with_its_documented_error(name: str, data: st.DataObject) -> None:
    target = TARGETS[name]
    payload = data.draw(mutated(target.seeds) | st.binary(max_size=target.max_len), label="input")
    target.run(payload)
