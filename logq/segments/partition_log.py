"""The log of one partition: append, read, roll, flush, retention.

A partition is a directory of segments. Offsets are dense: each append gets
the next offsets after the log end offset. Terms used below:

- log start offset: first offset still on disk (retention moves it forward);
- log end offset: next offset to be written;
- high watermark: end of what readers see. Under `fsync="always"` it is the
  end of what has been fsynced, so no reader sees a message that a crash could
  still lose. Under "interval" and "never" it is the log end offset, because
  those modes accept losing the last moments of writes on a power failure.

A batch of up to 64 KiB that fits the active segment is written from the
event loop, because a write into the page cache costs less than a hop to a
worker thread. Fsyncs, rolls, larger writes and cold reads run in worker
threads (`asyncio.to_thread`), once per batch. Appends are serialized by one
lock per partition; reads take no lock.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from logq.errors import ClosedError, CorruptRecordError, OffsetOutOfRangeError, StorageError
from logq.segments import recovery
from logq.segments.batch import (
    CODEC_NONE,
    HEADER_SIZE,
    BatchHeader,
    Record,
    RecordInput,
    decode_records,
    encode_batch_with_header,
    parse_header,
    verify_batch,
)
from logq.segments.segment import Segment

logger = logging.getLogger(__name__)

FsyncMode = Literal["always", "interval", "never"]

# Batches up to this size are written from the event loop instead of a worker
# thread. The sender waits for the write either way, and the thread adds a hop
# of about 50 µs. An inline write blocks the loop only for the copy into the
# page cache, a median of about 200 µs for 256 KiB on the 2-core benchmark
# machine (docs/benchmarks.md). A batch of 1,000 messages of 100 bytes is about
# 124 KiB, so batched sends stay inline.
# NOTE: a write into the page cache can still block under memory pressure or
# dirty-page throttling; the limit keeps such a stall short.
INLINE_WRITE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Storage settings of one partition.

    `segment_bytes`: roll to a new segment once the active one would pass this
    size. `index_interval_bytes`: bytes of batches between offset index
    entries. `fsync`: "always" (a send returns after an fsync, shared by
    concurrent sends), "interval" (fsync at most every `fsync_interval_ms`
    milliseconds) or "never" (the OS decides). `codec`: batch compression id.
    `retention_bytes` and `retention_ms`: delete the oldest closed segments
    while the partition exceeds this size or their newest record is older than
    this age; None keeps everything. `tail_cache_bytes`: recent batches kept in
    memory to serve readers at the tail without a file read.
    """

    segment_bytes: int = 16 * 1024 * 1024
    index_interval_bytes: int = 4096
    fsync: FsyncMode = "interval"
    fsync_interval_ms: int = 200
    codec: int = CODEC_NONE
    retention_bytes: int | None = None
    retention_ms: int | None = None
    tail_cache_bytes: int = 4 * 1024 * 1024


class _TailCache:
    """Recent batches in memory, ordered by base offset, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.base_offsets: deque[int] = deque()
        self.batches: deque[bytes] = deque()
        self.size = 0

    def add(self, base_offset: int, data: bytes) -> None:
        self.base_offsets.append(base_offset)
        self.batches.append(data)
        self.size += len(data)
        while self.size > self.max_bytes and len(self.batches) > 1:
            self.base_offsets.popleft()
            self.size -= len(self.batches.popleft())

    def find(self, offset: int) -> int | None:
        """Return the slot of the batch that contains `offset`, or None when not cached."""
        if not self.base_offsets or offset < self.base_offsets[0]:
            return None
        slot = bisect.bisect_right(self.base_offsets, offset) - 1
        return slot

    def clear(self) -> None:
        self.base_offsets.clear()
        self.batches.clear()
        self.size = 0


class PartitionLog:
    """Append-only log of one partition, stored as a directory of segments.

    Open it with `PartitionLog.open`, which recovers the directory. Coroutines
    here are safe to call from any task of the event loop that opened it.
    """

    def __init__(self, directory: Path, config: LogConfig, segments: list[Segment]) -> None:
        self.directory = directory
        self.config = config
        self.segments = segments
        self._append_lock = asyncio.Lock()
        self._flushed_offset = self.log_end_offset
        # The log end offset right after recovery. Offsets from here on were written by this
        # process, so state that refers to them from an earlier run refers to a lost tail.
        self.opened_end_offset = self.log_end_offset
        self._flush_task: asyncio.Task[None] | None = None
        self._interval_task: asyncio.Task[None] | None = None
        self._dirty = False
        self._last_timestamp_ms = max((s.max_timestamp_ms or 0) for s in segments)
        # Created by the first waiter, so appends while no task waits build no Event.
        self._data_event: asyncio.Event | None = None
        self._tail = _TailCache(config.tail_cache_bytes)
        self._closed = False
        self._retention_task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        if config.fsync == "interval":
            self._interval_task = loop.create_task(self._flush_periodically())
        if config.retention_ms is not None:
            self._retention_task = loop.create_task(self._apply_retention_periodically())

    # -- opening and closing ------------------------------------------------

    @classmethod
    async def open(cls, directory: Path, config: LogConfig) -> PartitionLog:
        """Open or create the partition at `directory`, recovering it first."""
        segments, report = await asyncio.to_thread(cls._recover, directory, config)
        log = cls(directory, config, segments)
        logger.info(
            "opened partition %s: offsets %d..%d in %d segments, truncated %d bytes, rebuilt %d indexes",
            directory, log.log_start_offset, log.log_end_offset, len(segments),
            report.truncated_bytes, len(report.rebuilt_indexes),
        )
        await log.apply_retention()
        return log

    @staticmethod
    def _recover(directory: Path, config: LogConfig) -> tuple[list[Segment], recovery.RecoveryReport]:
        directory.mkdir(parents=True, exist_ok=True)
        report = recovery.RecoveryReport()
        recovery.remove_temp_files(directory, report)
        base_offsets = recovery.list_segment_offsets(directory)
        if not base_offsets:
            return [Segment.create(directory, 0, index_interval_bytes=config.index_interval_bytes)], report
        segments = [
            Segment(directory, base, index_interval_bytes=config.index_interval_bytes) for base in base_offsets
        ]
        for segment, following in zip(segments, segments[1:]):
            recovery.load_closed_segment(segment, following.base_offset, report)
        recovery.recover_active_segment(segments[-1], report)
        return segments, report

    async def close(self) -> None:
        """Flush and fsync everything written, then close the files.

        Safe to call twice. After it, every call raises ClosedError.
        """
        if self._closed:
            return
        async with self._append_lock:
            self._closed = True
            for task in (self._interval_task, self._retention_task):
                if task is not None:
                    task.cancel()
            if self._flush_task is not None:
                await asyncio.shield(self._flush_task)
            await asyncio.to_thread(self._close_files)
            self._notify_readers()
        logger.info("closed partition %s at log end offset %d", self.directory, self.log_end_offset)

    def _close_files(self) -> None:
        for segment in self.segments:
            segment.flush(fsync=segment is self.active_segment)
            segment.close()

    # -- offsets --------------------------------------------------------------

    @property
    def active_segment(self) -> Segment:
        """The segment that appends go to."""
        return self.segments[-1]

    @property
    def log_start_offset(self) -> int:
        """First offset still stored."""
        return self.segments[0].base_offset

    @property
    def log_end_offset(self) -> int:
        """Offset the next appended record will get."""
        return self.active_segment.next_offset

    @property
    def high_watermark(self) -> int:
        """End of the offsets readers may see (see the module docstring)."""
        if self.config.fsync == "always":
            return self._flushed_offset
        return self.log_end_offset

    @property
    def size_bytes(self) -> int:
        """Bytes of record batches stored in all segments."""
        return sum(segment.size for segment in self.segments)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"partition {self.directory} is closed; open the log again to use it")

    # -- append ---------------------------------------------------------------

    async def append(
        self, records: Sequence[RecordInput], *, on_written: Callable[[int], None] | None = None
    ) -> tuple[int, int]:
        """Append `records` as one batch; return its first offset and the log end offset after it.

        Returns once the batch reached the OS, or, under `fsync="always"`, once
        it is on disk. If the write or a roll fails, no offset is assigned and
        the file is left as before. ENOSPC raises DiskFullError. Under
        `fsync="always"` a failed fsync or index write also raises
        (DiskFullError for ENOSPC), but the batch was already written and
        keeps its offsets, and readers see it once a later flush succeeds.
        Cancelling the caller does not interrupt a write that has started:
        the batch is stored and the cancellation is re-raised, so a cancelled
        append may still be in the log, as with any broker.
        `on_written(base_offset)` runs right after the write, still under the
        append lock, so overlays such as the priority index see appends in
        offset order.
        """
        self._check_open()
        async with self._append_lock:
            self._check_open()
            base_offset = self.log_end_offset
            timestamp_ms = max(time.time_ns() // 1_000_000, self._last_timestamp_ms)
            data, header = encode_batch_with_header(base_offset, records, timestamp_ms=timestamp_ms,
                                                    codec=self.config.codec)
            segment_count = len(self.segments)
            if self._can_write_inline(len(data)):
                # A small write into the page cache takes microseconds, less
                # than the hop to a worker thread; fsyncs and rolls still go
                # to a thread.
                self.active_segment.append(data, header)
                cancelled = False
            else:
                cancelled = await _finish_in_thread(self._write, data, header)
            self._last_timestamp_ms = timestamp_ms
            self._tail.add(base_offset, data)
            self._dirty = True
            if on_written is not None:
                on_written(base_offset)
            end_offset = header.next_offset
            if self.config.fsync != "always":
                self._notify_readers()
        if cancelled:
            raise asyncio.CancelledError
        if len(self.segments) != segment_count:
            await self.apply_retention()
        if self.config.fsync == "always":
            await self._flush_through(end_offset)
        return base_offset, end_offset

    def _can_write_inline(self, size: int) -> bool:
        """Return True when a batch of `size` bytes fits the active segment and is small."""
        active = self.active_segment
        return size <= INLINE_WRITE_BYTES and (active.size == 0 or active.size + size <= self.config.segment_bytes)

    def _write(self, data: bytes, header: BatchHeader) -> None:
        """Roll if the batch does not fit, then write it. Runs in a worker thread."""
        active = self.active_segment
        if active.size > 0 and active.size + len(data) > self.config.segment_bytes:
            self._roll()
        self.active_segment.append(data, header)

    def _roll(self) -> None:
        """Close the active segment and start a new one at the log end offset."""
        old = self.active_segment
        old.seal()
        old.flush(fsync=True)
        new = Segment.create(self.directory, old.next_offset, index_interval_bytes=self.config.index_interval_bytes)
        self.segments.append(new)
        logger.info(
            "rolled partition %s: segment %d closed at %d bytes, new segment %d",
            self.directory, old.base_offset, old.size, new.base_offset,
        )

    # -- durability -----------------------------------------------------------

    async def _flush_through(self, offset: int) -> None:
        """Wait until every offset below `offset` is fsynced (group commit).

        Appends that arrive while an fsync runs wait for the next one, so one
        fsync covers every append that queued behind it.
        """
        while self._flushed_offset < offset:
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = asyncio.get_running_loop().create_task(self._flush_once())
            await asyncio.shield(self._flush_task)

    async def _flush_once(self) -> None:
        # Segments before the active one were fsynced when they rolled, so
        # fsyncing the active segment makes everything below `target` durable.
        segment = self.active_segment
        target = segment.next_offset
        self._dirty = False
        try:
            await asyncio.to_thread(segment.flush, fsync=True)
        except BaseException:
            # The next periodic flush must try again.
            self._dirty = True
            raise
        if target > self._flushed_offset:
            self._flushed_offset = target
            self._notify_readers()

    async def flush(self) -> None:
        """Fsync everything appended so far, whatever the fsync mode."""
        self._check_open()
        await self._flush_through(self.log_end_offset)

    async def _flush_periodically(self) -> None:
        interval = self.config.fsync_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if not self._dirty:
                continue
            try:
                await self._flush_once()
            except (OSError, StorageError) as exc:
                logger.error("periodic fsync of partition %s failed, retrying next interval: %s",
                             self.directory, exc)

    async def _apply_retention_periodically(self) -> None:
        assert self.config.retention_ms is not None
        interval = min(max(self.config.retention_ms / 10_000, 1.0), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.apply_retention()
            except (OSError, StorageError) as exc:
                logger.error("retention of partition %s failed, retrying in %.0f s: %s",
                             self.directory, interval, exc)

    def _notify_readers(self) -> None:
        if self._data_event is not None:
            self._data_event.set()
            self._data_event = None

    async def wait_for_data(self, offset: int, timeout: float | None) -> bool:
        """Wait until the high watermark passes `offset`; return False on timeout.

        `timeout` is in seconds from the call, however often appends below
        `offset` wake the wait; None waits without limit.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.high_watermark <= offset and not self._closed:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            if self._data_event is None:
                self._data_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._data_event.wait(), remaining)
            except TimeoutError:
                return False
        return self.high_watermark > offset

    # -- read -------------------------------------------------------------------

    async def read(self, offset: int, *, max_bytes: int = 1024 * 1024) -> list[Record]:
        """Return records from `offset` on, about `max_bytes` of batches, below the high watermark.

        Returns an empty list at the high watermark. Raises OffsetOutOfRangeError
        below the log start offset or above the log end offset, and
        CorruptRecordError when the batch holding `offset` fails its CRC, does
        not parse or is missing. A damaged batch after `offset` ends the
        returned records early. A batch wholly before `offset` is stepped over
        by its header, so damage to its records fails only reads of its own
        offsets. Damage to its length or magic byte also fails reads of the
        offsets after it, up to the next offset index entry.
        """
        self._check_open()
        end = self.high_watermark
        self._check_offset(offset)
        if offset >= end:
            return []
        cached = self._read_from_tail_cache(offset, end, max_bytes)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self._read_from_segments, offset, end, max_bytes)

    def _check_offset(self, offset: int) -> None:
        if offset < self.log_start_offset or offset > self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside {self.log_start_offset}..{self.log_end_offset} "
                f"(log start offset..log end offset) of partition {self.directory.name}; "
                "read from an offset in that range"
            )

    def _read_from_tail_cache(self, offset: int, end: int, max_bytes: int) -> list[Record] | None:
        slot = self._tail.find(offset)
        if slot is None:
            return None
        records: list[Record] = []
        size = 0
        for data in itertools.islice(self._tail.batches, slot, None):
            header = parse_header(data)
            if header.base_offset >= end or (records and size + len(data) > max_bytes):
                break
            records.extend(r for r in decode_records(data, 0, header) if offset <= r.offset < end)
            size += len(data)
        return records

    def _find_segment(self, offset: int) -> Segment:
        slot = bisect.bisect_right([s.base_offset for s in self.segments], offset) - 1
        return self.segments[max(slot, 0)]

    def _read_from_segments(self, offset: int, end: int, max_bytes: int) -> list[Record]:
        """Read batches from the segment holding `offset`. Runs in a worker thread.

        Checks that each batch starts where the one before it ended, because
        the CRC does not cover the base offset, and a damaged length or count
        in a batch that is stepped over shows up as a gap there.
        """
        segment = self._find_segment(offset)
        expected, position = _index_entry_at_or_below(segment, offset)
        if position and _base_offset_at(segment, position) != expected:
            # Open checks only the first and last index entries, so a damaged
            # entry in between can point at the wrong batch.
            logger.error(
                "offset index %s maps offset %d to position %d, where no batch header with that base "
                "offset starts, so the index entry or that batch header is damaged; reading the segment "
                "from its start instead. If the index is damaged, delete it and reopen the partition to "
                "rebuild it",
                segment.offset_index.path, expected, position,
            )
            expected, position = segment.base_offset, 0
        records: list[Record] = []
        while not records and position < segment.size:
            chunk = segment.read(position, max(max_bytes, HEADER_SIZE))
            if len(chunk) >= HEADER_SIZE:
                needed = _parse_header_in(segment, chunk, 0, position).size
                if needed > len(chunk):
                    chunk = segment.read(position, needed)
            cursor = 0
            while len(chunk) - cursor >= HEADER_SIZE:
                try:
                    header = _parse_header_in(segment, chunk, cursor, position + cursor)
                except CorruptRecordError:
                    if records:
                        return records
                    raise
                if cursor + header.size > len(chunk):
                    break
                if header.base_offset != expected:
                    if records:
                        return records
                    if expected + header.record_count <= offset and _crc_matches(chunk, cursor, header):
                        # Only the base offset, which the CRC does not cover,
                        # is damaged, and the batch lies wholly below `offset`.
                        expected += header.record_count
                        cursor += header.size
                        continue
                    raise CorruptRecordError(
                        f"{segment.path}: the batch at position {position + cursor} starts at offset "
                        f"{header.base_offset}, expected {expected}; a batch header there or before it "
                        f"is damaged, so offset {offset} cannot be read",
                        path=segment.path,
                    )
                expected = header.next_offset
                if header.next_offset <= offset:
                    # Wholly below the requested offset: step over it without
                    # checking its CRC, so that damage inside it does not make
                    # the batches after it unreadable.
                    cursor += header.size
                    continue
                if header.base_offset >= end:
                    break
                try:
                    verify_batch(chunk, cursor, header)
                    decoded = decode_records(chunk, cursor, header)
                except CorruptRecordError as exc:
                    if records:
                        # Return the valid records before the damage. The next
                        # read starts at the damaged batch and raises there.
                        return records
                    raise CorruptRecordError(
                        f"{segment.path}: offsets {header.base_offset}..{header.last_offset} at file position "
                        f"{position + cursor} cannot be read: {exc}",
                        path=segment.path, offsets=self._confirmed_offsets(segment, position + cursor, header),
                    ) from exc
                records.extend(r for r in decoded if offset <= r.offset < end)
                cursor += header.size
            if cursor == 0:
                break
            position += cursor
        if not records:
            # Every offset below `end` was written to this segment, so the
            # file was cut short or damaged where the batch should be.
            raise CorruptRecordError(
                f"{segment.path}: offset {offset} is missing. No complete batch from position "
                f"{position} to the end of the file ({segment.size} bytes) holds it",
                path=segment.path,
            )
        return records

    def _confirmed_offsets(self, segment: Segment, position: int, header: BatchHeader) -> range | None:
        """Return the offsets of a batch that failed its CRC, or None when its header cannot be trusted.

        The CRC covers the record count and the length, so either may be the
        damaged field. The range counts only when the next segment, or an
        intact next batch, starts where this header puts the batch's end.
        """
        if position + header.size == segment.size:
            following = next((s for s in self.segments if s.base_offset > segment.base_offset), None)
            confirmed = following is not None and following.base_offset == header.next_offset
        else:
            try:
                confirmed = recovery.intact_batch_after(segment, position, header, segment.size) is not None
            except OSError:
                confirmed = False
        return range(header.base_offset, header.next_offset) if confirmed else None

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        """Return an offset at or before the first record whose timestamp is >= `timestamp_ms`.

        Returns the log end offset when every record is older. The caller skips
        records older than `timestamp_ms` while reading from the returned offset.
        """
        self._check_open()
        for segment in self.segments:
            if segment.max_timestamp_ms is not None and segment.max_timestamp_ms >= timestamp_ms:
                entry = segment.time_index.entry_before(timestamp_ms)
                if entry is None:
                    return segment.base_offset
                if segment.batch_max_timestamp(entry[1]) == entry[0]:
                    return entry[1]
                # The checks on open cannot see a timestamp that was lowered but kept the
                # order, and trusting it could skip records, so the scan starts at the segment.
                logger.warning("time index entry (%d, %d) of %s does not match its batch; "
                               "looking up timestamp %d from the segment start", entry[0], entry[1],
                               segment.path, timestamp_ms)
                return segment.base_offset
        return self.log_end_offset

    # -- retention ---------------------------------------------------------------

    async def apply_retention(self) -> list[int]:
        """Delete the oldest closed segments beyond the size or age limits; return their base offsets."""
        if self.config.retention_bytes is None and self.config.retention_ms is None:
            return []
        async with self._append_lock:
            doomed = self._segments_past_retention()
            await self._remove_front_segments(doomed)
        return [segment.base_offset for segment in doomed]

    async def delete_segments_before(self, offset: int) -> int:
        """Delete the closed segments whose records all lie below `offset`; return how many."""
        async with self._append_lock:
            doomed = [segment for segment in self.segments[:-1] if segment.next_offset <= offset]
            await self._remove_front_segments(doomed)
        return len(doomed)

    async def _remove_front_segments(self, doomed: list[Segment]) -> None:
        """Drop `doomed`, a prefix of the segment list. Call with the append lock held."""
        if doomed:
            self.segments = self.segments[len(doomed):]
            await asyncio.to_thread(self._delete_segments, doomed)

    def _segments_past_retention(self) -> list[Segment]:
        now_ms = time.time_ns() // 1_000_000
        total = self.size_bytes
        doomed: list[Segment] = []
        for segment in self.segments[:-1]:
            too_big = self.config.retention_bytes is not None and total - segment.size >= self.config.retention_bytes
            too_old = (
                self.config.retention_ms is not None
                and segment.max_timestamp_ms is not None
                and now_ms - segment.max_timestamp_ms > self.config.retention_ms
            )
            if not (too_big or too_old):
                break
            doomed.append(segment)
            total -= segment.size
        return doomed

    def _delete_segments(self, doomed: list[Segment]) -> None:
        for segment in doomed:
            segment.delete()
            logger.info(
                "retention deleted segment %d of partition %s (%d bytes, offsets %d..%d)",
                segment.base_offset, self.directory, segment.size, segment.base_offset, segment.next_offset - 1,
            )


def _index_entry_at_or_below(segment: Segment, offset: int) -> tuple[int, int]:
    """Return (base offset, position) of the batch where a scan for `offset` starts, from the offset index."""
    index = segment.offset_index
    slot = bisect.bisect_right(index.offsets, offset) - 1
    if slot < 0:
        return segment.base_offset, 0
    return index.offsets[slot], index.positions[slot]


def _parse_header_in(segment: Segment, chunk: bytes, cursor: int, file_position: int) -> BatchHeader:
    """Parse the batch header at `cursor` of `chunk`, read from `file_position` of `segment`.

    Raises CorruptRecordError naming the segment file and the position in it.
    """
    try:
        return parse_header(chunk, cursor)
    except CorruptRecordError as exc:
        raise CorruptRecordError(
            f"{segment.path}: the batch header at file position {file_position} is damaged: {exc}",
            path=segment.path,
        ) from exc


def _crc_matches(chunk: bytes, position: int, header: BatchHeader) -> bool:
    """Return True when the batch at `position` of `chunk` passes its CRC check."""
    try:
        verify_batch(chunk, position, header)
    except CorruptRecordError:
        return False
    return True


def _base_offset_at(segment: Segment, position: int) -> int | None:
    """Return the base offset of the batch header at `position`, or None when none parses there."""
    try:
        return parse_header(segment.read(position, HEADER_SIZE)).base_offset
    except CorruptRecordError:
        return None


async def _finish_in_thread(function: Callable[..., object], *args: object) -> bool:
    """Run `function` in a worker thread to the end, even if the caller is cancelled.

    Returns True when a cancellation arrived meanwhile, so the caller can finish
    its bookkeeping for the completed write before re-raising it.
    """
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    cancelled = False
    while True:
        try:
            await asyncio.shield(future)
            return cancelled
        except asyncio.CancelledError:
            if future.done():
                future.result()
                return True
            cancelled = True
