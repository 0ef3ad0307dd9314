"""AES-128 block encryption from the platform, and the protocol's AES-CTR on top of it.

The block cipher comes from whatever the interpreter offers: ``cryptolib`` on MicroPython,
``aesio`` on CircuitPython, the ``cryptography`` package on CPython. Only encryption of
single 16-byte blocks is used (CMAC and CTR need nothing else), so ECB mode is enough.
"""

BLOCK = 16

try:
    import cryptolib as _cryptolib
except ImportError:
    try:
        import ucryptolib as _cryptolib  # MicroPython before 1.20
    except ImportError:
        _cryptolib = None

_aesio = None
_ecb = None
if _cryptolib is None:
    try:
        import aesio as _aesio
    except ImportError:
        from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
        from cryptography.hazmat.primitives.ciphers import algorithms as _algorithms
        from cryptography.hazmat.primitives.ciphers import modes as _modes

        def _ecb(key):
            return _Cipher(_algorithms.AES(key), _modes.ECB()).encryptor()


_MODE_ECB = 1  # cryptolib's number for ECB (cryptolib.MODE_ECB exists only on some ports)


def backend() -> str:
    """Which platform AES is in use: "cryptolib", "aesio" or "cryptography"."""
    if _cryptolib is not None:
        return "cryptolib"
    if _aesio is not None:
        return "aesio"
    return "cryptography"


class Aes128:
    """One AES-128 key, ready to encrypt blocks (the key schedule is built once)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != BLOCK:
            raise ValueError("AES-128 key must be 16 bytes")
        key = bytes(key)
        if _cryptolib is not None:
            # An ECB object keeps no state between blocks, so one serves every encryption.
            self._cipher = _cryptolib.aes(key, _MODE_ECB)
            self._kind = 0
        elif _aesio is not None:
            self._cipher = _aesio.AES(key, _aesio.MODE_ECB)
            self._kind = 1
        else:
            self._cipher = _ecb(key)
            self._kind = 2

    def encrypt_block(self, block: bytes) -> bytes:
        """AES-128 of one 16-byte block."""
        if len(block) != BLOCK:
            raise ValueError("AES block must be 16 bytes")
        if self._kind == 0:
            return bytes(self._cipher.encrypt(bytes(block)))
        if self._kind == 1:
            out = bytearray(BLOCK)
            self._cipher.encrypt_into(bytes(block), out)
            return bytes(out)
        return self._cipher.update(bytes(block))


def ctr_block(direction: int, address: int, counter: int) -> bytes:
    """Initial counter block: direction (0 uplink, 1 downlink), address, frame counter, zeros."""
    return bytes((direction,)) + address.to_bytes(2, "big") + counter.to_bytes(4, "big") + bytes(9)


def ctr_crypt(cipher: Aes128, direction: int, address: int, counter: int, data: bytes) -> bytes:
    """Encrypt or decrypt (the same operation) a frame body with AES-128-CTR.

    The block counter lives in the last byte of the counter block: a body has at most 16
    blocks (243 bytes), and those bytes start at zero, so it never carries further.
    """
    out = bytearray(data)
    block = bytearray(ctr_block(direction, address, counter))
    for start in range(0, len(out), BLOCK):
        block[15] = start // BLOCK
        keystream = cipher.encrypt_block(block)
        for i in range(start, min(start + BLOCK, len(out))):
            out[i] ^= keystream[i - start]
    return bytes(out)
