"""Sparse offset and time indexes of a segment.

Both indexes live in memory as sorted lists and are appended to their file as
entries are added. Neither file is trusted after a crash: the partition log
validates it on open and rebuilds it from the segment when it is missing or
damaged, so an index write never needs an fsync of its own.

Offset index entry (8 bytes, big-endian): relative offset (uint32, offset
minus the segment's base offset), position of the batch in the `.log` file
(uint32).

Time index entry (12 bytes, big-endian): timestamp in ms (int64), relative
offset (uint32) of the first batch whose records carry that timestamp or later.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
from pathlib import Path

from logq.errors import CorruptIndexError
from logq.segments.files import convert_disk_full

logger = logging.getLogger(__name__)

OFFSET_ENTRY = struct.Struct(">II")
TIME_ENTRY = struct.Struct(">qI")


def _write_pending(path: Path, unwritten: list[bytes], lock: threading.Lock) -> None:
    """Append `unwritten` to the file at `path` and empty it.

    The lock stays held through the write, so an entry added meanwhile waits
    for the next call instead of being cleared unwritten, and two concurrent
    calls cannot write the same entries twice or out of order. A failed write
    cuts the file back to its previous size and keeps `unwritten`, so the
    next call writes the same entries again. ENOSPC raises DiskFullError,
    other failures raise OSError.
    """
    with lock:
        if not unwritten:
            return
        data = b"".join(unwritten)
        with convert_disk_full(path, "writing index entries"):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.fstat(fd).st_size
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(fd, data[written:])
                except OSError as exc:
                    _cut_back(fd, start, path, exc)
                    raise
            finally:
                os.close(fd)
        unwritten.clear()


def _cut_back(fd: int, size: int, path: Path, exc: OSError) -> None:
    """Truncate the file of `fd` to `size` after the write failure `exc`, logging a failed truncate."""
    try:
        os.ftruncate(fd, size)
    except OSError as truncate_exc:
        # The index is checked on open and rebuilt when damaged, so a partial entry left here is repaired then.
        logger.error("cannot cut %s back to %d bytes after a failed write (%s): %s", path, size, exc, truncate_exc)


class OffsetIndex:
    """Map from offset to the position of the batch that contains it.

    Holds one entry every `index_interval_bytes` of segment data. A lookup
    returns the nearest entry at or below the offset, and the reader scans
    forward from that position.
    """

    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self.offsets: list[int] = []
        self.positions: list[int] = []
        self._unwritten: list[bytes] = []
        # Held while `_unwritten` changes or goes to the file, because a flush
        # writes pending entries in one thread while an append adds more in another.
        self._unwritten_lock = threading.Lock()

    def append(self, offset: int, position: int) -> None:
        """Add an entry; offsets and positions must grow. Call under the append lock."""
        # `lookup` may run in another thread and searches `offsets`, so that
        # list grows last and every slot it finds already has a position.
        self.positions.append(position)
        self.offsets.append(offset)
        with self._unwritten_lock:
            self._unwritten.append(OFFSET_ENTRY.pack(offset - self.base_offset, position))

    def lookup(self, offset: int) -> int:
        """Return the position to start a scan for `offset` (0 if no entry is below it)."""
        slot = bisect.bisect_right(self.offsets, offset) - 1
        return self.positions[slot] if slot >= 0 else 0

    def write_pending(self) -> None:
        """Append the entries added since the last call to the index file. Safe from any thread."""
        _write_pending(self.path, self._unwritten, self._unwritten_lock)

    def rewrite(self) -> None:
        """Replace the file with every entry in memory (after a rebuild); ENOSPC raises DiskFullError."""
        data = b"".join(
            OFFSET_ENTRY.pack(offset - self.base_offset, position)
            for offset, position in zip(self.offsets, self.positions)
        )
        with convert_disk_full(self.path, "rewriting the offset index"):
            self.path.write_bytes(data)
        self._unwritten.clear()

    def load(self, segment_size: int, next_base_offset: int | None) -> None:
        """Read the index file and check it against the segment it describes.

        Raises CorruptIndexError when the file is missing, its size is not a
        multiple of 8, or an entry is out of order or points past the segment.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise CorruptIndexError(f"{self.path.name}: missing; it is rebuilt on open") from exc
        if len(data) % OFFSET_ENTRY.size:
            raise CorruptIndexError(
                f"{self.path.name}: size {len(data)} is not a multiple of {OFFSET_ENTRY.size}; "
                "delete it to rebuild it on the next open"
            )
        offsets: list[int] = []
        positions: list[int] = []
        for relative, position in OFFSET_ENTRY.iter_unpack(data):
            offset = self.base_offset + relative
            if offsets and (offset <= offsets[-1] or position <= positions[-1]):
                raise CorruptIndexError(
                    f"{self.path.name}: entry {len(offsets)} (offset {offset}, position {position}) "
                    "is not above the entry before it"
                )
            if position >= segment_size or (next_base_offset is not None and offset >= next_base_offset):
                raise CorruptIndexError(
                    f"{self.path.name}: entry {len(offsets)} (offset {offset}, position {position}) "
                    f"points past the segment ({segment_size} bytes)"
                )
            offsets.append(offset)
            positions.append(position)
        self.offsets, self.positions = offsets, positions
        self._unwritten.clear()


class TimeIndex:
    """Map from timestamp to the first offset at or after it.

    logq assigns non-decreasing append timestamps per partition, so the entries
    are sorted by timestamp and by offset at once.
    """

    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self.timestamps: list[int] = []
        self.offsets: list[int] = []
        self._unwritten: list[bytes] = []
        self._unwritten_lock = threading.Lock()

    def append(self, timestamp_ms: int, offset: int) -> None:
        """Add an entry unless the last entry already has this timestamp."""
        if self.timestamps and timestamp_ms <= self.timestamps[-1]:
            return
        # `lookup` searches `timestamps`, so it grows last, as in OffsetIndex.append.
        self.offsets.append(offset)
        self.timestamps.append(timestamp_ms)
        with self._unwritten_lock:
            self._unwritten.append(TIME_ENTRY.pack(timestamp_ms, offset - self.base_offset))

    def lookup(self, timestamp_ms: int) -> int:
        """Return an offset at or before the first record with a timestamp >= `timestamp_ms`."""
        entry = self.entry_before(timestamp_ms)
        return entry[1] if entry is not None else self.base_offset

    def entry_before(self, timestamp_ms: int) -> tuple[int, int] | None:
        """Return the (timestamp, offset) entry that `lookup` uses for `timestamp_ms`, or None for none."""
        slot = bisect.bisect_left(self.timestamps, timestamp_ms) - 1
        return (self.timestamps[slot], self.offsets[slot]) if slot >= 0 else None

    @property
    def max_timestamp_ms(self) -> int | None:
        """Largest timestamp in the index, or None when it is empty."""
        return self.timestamps[-1] if self.timestamps else None

    def write_pending(self) -> None:
        """Append the entries added since the last call to the index file. Safe from any thread."""
        _write_pending(self.path, self._unwritten, self._unwritten_lock)

    def rewrite(self) -> None:
        """Replace the file with every entry in memory (after a rebuild); ENOSPC raises DiskFullError."""
        data = b"".join(
            TIME_ENTRY.pack(timestamp, offset - self.base_offset)
            for timestamp, offset in zip(self.timestamps, self.offsets)
        )
        with convert_disk_full(self.path, "rewriting the time index"):
            self.path.write_bytes(data)
        self._unwritten.clear()

    def load(self, next_base_offset: int | None) -> None:
        """Read the index file; raises CorruptIndexError as OffsetIndex.load does."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise CorruptIndexError(f"{self.path.name}: missing; it is rebuilt on open") from exc
        if len(data) % TIME_ENTRY.size:
            raise CorruptIndexError(
                f"{self.path.name}: size {len(data)} is not a multiple of {TIME_ENTRY.size}; "
                "delete it to rebuild it on the next open"
            )
        timestamps: list[int] = []
        offsets: list[int] = []
        for timestamp, relative in TIME_ENTRY.iter_unpack(data):
            offset = self.base_offset + relative
            if timestamps and (timestamp <= timestamps[-1] or offset <= offsets[-1]):
                raise CorruptIndexError(
                    f"{self.path.name}: entry {len(timestamps)} (timestamp {timestamp}, "
                    f"offset {offset}) is not above the entry before it"
                )
            if next_base_offset is not None and offset >= next_base_offset:
                raise CorruptIndexError(
                    f"{self.path.name}: entry {len(timestamps)} points at offset {offset}, "
                    f"past the segment's last offset {next_base_offset - 1}"
                )
            timestamps.append(timestamp)
            offsets.append(offset)
        self.timestamps, self.offsets = timestamps, offsets
        self._unwritten.clear()
