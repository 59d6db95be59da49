"""Tests of the priority index: lookups, persistence, catch-up and repair of damaged files."""

from __future__ import annotations

import asyncio
import logging
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logq.consumers.priority_index import PriorityIndex
from logq.errors import ClosedError, InvalidArgumentError
from logq.segments import LogConfig, PartitionLog, RecordInput

# The file format, written out here so that a change to it fails a test.
ENTRY = struct.Struct(">QB")
CHECKPOINT = struct.Struct(">BQQII")

# Offsets 0..9. Level 3 contains offsets 1, 4 and 9, level 1 contains 2 and 6,
# and levels 7 and 2 contain one offset each.
PRIORITIES = [0, 3, 1, 0, 3, 7, 1, 0, 2, 3]
LOGGER = "logq.consumers.priority_index"

OpenLog = Callable[..., Awaitable[PartitionLog]]


@pytest.fixture
async def open_log(tmp_path: Path) -> AsyncIterator[OpenLog]:
    """Open the partition at tmp_path/p as often as a test needs, and close every log at the end."""
    opened: list[PartitionLog] = []

    async def open_partition(config: LogConfig | None = None) -> PartitionLog:
        log = await PartitionLog.open(tmp_path / "p", config or LogConfig())
        opened.append(log)
        return log

    yield open_partition
    for log in opened:
        await log.close()


async def append(log: PartitionLog, index: PriorityIndex | None, priorities: Sequence[int]) -> None:
    """Append one batch with these priorities and add its records to `index` unless it is None."""
    records = [RecordInput(value=b"v%d" % priority, priority=priority) for priority in priorities]
    base_offset, _ = await log.append(records)
    if index is not None:
        for offset, priority in enumerate(priorities, start=base_offset):
            index.add(offset, priority)


def model(priorities: Sequence[int], start: int = 0) -> dict[int, list[int]]:
    """Return the expected offsets per level of records appended from offset 0 with `priorities`, from `start` on."""
    levels: dict[int, list[int]] = {}
    for offset, priority in enumerate(priorities):
        if priority and offset >= start:
            levels.setdefault(priority, []).append(offset)
    return levels


def contents(index: PriorityIndex) -> dict[int, list[int]]:
    return {level: list(index.offsets(level)) for level in index.levels()}


async def read_levels(log: PartitionLog) -> dict[int, list[int]]:
    """Offsets per level of the records that the log really contains."""
    levels: dict[int, list[int]] = {}
    offset = log.log_start_offset
    while offset < log.high_watermark:
        records = await log.read(offset)
        for record in records:
            if record.priority:
                levels.setdefault(record.priority, []).append(record.offset)
        offset = records[-1].offset + 1
    return levels


async def write_priorities(log: PartitionLog) -> None:
    """Index PRIORITIES in two batches with a flush between them, then close the index."""
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES[:5])
    await index.flush()
    await append(log, index, PRIORITIES[5:])
    await index.close()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


# -- lookups ----------------------------------------------------------------------


async def test_levels_most_urgent_first(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES)

    assert index.levels() == [7, 3, 2, 1]


async def test_offsets_fifo_within_level(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES)

    assert list(index.offsets(3)) == [1, 4, 9]
    assert list(index.offsets(1)) == [2, 6]
    assert contents(index) == model(PRIORITIES)


@pytest.mark.parametrize(
    ("level", "offset", "expected"),
    [
        (3, 0, 1),
        (3, 1, 1),
        (3, 2, 4),
        (3, 9, 9),
        (3, 10, None),
        (7, 6, None),
        (5, 0, None),
    ],
    ids=["before first", "at first", "between", "at last", "after last", "past only entry", "empty level"],
)
async def test_first_at_or_after(open_log: OpenLog, level: int, offset: int, expected: int | None) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES)

    assert index.first_at_or_after(level, offset) == expected


async def test_priority_zero_not_indexed(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, [0, 0, 0])

    assert index.levels() == []
    with pytest.raises(InvalidArgumentError, match="priority level 0 is invalid"):
        index.offsets(0)


async def test_offsets_view_follows_index(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    view = index.offsets(3)
    await append(log, index, PRIORITIES)

    assert list(view) == [1, 4, 9]
    assert 4 in view
    assert 5 not in view
    assert view[-1] == 9
    assert not hasattr(view, "append")
    index.discard_below(4)
    assert list(view) == [4, 9]


@pytest.mark.parametrize("priority", [-1, 256], ids=["negative", "above 255"])
async def test_add_rejects_invalid_priority(open_log: OpenLog, priority: int) -> None:
    index = await PriorityIndex.open(await open_log())

    with pytest.raises(InvalidArgumentError, match=f"priority {priority} is invalid"):
        index.add(0, priority)


@pytest.mark.parametrize("offset", [3, 4], ids=["lower", "same"])
async def test_add_rejects_offset_out_of_order(open_log: OpenLog, offset: int) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, [1, 0, 2, 0, 1])

    with pytest.raises(InvalidArgumentError, match=f"offset {offset} is below 5,"):
        index.add(offset, 1)


async def test_add_after_close_raises(open_log: OpenLog) -> None:
    index = await PriorityIndex.open(await open_log())
    await index.close()
    await index.close()

    with pytest.raises(ClosedError):
        index.add(0, 1)


async def test_discard_below(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES)
    index.discard_below(6)

    assert contents(index) == model(PRIORITIES, start=6)
    assert index.levels() == [3, 2, 1]
    assert index.first_at_or_after(3, 0) == 9


# -- files --------------------------------------------------------------------------


async def test_file_format(open_log: OpenLog) -> None:
    log = await open_log()
    await write_priorities(log)
    directory = log.directory

    index_data = (directory / "priority.index").read_bytes()
    entries = [(offset, priority) for offset, priority in enumerate(PRIORITIES) if priority]
    assert index_data == b"".join(ENTRY.pack(offset, priority) for offset, priority in entries)
    checkpoint_data = (directory / "priority.checkpoint").read_bytes()
    fields = (1, len(PRIORITIES), len(index_data), zlib.crc32(index_data))
    assert checkpoint_data == CHECKPOINT.pack(*fields, zlib.crc32(checkpoint_data[:21]))


async def test_reopen_after_flush(open_log: OpenLog) -> None:
    log = await open_log()
    await write_priorities(log)
    await log.close()
    log = await open_log()

    index = await PriorityIndex.open(log)

    assert contents(index) == model(PRIORITIES)
    assert index.levels() == [7, 3, 2, 1]


async def test_clean_reopen_writes_nothing(open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    log = await open_log()
    await write_priorities(log)
    checkpoint = log.directory / "priority.checkpoint"
    before = checkpoint.stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = await PriorityIndex.open(log)
        await index.close()

    assert checkpoint.stat().st_mtime_ns == before
    assert warnings_of(caplog) == []
    assert "caught up" not in caplog.text


async def test_flush_after_cancelled_flush(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES[:5])
    flush = asyncio.create_task(index.flush())
    await asyncio.sleep(0)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    await append(log, index, PRIORITIES[5:])
    await index.close()

    reopened = await PriorityIndex.open(log)

    assert contents(reopened) == model(PRIORITIES)


async def test_priority_zero_moves_checkpoint(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, [2, 0, 0, 0])
    await index.close()

    checkpoint_data = (log.directory / "priority.checkpoint").read_bytes()
    assert CHECKPOINT.unpack(checkpoint_data)[1] == 4


async def test_catch_up_after_missed_adds(open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES[:5])
    await index.flush()
    # The process stops after these appends and before their adds.
    await append(log, None, PRIORITIES[5:])
    await log.close()
    log = await open_log()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = await PriorityIndex.open(log)

    assert contents(index) == model(PRIORITIES)
    assert "read offsets [5, 10), added 4 entries" in caplog.text


async def test_adds_after_catch_up(open_log: OpenLog) -> None:
    log = await open_log()
    await append(log, None, PRIORITIES[:5])
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES[5:])
    await index.close()
    await log.close()

    index = await PriorityIndex.open(await open_log())

    assert contents(index) == model(PRIORITIES)


@pytest.mark.parametrize(
    "removed", [["priority.index"], ["priority.index", "priority.checkpoint"]], ids=["index", "both"]
)
async def test_missing_file_rebuilt(open_log: OpenLog, caplog: pytest.LogCaptureFixture, removed: list[str]) -> None:
    log = await open_log()
    await write_priorities(log)
    for name in removed:
        (log.directory / name).unlink()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = await PriorityIndex.open(log)

    assert contents(index) == model(PRIORITIES)
    assert "priority.index is missing" in caplog.text
    assert (log.directory / "priority.index").exists()


def damage_checkpoint(case: str, path: Path) -> None:
    data = bytearray(path.read_bytes())
    if case == "missing":
        path.unlink()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"not a checkpoint, just text")
    elif case == "flipped bit":
        data[5] ^= 0x10
        path.write_bytes(bytes(data))
    elif case == "version 2":
        data[0] = 2
        data[21:] = struct.pack(">I", zlib.crc32(bytes(data[:21])))
        path.write_bytes(bytes(data))
    elif case in ("beyond log end", "behind entries"):
        # A valid checkpoint whose next offset is far past the log end offset,
        # or below offsets that the index file has entries for.
        fields = list(CHECKPOINT.unpack(bytes(data)))[:4]
        fields[1] = 2**40 if case == "beyond log end" else 5
        packed = CHECKPOINT.pack(*fields, 0)[:21]
        path.write_bytes(packed + struct.pack(">I", zlib.crc32(packed)))


CHECKPOINT_DAMAGE = ["missing", "empty", "garbage", "flipped bit", "version 2", "beyond log end", "behind entries"]


@pytest.mark.parametrize("case", CHECKPOINT_DAMAGE)
async def test_damaged_checkpoint_repaired(open_log: OpenLog, caplog: pytest.LogCaptureFixture, case: str) -> None:
    log = await open_log()
    await write_priorities(log)
    damage_checkpoint(case, log.directory / "priority.checkpoint")

    index = await PriorityIndex.open(log)
    await index.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        reopened = await PriorityIndex.open(log)

    assert contents(index) == model(PRIORITIES)
    assert contents(reopened) == model(PRIORITIES)
    assert warnings_of(caplog) == []


def damage_index(case: str, path: Path) -> None:
    data = bytearray(path.read_bytes())
    if case == "partial last entry":
        data += ENTRY.pack(10, 5)[:4]
    elif case == "garbage after entries":
        data += b"\xff" * 20
    elif case == "zeros after entries":
        data += bytes(2 * ENTRY.size)
    elif case == "cut into entries":
        del data[-4:]
    elif case == "flipped byte":
        data[ENTRY.size + 8] ^= 0x04
    elif case == "garbage over entries":
        data[3:15] = b"garbage here"
    elif case == "empty":
        data.clear()
    path.write_bytes(bytes(data))


INDEX_DAMAGE = [
    "partial last entry",
    "garbage after entries",
    "zeros after entries",
    "cut into entries",
    "flipped byte",
    "garbage over entries",
    "empty",
]


@pytest.mark.parametrize("case", INDEX_DAMAGE)
async def test_damaged_index_repaired(open_log: OpenLog, caplog: pytest.LogCaptureFixture, case: str) -> None:
    log = await open_log()
    await write_priorities(log)
    damage_index(case, log.directory / "priority.index")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = await PriorityIndex.open(log)
    repair_warnings = warnings_of(caplog)
    await index.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        reopened = await PriorityIndex.open(log)

    assert contents(index) == model(PRIORITIES)
    assert len(repair_warnings) == 1
    assert contents(reopened) == model(PRIORITIES)
    assert warnings_of(caplog) == []


async def test_unflushed_entry_read_again(open_log: OpenLog) -> None:
    log = await open_log()
    await write_priorities(log)
    await append(log, None, [0, 4])
    # An entry past the checkpoint, for offset 10 whose record has priority 0.
    with open(log.directory / "priority.index", "ab") as handle:
        handle.write(ENTRY.pack(10, 9))

    index = await PriorityIndex.open(log)

    assert contents(index) == model(PRIORITIES + [0, 4])


async def test_entries_beyond_log_end_trimmed(open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES[:5])
    size_after_first_batch = log.size_bytes
    await append(log, index, PRIORITIES[5:])
    await index.close()
    await log.close()
    # Cut the second batch short, so recovery truncates the log to offset 5.
    with open(log.directory / "00000000000000000000.log", "r+b") as handle:
        handle.truncate(size_after_first_batch + 7)
    log = await open_log()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = await PriorityIndex.open(log)

    assert log.log_end_offset == 5
    assert contents(index) == model(PRIORITIES[:5])
    assert contents(index) == await read_levels(log)
    assert "4 entries at or above the log end offset 5" in caplog.text


async def test_reused_offsets_after_trim(open_log: OpenLog) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    await append(log, index, PRIORITIES[:5])
    size_after_first_batch = log.size_bytes
    await append(log, index, PRIORITIES[5:])
    await index.close()
    await log.close()
    with open(log.directory / "00000000000000000000.log", "r+b") as handle:
        handle.truncate(size_after_first_batch + 7)
    log = await open_log()
    index = await PriorityIndex.open(log)
    # Offsets 5 and 6 now belong to new records with other priorities.
    await append(log, index, [4, 4])
    await index.close()
    await log.close()

    index = await PriorityIndex.open(await open_log())

    assert contents(index) == model(PRIORITIES[:5] + [4, 4])


async def test_retention_forgets_old_entries(open_log: OpenLog, caplog: pytest.LogCaptureFixture) -> None:
    # One batch per segment, so offsets 0..4 can be deleted as a whole segment.
    config = LogConfig(segment_bytes=1)
    log = await open_log(config)
    await write_priorities(log)
    await log.delete_segments_before(5)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = await PriorityIndex.open(log)

    assert log.log_start_offset == 5
    assert contents(index) == model(PRIORITIES, start=5)
    assert "forgot 3 entries below the log start offset 5" in caplog.text


async def test_discard_below_compacts_file(open_log: OpenLog) -> None:
    log = await open_log()
    priorities = [1, 2, 3] * 20
    index = await PriorityIndex.open(log)
    await append(log, index, priorities)
    await index.flush()
    index.discard_below(50)
    await index.close()

    index_size = (log.directory / "priority.index").stat().st_size
    assert index_size == 10 * ENTRY.size
    reopened = await PriorityIndex.open(log)
    assert contents(reopened) == model(priorities, start=50)


async def test_small_discard_not_compacted(open_log: OpenLog) -> None:
    log = await open_log()
    priorities = [1, 2, 3] * 20
    index = await PriorityIndex.open(log)
    await append(log, index, priorities)
    await index.flush()
    index.discard_below(10)
    await index.close()

    index_size = (log.directory / "priority.index").stat().st_size
    assert index_size == 60 * ENTRY.size
    reopened = await PriorityIndex.open(log)
    assert contents(reopened) == model(priorities)


# -- random histories -------------------------------------------------------------

batches = st.lists(st.integers(0, 5), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.tuples(batches, st.booleans()), max_size=8),
    lost=st.lists(batches, max_size=3),
    close_index=st.booleans(),
)
async def test_random_history_reopens(
    history: list[tuple[list[int], bool]], lost: list[list[int]], close_index: bool
) -> None:
    """Append batches, each added to the index and maybe flushed, then batches the index never saw."""
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp) / "p"
        log = await PartitionLog.open(directory, LogConfig(fsync="never"))
        index = await PriorityIndex.open(log)
        appended: list[int] = []
        for priorities, flush in history:
            await append(log, index, priorities)
            appended.extend(priorities)
            if flush:
                await index.flush()
        # The process stops after these appends and before their adds.
        for priorities in lost:
            await append(log, None, priorities)
            appended.extend(priorities)
        if close_index:
            await index.close()
        await log.close()

        log = await PartitionLog.open(directory, LogConfig(fsync="never"))
        try:
            reopened = await PriorityIndex.open(log)
        finally:
            await log.close()

    assert contents(reopened) == model(appended)
