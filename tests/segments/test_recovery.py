"""Tests of partition recovery on open: torn tails, corrupt batches, damaged indexes, temporary files."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from logq.errors import CorruptRecordError
from logq.segments.batch import CODEC_NONE, CODEC_ZSTD, HEADER_SIZE, Record, RecordInput, iter_batches
from logq.segments.partition_log import LogConfig, PartitionLog

if TYPE_CHECKING:
    from conftest import FakeClock

FIRST_SEGMENT = "00000000000000000000.log"
BATCH_COUNT = 6
RECORDS_PER_BATCH = 4
CODECS = pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZSTD], ids=["none", "zstd"])


def value_for(offset: int) -> bytes:
    """Deterministic value of the record at `offset`, with a length that varies."""
    return f"value-{offset}-".encode() * (1 + offset % 3)


async def write_batches(directory: Path, config: LogConfig, batch_count: int = BATCH_COUNT) -> None:
    log = await PartitionLog.open(directory, config)
    for _ in range(batch_count):
        offset = log.log_end_offset
        records = [
            RecordInput(value=value_for(offset + number), key=f"key-{number}".encode(), headers=(("n", str(number)),))
            for number in range(RECORDS_PER_BATCH)
        ]
        await log.append(records)
    await log.close()


def batch_spans(path: Path) -> list[tuple[int, int, int]]:
    """Return (position, size, base offset) of every batch in the segment file at `path`."""
    return [(position, header.size, header.base_offset) for position, header in iter_batches(path.read_bytes())]


async def read_all(log: PartitionLog, *, max_bytes: int = 1024 * 1024) -> list[Record]:
    records: list[Record] = []
    offset = log.log_start_offset
    while offset < log.high_watermark:
        batch = await log.read(offset, max_bytes=max_bytes)
        assert batch, f"empty read at offset {offset} below the high watermark {log.high_watermark}"
        records.extend(batch)
        offset = batch[-1].offset + 1
    return records


async def check_reopened(directory: Path, config: LogConfig, *, end_offset: int, label: str) -> None:
    """Open the damaged copy at `directory` and check it contains offsets 0..end_offset-1 and accepts appends."""
    log = await PartitionLog.open(directory, config)
    try:
        records = await read_all(log)
        assert log.log_end_offset == end_offset, label
        assert [record.offset for record in records] == list(range(end_offset)), label
        assert [record.value for record in records] == [value_for(offset) for offset in range(end_offset)], label

        base_offset, _ = await log.append([RecordInput(value=b"after recovery")])
        assert base_offset == end_offset, label
        assert [record.value for record in await log.read(base_offset)] == [b"after recovery"], label
    finally:
        await log.close()


@CODECS
@pytest.mark.parametrize("rolled", [False, True], ids=["one segment", "last batch alone in its segment"])
async def test_torn_tail_truncated_at_every_position(tmp_path: Path, codec: int, rolled: bool) -> None:
    source = tmp_path / "source"
    config = LogConfig(fsync="never", codec=codec)
    await write_batches(source, config, BATCH_COUNT - 1)
    if rolled:
        config = replace(config, segment_bytes=1)
    await write_batches(source, config, 1)
    active = sorted(source.glob("*.log"))[-1]
    original = active.read_bytes()
    spans = batch_spans(active)
    position, size, base_offset = spans[-1]

    for cut in range(position, position + size):
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(source, copy)
        with open(copy / active.name, "r+b") as handle:
            handle.truncate(cut)

        await check_reopened(copy, config, end_offset=base_offset, label=f"cut at {cut}")
        # The earlier batches stay byte for byte, and the new append took the torn batch's place.
        recovered = (copy / active.name).read_bytes()
        assert recovered[:position] == original[:position], f"cut at {cut}"
        assert [(start, base) for start, _, base in batch_spans(copy / active.name)] == [
            (start, base) for start, _, base in spans
        ], f"cut at {cut}"
        assert len(sorted(copy.glob("*.log"))) == (2 if rolled else 1), f"cut at {cut}"
        shutil.rmtree(copy)


@CODECS
async def test_torn_tail_truncates_file(tmp_path: Path, codec: int) -> None:
    config = LogConfig(fsync="never", codec=codec)
    await write_batches(tmp_path, config)
    position, size, _ = batch_spans(tmp_path / FIRST_SEGMENT)[-1]
    with open(tmp_path / FIRST_SEGMENT, "r+b") as handle:
        handle.truncate(position + size // 2)

    log = await PartitionLog.open(tmp_path, config)
    await log.close()

    assert (tmp_path / FIRST_SEGMENT).stat().st_size == position


LARGE_VALUE = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MiB, more than one recovery scan chunk


async def write_large_batch_between_small_ones(directory: Path) -> list[tuple[int, int, int]]:
    log = await PartitionLog.open(directory, LogConfig(fsync="never"))
    await log.append([RecordInput(value=b"before")])
    await log.append([RecordInput(value=LARGE_VALUE), RecordInput(value=b"in large batch")])
    await log.append([RecordInput(value=b"after")])
    await log.close()
    return batch_spans(directory / FIRST_SEGMENT)


async def test_large_batch_recovered_whole(tmp_path: Path) -> None:
    spans = await write_large_batch_between_small_ones(tmp_path)

    log = await PartitionLog.open(tmp_path, LogConfig(fsync="never"))
    try:
        values = [record.value for record in await read_all(log)]
    finally:
        await log.close()

    assert spans[1][1] > 3 * 1024 * 1024
    assert values == [b"before", LARGE_VALUE, b"in large batch", b"after"]


@pytest.mark.parametrize("keep", [HEADER_SIZE, 1024 * 1024, 2 * 1024 * 1024 + 5], ids=["header", "1 MiB", "2 MiB"])
async def test_torn_large_batch_truncated(tmp_path: Path, keep: int) -> None:
    spans = await write_large_batch_between_small_ones(tmp_path)
    large_position = spans[1][0]
    with open(tmp_path / FIRST_SEGMENT, "r+b") as handle:
        handle.truncate(large_position + keep)

    log = await PartitionLog.open(tmp_path, LogConfig(fsync="never"))
    try:
        values = [record.value for record in await read_all(log)]
        end_offset = log.log_end_offset
    finally:
        await log.close()

    assert values == [b"before"]
    assert end_offset == 1
    assert (tmp_path / FIRST_SEGMENT).stat().st_size == large_position


async def test_corrupt_large_batch_kept_unreadable(tmp_path: Path) -> None:
    spans = await write_large_batch_between_small_ones(tmp_path)
    damaged = bytearray((tmp_path / FIRST_SEGMENT).read_bytes())
    damaged[spans[1][0] + 2 * 1024 * 1024] ^= 0x04
    (tmp_path / FIRST_SEGMENT).write_bytes(damaged)

    log = await PartitionLog.open(tmp_path, LogConfig(fsync="never"))
    try:
        before = await log.read(0)
        with pytest.raises(CorruptRecordError, match="offsets 1..2") as caught:
            await log.read(1)
        after = await log.read(3)
        end_offset = log.log_end_offset
    finally:
        await log.close()

    # The batch after the damage confirms where it ends, so nothing is truncated and only its offsets fail.
    assert (tmp_path / FIRST_SEGMENT).read_bytes() == damaged
    assert [record.value for record in before] == [b"before"]
    assert caught.value.offsets == range(1, 3)
    assert [record.value for record in after] == [b"after"]
    assert end_offset == 4


async def test_torn_tail_after_several_scan_chunks(tmp_path: Path) -> None:
    # Batches of about 13 KiB straddle the 1 MiB chunks that recovery reads.
    config = LogConfig(fsync="never")
    log = await PartitionLog.open(tmp_path, config)
    for _ in range(200):
        offset = log.log_end_offset
        await log.append([RecordInput(value=value_for(offset + number) * 20) for number in range(40)])
    await log.close()
    position, size, base_offset = batch_spans(tmp_path / FIRST_SEGMENT)[-1]
    with open(tmp_path / FIRST_SEGMENT, "r+b") as handle:
        handle.truncate(position + size - 1)

    log = await PartitionLog.open(tmp_path, config)
    try:
        records = await read_all(log)
        end_offset = log.log_end_offset
    finally:
        await log.close()

    assert position > 2 * 1024 * 1024
    assert end_offset == base_offset
    assert [record.offset for record in records] == list(range(base_offset))
    assert [record.value for record in records] == [value_for(offset) * 20 for offset in range(base_offset)]


GARBAGE = [
    pytest.param(b"\x00", id="one zero byte"),
    pytest.param(b"\x00" * (HEADER_SIZE - 1), id="zeros shorter than a header"),
    pytest.param(b"\x00" * 4096, id="4 KiB of zeros"),
    pytest.param(bytes(range(256)) * 3, id="byte ramp"),
    pytest.param(b"\xff" * 100, id="all ones"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_after_last_batch_truncated(tmp_path: Path, garbage: bytes) -> None:
    config = LogConfig(fsync="never")
    await write_batches(tmp_path, config)
    valid_size = (tmp_path / FIRST_SEGMENT).stat().st_size
    with open(tmp_path / FIRST_SEGMENT, "ab") as handle:
        handle.write(garbage)

    log = await PartitionLog.open(tmp_path, config)
    await log.close()

    assert (tmp_path / FIRST_SEGMENT).stat().st_size == valid_size
    await check_reopened(tmp_path, config, end_offset=BATCH_COUNT * RECORDS_PER_BATCH, label="garbage")


async def test_repeated_last_batch_truncated(tmp_path: Path) -> None:
    config = LogConfig(fsync="never")
    await write_batches(tmp_path, config)
    data = (tmp_path / FIRST_SEGMENT).read_bytes()
    position, size, _ = batch_spans(tmp_path / FIRST_SEGMENT)[-1]
    with open(tmp_path / FIRST_SEGMENT, "ab") as handle:
        handle.write(data[position : position + size])

    await check_reopened(tmp_path, config, end_offset=BATCH_COUNT * RECORDS_PER_BATCH, label="repeated batch")


@CODECS
async def test_flipped_bit_in_last_batch_truncates_it(tmp_path: Path, codec: int) -> None:
    source = tmp_path / "source"
    config = LogConfig(fsync="never", codec=codec)
    await write_batches(source, config)
    position, size, base_offset = batch_spans(source / FIRST_SEGMENT)[-1]
    original = (source / FIRST_SEGMENT).read_bytes()

    for flipped in range(position, position + size):
        copy = tmp_path / f"flip-{flipped}"
        shutil.copytree(source, copy)
        damaged = bytearray(original)
        damaged[flipped] ^= 1 << (flipped % 8)
        (copy / FIRST_SEGMENT).write_bytes(damaged)

        await check_reopened(copy, config, end_offset=base_offset, label=f"bit flipped at {flipped}")
        shutil.rmtree(copy)


@CODECS
async def test_flipped_bit_in_middle_batch_truncates_nothing(tmp_path: Path, codec: int) -> None:
    """A flipped bit in a middle batch of the active segment never truncates and never serves that batch.

    Open keeps the batch as unreadable when the batch after it confirms where
    it ends, and raises otherwise (damage in its length or offset fields).
    """
    config = LogConfig(fsync="never", codec=codec)
    await write_batches(tmp_path, config)
    spans = batch_spans(tmp_path / FIRST_SEGMENT)
    position, size, base_offset = spans[2]
    original = (tmp_path / FIRST_SEGMENT).read_bytes()
    expected = [value_for(offset) for offset in range(BATCH_COUNT * RECORDS_PER_BATCH)]

    opened = []
    for flipped in range(position, position + size):
        label = f"bit flipped at {flipped}"
        damaged = bytearray(original)
        damaged[flipped] ^= 1 << (flipped % 8)
        (tmp_path / FIRST_SEGMENT).write_bytes(damaged)
        try:
            log = await PartitionLog.open(tmp_path, config)
        except CorruptRecordError:
            assert (tmp_path / FIRST_SEGMENT).read_bytes() == damaged, label
            continue
        try:
            end_offset = log.log_end_offset
            readable = {}
            for offset in range(end_offset):
                try:
                    readable.update((r.offset, r.value) for r in await log.read(offset, max_bytes=1))
                except CorruptRecordError:
                    assert base_offset <= offset < base_offset + RECORDS_PER_BATCH, label
        finally:
            await log.close()
        opened.append(flipped)
        assert (tmp_path / FIRST_SEGMENT).read_bytes() == damaged, label
        assert end_offset == len(expected), label
        damaged_offsets = set(range(base_offset, base_offset + RECORDS_PER_BATCH))
        assert {offset: expected[offset] for offset in range(end_offset) if offset not in damaged_offsets} == {
            offset: value for offset, value in readable.items() if offset not in damaged_offsets
        }, label
        assert not damaged_offsets & set(readable), label

    # Every flip in the timestamps and the records (past the record count, which ends at byte 22)
    # leaves the extent confirmed.
    assert set(range(position + 22, position + size)) <= set(opened)


async def test_corrupt_batch_error_message(tmp_path: Path) -> None:
    config = LogConfig(fsync="never")
    await write_batches(tmp_path, config)
    position, size, _ = batch_spans(tmp_path / FIRST_SEGMENT)[1]
    damaged = bytearray((tmp_path / FIRST_SEGMENT).read_bytes())
    # The length field: the batch's end is unknown, so open cannot step over it.
    damaged[position + 10] ^= 0x10
    (tmp_path / FIRST_SEGMENT).write_bytes(damaged)

    with pytest.raises(CorruptRecordError) as caught:
        await PartitionLog.open(tmp_path, config)

    assert FIRST_SEGMENT in str(caught.value)
    assert f"position {position}" in str(caught.value)
    assert "valid batches follow" in str(caught.value)


INDEX_CONFIG = LogConfig(fsync="never", segment_bytes=1500, index_interval_bytes=200)


def damage_index(path: Path, damage: str) -> None:
    if damage == "missing":
        path.unlink()
    elif damage == "short":
        path.write_bytes(path.read_bytes()[:-3])
    elif damage == "garbage":
        path.write_bytes(b"\xa5" * 48)
    elif damage == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
@pytest.mark.parametrize("damage", ["missing", "short", "garbage", "empty"])
async def test_damaged_index_of_closed_segment_rebuilt(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture, suffix: str, damage: str
) -> None:
    log = await PartitionLog.open(tmp_path, INDEX_CONFIG)
    timestamps = []
    for batch in range(40):
        clock.now_ms += 10
        timestamps.append(clock.now_ms)
        offset = log.log_end_offset
        await log.append([RecordInput(value=value_for(offset + number)) for number in range(3)])
    lookups = {timestamp: log.offset_for_timestamp(timestamp) for timestamp in timestamps}
    end_offset = log.log_end_offset
    await log.close()
    index_path = tmp_path / ("00000000000000000000" + suffix)
    originals = {path.name: path.read_bytes() for path in tmp_path.glob("00000000000000000000.*")}
    damage_index(index_path, damage)

    with caplog.at_level(logging.WARNING, logger="logq.segments.recovery"):
        log = await PartitionLog.open(tmp_path, INDEX_CONFIG)
    try:
        reads = [(await log.read(offset, max_bytes=1))[0].value for offset in range(end_offset)]
        rebuilt_lookups = {timestamp: log.offset_for_timestamp(timestamp) for timestamp in timestamps}
    finally:
        await log.close()

    assert len(list(tmp_path.glob("*.log"))) >= 3
    assert f"rebuilding the indexes of {tmp_path / FIRST_SEGMENT}" in caplog.text
    assert index_path.name in caplog.text
    assert reads == [value_for(offset) for offset in range(end_offset)]
    assert rebuilt_lookups == lookups
    assert {path.name: path.read_bytes() for path in tmp_path.glob("00000000000000000000.*")} == originals


async def test_intact_indexes_not_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await write_batches(tmp_path, INDEX_CONFIG, batch_count=30)

    with caplog.at_level(logging.WARNING, logger="logq.segments.recovery"):
        log = await PartitionLog.open(tmp_path, INDEX_CONFIG)
        await log.close()

    assert len(list(tmp_path.glob("*.log"))) >= 3
    assert "rebuilding" not in caplog.text


async def test_offset_for_timestamp_after_reopen(tmp_path: Path, clock: FakeClock) -> None:
    log = await PartitionLog.open(tmp_path, INDEX_CONFIG)
    timestamps = []
    for _ in range(40):
        clock.now_ms += 10
        timestamps.append(clock.now_ms)
        await log.append([RecordInput(value=b"v" * 20) for _ in range(3)])
    await log.close()

    log = await PartitionLog.open(tmp_path, INDEX_CONFIG)
    try:
        found = [log.offset_for_timestamp(timestamp) for timestamp in timestamps]
        before_all = log.offset_for_timestamp(timestamps[0] - 1)
        after_all = log.offset_for_timestamp(timestamps[-1] + 1)
        segment_bases = [segment.base_offset for segment in log.segments]
    finally:
        await log.close()

    # Batch b contains offsets 3b..3b+2, all stamped timestamps[b].
    first_offsets = [3 * batch for batch in range(40)]
    containing_segments = [max(base for base in segment_bases if base <= first) for first in first_offsets]
    assert len(segment_bases) >= 3
    assert [offset <= first for offset, first in zip(found, first_offsets)] == [True] * 40
    assert [offset >= base for offset, base in zip(found, containing_segments)] == [True] * 40
    assert before_all == 0
    assert after_all == 120


async def test_leftover_temp_files_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = LogConfig(fsync="never")
    await write_batches(tmp_path, config)
    leftovers = [tmp_path / "00000000000000000000.index.tmp", tmp_path / "partition.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")

    with caplog.at_level(logging.WARNING, logger="logq.segments.recovery"):
        await check_reopened(tmp_path, config, end_offset=BATCH_COUNT * RECORDS_PER_BATCH, label="temp files")

    assert [path.exists() for path in leftovers] == [False, False]
    assert "removed leftover temporary file" in caplog.text


async def test_empty_directory_opens_at_offset_zero(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path / "new", LogConfig(fsync="never"))
    await log.close()

    assert (tmp_path / "new" / FIRST_SEGMENT).exists()
    assert log.log_end_offset == 0
    assert log.log_start_offset == 0
