"""Rules of `logq check` for single files, and the Finding type they produce.

Each rule reads one derived file (an offset or time index, the priority
index, a group snapshot or journal event) and compares it with what a scan of
the segments found. Rules return a description of the problem or None and
change no file. logq.check walks the data directory and calls them.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from logq.consumers.group import Group
from logq.consumers.priority_index import ENTRY as PRIORITY_ENTRY
from logq.consumers.priority_index import PriorityIndex, _Checkpoint
from logq.segments import LogConfig
from logq.segments.batch import BatchHeader
from logq.segments.indexes import OFFSET_ENTRY, TIME_ENTRY

INDEX_INTERVAL_BYTES = LogConfig().index_interval_bytes


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in a file of the data directory.

    `path` is relative to the data directory. `position` is a byte position
    in that file and `offset` a log offset, when they apply. `kind` is a short
    stable name for scripts, such as "torn-tail" or "offset-index".
    """

    path: str
    kind: str
    problem: str
    repairable: bool
    position: int | None = None
    offset: int | None = None
    repaired: bool = False

    def line(self) -> str:
        """Format the finding as one line of `logq check` output."""
        where = [self.path]
        if self.position is not None:
            where.append(f"position {self.position}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.repaired:
            status = "repaired"
        else:
            status = "repairable with --repair" if self.repairable else "not repairable"
        return f"{', '.join(where)}: {self.problem} [{status}]"

    def to_json(self) -> dict[str, Any]:
        """Return the finding as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass
class ScannedBatch:
    position: int
    header: BatchHeader


@dataclass
class PartitionScan:
    """Result of a read-only scan of one partition directory."""

    directory: Path
    log_start: int = 0
    log_end: int = 0
    # Offset and priority of every readable record with priority above 0.
    priorities: dict[int, int] = field(default_factory=dict)
    # Offset and value of every readable record, kept only for journals.
    values: list[tuple[int, bytes]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    segments: int = 0
    batches: int = 0

    @property
    def repairable(self) -> bool:
        """True when every finding of the partition is repairable."""
        return all(finding.repairable for finding in self.findings)


def offset_index_problem(path: Path, base_offset: int, batches: list[ScannedBatch]) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    if len(data) % OFFSET_ENTRY.size:
        return f"size {len(data)} is not a multiple of {OFFSET_ENTRY.size}"
    starts = {batch.position: batch.header.base_offset for batch in batches}
    entries = [(base_offset + relative, position) for relative, position in OFFSET_ENTRY.iter_unpack(data)]
    for slot, (offset, position) in enumerate(entries):
        if starts.get(position) != offset:
            return f"entry {slot} (offset {offset}, position {position}) does not point at a batch with that offset"
        if slot and (offset, position) <= entries[slot - 1]:
            return f"entry {slot} (offset {offset}, position {position}) is not above the entry before it"
    expected = expected_offset_entries(batches)
    if entries != expected:
        return f"has {len(entries)} entries, the segment needs {len(expected)}"
    return None


def expected_offset_entries(batches: list[ScannedBatch]) -> list[tuple[int, int]]:
    """Return the entries that Segment.track_batch writes for `batches`."""
    entries = []
    since_entry = 0
    for batch in batches:
        if since_entry == 0 or since_entry >= INDEX_INTERVAL_BYTES:
            entries.append((batch.header.base_offset, batch.position))
            since_entry = 0
        since_entry += batch.header.size
    return entries


def time_index_problem(path: Path, base_offset: int, batches: list[ScannedBatch], *, closed: bool) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    if len(data) % TIME_ENTRY.size:
        return f"size {len(data)} is not a multiple of {TIME_ENTRY.size}"
    by_offset = {batch.header.base_offset: batch.header for batch in batches}
    entries = [(timestamp, base_offset + relative) for timestamp, relative in TIME_ENTRY.iter_unpack(data)]
    for slot, (timestamp, offset) in enumerate(entries):
        header = by_offset.get(offset)
        if header is None:
            return f"entry {slot} (timestamp {timestamp}, offset {offset}) does not point at a batch start"
        if not header.first_timestamp_ms <= timestamp <= header.max_timestamp_ms:
            return (
                f"entry {slot} has timestamp {timestamp}, outside the timestamps "
                f"{header.first_timestamp_ms}..{header.max_timestamp_ms} of the batch at offset {offset}"
            )
        if slot and (timestamp <= entries[slot - 1][0] or offset <= entries[slot - 1][1]):
            return f"entry {slot} (timestamp {timestamp}, offset {offset}) is not above the entry before it"
    if batches and not entries:
        return "empty for a segment with batches"
    if closed and batches:
        max_timestamp = max(batch.header.max_timestamp_ms for batch in batches)
        if entries[-1][0] != max_timestamp:
            return f"last entry has timestamp {entries[-1][0]}, the segment's max timestamp is {max_timestamp}"
    return None


def priority_index_problem(scan: PartitionScan) -> tuple[str | None, int | None]:
    """Return what is wrong with the priority index of a partition and the byte position, or (None, None)."""
    index_path = scan.directory / PriorityIndex.FILE_NAME
    checkpoint_path = scan.directory / PriorityIndex.CHECKPOINT_FILE_NAME
    if not index_path.exists() or not checkpoint_path.exists():
        present = [path.name for path in (index_path, checkpoint_path) if path.exists()]
        return f"missing (present: {', '.join(present) or 'neither file'})", None

    data = index_path.read_bytes()
    checkpoint_data = checkpoint_path.read_bytes()
    checkpoint = _Checkpoint.decode(checkpoint_data)
    if checkpoint is None:
        return f"{checkpoint_path.name}: its {len(checkpoint_data)} bytes are not a valid version-1 checkpoint", None
    if len(data) < checkpoint.index_bytes or checkpoint.index_bytes % PRIORITY_ENTRY.size:
        return f"size {len(data)} does not hold the {checkpoint.index_bytes} bytes the checkpoint covers", None
    if zlib.crc32(data[: checkpoint.index_bytes]) != checkpoint.index_crc:
        return f"the first {checkpoint.index_bytes} bytes fail the CRC in the checkpoint", None
    if len(data) > checkpoint.index_bytes:
        extra = len(data) - checkpoint.index_bytes
        return f"{extra} bytes after the checkpointed prefix", checkpoint.index_bytes
    if checkpoint.next_offset > scan.log_end:
        return f"checkpoint covers offsets up to {checkpoint.next_offset}, past the log end offset {scan.log_end}", None

    return _priority_entries_problem(scan, data[: checkpoint.index_bytes], checkpoint.next_offset)


def _priority_entries_problem(scan: PartitionScan, prefix: bytes, covered: int) -> tuple[str | None, int | None]:
    """Compare the entries of the checkpointed prefix with the priorities of the log below `covered`."""
    found: set[int] = set()
    previous = -1
    for slot, (offset, priority) in enumerate(PRIORITY_ENTRY.iter_unpack(prefix)):
        position = slot * PRIORITY_ENTRY.size
        if offset <= previous or priority == 0 or offset >= covered:
            return f"entry {slot} (offset {offset}, priority {priority}) is out of order or out of range", position
        previous = offset
        # Entries below the log start offset name records that retention deleted, which is normal.
        if offset >= scan.log_start and scan.priorities.get(offset) != priority:
            return (
                f"entry {slot} gives offset {offset} priority {priority}, "
                f"the log gives {scan.priorities.get(offset, 0)}"
            ), position
        found.add(offset)

    missing = [offset for offset in scan.priorities if scan.log_start <= offset < covered and offset not in found]
    if missing:
        return f"{len(missing)} records with priority above 0 have no entry, the first at offset {min(missing)}", None
    return None, None


def snapshot_problem(snapshot: object) -> str | None:
    """Return what makes a parsed snapshot unusable, or None.

    A snapshot past the journal end is usable: it contains the state, and
    opening the group moves it to the journal end (the snapshot-ahead finding).
    """
    if not isinstance(snapshot, dict):
        return "not a JSON object"
    journal_offset = snapshot.get("journal_offset")
    if not isinstance(journal_offset, int) or isinstance(journal_offset, bool) or journal_offset < 0:
        return "journal_offset is missing or not an integer >= 0"
    if not isinstance(snapshot.get("partitions", []), list):
        return "partitions is not a list"
    unwritten = snapshot.get("unwritten_events", 0)
    if not isinstance(unwritten, int) or isinstance(unwritten, bool) or unwritten < 0:
        return f"unwritten_events is {unwritten!r}, not a count"
    return None


def replay_event(group: Group, value: bytes) -> str | None:
    """Apply one journal record to `group` in memory; return what is wrong with it, or None."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return f"journal record is not JSON ({exc})"
    if not isinstance(event, dict):
        return "journal record is not a JSON object"
    try:
        group._apply(event)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        return f"event {event.get('event')!r} does not apply: {exc!r}"
    return None
