"""Cryptographic building blocks of the air protocol, all from the ``cryptography`` package.

* integrity tags: AES-128-CMAC truncated to 4 bytes;
* key derivation: NIST SP 800-108 counter mode with AES-CMAC as the PRF (``KBKDFCMAC``);
* payload encryption: AES-128-CTR with a counter block built from direction, address and
  frame counter, so a key/counter-block pair is never used for two different frames.

docs/protocol.md gives the exact byte layouts; the test vectors there are checked by tests.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFCMAC, CounterLocation, Mode

KEY_LEN = 16
TAG_LEN = 4
EUI_LEN = 8
NONCE_LEN = 8

LABEL_JOIN = b"duogate join"
LABEL_SESSION_INTEGRITY = b"duogate session integrity"
LABEL_SESSION_ENCRYPTION = b"duogate session encryption"
LABEL_LAB_ROOT = b"duogate lab root"


class AirDirection(IntEnum):
    UPLINK = 0
    DOWNLINK = 1


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two keys of one session: never the same, never the root key."""

    integrity: bytes
    encryption: bytes

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return "SessionKeys(<redacted>)"


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"AES-128 key must be {KEY_LEN} bytes, got {len(key)}")


def cmac(key: bytes, data: bytes) -> bytes:
    """Full 16-byte AES-CMAC of ``data``."""
    _check_key(key)
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def tag(key: bytes, data: bytes) -> bytes:
    """The 4-byte integrity tag: the leading bytes of AES-CMAC."""
    return cmac(key, data)[:TAG_LEN]


def tag_matches(key: bytes, data: bytes, received: bytes) -> bool:
    return hmac.compare_digest(tag(key, data), received)


def derive_key(key: bytes, label: bytes, context: bytes) -> bytes:
    """SP 800-108 KDF in counter mode, PRF AES-CMAC, 32-bit counter and length fields.

    The PRF input is ``[1]_4 || label || 0x00 || context || [128]_4``.
    """
    _check_key(key)
    kdf = KBKDFCMAC(
        algorithm=algorithms.AES,
        mode=Mode.CounterMode,
        length=KEY_LEN,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    )
    return kdf.derive(key)


def eui_bytes(eui: int) -> bytes:
    return eui.to_bytes(EUI_LEN, "big")


def join_key(root_key: bytes, eui: int) -> bytes:
    """Key that tags join requests and the gateway's answers to them."""
    return derive_key(root_key, LABEL_JOIN, eui_bytes(eui))


def session_keys(root_key: bytes, eui: int, dev_nonce: bytes, gw_nonce: bytes) -> SessionKeys:
    """Keys of the session that a join with these two nonces opens."""
    if len(dev_nonce) != NONCE_LEN or len(gw_nonce) != NONCE_LEN:
        raise ValueError(f"nonces must be {NONCE_LEN} bytes")
    context = eui_bytes(eui) + dev_nonce + gw_nonce
    return SessionKeys(
        integrity=derive_key(root_key, LABEL_SESSION_INTEGRITY, context),
        encryption=derive_key(root_key, LABEL_SESSION_ENCRYPTION, context),
    )


def lab_root_key(lab_key: bytes, eui: int) -> bytes:
    """Root key of a device admitted by open join: derived from the lab key and its EUI."""
    return derive_key(lab_key, LABEL_LAB_ROOT, eui_bytes(eui))


def ctr_block(direction: AirDirection, address: int, counter: int) -> bytes:
    """Initial AES-CTR counter block: direction, address, frame counter, then zeros.

    The last bytes count the 16-byte blocks of one body (at most 16 of them).
    """
    return (
        bytes([direction]) + address.to_bytes(2, "big") + counter.to_bytes(4, "big") + bytes(16 - 7)
    )


def ctr_crypt(
    key: bytes, direction: AirDirection, address: int, counter: int, data: bytes
) -> bytes:
    """Encrypt or decrypt (the same operation) a frame body with AES-128-CTR."""
    _check_key(key)
    cipher = Cipher(algorithms.AES(key), modes.CTR(ctr_block(direction, address, counter)))
    encryptor = cipher.encryptor()
    return encryptor.update(data) + encryptor.finalize()
