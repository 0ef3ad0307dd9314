"""The node's record across power cycles, in two small flash files written in turn.

``Node`` (node/session.py) says when to write (``Persist``): at a join, a session's end, a
command, and once per block of counters, so a frame on air costs no write. ``NodeStore``
keeps the record in two slots and writes the older one each time: a write cut by a power
loss leaves the other slot whole. Each slot holds the CBOR of ``[sequence, record]`` and a
4-byte CMAC of it under a fixed key (a checksum: a torn or worn slot is ignored).

``FlashFile`` is the file adapter: the interpreter's own ``open`` (MicroPython on its
littlefs or FAT flash, CircuitPython, CPython). Anything with ``read() -> bytes or None``
and ``write(data)`` serves, e.g. an EEPROM driver.
"""

from node import cbor
from node.cmac import TAG_LEN, Cmac

_CHECKSUM = Cmac(b"duogate node rec")


class FlashFile:
    """A whole small file, read and written at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self):
        """The file's bytes, or None if it does not exist."""
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def write(self, data: bytes) -> None:
        with open(self.path, "wb") as handle:
            handle.write(data)


def _unpack(data):
    """(sequence, record) of a slot's bytes, or None if they are not a whole slot."""
    if data is None or len(data) <= TAG_LEN:
        return None
    body = bytes(data[:-TAG_LEN])
    if not _CHECKSUM.tag_matches(body, bytes(data[-TAG_LEN:])):
        return None
    try:
        value = cbor.decode_record(body)
    except cbor.CborError:
        return None
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], int):
        return None
    return value[0], value[1]


class NodeStore:
    """The latest record in one of two slots; ``writes`` counts the slot writes."""

    def __init__(self, first, second) -> None:
        self._slots = (first, second)
        self._sequence = 0
        self._next_slot = 0
        self.writes = 0

    @classmethod
    def at(cls, path: str) -> "NodeStore":
        """Slots ``path + ".0"`` and ``path + ".1"`` on the interpreter's filesystem."""
        return cls(FlashFile(path + ".0"), FlashFile(path + ".1"))

    def load(self):
        """The newest whole record, or None (a new node, or both slots unreadable)."""
        best = None
        best_slot = 0
        for index in range(2):
            slot = _unpack(self._slots[index].read())
            if slot is not None and (best is None or slot[0] > best[0]):
                best = slot
                best_slot = index
        if best is None:
            return None
        self._sequence = best[0]
        self._next_slot = 1 - best_slot
        return best[1]

    def save(self, record) -> None:
        """Write ``record`` over the older slot."""
        self._sequence += 1
        body = cbor.encode_record([self._sequence, record])
        self._slots[self._next_slot].write(body + _CHECKSUM.tag(body))
        self._next_slot = 1 - self._next_slot
        self.writes += 1
