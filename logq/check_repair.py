"""Repairs of `logq check --repair`: each one reuses the code that opening a data directory runs.

A partition is repaired only when every finding in it is repairable: damaged
derived files are deleted and PartitionLog recovery and PriorityIndex.open
rebuild them, and recovery truncates a torn tail. A damaged snapshot is
replaced by opening and closing the group after moving the snapshot aside. A
snapshot ahead of its journal is moved to the journal end by opening it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from logq.check_files import Finding, PartitionScan
from logq.consumers.group import Group
from logq.consumers.journal import JOURNAL_DIR_NAME, JOURNAL_SEGMENT_BYTES, GroupJournal
from logq.consumers.priority_index import PriorityIndex
from logq.errors import LogqError
from logq.segments import LogConfig, PartitionLog, files
from logq.topics import CONFIG_FILE_NAME as TOPIC_CONFIG_FILE_NAME
from logq.topics import TopicConfig

logger = logging.getLogger(__name__)


async def repair(root: Path, findings: list[Finding], partitions: dict[Path, PartitionScan]) -> set[Finding]:
    """Fix the repairable findings of one check pass; return the findings that were fixed."""
    repaired: set[Finding] = set()
    for finding in findings:
        if finding.kind in ("temp-file", "staging"):
            path = root / finding.path
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            logger.warning("check --repair: removed leftover %s", path)
            repaired.add(finding)
    for directory, scan in partitions.items():
        if scan.findings and scan.repairable:
            await _repair_partition(scan)
            repaired.update(scan.findings)
        elif scan.findings:
            logger.warning("check --repair: left %s alone, because it has damage that repair does not fix", directory)
    broken_journals = {finding.path for finding in findings if finding.kind == "journal-event"}
    for finding in findings:
        journal = (Path(finding.path).parent / JOURNAL_DIR_NAME).as_posix()
        if finding.kind == "snapshot" and finding.repairable and journal not in broken_journals:
            if await _rebuild_snapshot(root / finding.path):
                repaired.add(finding)
        elif finding.kind == "snapshot-ahead" and journal not in broken_journals:
            # Opening the journal moves such a snapshot to the journal end. It contains events
            # that exist nowhere else, so it must never be rebuilt from the journal.
            group_journal, _, _ = await GroupJournal.open((root / finding.path).parent, fsync="always")
            await group_journal.close()
            repaired.add(finding)
    return repaired


async def _repair_partition(scan: PartitionScan) -> None:
    """Run recovery on a partition whose findings are all repairable, after deleting damaged derived files."""
    directory = scan.directory
    for finding in scan.findings:
        if finding.kind in ("offset-index", "time-index"):
            base_offset = int(Path(finding.path).stem)
            # Recovery rebuilds both indexes of a closed segment when one is missing.
            files.offset_index_path(directory, base_offset).unlink(missing_ok=True)
            files.time_index_path(directory, base_offset).unlink(missing_ok=True)
        elif finding.kind == "priority-index":
            (directory / PriorityIndex.FILE_NAME).unlink(missing_ok=True)
            (directory / PriorityIndex.CHECKPOINT_FILE_NAME).unlink(missing_ok=True)
    is_journal = directory.name == JOURNAL_DIR_NAME
    if is_journal:
        config = LogConfig(segment_bytes=JOURNAL_SEGMENT_BYTES, fsync="always")
    else:
        topic_path = directory.parent / TOPIC_CONFIG_FILE_NAME
        config = TopicConfig.from_json(topic_path.read_bytes(), topic_path).log_config()
    # Retention deletes whole segments, which a repair must never do.
    config = dataclasses.replace(config, retention_bytes=None, retention_ms=None, fsync="always")
    log = await PartitionLog.open(directory, config)
    try:
        if not is_journal:
            index = await PriorityIndex.open(log)
            await index.close()
    finally:
        await log.close()
    logger.warning("check --repair: recovered %s (%d findings)", directory, len(scan.findings))


async def _rebuild_snapshot(snapshot_path: Path) -> bool:
    """Replace a damaged snapshot with one built by replaying the whole journal; return True on success."""
    group_dir = snapshot_path.parent
    aside = snapshot_path.with_name(snapshot_path.name + ".damaged")
    snapshot_path.rename(aside)
    try:
        group = await Group.open(group_dir.name, group_dir, fsync="always")
        await group.close()
    except LogqError as exc:
        aside.rename(snapshot_path)
        logger.error("check --repair: cannot rebuild %s from the journal: %s", snapshot_path, exc)
        return False
    aside.unlink()
    logger.warning("check --repair: rebuilt %s from the journal", snapshot_path)
    return True
