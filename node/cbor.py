"""CBOR through ``cbor2``: the CPython package, or micropython-lib's ``cbor2`` module on
MicroPython and CircuitPython (its API: ``dumps``, ``loads``, ``CBORDecoder``).

Bodies are restricted to what maps to JSON (docs/protocol.md, Conventions). The CPython
package encodes canonically, as the gateway does, so the node's frames equal the protocol's
test vectors byte for byte; micropython-lib's encoder writes floats in 64 bits and map keys in
dict order, which the gateway accepts just the same.
"""

import io
import math

import cbor2

MAX_DEPTH = 16
_INT_MIN = -(1 << 63)
_INT_END = 1 << 64
# The CPython package has the strict decoder options and canonical encoding.
_FULL = hasattr(cbor2, "CBORError")


class CborError(ValueError):
    """Not one valid, JSON-mappable CBOR item filling the field. ``reason`` is ``bad_cbor``
    (not CBOR, or bytes left over) or ``bad_body`` (CBOR, but not what JSON can hold)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason


def _half_float(bits: int) -> float:
    """IEEE 754 half precision to float (micropython-lib's decoder lacks it; the gateway's
    canonical encoder writes every float that fits in 16 bits that way)."""
    exponent = (bits >> 10) & 0x1F
    fraction = bits & 0x3FF
    if exponent == 0:
        value = fraction * 2.0**-24
    elif exponent == 31:
        value = math.inf if fraction == 0 else math.nan
    else:
        value = (1024 + fraction) * 2.0 ** (exponent - 25)
    return -value if bits & 0x8000 else value


if not _FULL:
    try:
        from cbor2 import _decoder as _micro_decoder
    except ImportError:
        from cbor2 import decoder as _micro_decoder  # older micropython-lib releases

    def _decode_half(decoder):
        return _half_float(int.from_bytes(decoder.read(2), "big"))

    class _NotJson:
        """A tag, undefined or a simple value: CBOR, but nothing JSON can hold."""

    def _definite(decode_major):
        # As strict as the CPython package with allow_indefinite=False.
        def decode(decoder, subtype):
            if subtype == 31:
                raise ValueError("indefinite length")
            return decode_major(decoder, subtype)

        return decode

    def _decode_map(decoder, subtype):
        if subtype == 31:
            raise ValueError("indefinite length")
        length = _micro_decoder.decode_uint(decoder, subtype)
        items = {}
        for _ in range(length):
            key = decoder.decode()
            if key in items:
                raise ValueError("duplicate map key")
            items[key] = decoder.decode()
        return items

    def _decode_tag(decoder, subtype):
        _micro_decoder.decode_uint(decoder, subtype)
        decoder.decode()  # the tagged item, read so that what follows it is checked
        return _NotJson()

    def _decode_simple(decoder):
        if decoder.read(1)[0] < 32:
            raise ValueError("invalid two-byte sequence for a simple value")
        return _NotJson()

    _majors = _micro_decoder.major_decoders
    for _major in (2, 3, 4):
        _majors[_major] = _definite(_majors[_major])
    _majors[5] = _decode_map
    _majors[6] = _decode_tag
    _micro_decoder.special_decoders[23] = lambda decoder: _NotJson()
    _micro_decoder.special_decoders[24] = _decode_simple
    _micro_decoder.special_decoders[25] = _decode_half


def check_json(value, depth: int = 0) -> None:
    """Raise CborError("bad_body") unless ``value`` maps one-to-one onto JSON."""
    if depth > MAX_DEPTH:
        raise CborError("bad_body", "nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if value < _INT_MIN or value >= _INT_END:
            raise CborError("bad_body", "integer out of 64-bit range")
        return
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            raise CborError("bad_body", "non-finite float")
        return
    if isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CborError("bad_body", "map key is not a text string")
            check_json(value[key], depth + 1)
        return
    raise CborError("bad_body", "a value with no JSON equivalent")


def encode(value) -> bytes:
    """CBOR of a JSON-mappable value; CborError for anything else."""
    check_json(value)
    if _FULL:
        return cbor2.dumps(value, canonical=True)
    return cbor2.dumps(value)


def decode(data: bytes):
    """Exactly one JSON-mappable CBOR item filling ``data``; CborError otherwise."""
    stream = io.BytesIO(bytes(data))
    try:
        if _FULL:
            decoder = cbor2.CBORDecoder(
                stream, allow_indefinite=False, allow_duplicate_keys=False, max_depth=MAX_DEPTH
            )
        else:
            decoder = cbor2.CBORDecoder(stream)
        value = decoder.decode()
    except Exception as exc:  # each implementation raises its own kinds, all meaning "bad"
        raise CborError("bad_cbor", str(exc)[:80]) from None
    if stream.read(1):
        raise CborError("bad_cbor", "bytes after the CBOR item")
    check_json(value)
    return value


def encode_record(value) -> bytes:
    """CBOR of a stored record (byte strings allowed, nothing checked against JSON)."""
    return cbor2.dumps(value)


def decode_record(data: bytes):
    """A stored record back; CborError if the bytes are not one CBOR item."""
    stream = io.BytesIO(bytes(data))
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:
        raise CborError("bad_cbor", str(exc)[:80]) from None
    if stream.read(1):
        raise CborError("bad_cbor", "bytes after the CBOR item")
    return value
