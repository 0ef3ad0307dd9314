"""The node's record across power cycles: a journal in two small flash files, used in turn.

``Node`` (node/session.py) says when to write (``Persist``, with the whole record: session,
counter reservations, the last command results, the pending uplinks). ``NodeStore`` appends
only what changed since the last write, as one small entry at the end of the current file::

  file      entry entry ...            the first entry is a snapshot: the whole record
  entry     length (2 bytes, big-endian) || CBOR body || 4-byte CMAC of the body (fixed key)
  snapshot  [sequence, record]
  change    [sequence, replaced, reused, removed]
              replaced  {key: value}  top-level values that are new or changed
              reused    {key: items}  a changed list of lists, each item equal to one of the
                                      old list given as that one's index (a queue where one
                                      uplink came or went costs that uplink only)
              removed   [key, ...]

Sequences count up by one from the snapshot. Loading applies the entries in order and stops
at the first one that is torn, fails its checksum or breaks the count: a write cut by a power
loss costs that write, nothing older. Once the file has grown past ``compact_bytes`` (and twice
its snapshot) the next write is a snapshot of the whole record into the other file, which
takes over; a cut during it leaves the previous file whole, and loading takes the file with
the newest whole snapshot. After loading a file with torn bytes at its end the next write is
a snapshot too (an entry appended behind them would never be read).

Why a journal rather than the whole record in turn in two files: the record with a queue of
framed uplinks runs to kilobytes, written at every report and every ack; an entry is the
change only (a report and its frame, or "this uplink is gone"). littlefs (MicroPython) commits
an append atomically at close and spreads its block erases over the whole partition; FAT
(CircuitPython) may keep half an entry, which its checksum skips. A ``Persist`` that changes
nothing costs no write. docs/NODE.md, "Flash wear and power", counts the writes.

``FlashFile`` is the file adapter: the interpreter's own ``open`` (MicroPython on its littlefs
or FAT flash, CircuitPython, CPython). Anything with ``read() -> bytes or None``,
``write(data)`` (the whole file) and ``append(data)`` serves, e.g. an EEPROM driver; without
``append`` every write is a snapshot into the other file (the whole record, in turn).
A file written by the earlier store (one ``[sequence, record]`` and its tag, no length) loads
as a snapshot.
"""

from node import cbor
from node.cmac import TAG_LEN, Cmac

_CHECKSUM = Cmac(b"duogate node rec")
_LENGTH_LEN = 2
_MAX_ENTRY = 0xFFFF


class FlashFile:
    """A small file, read whole, written whole or appended to."""

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

    def append(self, data: bytes) -> None:
        with open(self.path, "ab") as handle:
            handle.write(data)


class StoreError(ValueError):
    """A record the store cannot write (an entry over 64 KiB)."""


def _entry(value) -> bytes:
    body = cbor.encode_record(value)
    if len(body) > _MAX_ENTRY:
        raise StoreError("a node record entry of " + str(len(body)) + " bytes")
    return len(body).to_bytes(_LENGTH_LEN, "big") + body + _CHECKSUM.tag(body)


def _entries(data):
    """The whole entries at the start of ``data``, in order, as (value, bytes) pairs."""
    found = []
    position = 0
    size = len(data)
    while position + _LENGTH_LEN <= size:
        length = int.from_bytes(data[position : position + _LENGTH_LEN], "big")
        end = position + _LENGTH_LEN + length + TAG_LEN
        if end > size:
            break
        body = bytes(data[position + _LENGTH_LEN : end - TAG_LEN])
        if not _CHECKSUM.tag_matches(body, bytes(data[end - TAG_LEN : end])):
            break
        try:
            value = cbor.decode_record(body)
        except cbor.CborError:
            break
        if not isinstance(value, list) or not value or not isinstance(value[0], int):
            break
        found.append((value, end - position))
        position = end
    return found


def _earlier_slot(data):
    """(sequence, record) of a file of the earlier two-slot store, or None."""
    if len(data) <= TAG_LEN:
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


def _apply(record: dict, change: list) -> bool:
    """Apply one change entry to ``record`` in place; False if it does not fit."""
    if len(change) != 4:
        return False
    replaced, reused, removed = change[1], change[2], change[3]
    if not isinstance(replaced, dict) or not isinstance(reused, dict):
        return False
    if not isinstance(removed, list):
        return False
    for key in reused:
        old = record.get(key)
        items = reused[key]
        if not isinstance(old, list) or not isinstance(items, list):
            return False
        for item in items:
            if isinstance(item, int) and not 0 <= item < len(old):
                return False
    for key in replaced:
        record[key] = replaced[key]
    for key in reused:
        old = record[key]
        record[key] = [old[item] if isinstance(item, int) else item for item in reused[key]]
    for key in removed:
        record.pop(key, None)
    return True


def _reuse(before, after):
    """``after`` (a list of lists) with each item equal to one of ``before`` given as that
    one's index; None if ``after`` is no list of lists or shares nothing with ``before``."""
    if not isinstance(before, list) or not isinstance(after, list):
        return None
    items = []
    shared = 0
    for item in after:
        if not isinstance(item, list):
            return None
        index = -1
        for position in range(len(before)):
            if before[position] == item:
                index = position
                break
        if index < 0:
            items.append(item)
        else:
            items.append(index)
            shared += 1
    return items if shared else None


def _changes(before: dict, after: dict):
    """(replaced, reused, removed) from ``before`` to ``after``; None if they are equal."""
    replaced = {}
    reused = {}
    removed = []
    for key in after:
        value = after[key]
        if key in before:
            if before[key] == value:
                continue
            items = _reuse(before[key], value)
            if items is not None:
                reused[key] = items
                continue
        replaced[key] = value
    for key in before:
        if key not in after:
            removed.append(key)
    if not replaced and not reused and not removed:
        return None
    return replaced, reused, removed


def _read(data):
    """(snapshot sequence, last sequence, record, bytes used, snapshot bytes, appendable) of
    one file's bytes, or None if it holds no whole snapshot."""
    if not data:
        return None
    entries = _entries(data)
    if not entries or len(entries[0][0]) != 2 or not isinstance(entries[0][0][1], dict):
        earlier = _earlier_slot(data)
        if earlier is None or not isinstance(earlier[1], dict):
            return None
        # The earlier store's format: a snapshot that takes no appended entries.
        return earlier[0], earlier[0], earlier[1], len(data), len(data), False
    snapshot, used = entries[0]
    sequence = snapshot[0]
    record = snapshot[1]
    for change, size in entries[1:]:
        if change[0] != sequence + 1 or not _apply(record, change):
            break  # entries that do not follow were never appended behind this snapshot
        sequence += 1
        used += size
    # Bytes behind the last entry applied (a torn append): the next write is a snapshot.
    return snapshot[0], sequence, record, used, entries[0][1], used == len(data)


class NodeStore:
    """The record as a journal in two files. ``writes`` counts file writes (appends and
    snapshots), ``snapshots`` the snapshots among them."""

    def __init__(self, first, second, compact_bytes: int = 4096) -> None:
        if compact_bytes < 256:
            raise ValueError("compact_bytes must be at least 256")
        self._files = (first, second)
        self.compact_bytes = compact_bytes
        self._loaded = False
        self._current = 1  # the file appended to; the first snapshot goes to the other
        self._sequence = 0
        self._record = None  # the record as the files hold it
        self._size = 0  # bytes of whole entries in the current file
        self._snapshot_size = 0
        self._appendable = False
        self.writes = 0
        self.snapshots = 0

    @classmethod
    def at(cls, path: str, compact_bytes: int = 4096) -> "NodeStore":
        """Files ``path + ".0"`` and ``path + ".1"`` on the interpreter's filesystem."""
        return cls(FlashFile(path + ".0"), FlashFile(path + ".1"), compact_bytes)

    def load(self):
        """The newest whole record, or None (a new node, or nothing readable)."""
        self._loaded = True
        best = None
        best_index = 0
        for index in range(2):
            state = _read(self._files[index].read())
            if state is not None and (best is None or state[0] > best[0]):
                best = state
                best_index = index
        if best is None:
            self._record = None
            return None
        self._current = best_index
        self._sequence = best[1]
        self._record = best[2]
        self._size = best[3]
        self._snapshot_size = best[4]
        self._appendable = best[5]
        return _copy(best[2])

    def save(self, record: dict) -> None:
        """Write what changed since the last write (nothing, if nothing did). The store keeps
        ``record`` to compare the next one with: do not change it afterwards."""
        if not self._loaded:
            self.load()  # the sequence must go on from what the files hold
        if self._record is not None and self._appendable:
            changes = _changes(self._record, record)
            if changes is None:
                return
            entry = _entry([self._sequence + 1, changes[0], changes[1], changes[2]])
            bound = max(self.compact_bytes, 2 * self._snapshot_size)
            target = self._files[self._current]
            if self._size + len(entry) <= bound and hasattr(target, "append"):
                target.append(entry)
                self._sequence += 1
                self._size += len(entry)
                self._record = record
                self.writes += 1
                return
        self._snapshot(record)

    def _snapshot(self, record: dict) -> None:
        entry = _entry([self._sequence + 1, record])
        target = 1 - self._current
        self._files[target].write(entry)
        self._sequence += 1
        self._current = target
        self._size = self._snapshot_size = len(entry)
        self._appendable = True
        self._record = record
        self.writes += 1
        self.snapshots += 1


def _copy(value):
    """A copy of a loaded record's maps and lists: the caller may change it."""
    if isinstance(value, dict):
        return {key: _copy(value[key]) for key in value}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value
