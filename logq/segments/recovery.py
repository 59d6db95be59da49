"""Recovery of a partition directory when it is opened.

The steps, in order:

1. Remove temporary files left by an interrupted index rewrite.
2. Open every segment, oldest first.
3. For each closed segment, load its indexes and check them against the file;
   rebuild a missing or damaged index by scanning the segment.
4. Scan the active (last) segment batch by batch, checking every CRC, and
   rebuild its indexes on the way. Only the active segment is scanned, so
   opening a large log reads one segment, not all of them.
5. A batch that fails its CRC while an intact batch starts right where its
   header says it ends, with the next offset, stays in place as unreadable,
   and the scan goes on after it. At any other batch that is cut short or
   fails its CRC, truncate the file there when nothing valid follows it (a
   torn tail). When a valid batch follows, the damage is not a torn tail:
   stop with CorruptRecordError rather than drop data that passed its CRC.

Every truncation and rebuild is logged and returned in a `RecoveryReport`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from logq.errors import CorruptIndexError, CorruptRecordError
from logq.segments import files
from logq.segments.batch import HEADER_SIZE, LENGTH_FIELD_END, MAGIC, BatchHeader, parse_header, verify_batch
from logq.segments.segment import Segment

logger = logging.getLogger(__name__)

SCAN_CHUNK_BYTES = 1024 * 1024
MAGIC_BYTE = bytes([MAGIC])
MAGIC_POSITION = LENGTH_FIELD_END  # the magic byte directly follows the length field


@dataclass
class RecoveryReport:
    """Changes that recovery made to one partition directory."""

    truncated_bytes: int = 0
    truncated_at: int | None = None
    rebuilt_indexes: list[str] = field(default_factory=list)
    removed_temp_files: list[str] = field(default_factory=list)


def remove_temp_files(directory: Path, report: RecoveryReport) -> None:
    """Delete `*.tmp` files, which only an interrupted rewrite leaves behind."""
    for path in sorted(directory.glob("*" + files.TEMP_SUFFIX)):
        path.unlink()
        report.removed_temp_files.append(path.name)
        logger.warning("removed leftover temporary file %s", path)


def list_segment_offsets(directory: Path) -> list[int]:
    """Return the base offsets of the segment files in `directory`, ascending."""
    offsets = [files.base_offset_of(path) for path in directory.iterdir()]
    return sorted(offset for offset in offsets if offset is not None)


def scan_segment(segment: Segment) -> tuple[int, CorruptRecordError | None]:
    """Index every valid batch of `segment` from position 0.

    Returns the position where valid data ends and the error that stopped the
    scan there (None when the file ended on a batch boundary).
    """
    segment.reset_indexes()
    file_size = segment.file_size()
    segment.size = file_size
    position = 0
    while position < file_size:
        chunk = segment.read(position, max(SCAN_CHUNK_BYTES, HEADER_SIZE))
        cursor = 0
        try:
            while len(chunk) - cursor >= HEADER_SIZE:
                header = parse_header(chunk, cursor)
                if position + cursor + header.size > file_size:
                    raise CorruptRecordError(
                        f"{segment.path.name}: batch at position {position + cursor} is cut short: "
                        f"{file_size - position - cursor} of {header.size} bytes present"
                    )
                if cursor + header.size > len(chunk):
                    if cursor == 0:
                        chunk = segment.read(position, header.size)
                        continue
                    break
                try:
                    verify_batch(chunk, cursor, header)
                except CorruptRecordError as damage:
                    following = intact_batch_after(segment, position + cursor, header, file_size)
                    if following is None:
                        raise
                    # Its header's extent is confirmed, so the batches after it are kept and this one
                    # stays in place as unreadable. Its own timestamps cannot be trusted.
                    logger.warning(
                        "%s: the batch at position %d (offsets %d..%d) is damaged but the batch after it is "
                        "intact; keeping both, reads of those offsets raise CorruptRecordError: %s",
                        segment.path, position + cursor, header.base_offset, header.last_offset, damage,
                    )
                    header = header._replace(first_timestamp_ms=following.first_timestamp_ms,
                                             max_timestamp_ms=following.first_timestamp_ms)
                _check_continuity(segment, header, position + cursor)
                segment.track_batch(position + cursor, header)
                cursor += header.size
        except CorruptRecordError as exc:
            return position + cursor, exc
        if cursor == 0:
            return position, CorruptRecordError(
                f"{segment.path.name}: {file_size - position} bytes at position {position} "
                "are too short to hold a batch"
            )
        position += cursor
    return position, None


def intact_batch_after(segment: Segment, position: int, header: BatchHeader, file_size: int) -> BatchHeader | None:
    """Return the header of the batch right after the damaged one at `position`, when it confirms its extent.

    The damaged batch's CRC covers its record count and its length, which puts
    the next batch's start. Both count only when a batch that passes its CRC
    starts there with the offset after the damaged batch's last one. Reads and
    recovery share this check.
    """
    start = position + header.size
    if start + HEADER_SIZE > file_size:
        return None
    try:
        following = parse_header(segment.read(start, HEADER_SIZE), 0)
        if following.base_offset != header.next_offset or start + following.size > file_size:
            return None
        verify_batch(segment.read(start, following.size), 0, following)
    except CorruptRecordError:
        return None
    return following


def _check_continuity(segment: Segment, header: BatchHeader, position: int) -> None:
    if header.base_offset != segment.next_offset:
        raise CorruptRecordError(
            f"{segment.path.name}: batch at position {position} has base offset "
            f"{header.base_offset}, expected {segment.next_offset}"
        )


def _valid_batch_follows(segment: Segment, position: int) -> bool:
    """Return True when a CRC-valid batch starts anywhere after the damaged one at `position`.

    Every later byte is a candidate start, because damage in the length or
    magic field hides where the next batch begins. Only batches at or above the
    expected next offset count, so a repeated older batch is still tail garbage.
    NOTE: a torn batch whose value contains an encoded batch at a higher offset
    looks like valid data after the damage, so open raises instead of truncating.
    """
    data = segment.read(position + 1, segment.file_size())
    candidate = data.find(MAGIC_BYTE, MAGIC_POSITION)
    while candidate != -1:
        start = candidate - MAGIC_POSITION
        try:
            header = parse_header(data, start)
            if header.base_offset >= segment.next_offset:
                verify_batch(data, start, header)
                return True
        except CorruptRecordError:
            pass
        candidate = data.find(MAGIC_BYTE, candidate + 1)
    return False


def find_valid_batch(data: bytes | memoryview, start: int, next_offset: int) -> int | None:
    """Return the position of the first CRC-valid batch at or after `start` in `data`, or None.

    Every position is a candidate, as in `_valid_batch_follows`, and only a
    batch whose base offset is at least `next_offset` counts. `logq check`
    uses it on a read-only copy of a segment to find where valid data resumes
    after damage.
    """
    buffer = bytes(data)
    candidate = buffer.find(MAGIC_BYTE, start + MAGIC_POSITION)
    while candidate != -1:
        position = candidate - MAGIC_POSITION
        try:
            header = parse_header(buffer, position)
            if header.base_offset >= next_offset:
                verify_batch(buffer, position, header)
                return position
        except CorruptRecordError:
            pass
        candidate = buffer.find(MAGIC_BYTE, candidate + 1)
    return None


def recover_active_segment(segment: Segment, report: RecoveryReport) -> None:
    """Scan the active segment and truncate a torn or corrupt tail.

    Raises CorruptRecordError when a damaged batch is followed by valid data,
    because truncating there would drop records that passed their CRC.
    """
    valid_end, error = scan_segment(segment)
    if error is not None:
        if _valid_batch_follows(segment, valid_end):
            raise CorruptRecordError(
                f"{segment.path}: the batch at position {valid_end} is damaged ({error}) "
                "but valid batches follow it, and the damage hides where it ends, so logq will neither "
                "truncate nor open the partition. Restore the partition directory from a copy; "
                "`logq check` shows where the valid batches resume"
            )
        dropped = segment.file_size() - valid_end
        segment.truncate(valid_end)
        report.truncated_bytes += dropped
        report.truncated_at = valid_end
        logger.warning(
            "truncated %d bytes of a torn or corrupt tail from %s at position %d: %s",
            dropped, segment.path, valid_end, error,
        )
    segment.seal()
    segment.offset_index.rewrite()
    segment.time_index.rewrite()


def load_closed_segment(segment: Segment, next_base_offset: int, report: RecoveryReport) -> None:
    """Load a closed segment's indexes, rebuilding them when they are damaged."""
    segment.size = segment.file_size()
    segment.next_offset = next_base_offset
    try:
        segment.offset_index.load(segment.size, next_base_offset)
        segment.time_index.load(next_base_offset)
        _check_index_entries(segment)
        _check_last_time_entry(segment)
    except CorruptIndexError as exc:
        logger.warning("rebuilding the indexes of %s: %s", segment.path, exc)
        report.rebuilt_indexes.append(segment.path.name)
        valid_end, error = scan_segment(segment)
        if error is not None or segment.next_offset != next_base_offset:
            raise CorruptRecordError(
                f"{segment.path}: damaged at position {valid_end} while rebuilding its index "
                f"({error}); it ends at offset {segment.next_offset}, the next segment starts at "
                f"{next_base_offset}"
            ) from exc
        segment.seal()
        segment.offset_index.rewrite()
        segment.time_index.rewrite()
    segment.max_timestamp_ms = segment.time_index.max_timestamp_ms


def _check_last_time_entry(segment: Segment) -> None:
    """Check that the last time index entry names its batch's max timestamp, which sets the segment's.

    A lowered timestamp there would make time lookups skip the whole segment.
    """
    index = segment.time_index
    if not index.offsets:
        return
    found = segment.batch_max_timestamp(index.offsets[-1])
    if found is not None and found != index.timestamps[-1]:
        # Tell a damaged batch, which the reads report for that batch only, from a damaged entry.
        found = segment.batch_max_timestamp(index.offsets[-1], verify=True)
    if found is not None and found != index.timestamps[-1]:
        raise CorruptIndexError(
            f"{index.path.name}: the last entry ({index.timestamps[-1]}, {index.offsets[-1]}) does not match "
            f"the batch it names (max timestamp {found})"
        )


def _check_index_entries(segment: Segment) -> None:
    """Check that the first and last offset index entries point at the batches they name."""
    index = segment.offset_index
    if segment.size and not index.offsets:
        raise CorruptIndexError(f"{index.path.name}: empty for a segment of {segment.size} bytes")
    # Without entries the segment has no max timestamp, which age retention
    # and lookups by timestamp need.
    if segment.size and not segment.time_index.offsets:
        raise CorruptIndexError(
            f"{segment.time_index.path.name}: empty for a segment of {segment.size} bytes"
        )
    for slot in {0, len(index.offsets) - 1} if index.offsets else ():
        position = index.positions[slot]
        try:
            header = parse_header(segment.read(position, HEADER_SIZE))
        except CorruptRecordError as exc:
            raise CorruptIndexError(
                f"{index.path.name}: entry {slot} points at position {position}, "
                f"where no batch header is: {exc}"
            ) from exc
        if header.base_offset != index.offsets[slot]:
            raise CorruptIndexError(
                f"{index.path.name}: entry {slot} names offset {index.offsets[slot]}, "
                f"the batch at position {position} starts at {header.base_offset}"
            )
