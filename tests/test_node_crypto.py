"""The node library's AES, CMAC, CTR and key derivation: RFC 4493 vectors, the protocol's
key vectors, and agreement with the gateway's ``cryptography``-based primitives."""

from __future__ import annotations

import random

import pytest

from gateway.protocol import crypto
from gateway.protocol.crypto import AirDirection
from node import aes, cmac, keys
from tests.node_fixtures import h, load_vectors

RFC4493_KEY = h("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MESSAGE = h(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, "bb1d6929e95937287fa37d129b756746"),
        (16, "070a16b46b4d4144f79bdd9dd04a287c"),
        (40, "dfa66747de9ae63030ca32611497c827"),
        (64, "51f0bebf7e3b9d92fc49741779363cfe"),
    ],
)
def test_rfc4493_vectors(length: int, expected: str) -> None:
    assert cmac.cmac(RFC4493_KEY, RFC4493_MESSAGE[:length]) == h(expected)


def test_aes_block_is_fips197() -> None:
    """FIPS-197 appendix C.1 (AES-128)."""
    cipher = aes.Aes128(h("000102030405060708090a0b0c0d0e0f"))
    block = cipher.encrypt_block(h("00112233445566778899aabbccddeeff"))
    assert block == h("69c4e0d86a7b0430d8cdb78070b4c55a")


def test_cpython_uses_the_cryptography_package() -> None:
    assert aes.backend() == "cryptography"


def test_wrong_key_and_block_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        aes.Aes128(bytes(15))
    with pytest.raises(ValueError):
        aes.Aes128(bytes(16)).encrypt_block(bytes(17))


def test_cmac_agrees_with_the_gateway_at_every_length() -> None:
    source = random.Random(4493)
    for length in range(0, 100):
        key = source.randbytes(16)
        data = source.randbytes(length)
        assert cmac.cmac(key, data) == crypto.cmac(key, data), length
        mac = cmac.Cmac(key)
        assert mac.tag(data) == crypto.tag(key, data)
        assert mac.tag_matches(data, crypto.tag(key, data))
        assert not mac.tag_matches(data, bytes(a ^ 1 for a in crypto.tag(key, data)))


def test_kdf_agrees_with_the_gateway() -> None:
    source = random.Random(800108)
    for _ in range(20):
        key = source.randbytes(16)
        label = source.randbytes(source.randrange(1, 30))
        context = source.randbytes(source.randrange(0, 40))
        assert cmac.derive_key(key, label, context) == crypto.derive_key(key, label, context)


def test_key_vectors_of_the_protocol_document() -> None:
    vectors = load_vectors()
    v = vectors["keys"]
    eui = h(v["eui"])
    assert keys.join_key(h(v["root_key"]), eui) == h(v["join_key"])
    session = keys.session_keys(h(v["root_key"]), eui, h(v["dev_nonce"]), h(v["gw_nonce"]))
    assert session.integrity == h(v["integrity_key"])
    assert session.encryption == h(v["encryption_key"])
    assert "<redacted>" in repr(session)
    lab = vectors["lab_root_key"]
    assert h(lab["lab_key"]) == keys.PUBLIC_LAB_KEY
    assert keys.lab_root_key(h(lab["lab_key"]), h(lab["eui"])) == h(lab["root_key"])


def test_ctr_agrees_with_the_gateway_both_directions() -> None:
    source = random.Random(128)
    for length in (0, 1, 15, 16, 17, 100, 243):
        key = source.randbytes(16)
        data = source.randbytes(length)
        address, counter = source.randrange(0x10000), source.randrange(2**32)
        session = keys.SessionKeys(source.randbytes(16), key)
        for direction, gateway_direction in (
            (keys.UPLINK, AirDirection.UPLINK),
            (keys.DOWNLINK, AirDirection.DOWNLINK),
        ):
            expected = crypto.ctr_crypt(key, gateway_direction, address, counter, data)
            assert session.crypt(direction, address, counter, data) == expected
            assert session.crypt(direction, address, counter, expected) == data


def test_constant_time_comparison() -> None:
    assert cmac.same_bytes(b"\x01\x02", b"\x01\x02")
    assert not cmac.same_bytes(b"\x01\x02", b"\x01\x03")
    assert not cmac.same_bytes(b"\x01", b"\x01\x02")


def test_key_sizes_are_checked() -> None:
    with pytest.raises(ValueError):
        keys.join_key(bytes(16), bytes(7))
    with pytest.raises(ValueError):
        keys.session_keys(bytes(16), bytes(8), bytes(8), bytes(9))
