"""Crypto building blocks against published vectors and their documented layouts."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import crypto
from gateway.protocol.crypto import AirDirection, SessionKeys

RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")


@pytest.mark.parametrize(
    ("message", "mac"),
    [
        ("", "bb1d6929e95937287fa37d129b756746"),
        ("6bc1bee22e409f96e93d7e117393172a", "070a16b46b4d4144f79bdd9dd04a287c"),
        (
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411",
            "dfa66747de9ae63030ca32611497c827",
        ),
    ],
)
def test_cmac_matches_rfc_4493(message: str, mac: str) -> None:
    assert crypto.cmac(RFC4493_KEY, bytes.fromhex(message)).hex() == mac
    assert crypto.tag(RFC4493_KEY, bytes.fromhex(message)).hex() == mac[:8]


def test_kdf_input_layout_is_the_documented_one() -> None:
    key = bytes(range(16))
    label, context = b"duogate join", bytes.fromhex("0011223344556677")
    prf_input = b"\x00\x00\x00\x01" + label + b"\x00" + context + b"\x00\x00\x00\x80"
    assert crypto.derive_key(key, label, context) == crypto.cmac(key, prf_input)


def test_session_keys_differ_from_each_other_and_from_every_input() -> None:
    root = bytes(range(16))
    keys = crypto.session_keys(root, 1, b"\x01" * 8, b"\x02" * 8)
    assert len({keys.integrity, keys.encryption, root, crypto.join_key(root, 1)}) == 4
    assert crypto.session_keys(root, 1, b"\x01" * 8, b"\x03" * 8) != keys
    assert crypto.session_keys(root, 1, b"\x04" * 8, b"\x02" * 8) != keys
    assert crypto.session_keys(root, 2, b"\x01" * 8, b"\x02" * 8) != keys
    assert "redacted" in repr(keys)


def test_lab_root_keys_are_per_device() -> None:
    lab = bytes(16)
    assert crypto.lab_root_key(lab, 1) != crypto.lab_root_key(lab, 2)
    assert crypto.lab_root_key(lab, 1) == crypto.lab_root_key(lab, 1)


def test_ctr_block_layout() -> None:
    block = crypto.ctr_block(AirDirection.DOWNLINK, 0x1234, 0x89ABCDEF)
    assert block.hex() == "01123489abcdef" + "00" * 9


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    address=st.integers(0, 0xFFFF),
    counter=st.integers(0, 0xFFFF_FFFF),
    data=st.binary(max_size=243),
)
def test_ctr_is_aes_keystream_over_the_counter_blocks(
    key: bytes, address: int, counter: int, data: bytes
) -> None:
    first = int.from_bytes(crypto.ctr_block(AirDirection.UPLINK, address, counter), "big")
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(((first + i) % 2**128).to_bytes(16, "big") for i in range(16))
    keystream = ecb.update(blocks) + ecb.finalize()
    expected = bytes(a ^ b for a, b in zip(data, keystream, strict=False))
    encrypted = crypto.ctr_crypt(key, AirDirection.UPLINK, address, counter, data)
    assert encrypted == expected
    assert crypto.ctr_crypt(key, AirDirection.UPLINK, address, counter, encrypted) == data


@settings(max_examples=100, deadline=None)
@given(
    keys=st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
    direction=st.sampled_from(AirDirection),
    address=st.integers(0, 0xFFFF),
    counters=st.lists(st.integers(0, 0xFFFF_FFFF), min_size=1, max_size=4),
    data=st.binary(max_size=243),
)
def test_session_keys_give_the_same_bytes_as_the_one_shot_functions_frame_after_frame(
    keys: tuple[bytes, bytes],
    direction: AirDirection,
    address: int,
    counters: list[int],
    data: bytes,
) -> None:
    integrity, encryption = keys
    session = SessionKeys(integrity, encryption)
    for counter in counters:  # the kept contexts carry nothing from one frame to the next
        assert session.crypt(direction, address, counter, data) == crypto.ctr_crypt(
            encryption, direction, address, counter, data
        )
        signed = data + counter.to_bytes(4, "big")
        expected_tag = crypto.tag(integrity, signed)
        assert session.tag(signed) == expected_tag
        assert session.tag_matches(signed, expected_tag)
        assert not session.tag_matches(signed, bytes([expected_tag[0] ^ 1]) + expected_tag[1:])


def test_session_keys_compare_and_print_by_their_keys_alone() -> None:
    used, fresh = SessionKeys(bytes(16), bytes(range(16))), SessionKeys(bytes(16), bytes(range(16)))
    used.tag(b"frame")
    used.crypt(AirDirection.DOWNLINK, 1, 2, b"body")
    assert used == fresh
    assert repr(used) == "SessionKeys(<redacted>)"
    with pytest.raises(ValueError):
        SessionKeys(bytes(15), bytes(16)).tag(b"frame")


def test_wrong_key_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        crypto.tag(bytes(15), b"")
    with pytest.raises(ValueError):
        crypto.derive_key(bytes(32), b"x", b"")
    with pytest.raises(ValueError):
        crypto.session_keys(bytes(16), 1, bytes(7), bytes(8))
