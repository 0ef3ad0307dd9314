"""The fleet's pure rules: sealing, session records, sightings, who serves a device."""

from __future__ import annotations

import pytest

from gateway.protocol.fleet import (
    FleetMessageRejected,
    FleetSeal,
    Gatherings,
    Reception,
    SessionRecord,
    Sighting,
    best_placed,
    command_ref,
    decode_record,
    decode_sighting,
    encode_record,
    encode_sighting,
    former_owner_publishes,
    handover_target,
)
from gateway.protocol.join import LeaseRecord

KEY = bytes(range(16))
TOPIC = "fleet1/sessions/lora-0016c0f100000001"


def lease(**changes: object) -> LeaseRecord:
    fields: dict[str, object] = {
        "eui": 0x0016C0F100000001,
        "generation": 3,
        "recent_nonces": (b"\x01\x02", b"\x03\x04"),
        "last_seen": 1_700_000_000.5,
        "address": 0x0104,
        "dev_nonce": b"\x03\x04",
        "gw_nonce": bytes.fromhex("4ddc0fb94e96aa47"),
        "encrypt": True,
        "rx_delay_ds": 10,
        "accept_frame": b"\xaa" * 20,
        "up_last": 41,
        "up_recent": ((40, b"\x01" * 4), (41, b"\x02" * 4)),
        "dl_reserved": 2048,
    }
    fields.update(changes)
    return LeaseRecord(**fields)  # type: ignore[arg-type]


def record(owner: str = "gw-a", epoch: int = 1, floor: int = -1) -> SessionRecord:
    return SessionRecord("lora-0016c0f100000001", owner, epoch, lease(), floor)


def test_a_record_survives_its_encoding_and_names_its_session() -> None:
    original = record(floor=39)
    assert decode_record(encode_record(original)) == original
    assert original.session == "4ddc0fb94e96aa47"


def test_records_are_ordered_by_epoch_then_owner_so_every_gateway_settles_alike() -> None:
    assert record("gw-a", 2).outranks(record("gw-b", 1))
    assert record("gw-b", 2).outranks(record("gw-a", 2))
    assert not record("gw-a", 2).outranks(record("gw-a", 2))
    assert record().outranks(None)


def test_a_sealed_message_opens_only_with_the_key_and_on_its_own_topic() -> None:
    seal = FleetSeal(KEY)
    sealed = seal.seal(TOPIC, b"session")
    assert seal.open(TOPIC, sealed) == b"session"
    assert b"session" not in sealed
    with pytest.raises(FleetMessageRejected, match="seal does not match"):
        FleetSeal(bytes(16)).open(TOPIC, sealed)
    with pytest.raises(FleetMessageRejected, match="seal does not match"):
        seal.open("fleet1/sessions/lora-0016c0f100000002", sealed)  # moved to another device
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(FleetMessageRejected):
        seal.open(TOPIC, tampered)
    with pytest.raises(FleetMessageRejected, match="not a sealed"):
        seal.open(TOPIC, b'{"owner": "mallory"}')


def test_two_seals_of_one_message_differ() -> None:
    seal = FleetSeal(KEY)
    assert seal.seal(TOPIC, b"x") != seal.seal(TOPIC, b"x")


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="16 or 32 bytes"):
        FleetSeal(b"short")


@pytest.mark.parametrize("data", [b"", b"\xff\x00", b"\xa1\x61x\x01", b"\x80"])
def test_malformed_records_and_sightings_are_refused_in_one_line(data: bytes) -> None:
    with pytest.raises(FleetMessageRejected, match="bad session record"):
        decode_record(data)
    with pytest.raises(FleetMessageRejected, match="bad sighting"):
        decode_sighting(data)


def test_a_sighting_survives_its_encoding() -> None:
    sighting = Sighting("lora-01", "uplink", "4ddc", 17, Reception("gw-b", -97.5, 6.25))
    assert decode_sighting(encode_sighting(sighting)) == sighting


def test_the_owner_keeps_a_device_it_hears_about_as_well_as_its_neighbours() -> None:
    own = Reception("gw-a", -100.0, 5.0)
    assert handover_target(own, [Reception("gw-b", -96.0, 7.0)], margin_db=6.0) is None
    assert handover_target(own, [], margin_db=6.0) is None


def test_the_owner_hands_over_to_the_best_neighbour_when_clearly_weaker_or_deaf() -> None:
    own = Reception("gw-a", -110.0, -2.0)
    others = [Reception("gw-b", -103.0, 4.0), Reception("gw-c", -95.0, 8.0)]
    assert handover_target(own, others, margin_db=6.0) == "gw-c"
    assert handover_target(None, others[:1], margin_db=6.0) == "gw-b"


def test_every_gateway_picks_the_same_best_placed_from_the_same_sightings() -> None:
    heard = [Reception("gw-b", -90.0, 5.0), Reception("gw-a", -90.0, 5.0)]
    assert best_placed(heard) == best_placed(reversed(heard)) == "gw-b"
    assert best_placed([Reception("gw-a", -80.0, 1.0), Reception("gw-b", -90.0, 9.0)]) == "gw-a"
    assert best_placed([]) is None


def test_a_command_has_the_same_reference_everywhere_and_skips_waiting_ones() -> None:
    ref = command_ref("lora-01", "c-1")
    assert ref == command_ref("lora-01", "c-1")
    assert 0 <= ref <= 0xFFFF
    assert command_ref("lora-01", "c-2") != ref
    assert command_ref("lora-01", "c-1", taken={ref}) == (ref + 1) % 0x10000


def test_a_former_owner_publishes_up_to_the_floor_and_any_report_of_another_session() -> None:
    moved = record(owner="gw-b", epoch=2, floor=7)
    device, session = moved.device, moved.session
    assert former_owner_publishes(moved, f"{device}:{session}:7")
    assert not former_owner_publishes(moved, f"{device}:{session}:8")
    assert former_owner_publishes(moved, f"{device}:0123456789abcdef:8")  # its own session
    assert former_owner_publishes(None, f"{device}:{session}:8")  # no record: nobody else has it
    assert not former_owner_publishes(moved, "not a report id")


def test_gatherings_keep_the_latest_and_begin_one_on_first_use() -> None:
    gatherings = Gatherings(kept=2)
    first = gatherings.of(("d", "uplink", "s", 1))
    first.receptions["gw-a"] = Reception("gw-a", -90.0, 5.0)
    assert gatherings.of(("d", "uplink", "s", 1)) is first
    gatherings.of(("d", "uplink", "s", 2))
    gatherings.of(("d", "uplink", "s", 3))
    assert len(gatherings) == 2 and gatherings.get(("d", "uplink", "s", 1)) is None
