"""Tests of damaged files: what reads, reopens, consumers and the group journal do with them.

test_recovery.py covers the active segment: a torn tail cut at every byte,
a flipped bit in its last or a middle batch, damaged indexes of a closed
segment and leftover `.tmp` files. The tests here cover damage that recovery
does not scan for (closed segments), the priority index after a torn tail,
damaged active-segment indexes, the temporary files of each kind of rewrite,
the public consumer API and the group journal.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import logq
from logq.consumers.journal import JOURNAL_DIR_NAME, GroupJournal
from logq.consumers.priority_index import PriorityIndex
from logq.errors import (
    CorruptJournalError,
    CorruptRecordError,
    InvalidArgumentError,
    OffsetOutOfRangeError,
    UnknownGroupError,
)
from logq.segments.batch import CODEC_NONE, CODEC_ZSTD, RecordInput, iter_batches
from logq.segments.indexes import OFFSET_ENTRY, TIME_ENTRY
from logq.segments.partition_log import LogConfig, PartitionLog

if TYPE_CHECKING:
    from conftest import FakeClock

CODECS = pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZSTD], ids=["none", "zstd"])
# Segments of about five batches, with an index entry for every other batch.
SMALL_SEGMENTS = LogConfig(fsync="never", segment_bytes=600, index_interval_bytes=150)
RECORDS_PER_BATCH = 3
BATCH_COUNT = 20


def value_for(offset: int) -> bytes:
    return b"value-%d-" % offset * (1 + offset % 3)


async def write_partition(directory: Path, config: LogConfig, batch_count: int = BATCH_COUNT) -> None:
    log = await PartitionLog.open(directory, config)
    for _ in range(batch_count):
        offset = log.log_end_offset
        await log.append([RecordInput(value=value_for(offset + n)) for n in range(RECORDS_PER_BATCH)])
    await log.close()


def batch_spans(path: Path) -> list[tuple[int, int, int]]:
    """Return (position, size, base offset) of each batch in the segment file at `path`."""
    return [(position, header.size, header.base_offset) for position, header in iter_batches(path.read_bytes())]


def file_contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


async def read_each_offset(log: PartitionLog) -> dict[int, bytes | CorruptRecordError]:
    """Read every offset on its own and return its value or the CorruptRecordError that the read raised."""
    results: dict[int, bytes | CorruptRecordError] = {}
    for offset in range(log.log_start_offset, log.log_end_offset):
        try:
            records = await log.read(offset, max_bytes=1)
        except CorruptRecordError as exc:
            results[offset] = exc
            continue
        assert records[0].offset == offset, f"read of offset {offset} started at {records[0].offset}"
        results[offset] = records[0].value
    return results


# -- a flipped bit in a closed segment ------------------------------------------------------------------


@CODECS
async def test_flipped_bit_in_closed_segment(tmp_path: Path, codec: int) -> None:
    config = replace(SMALL_SEGMENTS, codec=codec)
    source = tmp_path / "source"
    await write_partition(source, config)
    segment = sorted(source.glob("*.log"))[1]
    spans = batch_spans(segment)
    position, size, base_offset = spans[len(spans) // 2]
    damaged_offsets = set(range(base_offset, base_offset + RECORDS_PER_BATCH))
    end_offset = BATCH_COUNT * RECORDS_PER_BATCH
    assert len(list(source.glob("*.log"))) >= 3
    # A damaged length or magic byte hides where the next batch starts, so the
    # offsets up to the next index entry (or the segment's end) may fail too.
    segment_base = int(segment.stem)
    next_segment_base = int(sorted(source.glob("*.log"))[2].stem)
    indexed = [segment_base + relative for relative, _ in OFFSET_ENTRY.iter_unpack(segment.with_suffix(".index").read_bytes())]
    next_indexed = min([offset for offset in indexed if offset > base_offset] + [next_segment_base])
    may_fail = set(range(base_offset, next_indexed))

    # Open does not scan closed segments, so it succeeds with every byte of the batch damaged.
    outcomes: dict[str, int] = {"raised": 0, "served": 0}
    for flipped in range(position, position + size):
        copy = tmp_path / f"flip-{flipped}"
        shutil.copytree(source, copy)
        data = bytearray(segment.read_bytes())
        data[flipped] ^= 1 << (flipped % 8)
        (copy / segment.name).write_bytes(data)
        before = file_contents(copy)

        log = await PartitionLog.open(copy, config)
        try:
            results = await read_each_offset(log)
            assert log.log_end_offset == end_offset, f"bit flipped at {flipped}"
        finally:
            await log.close()

        label = f"bit flipped at {flipped}"
        for offset, result in results.items():
            if isinstance(result, CorruptRecordError):
                outcomes["raised"] += 1
                # Only offsets from the damaged batch to the next index entry may fail, and the error names the segment.
                assert offset in may_fail, f"{label}: offset {offset} raised {result}"
                assert segment.name in str(result), label
            else:
                outcomes["served"] += 1
                assert result == value_for(offset), f"{label}: offset {offset} returned another record"
        assert [isinstance(results[offset], CorruptRecordError) for offset in sorted(damaged_offsets)] == [
            True
        ] * RECORDS_PER_BATCH, label
        # Nothing is truncated or rewritten on reopen or read.
        assert file_contents(copy) == before, label
        shutil.rmtree(copy)

    assert outcomes["raised"] >= size * RECORDS_PER_BATCH


async def test_read_spanning_damage_returns_prefix(tmp_path: Path) -> None:
    await write_partition(tmp_path, SMALL_SEGMENTS)
    segment = sorted(tmp_path.glob("*.log"))[1]
    spans = batch_spans(segment)
    position, size, base_offset = spans[2]
    first_offset = spans[0][2]
    data = bytearray(segment.read_bytes())
    data[position + size - 1] ^= 0x01
    segment.write_bytes(data)

    log = await PartitionLog.open(tmp_path, SMALL_SEGMENTS)
    try:
        prefix = await log.read(first_offset)
        with pytest.raises(CorruptRecordError, match=f"offsets {base_offset}..{base_offset + 2}") as caught:
            await log.read(base_offset)
        after = await log.read(base_offset + RECORDS_PER_BATCH)
    finally:
        await log.close()

    # A read from before the damage returns the records up to it, and the read at it raises.
    assert [record.offset for record in prefix] == list(range(first_offset, base_offset))
    assert "failed its CRC" in str(caught.value)
    assert segment.name in str(caught.value)
    assert after[0].offset == base_offset + RECORDS_PER_BATCH
    assert after[0].value == value_for(base_offset + RECORDS_PER_BATCH)


@pytest.mark.parametrize("field", ["base offset", "length", "record count"])
async def test_damaged_header_in_closed_segment(tmp_path: Path, field: str) -> None:
    # The CRC does not cover the base offset or the length, and batches stepped
    # over on the way to a later offset are not CRC-checked, so these reads rely
    # on the offsets of consecutive batches matching.
    await write_partition(tmp_path, SMALL_SEGMENTS)
    segment = sorted(tmp_path.glob("*.log"))[1]
    position, _, base_offset = batch_spans(segment)[1]
    field_position = {"base offset": 7, "length": 11, "record count": 21}[field]
    data = bytearray(segment.read_bytes())
    data[position + field_position] ^= 0x01
    segment.write_bytes(data)
    before = file_contents(tmp_path)

    log = await PartitionLog.open(tmp_path, SMALL_SEGMENTS)
    try:
        results = await read_each_offset(log)
    finally:
        await log.close()

    for offset, result in results.items():
        if not isinstance(result, CorruptRecordError):
            assert result == value_for(offset), f"offset {offset} returned another record"
    assert isinstance(results[base_offset], CorruptRecordError)
    assert file_contents(tmp_path) == before


# -- a truncated closed segment -------------------------------------------------------------------------


async def test_truncated_closed_segment_raises(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await write_partition(source, SMALL_SEGMENTS)
    segment = sorted(source.glob("*.log"))[1]
    position, size, base_offset = batch_spans(segment)[-1]
    end_offset = BATCH_COUNT * RECORDS_PER_BATCH
    torn_offsets = set(range(base_offset, base_offset + RECORDS_PER_BATCH))

    rejected_opens = 0
    for cut in range(position, position + size):
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(source, copy)
        with open(copy / segment.name, "r+b") as handle:
            handle.truncate(cut)
        before = file_contents(copy)
        label = f"cut at {cut}"

        try:
            log = await PartitionLog.open(copy, SMALL_SEGMENTS)
        except CorruptRecordError as exc:
            # The index pointed past the cut, and the rebuild found the segment short of the next one.
            rejected_opens += 1
            assert "while rebuilding its index" in str(exc), label
        else:
            try:
                results = await read_each_offset(log)
                assert log.log_end_offset == end_offset, label
            finally:
                await log.close()
            # The missing records raise instead of reading as an empty result.
            assert {offset for offset, result in results.items() if isinstance(result, CorruptRecordError)} == (
                torn_offsets
            ), label
            assert all(
                results[offset] == value_for(offset) for offset in range(end_offset) if offset not in torn_offsets
            ), label
        # Recovery truncates only a torn tail of the active segment, never a closed segment.
        assert (copy / segment.name).stat().st_size == cut, label
        assert (copy / segment.name).read_bytes() == before[segment.name], label
        shutil.rmtree(copy)

    assert rejected_opens < size


# -- a torn tail with the priority index -------------------------------------------------------------------


async def test_torn_tail_drops_priority_entries(tmp_path: Path) -> None:
    source = tmp_path / "source"
    config = LogConfig(fsync="never")
    priorities = [0, 2, 5, 0, 2, 1]
    log = await PartitionLog.open(source, config)
    index = await PriorityIndex.open(log)
    for batch in range(4):
        base_offset, _ = await log.append([RecordInput(value=b"v", priority=p) for p in priorities])
        for offset, priority in enumerate(priorities, start=base_offset):
            index.add(offset, priority)
        await index.flush()
    await index.close()
    await log.close()
    segment = source / "00000000000000000000.log"
    position, size, last_base = batch_spans(segment)[-1]

    for cut in range(position, position + size):
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(source, copy)
        with open(copy / segment.name, "r+b") as handle:
            handle.truncate(cut)

        log = await PartitionLog.open(copy, config)
        try:
            index = await PriorityIndex.open(log)
            levels = {level: list(index.offsets(level)) for level in index.levels()}
            # Offsets of the torn batch are written again, with other priorities.
            base_offset, _ = await log.append([RecordInput(value=b"w", priority=9)])
            index.add(base_offset, 9)
            await index.close()
            reopened = await PriorityIndex.open(log)
            reopened_levels = {level: list(reopened.offsets(level)) for level in reopened.levels()}
            await reopened.close()
        finally:
            await log.close()

        expected: dict[int, list[int]] = {}
        for offset in range(last_base):
            if priorities[offset % len(priorities)]:
                expected.setdefault(priorities[offset % len(priorities)], []).append(offset)
        assert levels == expected, f"cut at {cut}"
        assert base_offset == last_base, f"cut at {cut}"
        assert reopened_levels == {**expected, 9: [last_base]}, f"cut at {cut}"
        shutil.rmtree(copy)


# -- damaged indexes of the active segment and temporary files ----------------------------------------------


@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
@pytest.mark.parametrize("damage", ["missing", "short", "garbage"])
async def test_damaged_active_segment_index_rebuilt(tmp_path: Path, clock: FakeClock, suffix: str,
                                                    damage: str) -> None:
    config = LogConfig(fsync="never", index_interval_bytes=150)
    log = await PartitionLog.open(tmp_path, config)
    for _ in range(12):
        clock.now_ms += 10
        offset = log.log_end_offset
        await log.append([RecordInput(value=value_for(offset + n)) for n in range(RECORDS_PER_BATCH)])
    lookups = {ms: log.offset_for_timestamp(ms) for ms in range(clock.now_ms - 130, clock.now_ms + 1, 5)}
    await log.close()
    originals = file_contents(tmp_path)
    index_path = tmp_path / ("00000000000000000000" + suffix)
    if damage == "missing":
        index_path.unlink()
    elif damage == "short":
        index_path.write_bytes(index_path.read_bytes()[:-5])
    else:
        index_path.write_bytes(b"\x5a" * 37)

    log = await PartitionLog.open(tmp_path, config)
    try:
        results = await read_each_offset(log)
        rebuilt_lookups = {ms: log.offset_for_timestamp(ms) for ms in lookups}
    finally:
        await log.close()

    # The active segment's indexes are always rebuilt by the scan on open.
    assert results == {offset: value_for(offset) for offset in range(12 * RECORDS_PER_BATCH)}
    assert rebuilt_lookups == lookups
    assert file_contents(tmp_path) == originals


async def test_damaged_index_entry_skips_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A middle entry moved to the next batch keeps the file in order, so open
    # accepts it. The read notices that the entry names another batch.
    config = replace(SMALL_SEGMENTS, segment_bytes=2000, index_interval_bytes=300)
    await write_partition(tmp_path, config)
    index_path = tmp_path / "00000000000000000000.index"
    entries = bytearray(index_path.read_bytes())
    assert len(entries) >= 16
    spans = batch_spans(tmp_path / "00000000000000000000.log")
    relative = int.from_bytes(entries[8:12], "big")
    position = int.from_bytes(entries[12:16], "big")
    next_position = min(start for start, _, _ in spans if start > position)
    assert len(entries) < 24 or next_position < int.from_bytes(entries[20:24], "big")
    entries[12:16] = next_position.to_bytes(4, "big")
    index_path.write_bytes(entries)

    with caplog.at_level(logging.ERROR, logger="logq.segments.partition_log"):
        log = await PartitionLog.open(tmp_path, config)
        try:
            results = await read_each_offset(log)
        finally:
            await log.close()

    assert results == {offset: value_for(offset) for offset in range(BATCH_COUNT * RECORDS_PER_BATCH)}
    assert f"maps offset {relative} to position {next_position}" in caplog.text


async def test_lowered_time_index_timestamp_detected(tmp_path: Path, clock: FakeClock) -> None:
    log = await PartitionLog.open(tmp_path, SMALL_SEGMENTS)
    first_ms = clock.now_ms
    for batch in range(BATCH_COUNT):
        clock.now_ms = first_ms + 10 * batch
        offset = log.log_end_offset
        await log.append([RecordInput(value=value_for(offset + n)) for n in range(RECORDS_PER_BATCH)])
    await log.close()
    path = tmp_path / "00000000000000000000.timeindex"
    entries = [list(entry) for entry in TIME_ENTRY.iter_unpack(path.read_bytes())]
    entries[2][0] = entries[1][0] + 1
    path.write_bytes(b"".join(TIME_ENTRY.pack(*entry) for entry in entries))

    log = await PartitionLog.open(tmp_path, SMALL_SEGMENTS)
    try:
        found = {batch: log.offset_for_timestamp(first_ms + 10 * batch) for batch in range(BATCH_COUNT)}
    finally:
        await log.close()

    assert all(found[batch] <= batch * RECORDS_PER_BATCH for batch in found), found


TEMP_FILES = [
    pytest.param("00000000000000000000.index.tmp", id="offset index rewrite"),
    pytest.param("00000000000000000000.timeindex.tmp", id="time index rewrite"),
    pytest.param("00000000000000000009.log.tmp", id="segment name"),
    pytest.param("priority.index.tmp", id="priority index rewrite"),
    pytest.param("priority.checkpoint.tmp", id="priority checkpoint"),
]


@pytest.mark.parametrize("name", TEMP_FILES)
async def test_leftover_temp_file_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str) -> None:
    # write_file_atomically names its temporary file <name>.tmp; a crash before
    # the rename leaves it beside the file it was to replace.
    config = LogConfig(fsync="never")
    log = await PartitionLog.open(tmp_path, config)
    index = await PriorityIndex.open(log)
    base_offset, _ = await log.append([RecordInput(value=b"v", priority=4)])
    index.add(base_offset, 4)
    await index.close()
    await log.close()
    before = file_contents(tmp_path)
    (tmp_path / name).write_bytes(b"\x00partial")

    with caplog.at_level(logging.WARNING, logger="logq"):
        log = await PartitionLog.open(tmp_path, config)
        index = await PriorityIndex.open(log)
        offsets = list(index.offsets(4))
        await index.close()
        await log.close()

    assert not (tmp_path / name).exists()
    assert f"removed leftover temporary file {tmp_path / name}" in caplog.text
    assert offsets == [0]
    assert file_contents(tmp_path) == before


# -- the consumer API --------------------------------------------------------------------------------------


async def corrupt_topic(data_dir: Path, byte_in_batch: int | None = None) -> tuple[Path, int]:
    """Write a topic of one-message batches over several segments and damage a batch in the first one.

    The flipped bit is in the last record by default, or at `byte_in_batch`
    from the start of the batch. Returns the damaged segment's path and the
    damaged offset.
    """
    async with logq.open(data_dir) as log:
        await log.create_topic("orders", segment_bytes=4096)
        for offset in range(60):
            await log.send("orders", value_for(offset) + b"." * 100)
    segment = sorted((data_dir / "topics" / "orders" / "0").glob("*.log"))[0]
    position, size, base_offset = batch_spans(segment)[3]
    data = bytearray(segment.read_bytes())
    data[position + (size - 5 if byte_in_batch is None else byte_in_batch)] ^= 0x20
    segment.write_bytes(data)
    return segment, base_offset


async def test_consumer_stops_at_corrupt_batch(tmp_path: Path) -> None:
    segment, damaged = await corrupt_topic(tmp_path)
    damaged_bytes = segment.read_bytes()

    async with logq.open(tmp_path) as log:
        consumer = log.consumer("orders", group="billing")
        received = [message.offset for message in await consumer.receive(damaged, timeout=0)]
        for _ in range(3):
            with pytest.raises(CorruptRecordError, match="failed its CRC") as raised:
                await consumer.receive(10, timeout=0)
            assert raised.value.offsets == range(damaged, damaged + 1)
            assert (f"group 'billing' cannot read on in orders/0" in str(raised.value))
            assert (f"logq groups skip billing --topic orders --partition 0 --from {damaged} --to {damaged + 1}"
                    in str(raised.value))
        await consumer.close()
        [info] = await log.describe_group("billing")

    # The consumer gets the messages before the damage, then an error on every
    # receive: it neither skips the damaged message nor truncates anything.
    assert received == list(range(damaged))
    assert info.committed_offset == damaged
    assert segment.read_bytes() == damaged_bytes


async def test_consumer_continues_after_reset_past_damage(tmp_path: Path) -> None:
    _, damaged = await corrupt_topic(tmp_path)

    async with logq.open(tmp_path) as log:
        await log.reset_group("billing", "orders", to=damaged + 1)
        consumer = log.consumer("orders", group="billing")
        messages = await consumer.receive(100, timeout=0)
        await consumer.close()

    # Skipping the damaged message takes an explicit reset past it.
    assert [message.offset for message in messages] == list(range(damaged + 1, 60))
    assert messages[0].value == value_for(damaged + 1) + b"." * 100


async def test_consumer_continues_after_skipping_the_damage(tmp_path: Path) -> None:
    _, damaged = await corrupt_topic(tmp_path)

    async with logq.open(tmp_path) as log:
        consumer = log.consumer("orders", group="billing", auto_ack=False)
        other = log.consumer("orders", group="audit", auto_ack=False)
        first = await consumer.receive(damaged, timeout=0)
        await consumer.ack(first)
        with pytest.raises(CorruptRecordError) as raised:
            await consumer.receive(10, timeout=0)
        error = raised.value
        assert error.offsets is not None
        assert await log.skip_messages("billing", "orders", partition=0, start=error.offsets.start,
                                       end=error.offsets.stop) == 1
        rest = await consumer.receive(100, timeout=0)
        await consumer.ack(rest)
        # Only the group that skipped passes the damage; another group still meets it.
        assert [m.offset for m in await other.receive(damaged, timeout=0)] == list(range(damaged))
        with pytest.raises(CorruptRecordError):
            await other.receive(10, timeout=0)
        await other.close()
        await consumer.close()
        [info] = await log.describe_group("billing")

    # Unlike a reset, skipping keeps the acks before the damage and every delivery.
    assert [m.offset for m in rest] == list(range(damaged + 1, 60))
    assert info.committed_offset == 60


async def test_skip_with_unacked_messages_before_the_damage(tmp_path: Path) -> None:
    _, damaged = await corrupt_topic(tmp_path)

    async with logq.open(tmp_path) as log:
        consumer = log.consumer("orders", group="billing", auto_ack=False)
        # A receive asking for more than lies before the damage gets those messages, not an error.
        before = await consumer.receive(100, timeout=0)
        with pytest.raises(CorruptRecordError) as raised:
            await consumer.receive(100, timeout=0)
        # Skip while the messages before the damage are still leased, then a new consumer reads on.
        await log.skip_messages("billing", "orders", partition=0, start=raised.value.offsets.start,
                                end=raised.value.offsets.stop)
        await consumer.close()
        other = log.consumer("orders", group="billing", auto_ack=False)
        again = await other.receive(100, timeout=0)
        await other.ack(again)
        await other.close()
        [info] = await log.describe_group("billing")

    assert [m.offset for m in before] == list(range(damaged))
    assert [m.offset for m in again] == [*range(damaged), *range(damaged + 1, 60)]
    assert info.committed_offset == 60


async def test_damage_in_one_partition_leaves_the_others_readable(tmp_path: Path) -> None:
    async with logq.open(tmp_path) as log:
        await log.create_topic("orders", partitions=2, segment_bytes=4096)
        for number in range(120):
            await log.send("orders", value_for(number) + b"." * 100, partition=number % 2)
    # The first segment of partition 1 is closed, so the damage is in the middle of the log.
    segment = tmp_path / "topics" / "orders" / "1" / "00000000000000000000.log"
    position, size, _ = batch_spans(segment)[3]
    data = bytearray(segment.read_bytes())
    data[position + size - 5] ^= 0x20
    segment.write_bytes(data)

    async with logq.open(tmp_path) as log:
        consumer = log.consumer("orders", group="billing")
        # The first receive delivers everything that can be read; the next one reports the damage.
        received = [(m.partition, m.offset) for m in await consumer.receive(100, timeout=0)]
        with pytest.raises(CorruptRecordError, match="cannot read on in orders/1") as raised:
            await consumer.receive(100, timeout=0)
        await consumer.close()

    assert sorted(received) == sorted([(0, offset) for offset in range(60)] + [(1, offset) for offset in range(3)])
    assert raised.value.offsets == range(3, 4)
    assert "--partition 1 --from 3 --to 4" in str(raised.value)


@pytest.mark.parametrize(("field", "where"), [(18, "record count"), (12, "magic")])
async def test_damaged_header_names_no_offsets(tmp_path: Path, field: int, where: str) -> None:
    """A damaged record count or magic byte leaves the batch's extent unknown, so no range is suggested."""
    # The record count is a big-endian int, so its last byte changes it by 32.
    segment, damaged = await corrupt_topic(tmp_path, byte_in_batch=field + 3 if field == 18 else field)

    async with logq.open(tmp_path) as log:
        consumer = log.consumer("orders", group="billing")
        await consumer.receive(damaged, timeout=0)
        with pytest.raises(CorruptRecordError) as raised:
            await consumer.receive(10, timeout=0)
        await consumer.close()

    assert raised.value.offsets is None, where
    assert raised.value.path == segment
    assert "run `logq check` to find the damaged offsets" in str(raised.value)
    assert "--partition 0 --from FIRST --to RESUME" in str(raised.value)


@pytest.mark.parametrize(("arguments", "error", "text"), [
    (dict(partition=1, start=0, end=1), InvalidArgumentError, "has no partition 1"),
    (dict(partition=0, start=3, end=3), InvalidArgumentError, "use end 4"),
    (dict(partition=0, start=-1, end=3), InvalidArgumentError, "start must be an int >= 0, got -1"),
    (dict(partition=0, start=0, end=True), InvalidArgumentError, "end must be an int >= 0, got True"),
    (dict(partition=0, start=0, end=61), OffsetOutOfRangeError, "use an end of at most 60"),
])
async def test_skip_messages_rejects_bad_ranges(tmp_path: Path, arguments: dict[str, int], error: type,
                                                text: str) -> None:
    await corrupt_topic(tmp_path)
    async with logq.open(tmp_path) as log:
        consumer = log.consumer("orders", group="billing")
        await consumer.receive(1, timeout=0)
        with pytest.raises(error, match=re.escape(text)):
            await log.skip_messages("billing", "orders", **arguments)
        with pytest.raises(UnknownGroupError):
            await log.skip_messages("nobody", "orders", partition=0, start=0, end=1)
        with pytest.raises(InvalidArgumentError, match="has not read orders/0 yet"):
            await log.configure_group("fresh", lease_timeout=5)
            await log.skip_messages("fresh", "orders", partition=0, start=0, end=1)
        [info] = await log.describe_group("billing")
        assert info.committed_offset == 0
        await consumer.close()


# -- the group journal ---------------------------------------------------------------------------------------


async def write_journal(directory: Path, event_count: int) -> Path:
    journal, _, _ = await GroupJournal.open(directory)
    for number in range(event_count):
        await journal.append([{"event": "ack", "topic": "t", "partition": 0, "ranges": [[number, number + 1]]}])
    await journal.close()
    return directory / JOURNAL_DIR_NAME / "00000000000000000000.log"


@pytest.mark.parametrize("which", ["middle", "last"])
async def test_flipped_bit_in_journal_record(tmp_path: Path, which: str) -> None:
    source = tmp_path / "source"
    segment = await write_journal(source, 6)
    spans = batch_spans(segment)
    position, size, base_offset = spans[2 if which == "middle" else -1]

    for flipped in range(position, position + size):
        copy = tmp_path / f"flip-{flipped}"
        shutil.copytree(source, copy)
        damaged_segment = copy / JOURNAL_DIR_NAME / segment.name
        data = bytearray(segment.read_bytes())
        data[flipped] ^= 1 << (flipped % 8)
        damaged_segment.write_bytes(data)
        label = f"bit flipped at {flipped}"

        if which == "middle":
            # Valid events follow the damage, so opening the journal raises and changes nothing: at
            # recovery when the damage hides where the batch ends, else when the events replay.
            with pytest.raises((CorruptRecordError, CorruptJournalError),
                               match="valid batches follow|cannot be replayed"):
                await GroupJournal.open(copy)
            assert damaged_segment.read_bytes() == data, label
        else:
            # A damaged last event is a torn tail: it is dropped, the events before it replay.
            journal, snapshot, events = await GroupJournal.open(copy)
            await journal.close()
            assert snapshot is None, label
            assert [event["ranges"] for event in events] == [[[n, n + 1]] for n in range(base_offset)], label
            assert damaged_segment.stat().st_size == position, label
        shutil.rmtree(copy)


@pytest.mark.parametrize("acked", ["all", "some"])
async def test_group_forgets_offsets_a_lost_tail_held(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      acked: str) -> None:
    """A log that lost its tail gets new messages at the lost offsets, and the group must deliver them."""
    async with logq.open(tmp_path) as log:
        for number in range(20):
            await log.send("orders", f"old-{number}")
        consumer = log.consumer("orders", group="billing", auto_ack=False)
        messages = await consumer.receive(20)
        await consumer.ack(messages if acked == "all" else [messages[0], messages[18], messages[19]])
        await consumer.close()
    # Cut the last two batches, as a power failure under fsync="interval" can.
    segment = tmp_path / "topics" / "orders" / "0" / "00000000000000000000.log"
    position, _, base_offset = batch_spans(segment)[18]
    assert base_offset == 18
    segment.write_bytes(segment.read_bytes()[:position])

    async with logq.open(tmp_path) as log:
        assert [await log.send("orders", f"new-{number}") for number in range(3)] == [18, 19, 20]
        consumer = log.consumer("orders", group="billing", auto_ack=False)
        received = await consumer.receive(100, timeout=0)
        await consumer.ack(received)
        await consumer.close()

    expected = [f"new-{number}" for number in range(3)]
    if acked == "some":
        expected = [f"old-{number}" for number in range(1, 18)] + expected
    assert [message.value for message in received] == expected
    assert "forgetting them, so messages written from offset 18 on are delivered" in caplog.text


async def test_replay_yields_messages_before_damage(tmp_path: Path) -> None:
    _, damaged = await corrupt_topic(tmp_path)

    replayed = []
    async with logq.open(tmp_path) as log:
        with pytest.raises(CorruptRecordError, match=f"replay from offset {damaged + 1}") as raised:
            async for message in log.replay("orders"):
                replayed.append(message.offset)
        after = [message.offset async for message in log.replay("orders", from_offset=damaged + 1)]

    assert replayed == list(range(damaged))
    assert raised.value.offsets == range(damaged, damaged + 1)
    assert after == list(range(damaged + 1, 60))


def test_cli_replay_prints_messages_before_damage(tmp_path: Path) -> None:
    _, damaged = asyncio.run(corrupt_topic(tmp_path))
    result = subprocess.run([sys.executable, "-m", "logq", "--data", str(tmp_path), "replay", "orders"],
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 7, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == [f"0:{n}" for n in range(damaged)]
    assert f"replay from offset {damaged + 1} (--from-offset)" in result.stderr
