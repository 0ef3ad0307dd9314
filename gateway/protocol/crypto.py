"""Cryptographic building blocks of the air protocol, all from the ``cryptography`` package.

* integrity tags: AES-128-CMAC truncated to 4 bytes;
* key derivation: NIST SP 800-108 counter mode with AES-CMAC as the PRF (``KBKDFCMAC``);
* payload encryption: AES-128-CTR with a counter block built from direction, address and
  frame counter, so a key/counter-block pair is never used for two different frames.

docs/protocol.md gives the exact byte layouts; the test vectors there are checked by tests.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
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


class _SessionCiphers:
    """AES key schedules of one session, built once: a keyed CMAC to copy for each tag, and
    an ECB encryptor that turns counter blocks into CTR keystream."""

    __slots__ = ("ecb", "mac")

    def __init__(self, integrity: bytes, encryption: bytes) -> None:
        self.mac = CMAC(algorithms.AES(integrity))
        self.ecb = Cipher(algorithms.AES(encryption), modes.ECB()).encryptor()


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two keys of one session: never the same, never the root key.

    ``tag`` and ``crypt`` reuse the session's cipher contexts (built at the first use, about
    2 KB), so a frame costs no key schedule. One session is used from one thread at a time.
    """

    integrity: bytes
    encryption: bytes
    _ciphers: _SessionCiphers | None = field(default=None, init=False, repr=False, compare=False)

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return "SessionKeys(<redacted>)"

    def _contexts(self) -> _SessionCiphers:
        ciphers = self._ciphers
        if ciphers is None:
            ciphers = _SessionCiphers(self.integrity, self.encryption)
            object.__setattr__(self, "_ciphers", ciphers)
        return ciphers

    def tag(self, data: bytes) -> bytes:
        """The 4-byte integrity tag of ``data`` under the integrity key."""
        mac = self._contexts().mac.copy()
        mac.update(data)
        return mac.finalize()[:TAG_LEN]

    def tag_matches(self, data: bytes, received: bytes) -> bool:
        return hmac.compare_digest(self.tag(data), received)

    def crypt(self, direction: AirDirection, address: int, counter: int, data: bytes) -> bytes:
        """``ctr_crypt`` under the encryption key: AES-128-CTR keystream XOR ``data``."""
        if not data:
            return b""
        first = int.from_bytes(ctr_block(direction, address, counter), "big")
        # The block's low 72 bits start at zero, so counting up never carries past them.
        blocks = b"".join([(first + i).to_bytes(16, "big") for i in range(-(-len(data) // 16))])
        keystream = self._contexts().ecb.update(blocks)[: len(data)]
        mixed = int.from_bytes(data, "big") ^ int.from_bytes(keystream, "big")
        return mixed.to_bytes(len(data), "big")


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
