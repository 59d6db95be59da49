"""One segment: a `.log` file of record batches and its two sparse indexes.

The `.log` file is a plain concatenation of batches (see batch.py). Its name is
the base offset, the offset of its first record, in 20 zero-padded digits. The
`.index` and `.timeindex` files beside it share that name. Only the segment
with the highest base offset (the active segment) is ever appended to.

Methods here do blocking file I/O. The partition log calls them from a worker
thread, or from the event loop for a small append, and serializes every call
that changes the segment under its append lock. `read` is safe from any
thread at any time.
"""

from __future__ import annotations

import errno
import logging
import os
import weakref
from pathlib import Path

from logq.errors import CorruptRecordError, DiskFullError, StorageError
from logq.segments import files
from logq.segments.batch import HEADER_SIZE, BatchHeader, parse_header, verify_batch
from logq.segments.indexes import OffsetIndex, TimeIndex

logger = logging.getLogger(__name__)


class Segment:
    """A segment file with its offset and time index.

    `size` is the number of valid bytes (the file is truncated to it when a
    write fails), `next_offset` the offset right after the last record.
    """

    def __init__(self, directory: Path, base_offset: int, *, index_interval_bytes: int) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.path = files.log_path(directory, base_offset)
        self.offset_index = OffsetIndex(files.offset_index_path(directory, base_offset), base_offset)
        self.time_index = TimeIndex(files.time_index_path(directory, base_offset), base_offset)
        self.index_interval_bytes = index_interval_bytes
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp_ms: int | None = None
        self._bytes_since_index_entry = 0
        self._last_batch: BatchHeader | None = None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        # A deleted segment keeps its descriptor until no reader references the
        # object, so a read racing with retention never hits a reused fd.
        self._close_fd = weakref.finalize(self, os.close, self._fd)

    @classmethod
    def create(cls, directory: Path, base_offset: int, *, index_interval_bytes: int) -> Segment:
        """Create an empty segment with empty index files.

        If a file cannot be created, the files created so far are removed, so
        no empty segment is left that a later append to the previous segment
        would contradict. ENOSPC raises DiskFullError, other failures OSError.
        """
        path = files.log_path(directory, base_offset)
        with files.convert_disk_full(path, "creating a new segment"):
            try:
                segment = cls(directory, base_offset, index_interval_bytes=index_interval_bytes)
                segment.offset_index.path.write_bytes(b"")
                segment.time_index.path.write_bytes(b"")
                files.fsync_directory(directory)
            except OSError:
                for leftover in (path, files.offset_index_path(directory, base_offset),
                                 files.time_index_path(directory, base_offset)):
                    leftover.unlink(missing_ok=True)
                raise
        return segment

    @property
    def record_count(self) -> int:
        """Number of offsets the segment covers."""
        return self.next_offset - self.base_offset

    def file_size(self) -> int:
        """Size of the `.log` file on disk, which exceeds `size` only before recovery."""
        return os.fstat(self._fd).st_size

    def append(self, data: bytes, header: BatchHeader) -> int:
        """Write one encoded batch at the end and index it; return its position.

        On a failed write the file is cut back to its previous size, so no
        partial batch stays behind. ENOSPC raises DiskFullError, any other
        OSError raises StorageError.
        """
        position = self.size
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(self._fd, memoryview(data)[written:], position + written)
        except OSError as exc:
            self._undo_partial_write(position, exc)
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(
                    f"{self.path}: no space left on the device while appending offsets "
                    f"{header.base_offset}..{header.last_offset}; free disk space and retry"
                ) from exc
            raise StorageError(f"{self.path}: write failed at position {position}: {exc}") from exc
        self.size = position + len(data)
        self.track_batch(position, header)
        return position

    def track_batch(self, position: int, header: BatchHeader) -> None:
        """Update offsets, timestamps and indexes for a batch stored at `position`."""
        if self._bytes_since_index_entry == 0 or self._bytes_since_index_entry >= self.index_interval_bytes:
            self.offset_index.append(header.base_offset, position)
            self.time_index.append(header.max_timestamp_ms, header.base_offset)
            self._bytes_since_index_entry = 0
        self._bytes_since_index_entry += header.size
        self.next_offset = header.next_offset
        self.max_timestamp_ms = header.max_timestamp_ms
        self._last_batch = header

    def _undo_partial_write(self, position: int, exc: OSError) -> None:
        try:
            os.ftruncate(self._fd, position)
        except OSError as truncate_exc:
            logger.error(
                "cannot cut %s back to %d bytes after a failed write (%s): %s",
                self.path, position, exc, truncate_exc,
            )

    def read(self, position: int, size: int) -> bytes:
        """Read up to `size` bytes from `position`, stopping at the valid end."""
        size = min(size, self.size - position)
        if size <= 0:
            return b""
        return os.pread(self._fd, size, position)

    def batch_max_timestamp(self, offset: int, *, verify: bool = False) -> int | None:
        """Return the max timestamp in the header of the batch that starts at `offset`, or None when none does.

        Reads batch headers forward from the offset index's position for
        `offset`: a few small preads, because an index entry lies within
        about `index_interval_bytes` of every batch. Used to check time
        index entries, whose timestamps no CRC covers. With `verify`, also
        reads the whole batch and returns None when it fails its CRC.
        """
        position = self.offset_index.lookup(offset)
        while position + HEADER_SIZE <= self.size:
            try:
                header = parse_header(self.read(position, HEADER_SIZE))
            except CorruptRecordError:
                return None
            if header.base_offset >= offset:
                if header.base_offset != offset:
                    return None
                if verify:
                    try:
                        verify_batch(self.read(position, header.size), 0, header)
                    except CorruptRecordError:
                        return None
                return header.max_timestamp_ms
            position += header.size
        return None

    def seal(self) -> None:
        """Index the last batch in the time index so the max timestamp survives a reopen."""
        if self._last_batch is not None:
            self.time_index.append(self._last_batch.max_timestamp_ms, self._last_batch.base_offset)

    def flush(self, *, fsync: bool) -> None:
        """Write pending index entries and, when `fsync` is true, fsync the `.log` file.

        ENOSPC raises DiskFullError, other failures OSError. Entries that were
        not written stay pending for the next call.
        """
        self.offset_index.write_pending()
        self.time_index.write_pending()
        if fsync:
            with files.convert_disk_full(self.path, "syncing the segment to disk"):
                os.fsync(self._fd)

    def truncate(self, size: int) -> None:
        """Cut the `.log` file to `size` bytes (recovery of a torn or corrupt tail)."""
        os.ftruncate(self._fd, size)
        self.size = size

    def reset_indexes(self) -> None:
        """Forget every index entry, before a rebuild by scanning the segment."""
        self.offset_index.offsets.clear()
        self.offset_index.positions.clear()
        self.time_index.timestamps.clear()
        self.time_index.offsets.clear()
        self._bytes_since_index_entry = 0
        self.next_offset = self.base_offset
        self.max_timestamp_ms = None
        self._last_batch = None

    def close(self) -> None:
        """Write pending index entries and close the file (no fsync)."""
        self.flush(fsync=False)
        self._close_fd()

    def delete(self) -> None:
        """Remove the segment's three files; the descriptor closes when the object is freed."""
        for path in (self.path, self.offset_index.path, self.time_index.path):
            path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Segment(base_offset={self.base_offset}, size={self.size}, next_offset={self.next_offset})"
