"""Offline consistency check and repair of a data directory (`logq check`).

This module owns the checks of every file logq writes (docs/format.md) and the
choice of which damage `--repair` may fix. It reads segments, indexes,
priority index files, group journals and snapshots with plain read-only file
access. It holds the data-directory lock for the whole run, so a directory
that another process has open raises DataDirLockedError instead of racing it.
Without --repair the lock is shared and taken on the existing lock file
opened read-only, so a check writes, creates and removes nothing and works on
a read-only mount or snapshot. --repair takes the exclusive lock.

The rules for single derived files are in logq.check_files, and the repairs
in logq.check_repair. Repairs reuse the code that opening a directory runs
and never drop a batch that passed its CRC. Damage followed by valid batches
is reported and left alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from logq.check_files import (
    Finding,
    PartitionScan,
    ScannedBatch,
    offset_index_problem,
    priority_index_problem,
    replay_event,
    snapshot_problem,
    time_index_problem,
)
from logq.check_repair import repair as repair_findings
from logq.consumers.config import CONFIG_FILE_NAME, GroupConfig
from logq.consumers.group import Group
from logq.consumers.journal import JOURNAL_DIR_NAME, SNAPSHOT_FILE_NAME
from logq.consumers.priority_index import PriorityIndex
from logq.errors import CorruptRecordError, NotFoundError, StorageError
from logq.segments import DataDirLock, files
from logq.segments.batch import BatchHeader, decode_records, parse_header, verify_batch
from logq.segments.recovery import find_valid_batch
from logq.topics import CONFIG_FILE_NAME as TOPIC_CONFIG_FILE_NAME
from logq.topics import TopicConfig

__all__ = ["CheckReport", "Finding", "check"]

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """Result of `check`: what was found, what was repaired and what remains.

    `findings` lists what the first pass found, with `repaired` set on each
    finding that a repair fixed. `remaining` lists what a second pass still
    finds after the repairs, or equals `findings` without --repair.
    """

    path: Path
    repair: bool
    findings: list[Finding] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)
    partitions: int = 0
    segments: int = 0
    batches: int = 0
    groups: int = 0

    @property
    def clean(self) -> bool:
        """True when no finding remains."""
        return not self.remaining

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "path": str(self.path),
            "repair": self.repair,
            "clean": self.clean,
            "partitions": self.partitions,
            "segments": self.segments,
            "batches": self.batches,
            "groups": self.groups,
            "findings": [finding.to_json() for finding in self.findings],
            "remaining": [finding.to_json() for finding in self.remaining],
        }


class _Inspection:
    """One read-only pass over a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.findings: list[Finding] = []
        self.partitions: dict[Path, PartitionScan] = {}
        self.topic_ends: dict[tuple[str, int], int] = {}
        self.groups = 0

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def add(self, path: Path, kind: str, problem: str, repairable: bool, **where: int | None) -> Finding:
        finding = Finding(self.relative(path), kind, problem, repairable, **where)
        self.findings.append(finding)
        return finding

    def run(self) -> None:
        self.check_staging()
        topics_dir = self.root / "topics"
        for topic_dir in sorted(topics_dir.iterdir()) if topics_dir.is_dir() else []:
            self.check_topic(topic_dir)
        groups_dir = self.root / "groups"
        for group_dir in sorted(groups_dir.iterdir()) if groups_dir.is_dir() else []:
            self.check_group(group_dir)

    def check_staging(self) -> None:
        staging = self.root / "staging"
        for leftover in sorted(staging.iterdir()) if staging.is_dir() else []:
            self.add(leftover, "staging", "leftover of an interrupted topic create or delete", True)

    def check_temp_files(self, directory: Path) -> None:
        for path in sorted(directory.glob("*" + files.TEMP_SUFFIX)):
            self.add(path, "temp-file", "leftover temporary file of an interrupted rewrite", True)

    # -- topics ------------------------------------------------------------------------

    def check_topic(self, topic_dir: Path) -> None:
        self.check_temp_files(topic_dir)
        config_path = topic_dir / TOPIC_CONFIG_FILE_NAME
        try:
            config = TopicConfig.from_json(config_path.read_bytes(), config_path)
        except (OSError, StorageError) as exc:
            self.add(config_path, "topic-config", f"unreadable topic settings: {exc}", False)
            return
        for number in range(config.partitions):
            scan = self.scan_partition(topic_dir / str(number), keep_values=False)
            self.topic_ends[(topic_dir.name, number)] = scan.log_end
            if scan.repairable:
                self.check_priority_index(scan)

    # -- partitions ----------------------------------------------------------------------

    def scan_partition(self, directory: Path, *, keep_values: bool) -> PartitionScan:
        scan = PartitionScan(directory)
        self.partitions[directory] = scan
        if not directory.is_dir():
            scan.findings.append(Finding(self.relative(directory), "missing-partition",
                                         "partition directory is missing", False))
            self.findings.extend(scan.findings)
            return scan
        self.check_temp_files(directory)
        base_offsets = sorted(
            offset for offset in (files.base_offset_of(path) for path in directory.iterdir()) if offset is not None
        )
        scan.log_start = scan.log_end = base_offsets[0] if base_offsets else 0
        for slot, base_offset in enumerate(base_offsets):
            path = files.log_path(directory, base_offset)
            if base_offset != scan.log_end:
                if base_offset > scan.log_end:
                    effect = f"offsets {scan.log_end}..{base_offset - 1} are missing"
                else:
                    effect = f"offsets {base_offset}..{scan.log_end - 1} are in both segments"
                scan.findings.append(Finding(
                    self.relative(path), "offset-gap",
                    f"segment starts at offset {base_offset}, but the segment before it ends at "
                    f"{scan.log_end - 1}: {effect}",
                    False, offset=scan.log_end,
                ))
                scan.log_end = base_offset
            last = slot == len(base_offsets) - 1
            known = len(scan.findings)
            batches = self.scan_segment(scan, path, base_offset, last=last, keep_values=keep_values)
            scan.segments += 1
            if all(finding.repairable for finding in scan.findings[known:]):
                # Indexes of a segment with unrepairable damage cannot be rebuilt, and
                # their entries around the damage would only repeat the same finding.
                self.check_offset_index(scan, base_offset, batches)
                self.check_time_index(scan, base_offset, batches, closed=not last)
        self.findings.extend(scan.findings)
        return scan

    def scan_segment(
        self, scan: PartitionScan, path: Path, base_offset: int, *, last: bool, keep_values: bool
    ) -> list[ScannedBatch]:
        data = path.read_bytes()
        batches: list[ScannedBatch] = []
        position = 0
        while position < len(data):
            try:
                header = parse_header(data, position)
                verify_batch(data, position, header)
                if header.base_offset != scan.log_end:
                    raise CorruptRecordError(
                        f"batch has base offset {header.base_offset}, expected {scan.log_end}"
                    )
            except CorruptRecordError as exc:
                position = self.report_damage(scan, path, data, position, exc, last=last)
                if position < 0:
                    break
                continue
            batches.append(ScannedBatch(position, header))
            scan.batches += 1
            scan.log_end = header.next_offset
            self.read_records(scan, path, data, position, header, keep_values=keep_values)
            position += header.size
        return batches

    def report_damage(
        self, scan: PartitionScan, path: Path, data: bytes, position: int, error: CorruptRecordError, *, last: bool
    ) -> int:
        """Record damage at `position`; return where valid data resumes, or -1 when none does."""
        resume = find_valid_batch(data, position + 1, scan.log_end)
        if resume is None:
            dropped = len(data) - position
            if last:
                scan.findings.append(Finding(
                    self.relative(path), "torn-tail",
                    f"{dropped} bytes after the last valid batch are a torn or corrupt tail ({error})",
                    True, position=position, offset=scan.log_end,
                ))
            else:
                scan.findings.append(Finding(
                    self.relative(path), "trailing-bytes",
                    f"{dropped} bytes after the last valid batch of a closed segment ({error}); "
                    "the partition may have lost offsets at the end of this segment",
                    False, position=position, offset=scan.log_end,
                ))
            return -1
        next_base = parse_header(data, resume).base_offset
        lost = (
            f"offsets {scan.log_end}..{next_base - 1} are unreadable"
            if next_base > scan.log_end else "no offsets are lost"
        )
        scan.findings.append(Finding(
            self.relative(path), "corrupt-batch",
            f"damaged data at bytes {position}..{resume - 1} ({error}) with valid batches after it; "
            f"{lost}. The valid batches from offset {next_base} on stay on disk, but reads that scan "
            "through the damage fail, so restore the segment from a copy, or let each consumer group "
            "pass the damage with `logq groups skip`",
            False, position=position, offset=scan.log_end,
        ))
        scan.log_end = next_base
        return resume

    def read_records(
        self, scan: PartitionScan, path: Path, data: bytes, position: int, header: BatchHeader, *, keep_values: bool
    ) -> None:
        try:
            records = decode_records(data, position, header)
        except CorruptRecordError as exc:
            scan.findings.append(Finding(
                self.relative(path), "corrupt-records",
                f"batch passed its CRC, but its records do not decode: {exc}",
                False, position=position, offset=header.base_offset,
            ))
            return
        for record in records:
            if record.priority:
                scan.priorities[record.offset] = record.priority
            if keep_values:
                scan.values.append((record.offset, record.value))

    # -- segment indexes ------------------------------------------------------------------

    def check_offset_index(self, scan: PartitionScan, base_offset: int, batches: list[ScannedBatch]) -> None:
        path = files.offset_index_path(scan.directory, base_offset)
        problem = offset_index_problem(path, base_offset, batches)
        if problem is not None:
            scan.findings.append(Finding(self.relative(path), "offset-index", problem, True))

    def check_time_index(self, scan: PartitionScan, base_offset: int, batches: list[ScannedBatch], *, closed: bool) -> None:
        path = files.time_index_path(scan.directory, base_offset)
        problem = time_index_problem(path, base_offset, batches, closed=closed)
        if problem is not None:
            scan.findings.append(Finding(self.relative(path), "time-index", problem, True))

    # -- priority index ---------------------------------------------------------------------

    def check_priority_index(self, scan: PartitionScan) -> None:
        problem, position = priority_index_problem(scan)
        if problem is not None:
            path = scan.directory / PriorityIndex.FILE_NAME
            finding = Finding(self.relative(path), "priority-index", problem, True, position=position)
            scan.findings.append(finding)
            self.findings.append(finding)

    # -- groups ---------------------------------------------------------------------------

    def check_group(self, group_dir: Path) -> None:
        self.groups += 1
        self.check_temp_files(group_dir)
        journal = self.scan_partition(group_dir / JOURNAL_DIR_NAME, keep_values=True)
        snapshot_path = group_dir / SNAPSHOT_FILE_NAME
        snapshot = self.load_snapshot(snapshot_path, journal)
        # Only _restore and _apply run on this group, and they change memory, not
        # files, so it needs no journal.
        try:
            config = GroupConfig.load(group_dir)
        except StorageError as exc:
            # The snapshot and journal can still be checked; only key ordering changes how they replay.
            self.add(group_dir / CONFIG_FILE_NAME, "group-config", str(exc), False)
            config = GroupConfig()
        group = Group(group_dir.name, group_dir, None, config, time.time)  # type: ignore[arg-type]
        if isinstance(snapshot, dict):
            try:
                group._restore(snapshot)
            except (KeyError, TypeError, ValueError) as exc:
                self.add(snapshot_path, "snapshot", f"snapshot does not restore: {exc!r}",
                         journal.log_start == 0 and journal.repairable)
        start = journal.log_start
        if isinstance(snapshot, dict):
            # The snapshot already contains the events that were queued when it was taken.
            start = snapshot["journal_offset"] + snapshot.get("unwritten_events", 0)
            if start > journal.log_end:
                # Events below `start` are in the snapshot even when the journal lost them (never
                # written, or cut off), so the snapshot must be kept and only moved.
                self.add(snapshot_path, "snapshot-ahead",
                         f"the snapshot covers journal offsets up to {start}, past the journal end offset "
                         f"{journal.log_end}: {start - journal.log_end} events are only in the snapshot; "
                         f"opening the group moves it to the journal end", True)
        for offset, value in journal.values:
            if offset < start:
                continue
            problem = replay_event(group, value)
            if problem is not None:
                self.add(journal.directory, "journal-event", problem, False, offset=offset)
        self.check_group_offsets(group, group_dir)

    def load_snapshot(self, path: Path, journal: PartitionScan) -> dict[str, Any] | None:
        """Return the parsed snapshot, or None when it is missing or damaged (a finding then)."""
        try:
            snapshot = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            snapshot, problem = None, f"not JSON: {exc}"
        else:
            problem = snapshot_problem(snapshot)
        if problem is None:
            return snapshot  # type: ignore[no-any-return]
        complete = journal.log_start == 0 and journal.repairable
        how = ("the journal is complete, so --repair rebuilds it" if complete else
               f"the journal starts at offset {journal.log_start}, so the events before it are gone")
        self.add(path, "snapshot", f"{problem}; {how}", complete)
        return None

    def check_group_offsets(self, group: Group, group_dir: Path) -> None:
        for (topic, number), state in sorted(group.states.items()):
            end = self.topic_ends.get((topic, number))
            if end is None:
                continue
            beyond = [offset for offset in state.pending if offset >= end]
            if state.committed > end or beyond:
                worst = max([state.committed, *beyond])
                self.add(
                    group_dir, "group-offset",
                    f"state of topic {topic!r} partition {number} names offset {worst}, past the log end "
                    f"offset {end}; reset the group with `logq groups reset`",
                    False, offset=worst,
                )


# -- entry point -----------------------------------------------------------------------------


def check(path: str | Path, *, repair: bool = False) -> CheckReport:
    """Check every file of the data directory at `path`; with `repair`, fix what is safe to fix.

    Without `repair` nothing in the directory is written, created or removed,
    the lock file included. The check then takes a shared lock on the existing
    lock file, or no lock when that file is missing. With `repair` it takes the
    exclusive lock, as Log.open does. Raises NotFoundError when `path` is not a
    directory, DataDirLockedError when another process has it open or opens it
    during an unlocked check, and StorageError when the lock file cannot be
    opened for reading. Call it outside a running event loop, because repairs
    run one.
    """
    root = Path(path)
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise NotFoundError(f"data directory {root} {problem}. Pass the directory that logq.open used")
    lock = DataDirLock(root, shared=not repair)
    lock.acquire()
    try:
        inspection = _Inspection(root)
        inspection.run()
        lock.verify_unopened()
        report = CheckReport(path=root, repair=repair)
        report.partitions = len(inspection.partitions)
        report.segments = sum(scan.segments for scan in inspection.partitions.values())
        report.batches = sum(scan.batches for scan in inspection.partitions.values())
        report.groups = inspection.groups
        logger.info("checked %s: %d findings", root, len(inspection.findings))
        if not repair or not inspection.findings:
            report.findings = report.remaining = inspection.findings
            return report
        repaired = asyncio.run(repair_findings(root, inspection.findings, inspection.partitions))
        report.findings = [
            dataclasses.replace(finding, repaired=True) if finding in repaired else finding
            for finding in inspection.findings
        ]
        second = _Inspection(root)
        second.run()
        report.remaining = second.findings
        return report
    finally:
        lock.release()
