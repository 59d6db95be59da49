"""Tests of the group journal and its snapshots, on real files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from logq.consumers import Group
from logq.consumers.journal import SNAPSHOT_FILE_NAME, GroupJournal, OffsetEvent
from logq.errors import CorruptJournalError, OffsetOutOfRangeError
from logq.segments import RecordInput


async def test_committed_offsets_survive_reopen(tmp_path: Path) -> None:
    group = await Group.open("g", tmp_path / "g")
    await group.join("t", 0, 0)
    await group.join("t", 1, 5)
    await group.ack("t", 0, [0, 1, 2], log_end_offset=10)
    await group.ack("t", 1, [6], log_end_offset=10)
    await group.journal.close()  # no snapshot: the next open replays the journal

    reopened = await Group.open("g", tmp_path / "g")
    assert reopened.committed_offsets() == {("t", 0): 3, ("t", 1): 5}
    await reopened.close()


async def test_snapshot_then_journal_replay(tmp_path: Path) -> None:
    group = await Group.open("g", tmp_path / "g")
    await group.join("t", 0, 0)
    await group.ack("t", 0, [0, 1], log_end_offset=10)
    await group.journal.snapshot(group.committed_offsets())
    await group.ack("t", 0, [2, 3], log_end_offset=10)
    await group.journal.close()

    snapshot = orjson.loads((tmp_path / "g" / SNAPSHOT_FILE_NAME).read_bytes())
    assert snapshot["committed"] == [["t", 0, 2]]
    reopened = await Group.open("g", tmp_path / "g")
    assert reopened.committed_offsets() == {("t", 0): 4}
    await reopened.close()


async def test_snapshot_removes_old_journal_segments(tmp_path: Path) -> None:
    journal, _ = await GroupJournal.open(tmp_path / "g", snapshot_every=10**9)
    committed = {}
    for offset in range(20_000):
        committed[("t", 0)] = offset
        await journal.append([OffsetEvent("commit", "t", 0, offset)], committed)
    segments_before = len(journal.log.segments)
    await journal.snapshot(committed)
    assert segments_before > 1
    assert len(journal.log.segments) == 1
    await journal.close()

    _, restored = await GroupJournal.open(tmp_path / "g")
    assert restored == {("t", 0): 19_999}


async def test_unknown_event_types_are_ignored(tmp_path: Path) -> None:
    journal, _ = await GroupJournal.open(tmp_path / "g")

    await journal.log.append([RecordInput(value=b'{"event": "lease", "offset": 3}')])
    await journal.append([OffsetEvent("reset", "t", 0, 7)], {("t", 0): 7})
    await journal.close()
    _, restored = await GroupJournal.open(tmp_path / "g")
    assert restored == {("t", 0): 7}


async def test_corrupt_snapshot_raises_typed_error(tmp_path: Path) -> None:
    group = await Group.open("g", tmp_path / "g")
    await group.join("t", 0, 0)
    await group.close()
    (tmp_path / "g" / SNAPSHOT_FILE_NAME).write_bytes(b"{not json")
    with pytest.raises(CorruptJournalError, match="delete it to rebuild"):
        await Group.open("g", tmp_path / "g")


async def test_ack_unwritten_offset_changes_nothing(tmp_path: Path) -> None:
    group = await Group.open("g", tmp_path / "g")
    await group.join("t", 0, 0)
    with pytest.raises(OffsetOutOfRangeError, match="offset 12"):
        await group.ack("t", 0, [0, 12], log_end_offset=10)
    assert group.committed_offsets() == {("t", 0): 0}
    await group.close()
