"""Stand-in for MicroPython's ``cryptolib`` (AES), which the WebAssembly port lacks.

Copied into the test interpreter only when a test asks for it (tests/micropython_fixtures.py).
The cipher itself is Node.js's OpenSSL, reached through the runner's ``_host_aes`` module; this
file keeps the checks and the call shapes of the C module (extmod/modcryptolib.c): a 16- or
32-byte key, ``aes(key, mode[, IV])``, ``encrypt(in_buf[, out_buf])`` on whole 16-byte blocks,
one direction per object. ECB only: other modes are refused, so a test that needs one fails.
"""

import binascii

import _host_aes

MODE_ECB = 1
_ENCRYPTING = 1
_DECRYPTING = 2


class aes:
    def __init__(self, key, mode, IV=None):
        if len(key) not in (16, 32):
            raise ValueError("key")
        if mode != MODE_ECB:
            raise ValueError("mode (this stand-in serves ECB only)")
        if IV is not None:
            raise ValueError("IV given for ECB")
        self._key = binascii.hexlify(bytes(key)).decode()
        self._direction = 0

    def _run(self, direction, in_buf, out_buf):
        if self._direction not in (0, direction):
            raise ValueError("can't encrypt & decrypt")
        self._direction = direction
        if len(in_buf) % 16:
            raise ValueError("blksize % 16")
        if out_buf is not None and len(out_buf) < len(in_buf):
            raise ValueError("output too small")
        data = binascii.hexlify(bytes(in_buf)).decode()
        if direction == _ENCRYPTING:
            result = binascii.unhexlify(_host_aes.ecb_encrypt(self._key, data))
        else:
            result = binascii.unhexlify(_host_aes.ecb_decrypt(self._key, data))
        if out_buf is None:
            return result
        out_buf[: len(result)] = result
        return out_buf

    def encrypt(self, in_buf, out_buf=None):
        return self._run(_ENCRYPTING, in_buf, out_buf)

    def decrypt(self, in_buf, out_buf=None):
        return self._run(_DECRYPTING, in_buf, out_buf)
