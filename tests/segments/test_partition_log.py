"""Tests of PartitionLog: offsets, rolling, reads, timestamps, retention, durability and errors."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from logq.errors import ClosedError, DiskFullError, OffsetOutOfRangeError
from logq.segments.batch import CODEC_ZSTD, Record, RecordInput, encode_batch, iter_batches
from logq.segments.files import file_stem
from logq.segments.partition_log import LogConfig, PartitionLog

if TYPE_CHECKING:
    from conftest import FakeClock

CHILD_SCRIPT = Path(__file__).with_name("segments_child.py")
NEVER = LogConfig(fsync="never")


@pytest.fixture
async def open_log(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """Open partition logs under tmp_path and close every one of them at the end."""
    opened: list[PartitionLog] = []

    async def open_with(config: LogConfig = NEVER, name: str = "partition") -> PartitionLog:
        log = await PartitionLog.open(tmp_path / name, config)
        opened.append(log)
        return log

    yield open_with
    for log in opened:
        await log.close()


def value_for(offset: int) -> bytes:
    return f"value-{offset}".encode() * (1 + offset % 5)


def records_from(offset: int, count: int) -> list[RecordInput]:
    return [RecordInput(value=value_for(offset + number), key=str(offset + number).encode()) for number in range(count)]


async def append_batches(log: PartitionLog, sizes: list[int]) -> None:
    for count in sizes:
        await log.append(records_from(log.log_end_offset, count))


async def read_from(log: PartitionLog, offset: int, *, max_bytes: int = 1024 * 1024) -> list[Record]:
    """Read from `offset` to the high watermark, checking that each read starts at the requested offset."""
    records: list[Record] = []
    while offset < log.high_watermark:
        batch = await log.read(offset, max_bytes=max_bytes)
        assert batch, f"empty read at offset {offset} below the high watermark {log.high_watermark}"
        assert batch[0].offset == offset, f"read at offset {offset} started at {batch[0].offset}"
        records.extend(batch)
        offset = batch[-1].offset + 1
    return records


def segment_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.log"))


async def test_append_assigns_dense_offsets(open_log) -> None:
    log = await open_log()
    sizes = [number % 5 + 1 for number in range(150)]

    returned = []
    for count in sizes:
        returned.append(await log.append(records_from(log.log_end_offset, count)))
    records = await read_from(log, 0)

    total = sum(sizes)
    assert [base for base, _ in returned] == [0] + [end for _, end in returned[:-1]]
    assert [end - base for base, end in returned] == sizes
    assert log.log_end_offset == total
    assert [record.offset for record in records] == list(range(total))
    assert [record.value for record in records] == [value_for(offset) for offset in range(total)]
    assert [record.key for record in records] == [str(offset).encode() for offset in range(total)]


BATCH_SIZE = len(encode_batch(0, [RecordInput(value=b"x" * 50)], timestamp_ms=0))


@pytest.mark.parametrize(
    ("segment_bytes", "batches_per_segment"),
    [(3 * BATCH_SIZE, 3), (3 * BATCH_SIZE - 1, 2), (BATCH_SIZE - 1, 1)],
    ids=["three batches fit exactly", "one byte short of three", "batch larger than a segment"],
)
async def test_roll_by_segment_bytes(open_log, tmp_path: Path, segment_bytes: int, batches_per_segment: int) -> None:
    log = await open_log(LogConfig(fsync="never", segment_bytes=segment_bytes))
    for _ in range(10):
        await log.append([RecordInput(value=b"x" * 50)])
    await log.flush()

    directory = tmp_path / "partition"
    expected_bases = list(range(0, 10, batches_per_segment))
    assert segment_files(directory) == [file_stem(base) + ".log" for base in expected_bases]
    for base in expected_bases:
        data = (directory / (file_stem(base) + ".log")).read_bytes()
        headers = [header for _, header in iter_batches(data)]
        batch_count = min(batches_per_segment, 10 - base)
        assert len(data) == batch_count * BATCH_SIZE, f"segment {base}"
        assert [header.base_offset for header in headers] == list(range(base, base + batch_count)), f"segment {base}"


def test_segment_file_names_have_20_digits() -> None:
    assert file_stem(0) == "00000000000000000000"
    assert file_stem(1234) == "00000000000000001234"
    assert file_stem(2**63 - 1) == "09223372036854775807"


async def test_roll_moves_whole_batch(open_log, tmp_path: Path) -> None:
    log = await open_log(LogConfig(fsync="never", segment_bytes=800))

    await log.append(records_from(0, 10))
    first_size = (tmp_path / "partition" / segment_files(tmp_path / "partition")[0]).stat().st_size
    await log.append(records_from(10, 10))
    names = segment_files(tmp_path / "partition")

    assert names == [file_stem(0) + ".log", file_stem(10) + ".log"]
    second = (tmp_path / "partition" / names[1]).read_bytes()
    assert first_size < 800
    assert first_size + len(second) > 800
    assert (tmp_path / "partition" / names[0]).stat().st_size == first_size
    assert [(position, header.base_offset) for position, header in iter_batches(second)] == [(0, 10)]
    assert sum(header.size for _, header in iter_batches(second)) == len(second)


READ_SIZES = [number % 4 + 1 for number in range(40)]
READ_TOTAL = sum(READ_SIZES)
READ_CONFIG = LogConfig(fsync="never", segment_bytes=1000, index_interval_bytes=150)


@pytest.mark.parametrize("max_bytes", [1, 300, 1024 * 1024], ids=["1 byte", "300 bytes", "1 MiB"])
@pytest.mark.parametrize("source", ["tail cache", "segment files"])
async def test_read_from_every_offset(open_log, max_bytes: int, source: str) -> None:
    log = await open_log(READ_CONFIG)
    await append_batches(log, READ_SIZES)
    if source == "segment files":
        await log.close()
        log = await open_log(READ_CONFIG)

    wrong_starts = []
    for start in range(READ_TOTAL):
        records = await read_from(log, start, max_bytes=max_bytes)
        if [record.value for record in records] != [value_for(offset) for offset in range(start, READ_TOTAL)]:
            wrong_starts.append(start)

    assert len(log.segments) >= 4
    assert wrong_starts == []


async def test_read_small_max_bytes(open_log) -> None:
    log = await open_log()
    await append_batches(log, [3, 3, 3])

    one_byte = await log.read(0, max_bytes=1)
    middle_of_batch = await log.read(4, max_bytes=1)

    assert [record.offset for record in one_byte] == [0, 1, 2]
    assert [record.offset for record in middle_of_batch] == [4, 5]


async def test_read_at_log_end_returns_nothing(open_log) -> None:
    log = await open_log()
    await append_batches(log, [2])

    assert await log.read(2) == []


@pytest.mark.parametrize("offset", [3, 100], ids=["one past log end", "far past log end"])
async def test_read_past_log_end_raises(open_log, offset: int) -> None:
    log = await open_log()
    await append_batches(log, [2])

    with pytest.raises(OffsetOutOfRangeError, match=f"offset {offset} is outside 0..2"):
        await log.read(offset)


@pytest.mark.parametrize("codec", [0, CODEC_ZSTD], ids=["none", "zstd"])
async def test_tail_cache_and_cold_reads_identical(open_log, codec: int) -> None:
    config = replace(READ_CONFIG, codec=codec)
    log = await open_log(config)
    await append_batches(log, READ_SIZES)
    from_cache = await read_from(log, 0)
    await log.close()

    cold = await read_from(await open_log(config), 0)
    partly_cached_log = await open_log(replace(config, tail_cache_bytes=500), name="partly cached")
    await append_batches(partly_cached_log, READ_SIZES)
    partly_cached = await read_from(partly_cached_log, 0)

    assert len(from_cache) == READ_TOTAL
    assert cold == from_cache
    assert [(r.offset, r.value, r.key, r.headers) for r in partly_cached] == [
        (r.offset, r.value, r.key, r.headers) for r in from_cache
    ]


def test_concurrent_zstd_cold_reads(tmp_path: Path) -> None:
    # Runs in a child process, because a zstd context shared between threads
    # can crash the interpreter instead of raising.
    result = subprocess.run(
        [sys.executable, str(CHILD_SCRIPT), "read-concurrently", str(tmp_path / "partition")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


async def test_offset_for_timestamp(open_log, clock: FakeClock) -> None:
    log = await open_log(READ_CONFIG)
    timestamps = []
    for count in READ_SIZES:
        clock.now_ms += 10
        timestamps.append(clock.now_ms)
        await log.append(records_from(log.log_end_offset, count))
    first_offsets = [sum(READ_SIZES[:batch]) for batch in range(len(READ_SIZES))]
    segment_bases = [segment.base_offset for segment in log.segments]

    found = [log.offset_for_timestamp(timestamp) for timestamp in timestamps]

    containing_segments = [max(base for base in segment_bases if base <= first) for first in first_offsets]
    assert [offset <= first for offset, first in zip(found, first_offsets)] == [True] * len(found)
    assert [offset >= base for offset, base in zip(found, containing_segments)] == [True] * len(found)
    assert log.offset_for_timestamp(timestamps[0] - 1000) == 0
    assert log.offset_for_timestamp(timestamps[-1] + 1) == READ_TOTAL


async def test_offset_for_timestamp_first_match(open_log, clock: FakeClock) -> None:
    log = await open_log(READ_CONFIG)
    for count in READ_SIZES:
        clock.now_ms += 10
        await log.append(records_from(log.log_end_offset, count))
    target_ms = clock.now_ms - 155

    start = log.offset_for_timestamp(target_ms)
    records = await read_from(log, start)

    first_match = next(record for record in records if record.timestamp_ms >= target_ms)
    all_records = await read_from(log, 0)
    expected = next(record for record in all_records if record.timestamp_ms >= target_ms)
    assert first_match == expected


async def test_append_timestamp_never_decreases(open_log, clock: FakeClock) -> None:
    log = await open_log()
    await append_batches(log, [1])
    clock.now_ms -= 5000

    await append_batches(log, [1])
    records = await read_from(log, 0)

    assert records[1].timestamp_ms == records[0].timestamp_ms


async def test_retention_by_size(open_log, tmp_path: Path) -> None:
    config = LogConfig(fsync="never", segment_bytes=3 * BATCH_SIZE, retention_bytes=7 * BATCH_SIZE)
    log = await open_log(config)
    for offset in range(20):
        await log.append([RecordInput(value=b"x" * 50)])

    await log.apply_retention()

    # 20 batches fill 7 segments of 3 batches. Deleting from the front while
    # at least 7 batches stay leaves segments 12, 15 and 18 (8 batches).
    directory = tmp_path / "partition"
    assert log.log_start_offset == 12
    assert segment_files(directory) == [file_stem(base) + ".log" for base in (12, 15, 18)]
    assert sorted(path.name for path in directory.iterdir() if path.name.startswith(file_stem(9))) == []
    assert log.size_bytes == 8 * BATCH_SIZE
    assert [record.offset for record in await read_from(log, 12)] == list(range(12, 20))


async def test_read_below_log_start_raises(open_log) -> None:
    log = await open_log(LogConfig(fsync="never", segment_bytes=3 * BATCH_SIZE, retention_bytes=BATCH_SIZE))
    for _ in range(10):
        await log.append([RecordInput(value=b"x" * 50)])
    await log.apply_retention()

    with pytest.raises(OffsetOutOfRangeError, match=r"offset 8 is outside 9\.\.10") as caught:
        await log.read(log.log_start_offset - 1)

    assert log.log_start_offset == 9
    assert "read from an offset in that range" in str(caught.value)


async def test_retention_by_age(open_log, clock: FakeClock, tmp_path: Path) -> None:
    config = LogConfig(fsync="never", segment_bytes=3 * BATCH_SIZE, retention_ms=1000)
    log = await open_log(config)
    for _ in range(9):
        await log.append([RecordInput(value=b"x" * 50)])
    clock.now_ms += 500
    for _ in range(6):
        await log.append([RecordInput(value=b"x" * 50)])
    # Segments 0, 3 and 6 hold records stamped at the start, segment 9 records
    # stamped 500 ms later, and segment 12 is the active one.
    assert [segment.base_offset for segment in log.segments] == [0, 3, 6, 9, 12]

    clock.now_ms += 700
    deleted_first = await log.apply_retention()
    clock.now_ms += 10_000
    deleted_second = await log.apply_retention()

    assert deleted_first == [0, 3, 6]
    assert deleted_second == [9]
    assert log.log_start_offset == 12
    assert segment_files(tmp_path / "partition") == [file_stem(12) + ".log"]
    assert [record.offset for record in await read_from(log, 12)] == [12, 13, 14]


async def test_retention_on_open(tmp_path: Path, open_log) -> None:
    log = await open_log(LogConfig(fsync="never", segment_bytes=3 * BATCH_SIZE))
    for _ in range(10):
        await log.append([RecordInput(value=b"x" * 50)])
    await log.close()

    reopened = await open_log(LogConfig(fsync="never", segment_bytes=3 * BATCH_SIZE, retention_bytes=BATCH_SIZE))

    assert reopened.log_start_offset == 9
    assert reopened.log_end_offset == 10


async def test_delete_segments_before(open_log) -> None:
    log = await open_log(LogConfig(fsync="never", segment_bytes=3 * BATCH_SIZE))
    for _ in range(10):
        await log.append([RecordInput(value=b"x" * 50)])

    deleted = await log.delete_segments_before(7)

    assert deleted == 2
    assert log.log_start_offset == 6


async def test_reopen_keeps_everything(open_log) -> None:
    log = await open_log(READ_CONFIG)
    await append_batches(log, READ_SIZES)
    before = await read_from(log, 0)
    segment_count = len(log.segments)
    await log.close()

    reopened = await open_log(READ_CONFIG)
    after = await read_from(reopened, 0)
    reopened_segment_count = len(reopened.segments)
    base_offset, _ = await reopened.append(records_from(READ_TOTAL, 2))

    assert after == before
    assert reopened_segment_count == segment_count
    assert reopened.log_start_offset == 0
    assert base_offset == READ_TOTAL
    assert [record.value for record in await reopened.read(READ_TOTAL)] == [
        value_for(READ_TOTAL),
        value_for(READ_TOTAL + 1),
    ]


async def test_fsync_always_high_watermark_at_log_end(open_log) -> None:
    log = await open_log(LogConfig(fsync="always"))
    lagging = []
    for number in range(20):
        _, end_offset = await log.append(records_from(log.log_end_offset, 2))
        if log.high_watermark != end_offset or log.log_end_offset != end_offset:
            lagging.append(number)

    assert lagging == []


async def test_fsync_always_concurrent_appends(open_log) -> None:
    log = await open_log(LogConfig(fsync="always"))

    async def append_one(number: int) -> tuple[int, int]:
        _, end_offset = await log.append([RecordInput(value=value_for(number))])
        return end_offset, log.high_watermark

    results = await asyncio.gather(*(append_one(number) for number in range(50)))

    assert [end for end, watermark in results if watermark < end] == []
    assert sorted(end for end, _ in results) == list(range(1, 51))


async def test_group_commit_shares_fsyncs(open_log, monkeypatch: pytest.MonkeyPatch) -> None:
    log = await open_log(LogConfig(fsync="always"))
    fsync_calls = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsync_calls
        fsync_calls += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    append_count = 200

    results = await asyncio.gather(*(log.append([RecordInput(value=b"v")]) for _ in range(append_count)))

    assert sorted(base for base, _ in results) == list(range(append_count))
    assert log.high_watermark == append_count
    assert 0 < fsync_calls < append_count


async def test_wait_for_data_wakes_on_append(open_log) -> None:
    log = await open_log()
    await append_batches(log, [1])
    waiter = asyncio.create_task(log.wait_for_data(1, timeout=5.0))
    await asyncio.sleep(0.01)
    waiting_before_append = not waiter.done()

    await log.append([RecordInput(value=b"new")])
    woke = await asyncio.wait_for(waiter, timeout=1.0)

    assert waiting_before_append
    assert woke is True


async def test_wait_for_data_wakes_after_fsync(open_log) -> None:
    log = await open_log(LogConfig(fsync="always"))
    waiter = asyncio.create_task(log.wait_for_data(0, timeout=5.0))
    await asyncio.sleep(0.01)

    await log.append([RecordInput(value=b"new")])
    woke = await asyncio.wait_for(waiter, timeout=1.0)

    assert woke is True


async def test_wait_for_data_times_out(open_log) -> None:
    log = await open_log()
    await append_batches(log, [1])
    started = time.monotonic()

    woke = await log.wait_for_data(1, timeout=0.05)

    assert woke is False
    assert time.monotonic() - started >= 0.045


async def test_wait_for_data_timeout_is_a_deadline(open_log) -> None:
    log = await open_log()

    async def append_slowly() -> None:
        for _ in range(12):
            await asyncio.sleep(0.05)
            await log.append([RecordInput(value=b"v")])

    appender = asyncio.create_task(append_slowly())
    started = time.monotonic()
    woke = await log.wait_for_data(1000, timeout=0.2)
    elapsed = time.monotonic() - started
    await appender

    assert woke is False
    assert elapsed < 0.5


async def test_wait_for_data_below_watermark(open_log) -> None:
    log = await open_log()
    await append_batches(log, [3])

    assert await log.wait_for_data(2, timeout=0.0) is True


def fail_pwrite_once(monkeypatch: pytest.MonkeyPatch, *, bytes_before_failure: int) -> None:
    """Make the next write fail with ENOSPC after `bytes_before_failure` bytes reach the file."""
    real_pwrite = os.pwrite
    state = {"failed": False, "written": 0}

    def pwrite(fd: int, data: bytes, position: int) -> int:
        if state["failed"]:
            return real_pwrite(fd, data, position)
        if state["written"] < bytes_before_failure:
            count = real_pwrite(fd, bytes(data[: bytes_before_failure - state["written"]]), position)
            state["written"] += count
            return count
        state["failed"] = True
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", pwrite)


@pytest.mark.parametrize("bytes_before_failure", [0, 40], ids=["nothing written", "part of the batch written"])
async def test_disk_full_assigns_no_offset(
    open_log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bytes_before_failure: int
) -> None:
    log = await open_log()
    await append_batches(log, [2, 2])
    segment_path = tmp_path / "partition" / (file_stem(0) + ".log")
    before = segment_path.read_bytes()
    fail_pwrite_once(monkeypatch, bytes_before_failure=bytes_before_failure)

    with pytest.raises(DiskFullError, match="no space left") as caught:
        await log.append(records_from(4, 3))

    assert "offsets 4..6" in str(caught.value)
    assert log.log_end_offset == 4
    assert segment_path.read_bytes() == before
    base_offset, end_offset = await log.append(records_from(4, 3))
    assert (base_offset, end_offset) == (4, 7)
    assert [record.value for record in await read_from(log, 0)] == [value_for(offset) for offset in range(7)]


async def test_disk_full_leaves_reopenable_log(open_log, monkeypatch: pytest.MonkeyPatch) -> None:
    log = await open_log()
    await append_batches(log, [2])
    fail_pwrite_once(monkeypatch, bytes_before_failure=10)
    with pytest.raises(DiskFullError):
        await log.append(records_from(2, 1))
    await log.close()

    reopened = await open_log()

    assert reopened.log_end_offset == 2
    assert [record.value for record in await read_from(reopened, 0)] == [value_for(0), value_for(1)]


CLOSED_CALLS = [
    pytest.param(lambda log: log.append([RecordInput(value=b"v")]), id="append"),
    pytest.param(lambda log: log.read(0), id="read"),
    pytest.param(lambda log: log.flush(), id="flush"),
]


@pytest.mark.parametrize("call", CLOSED_CALLS)
async def test_closed_log_raises(open_log, call: Callable) -> None:
    log = await open_log()
    await append_batches(log, [1])
    await log.close()

    with pytest.raises(ClosedError, match="is closed"):
        await call(log)


async def test_closed_log_offset_for_timestamp_raises(open_log) -> None:
    log = await open_log()
    await log.close()

    with pytest.raises(ClosedError):
        log.offset_for_timestamp(0)


async def test_close_twice(open_log) -> None:
    log = await open_log(LogConfig(fsync="interval"))
    await append_batches(log, [1])

    await log.close()
    await log.close()

    assert log.log_end_offset == 1
