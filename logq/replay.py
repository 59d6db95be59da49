"""Replay: reading a topic from an offset or a time without a consumer group."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from datetime import datetime

from logq.errors import CorruptRecordError, InvalidArgumentError
from logq.message import Message
from logq.segments import PartitionLog, Record
from logq.topics import Topic

READ_BYTES = 1024 * 1024


def timestamp_to_ms(value: datetime | int) -> int:
    """Convert an aware datetime or an int of ms since the epoch to ms since the epoch."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidArgumentError(
                f"datetime {value.isoformat()} has no time zone; pass an aware datetime, "
                "for example with tzinfo=datetime.UTC"
            )
        return int(value.timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidArgumentError(f"expected an aware datetime or ms since the epoch >= 0, got {value!r}")


async def first_offset_at(partition: PartitionLog, timestamp_ms: int) -> int:
    """Return the offset of the first record with a timestamp >= `timestamp_ms`, or the high watermark."""
    offset = max(partition.offset_for_timestamp(timestamp_ms), partition.log_start_offset)
    end = partition.high_watermark
    while offset < end:
        records = await partition.read(offset, max_bytes=READ_BYTES)
        if not records:
            break
        for record in records:
            if record.timestamp_ms >= timestamp_ms:
                return record.offset
        offset = records[-1].offset + 1
    return end


async def _partition_records(partition: PartitionLog, start: int, end: int) -> AsyncIterator[Record]:
    offset = start
    while offset < end:
        try:
            records = await partition.read(offset, max_bytes=READ_BYTES)
        except CorruptRecordError as exc:
            if exc.offsets is not None:
                after = f"replay from offset {exc.offsets.stop} (--from-offset) to read past it"
            else:
                after = "`logq check` names the damaged offsets and where valid batches resume"
            raise CorruptRecordError(f"{exc}; the messages before offset {offset} were replayed. "
                                     f"Restore the segment from a copy, or {after}",
                                     path=exc.path, offsets=exc.offsets) from exc
        if not records:
            return
        for record in records:
            if record.offset >= end:
                return
            yield record
        offset = records[-1].offset + 1


async def replay_topic(
    topic: Topic, numbers: list[int], *, from_offset: int | None, from_time_ms: int | None
) -> AsyncIterator[Message]:
    """Yield the messages of partitions `numbers` from a start point to the high watermarks of now.

    Partitions are merged by (timestamp, partition, offset), so the result is
    in append-time order across partitions and in offset order within each.
    """
    sources = []
    for number in numbers:
        partition = topic.partitions[number]
        end = partition.high_watermark
        if from_time_ms is not None:
            start = await first_offset_at(partition, from_time_ms)
        else:
            start = min(max(from_offset or 0, partition.log_start_offset), end)
        sources.append((number, _partition_records(partition, start, end)))
    heap: list[tuple[int, int, int, Record]] = []
    iterators = dict(sources)
    for number, iterator in sources:
        record = await anext(iterator, None)
        if record is not None:
            heapq.heappush(heap, (record.timestamp_ms, number, record.offset, record))
    while heap:
        _, number, _, record = heapq.heappop(heap)
        yield Message.from_record(topic.name, number, record)
        following = await anext(iterators[number], None)
        if following is not None:
            heapq.heappush(heap, (following.timestamp_ms, number, following.offset, following))
