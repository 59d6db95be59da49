"""Priority index of one partition: per-level offset lists over the log.

Records carry a priority from 0 to 255, where 0 is the default and higher is
more urgent. For each level above 0 the index keeps the offsets of the records
with that priority in ascending order. A consumer group then finds the most
urgent ready message with one binary search per level, FIFO within a level.
Records of priority 0 get no entry, because a group reads them from the log in
order.

Two files sit beside the segments in the partition directory. All integers
are big-endian.

`priority.index` is a sequence of 9-byte entries, appended in offset order.
Offsets strictly increase from one entry to the next, across all levels:

    position  size  field
    0         8     offset of a record with priority above 0 (uint64)
    8         1     priority of that record, 1..255 (uint8)

`priority.checkpoint` is 25 bytes, replaced atomically (temporary file,
fsync, rename):

    position  size  field
    0         1     version, 1 (uint8)
    1         8     next offset: the index file has an entry for every record
                    with priority above 0 below this log offset (uint64)
    9         8     index bytes: length of the index file prefix that
                    contains those entries, a multiple of 9 (uint64)
    17        4     CRC-32 (zlib polynomial) of that prefix (uint32)
    21        4     CRC-32 of the 21 bytes before it (uint32)

A flush writes new entries at the end of the checkpointed prefix and fsyncs
the index file before it replaces the checkpoint, so the checkpoint never
covers bytes that are not on disk. When more than half of the file's entries
were discarded (they lie below the log start offset), a flush rewrites the
whole file instead.

Neither file is trusted after a crash. `PriorityIndex.open` checks them
against each other and against the log, in this order:

1. Rebuild from the whole log when either file is missing, the checkpoint is
   not a valid version-1 checkpoint, or the index file is shorter than the
   checkpointed prefix or that prefix fails its CRC.
2. Drop the bytes past the checkpointed prefix. A flush that did not finish
   leaves them, and step 4 reads their records from the log again.
3. Drop entries at or above the log end offset (recovery truncated the log)
   and entries out of order, with priority 0 or at or above the checkpoint's
   next offset. Forget entries below the log start offset (retention deleted
   their records).
4. Catch up: read the log from the checkpoint's next offset to the high
   watermark and add every record with priority above 0.
5. Flush. The index file is rewritten when steps 1 to 3 dropped anything
   other than forgotten entries. Forgotten entries stay in the file until
   discarded entries make up more than half of it. Otherwise the entries
   found in step 4 are written after the prefix. The checkpoint is replaced
   whenever the file or its next offset changed.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar, overload

from logq.errors import (
    ClosedError,
    CorruptIndexError,
    DiskFullError,
    InvalidArgumentError,
    OffsetOutOfRangeError,
    StorageError,
)
from logq.segments import PartitionLog
from logq.segments.files import convert_disk_full, write_file_atomically

logger = logging.getLogger(__name__)

ENTRY: Final = struct.Struct(">QB")
CHECKPOINT_FIELDS: Final = struct.Struct(">BQQI")
CHECKPOINT_CRC: Final = struct.Struct(">I")
CHECKPOINT_VERSION: Final = 1
MAX_PRIORITY: Final = 255
CATCH_UP_READ_BYTES: Final = 1024 * 1024

_Result = TypeVar("_Result")


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """Contents of `priority.checkpoint`, which marks how much of the index file is complete."""

    next_offset: int
    index_bytes: int
    index_crc: int

    def encode(self) -> bytes:
        fields = CHECKPOINT_FIELDS.pack(CHECKPOINT_VERSION, self.next_offset, self.index_bytes, self.index_crc)
        return fields + CHECKPOINT_CRC.pack(zlib.crc32(fields))

    @classmethod
    def decode(cls, data: bytes) -> _Checkpoint | None:
        """Return the checkpoint stored in `data`, or None when it is not a valid version-1 checkpoint."""
        if len(data) != CHECKPOINT_FIELDS.size + CHECKPOINT_CRC.size:
            return None
        fields = data[: CHECKPOINT_FIELDS.size]
        (crc,) = CHECKPOINT_CRC.unpack_from(data, CHECKPOINT_FIELDS.size)
        version, next_offset, index_bytes, index_crc = CHECKPOINT_FIELDS.unpack(fields)
        if crc != zlib.crc32(fields) or version != CHECKPOINT_VERSION:
            return None
        return cls(next_offset, index_bytes, index_crc)


@dataclass
class _LoadedIndex:
    """Entries read from the files on open, with counts of what was dropped."""

    checkpoint: _Checkpoint
    entries: list[tuple[int, int]]
    dropped_tail_bytes: int = 0
    below_start: int = 0
    at_or_above_end: int = 0
    invalid: int = 0

    @property
    def file_entries(self) -> int:
        """Number of entries in the checkpointed prefix of the index file."""
        return self.checkpoint.index_bytes // ENTRY.size

    @property
    def trimmed(self) -> bool:
        """True when the index file contains bytes or entries that must not stay in it."""
        return bool(self.dropped_tail_bytes or self.at_or_above_end or self.invalid)


class OffsetsView(Sequence[int]):
    """Read-only view of the offsets of one level, ascending.

    The view follows the index as entries are added and discarded. Copy it
    with `list()` to keep the offsets of one moment.
    """

    __slots__ = ("_offsets",)

    def __init__(self, offsets: list[int]) -> None:
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, item: int) -> int: ...

    @overload
    def __getitem__(self, item: slice) -> list[int]: ...

    def __getitem__(self, item: int | slice) -> int | list[int]:
        return self._offsets[item]

    def __iter__(self) -> Iterator[int]:
        return iter(self._offsets)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        slot = bisect.bisect_left(self._offsets, value)
        return slot < len(self._offsets) and self._offsets[slot] == value

    def __repr__(self) -> str:
        return f"OffsetsView({self._offsets!r})"


class PriorityIndex:
    """Offsets of the records with priority above 0 in one partition, per level.

    Open it with `PriorityIndex.open` before the log takes appends, then call
    `add` for every appended record and `flush` from time to time. Lookups
    and `add` run on the event loop in O(log n) or less. `discard_below` takes
    time linear in the entries it keeps, because it deletes a list prefix.
    """

    FILE_NAME = "priority.index"
    CHECKPOINT_FILE_NAME = "priority.checkpoint"

    def __init__(self, log: PartitionLog) -> None:
        self._log = log
        self.directory = log.directory
        self._levels: dict[int, list[int]] = {}
        self._urgent_first: list[int] = []
        self._entry_count = 0
        # The log offset after the last record added or read. The next
        # checkpoint covers everything below it.
        self._next_offset = log.log_start_offset
        # Packed entries not yet in the index file, in offset order.
        self._unwritten: list[bytes] = []
        self._checkpoint = _Checkpoint(next_offset=-1, index_bytes=0, index_crc=0)
        self._file_entries = 0
        self._needs_rewrite = True
        self._flush_lock = asyncio.Lock()
        self._closed = False

    # -- opening and closing ------------------------------------------------

    @classmethod
    async def open(cls, log: PartitionLog) -> PriorityIndex:
        """Load the index of `log` from log.directory, repair it, and catch up with the log.

        Damaged index files never make it raise, because it rebuilds them from
        the log and logs why. It raises what `log.read` raises (a corrupt record
        batch), StorageError when the log returns no records below its high
        watermark, DiskFullError when the disk is full and OSError when the
        repaired files cannot be written for another reason. A
        cancelled open leaves the files as a crash would, and the next open
        repairs them.
        NOTE: open the index every time the log is opened, before it takes
        appends. If the log drops its tail in recovery and reuses those offsets
        while no index is open, the old entries for them look valid.
        """
        index = cls(log)
        log_start = log.log_start_offset
        try:
            loaded = await asyncio.to_thread(_load_files, index.directory, log_start, log.log_end_offset)
        except CorruptIndexError as exc:
            await index._rebuild(f"damaged: {exc}", logging.WARNING)
        else:
            if loaded is None:
                await index._rebuild(f"{cls.FILE_NAME} is missing", logging.INFO)
            else:
                await index._restore(loaded)
        await index.flush()
        logger.info(
            "opened the priority index of %s: %d entries in levels %s, complete below offset %d",
            index.directory, index._entry_count, index._urgent_first, index._next_offset,
        )
        return index

    async def _rebuild(self, reason: str, level: int) -> None:
        self._needs_rewrite = True
        start = self._log.log_start_offset
        end, added = await self._catch_up(start)
        logger.log(
            level, "rebuilt the priority index of %s from the log (%s): read offsets [%d, %d), %d entries",
            self.directory, reason, start, end, added,
        )

    async def _restore(self, loaded: _LoadedIndex) -> None:
        for offset, priority in loaded.entries:
            self._insert(offset, priority)
        self._unwritten.clear()
        self._checkpoint = loaded.checkpoint
        self._file_entries = loaded.file_entries
        self._needs_rewrite = loaded.trimmed
        self._log_trims(loaded)
        # Every kept entry lies below both the checkpoint's next offset and
        # the log end offset, so catching up from here keeps offsets ascending.
        log_start, log_end = self._log.log_start_offset, self._log.log_end_offset
        start = min(max(loaded.checkpoint.next_offset, log_start), log_end)
        self._next_offset = start
        end, added = await self._catch_up(start)
        if end > start:
            logger.info(
                "priority index of %s caught up with the log: read offsets [%d, %d), added %d entries",
                self.directory, start, end, added,
            )

    def _log_trims(self, loaded: _LoadedIndex) -> None:
        if loaded.trimmed:
            logger.warning(
                "trimmed the priority index of %s: dropped %d bytes past the checkpoint, %d entries at or "
                "above the log end offset %d, and %d entries out of order or with priority 0",
                self.directory, loaded.dropped_tail_bytes, loaded.at_or_above_end,
                self._log.log_end_offset, loaded.invalid,
            )
        if loaded.below_start:
            logger.info(
                "priority index of %s: forgot %d entries below the log start offset %d",
                self.directory, loaded.below_start, self._log.log_start_offset,
            )

    async def _catch_up(self, start: int) -> tuple[int, int]:
        """Add the log's records with priority above 0 from `start` to the high watermark.

        Returns the offset where reading stopped and the number of entries added.
        """
        offset = start
        added = 0
        while offset < self._log.high_watermark:
            try:
                records = await self._log.read(offset, max_bytes=CATCH_UP_READ_BYTES)
            except OffsetOutOfRangeError:
                # Retention deleted the segment being read, so its records need no entries.
                if offset >= self._log.log_start_offset:
                    raise
                offset = self._log.log_start_offset
                continue
            if not records:
                raise StorageError(
                    f"the priority index of {self.directory} cannot catch up: reading offset {offset} "
                    f"returned no records below the high watermark {self._log.high_watermark}. Reopen the "
                    "partition, which runs its recovery, and report the error if it repeats"
                )
            for record in records:
                if record.priority:
                    self._insert(record.offset, record.priority)
                    added += 1
            offset = records[-1].offset + 1
        self._next_offset = max(self._next_offset, offset)
        return offset, added

    async def close(self) -> None:
        """Flush the index and mark it closed. Safe to call twice. After it, `add` raises ClosedError.

        If the flush fails, the index stays open and close may be called again.
        """
        if self._closed:
            return
        await self.flush()
        self._closed = True
        logger.info("closed the priority index of %s at offset %d", self.directory, self._next_offset)

    # -- entries ----------------------------------------------------------------

    def add(self, offset: int, priority: int) -> None:
        """Record the message appended at `offset` with `priority`.

        Call it on the event loop right after the append returned, for every
        appended record in offset order. A record of priority 0 gets no entry,
        but adding it lets the next checkpoint cover its offset, so the next
        open reads less of the log. Raises InvalidArgumentError for a priority
        outside 0..255 or an offset below one already added, and ClosedError
        after `close`.
        """
        if self._closed:
            raise ClosedError(f"the priority index of {self.directory} is closed. Open it again to add entries")
        if not 0 <= priority <= MAX_PRIORITY:
            raise InvalidArgumentError(f"priority {priority} is invalid. Use an integer from 0 to {MAX_PRIORITY}")
        if offset < self._next_offset:
            raise InvalidArgumentError(
                f"offset {offset} is below {self._next_offset}, the lowest offset the priority index of "
                f"{self.directory} accepts next. Add each appended record once, in offset order"
            )
        self._next_offset = offset + 1
        if priority:
            self._insert(offset, priority)

    def cover(self, next_offset: int) -> None:
        """Record that every offset below `next_offset` was appended and its urgent records added.

        The bulk form of `add` for the priority-0 records of a batch: it costs
        O(1), and lets the next checkpoint cover them, so the next open does
        not read them again. Lower values than the current one are ignored.
        """
        if next_offset > self._next_offset:
            self._next_offset = next_offset

    def uncheckpointed_offsets(self) -> int:
        """Return how many offsets were covered since the last checkpoint, which an open after a crash reads again."""
        return self._next_offset - self._checkpoint.next_offset

    def _insert(self, offset: int, priority: int) -> None:
        """Append an entry above every indexed offset and queue it for the index file."""
        level = self._levels.setdefault(priority, [])
        if not level:
            self._urgent_first.append(priority)
            self._urgent_first.sort(reverse=True)
        level.append(offset)
        self._entry_count += 1
        self._unwritten.append(ENTRY.pack(offset, priority))

    def levels(self) -> list[int]:
        """Return the levels above 0 that have entries, most urgent first."""
        return list(self._urgent_first)

    def first_at_or_after(self, level: int, offset: int) -> int | None:
        """Return the lowest indexed offset >= `offset` at `level`, or None. O(log n)."""
        offsets = self._levels.get(_check_level(level), [])
        slot = bisect.bisect_left(offsets, offset)
        return offsets[slot] if slot < len(offsets) else None

    def offsets(self, level: int) -> Sequence[int]:
        """Return the indexed offsets of one level, ascending, as a read-only view."""
        return OffsetsView(self._levels.setdefault(_check_level(level), []))

    def discard_below(self, offset: int) -> None:
        """Forget entries below `offset` (after retention moved the log start offset).

        The index file keeps them until a flush finds that they make up more
        than half of it and rewrites it.
        """
        for priority in list(self._urgent_first):
            level = self._levels[priority]
            count = bisect.bisect_left(level, offset)
            if count:
                del level[:count]
                self._entry_count -= count
            if not level:
                self._urgent_first.remove(priority)

    # -- files ------------------------------------------------------------------

    async def flush(self) -> None:
        """Write entries added since the last flush to the file (in a worker thread) and update the checkpoint.

        Safe from any task, because concurrent flushes run one at a time. A
        cancelled flush waits for its file writes to end before it re-raises,
        and the next flush writes the same entries again, which is harmless.
        When a write fails, the next flush rewrites both files from memory.
        ENOSPC raises DiskFullError, other write failures raise OSError.
        """
        async with self._flush_lock:
            try:
                with convert_disk_full(self.directory / self.FILE_NAME, "flushing the priority index"):
                    if self._needs_rewrite or self._stale_entries() * 2 > self._file_entries + len(self._unwritten):
                        await self._rewrite_files()
                    elif self._unwritten or self._next_offset != self._checkpoint.next_offset:
                        await self._append_unwritten()
            except (OSError, DiskFullError):
                self._needs_rewrite = True
                raise

    def _stale_entries(self) -> int:
        """Count the entries in the index file, or waiting for it, that `discard_below` dropped."""
        return self._file_entries + len(self._unwritten) - self._entry_count

    async def _append_unwritten(self) -> None:
        count = len(self._unwritten)
        data = b"".join(self._unwritten[:count])
        checkpoint = _Checkpoint(
            next_offset=self._next_offset,
            index_bytes=self._checkpoint.index_bytes + len(data),
            index_crc=zlib.crc32(data, self._checkpoint.index_crc),
        )
        await _run_to_end(_write_entries, self.directory, self._checkpoint.index_bytes, data, checkpoint)
        del self._unwritten[:count]
        self._file_entries += count
        self._checkpoint = checkpoint

    async def _rewrite_files(self) -> None:
        count = len(self._unwritten)
        levels = {priority: list(level) for priority, level in self._levels.items() if level}
        entry_count = self._entry_count
        checkpoint = await _run_to_end(_rewrite_index_file, self.directory, levels, self._next_offset)
        del self._unwritten[:count]
        self._file_entries = entry_count
        self._checkpoint = checkpoint
        self._needs_rewrite = False
        logger.debug("rewrote the priority index of %s: %d entries", self.directory, entry_count)


def _check_level(level: int) -> int:
    if not 1 <= level <= MAX_PRIORITY:
        raise InvalidArgumentError(
            f"priority level {level} is invalid. The index contains levels 1 to {MAX_PRIORITY}, "
            "and records of priority 0 are read from the log in order"
        )
    return level


async def _run_to_end(function: Callable[..., _Result], *args: object) -> _Result:
    """Run `function` in a worker thread, and on cancellation wait for the thread before re-raising.

    A thread cannot be stopped, so the flush lock stays held until it ends and
    two writes of the index files never overlap. Further cancellations while
    it waits are absorbed, and the first one is re-raised at the end.
    """
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait({future})
            except asyncio.CancelledError:
                continue
        raise


def _load_files(directory: Path, log_start: int, log_end: int) -> _LoadedIndex | None:
    """Read both files and check them against the log's offsets. Runs in a worker thread.

    Returns None when both files are missing, as in a new partition. Raises
    CorruptIndexError when the files must be rebuilt from the log.
    """
    index_path = directory / PriorityIndex.FILE_NAME
    checkpoint_path = directory / PriorityIndex.CHECKPOINT_FILE_NAME
    try:
        index_data = index_path.read_bytes()
    except FileNotFoundError as exc:
        if not checkpoint_path.exists():
            return None
        raise CorruptIndexError(f"{index_path.name} is missing, but {checkpoint_path.name} exists") from exc
    except OSError as exc:
        raise CorruptIndexError(f"{index_path.name}: read failed: {exc}") from exc
    try:
        checkpoint_data = checkpoint_path.read_bytes()
    except OSError as exc:
        raise CorruptIndexError(f"{checkpoint_path.name}: read failed: {exc}") from exc
    checkpoint = _Checkpoint.decode(checkpoint_data)
    if checkpoint is None:
        raise CorruptIndexError(
            f"{checkpoint_path.name}: its {len(checkpoint_data)} bytes are not a valid version-1 checkpoint"
        )
    _check_prefix(index_path.name, index_data, checkpoint)
    loaded = _LoadedIndex(checkpoint, entries=[], dropped_tail_bytes=len(index_data) - checkpoint.index_bytes)
    _keep_valid_entries(loaded, memoryview(index_data)[: checkpoint.index_bytes], log_start, log_end)
    return loaded


def _check_prefix(name: str, index_data: bytes, checkpoint: _Checkpoint) -> None:
    """Raise CorruptIndexError unless `index_data` starts with the prefix the checkpoint describes."""
    if len(index_data) < checkpoint.index_bytes:
        raise CorruptIndexError(
            f"{name}: size {len(index_data)} is below {checkpoint.index_bytes}, the size in the checkpoint"
        )
    if checkpoint.index_bytes % ENTRY.size:
        raise CorruptIndexError(
            f"{name}: the checkpointed size {checkpoint.index_bytes} is not a multiple of {ENTRY.size}"
        )
    crc = zlib.crc32(memoryview(index_data)[: checkpoint.index_bytes])
    if crc != checkpoint.index_crc:
        raise CorruptIndexError(
            f"{name}: CRC-32 of the first {checkpoint.index_bytes} bytes is {crc:#010x}, "
            f"the checkpoint expects {checkpoint.index_crc:#010x}"
        )


def _keep_valid_entries(loaded: _LoadedIndex, data: memoryview, log_start: int, log_end: int) -> None:
    """Fill `loaded.entries` with the entries of `data` that name records still in the log."""
    end = min(log_end, loaded.checkpoint.next_offset)
    previous = -1
    for offset, priority in ENTRY.iter_unpack(data):
        if offset <= previous or priority == 0:
            loaded.invalid += 1
            continue
        previous = offset
        if offset < log_start:
            loaded.below_start += 1
        elif offset >= log_end:
            loaded.at_or_above_end += 1
        elif offset >= end:
            loaded.invalid += 1
        else:
            loaded.entries.append((offset, priority))


def _write_entries(directory: Path, position: int, data: bytes, checkpoint: _Checkpoint) -> None:
    """Write `data` at `position` of the index file, then replace the checkpoint. Runs in a worker thread.

    Writing at the checkpointed size, rather than appending, overwrites what
    an unfinished earlier write left after it.
    """
    with open(directory / PriorityIndex.FILE_NAME, "r+b") as handle:
        handle.seek(position)
        handle.write(data)
        handle.truncate()
        handle.flush()
        # The entries must be on disk before a checkpoint that covers them.
        os.fsync(handle.fileno())
    write_file_atomically(directory / PriorityIndex.CHECKPOINT_FILE_NAME, checkpoint.encode())


def _rewrite_index_file(directory: Path, levels: dict[int, list[int]], next_offset: int) -> _Checkpoint:
    """Replace the index file with the entries of `levels`, then the checkpoint. Runs in a worker thread.

    After a crash between the two replacements, the old checkpoint either
    describes a prefix of the new file, which is then correct, or fails its
    size or CRC check, and the next open rebuilds the index from the log.
    """
    per_level = [zip(offsets, itertools.repeat(priority)) for priority, offsets in levels.items()]
    data = b"".join(ENTRY.pack(offset, priority) for offset, priority in heapq.merge(*per_level))
    write_file_atomically(directory / PriorityIndex.FILE_NAME, data)
    checkpoint = _Checkpoint(next_offset=next_offset, index_bytes=len(data), index_crc=zlib.crc32(data))
    write_file_atomically(directory / PriorityIndex.CHECKPOINT_FILE_NAME, checkpoint.encode())
    return checkpoint
