"""The protocol's keys: join key, session keys, lab root key (docs/protocol.md, Key
derivation), and the per-session tag and encryption helpers."""

from node.aes import Aes128, ctr_crypt
from node.cmac import Cmac, derive_key

KEY_LEN = 16
EUI_LEN = 8
NONCE_LEN = 8

LABEL_JOIN = b"duogate join"
LABEL_SESSION_INTEGRITY = b"duogate session integrity"
LABEL_SESSION_ENCRYPTION = b"duogate session encryption"
LABEL_LAB_ROOT = b"duogate lab root"
# The public lab key of open join: with it anyone can join a gateway in lab mode.
PUBLIC_LAB_KEY = b"duogate open lab"

UPLINK = 0
DOWNLINK = 1


def _check(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(name + " must be " + str(size) + " bytes")


def join_key(root_key: bytes, eui: bytes) -> bytes:
    """Key that tags join requests and the gateway's answers to them."""
    _check("root key", root_key, KEY_LEN)
    _check("EUI", eui, EUI_LEN)
    return derive_key(root_key, LABEL_JOIN, eui)


def lab_root_key(lab_key: bytes, eui: bytes) -> bytes:
    """Root key of a device admitted by a gateway's open join (lab mode)."""
    _check("lab key", lab_key, KEY_LEN)
    _check("EUI", eui, EUI_LEN)
    return derive_key(lab_key, LABEL_LAB_ROOT, eui)


class SessionKeys:
    """The two keys of one session, with their AES and CMAC contexts built once."""

    def __init__(self, integrity: bytes, encryption: bytes) -> None:
        self.integrity = integrity
        self.encryption = encryption
        self._mac = Cmac(integrity)
        self._cipher = Aes128(encryption)

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return "SessionKeys(<redacted>)"

    def tag(self, data: bytes) -> bytes:
        return self._mac.tag(data)

    def tag_matches(self, data: bytes, received: bytes) -> bool:
        return self._mac.tag_matches(data, received)

    def crypt(self, direction: int, address: int, counter: int, data: bytes) -> bytes:
        """AES-128-CTR under the encryption key (encrypts and decrypts)."""
        return ctr_crypt(self._cipher, direction, address, counter, data)


def session_keys(root_key: bytes, eui: bytes, dev_nonce: bytes, gw_nonce: bytes) -> SessionKeys:
    """Keys of the session that a join with these two nonces opens."""
    _check("root key", root_key, KEY_LEN)
    _check("EUI", eui, EUI_LEN)
    _check("dev_nonce", dev_nonce, NONCE_LEN)
    _check("gw_nonce", gw_nonce, NONCE_LEN)
    context = eui + dev_nonce + gw_nonce
    return SessionKeys(
        derive_key(root_key, LABEL_SESSION_INTEGRITY, context),
        derive_key(root_key, LABEL_SESSION_ENCRYPTION, context),
    )
