"""AES-CMAC (RFC 4493) on the platform's AES block cipher, the protocol's tags and its KDF.

No CMAC library exists on MicroPython or CircuitPython boards, so this module builds it from
single-block AES encryptions (node/aes.py). It is checked against the RFC 4493 test vectors
and against the gateway's CMAC from the ``cryptography`` package (tests/test_node_crypto.py).
"""

from node.aes import BLOCK, Aes128

TAG_LEN = 4
_RB = 0x87  # the constant of RFC 4493 section 2.3 for 128-bit blocks


def _double(block: bytes) -> bytes:
    """Shift a block left by one bit, folding the carried-out bit back in with Rb."""
    out = bytearray(BLOCK)
    carry = 0
    for i in range(BLOCK - 1, -1, -1):
        value = block[i]
        out[i] = ((value << 1) & 0xFF) | carry
        carry = value >> 7
    if carry:
        out[BLOCK - 1] ^= _RB
    return bytes(out)


def _xor_into(target: bytearray, data: bytes, start: int) -> None:
    for i in range(BLOCK):
        target[i] ^= data[start + i]


class Cmac:
    """AES-CMAC under one key: the cipher and both subkeys are prepared once."""

    def __init__(self, key: bytes) -> None:
        self._cipher = Aes128(key)
        self._k1 = _double(self._cipher.encrypt_block(bytes(BLOCK)))
        self._k2 = _double(self._k1)

    def mac(self, data: bytes) -> bytes:
        """The full 16-byte CMAC of ``data``."""
        size = len(data)
        blocks = (size + BLOCK - 1) // BLOCK
        complete = size > 0 and size % BLOCK == 0
        if blocks == 0:
            blocks = 1
        state = bytearray(BLOCK)
        for n in range(blocks - 1):
            _xor_into(state, data, n * BLOCK)
            state = bytearray(self._cipher.encrypt_block(state))
        last = bytearray(data[(blocks - 1) * BLOCK :])
        if complete:
            subkey = self._k1
        else:
            last.append(0x80)
            while len(last) < BLOCK:
                last.append(0)
            subkey = self._k2
        _xor_into(last, subkey, 0)
        _xor_into(state, last, 0)
        return self._cipher.encrypt_block(state)

    def tag(self, data: bytes) -> bytes:
        """The protocol's 4-byte integrity tag: the leading bytes of the CMAC."""
        return self.mac(data)[:TAG_LEN]

    def tag_matches(self, data: bytes, received: bytes) -> bool:
        return same_bytes(self.tag(data), received)


def cmac(key: bytes, data: bytes) -> bytes:
    """Full 16-byte AES-CMAC of ``data`` under ``key``."""
    return Cmac(key).mac(data)


def same_bytes(a: bytes, b: bytes) -> bool:
    """Compare without stopping at the first difference (no timing hint for a forger)."""
    if len(a) != len(b):
        return False
    difference = 0
    for i in range(len(a)):
        difference |= a[i] ^ b[i]
    return difference == 0


def derive_key(key: bytes, label: bytes, context: bytes) -> bytes:
    """NIST SP 800-108 counter mode with AES-CMAC as the PRF, 32-bit counter and length:
    one PRF call, CMAC(K, 00000001 || label || 00 || context || 00000080)."""
    return cmac(key, b"\x00\x00\x00\x01" + label + b"\x00" + context + b"\x00\x00\x00\x80")
