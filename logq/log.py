"""The embedded log: a data directory of topics and consumer groups, behind one async API.

Layout of a data directory:

    .lock                      owner of the directory (see segments.DataDirLock)
    topics/<topic>/topic.json  settings of a topic
    topics/<topic>/<n>/        partition n: segments and indexes
    groups/<group>/            journal and snapshot of a consumer group
    staging/                   topics being created or deleted; emptied on open
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from logq._types import Headers, Key, Value
from logq.consumer import Consumer, StartPosition
from logq import dead_letters
from logq.consumers import Group, GroupConfig
from logq.dead_letters import DeadLetter, RedriveReport
from logq.delivery import GroupRuntime
from logq.errors import (
    ClosedError,
    InvalidArgumentError,
    InvalidConfigError,
    MessageTooLargeError,
    OffsetOutOfRangeError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicError,
)
from logq.message import Message, encode_value
from logq.names import validate_name
from logq.replay import first_offset_at, replay_topic, timestamp_to_ms
from logq.segments import DataDirLock, PartitionLog, PlainRecords, RecordInput
from logq.topics import Topic, TopicConfig

logger = logging.getLogger(__name__)

MAX_PRIORITY = 255
MAX_HEADERS = 0xFFFF  # the record format stores the header count as uint16


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """Offsets and size of one partition."""

    partition: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    size_bytes: int
    segments: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic's settings and the state of its partitions."""

    name: str
    config: TopicConfig
    partitions: list[PartitionInfo]

    @property
    def messages(self) -> int:
        """Messages stored in all partitions (below the high watermarks)."""
        return sum(p.high_watermark - p.log_start_offset for p in self.partitions)


@dataclass(frozen=True, slots=True)
class GroupPartitionInfo:
    """A group's position in one partition.

    `lag` is high watermark minus committed offset. `in_flight` counts leased
    messages, `waiting` those waiting for redelivery (ready or delayed),
    `held` those held back by per-key ordering, and `dead_lettered` the
    messages this group sent to its dead-letter topic.
    """

    topic: str
    partition: int
    committed_offset: int
    high_watermark: int
    lag: int
    in_flight: int
    waiting: int = 0
    held: int = 0
    dead_lettered: int = 0


class Log:
    """An open data directory. Create it with `logq.open`.

    One process owns a data directory at a time; a second `open` of the same
    directory raises DataDirLockedError. All coroutines run on the event loop
    that opened the log.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        auto_create_topics: bool = True,
        group_fsync: str = "interval",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.auto_create_topics = auto_create_topics
        self.group_fsync = group_fsync
        self.clock = clock
        self._lock = DataDirLock(self.path)
        self._topics: dict[str, Topic] = {}
        self._groups: dict[str, Group] = {}
        self._runtimes: dict[str, GroupRuntime] = {}
        self._group_open_lock = asyncio.Lock()
        self._consumers: set[Consumer] = set()
        self.closed = True

    @property
    def _topics_dir(self) -> Path:
        return self.path / "topics"

    @property
    def _groups_dir(self) -> Path:
        return self.path / "groups"

    @property
    def _staging_dir(self) -> Path:
        return self.path / "staging"

    async def _open(self) -> Log:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot create data directory {self.path}: {exc}") from exc
        self._lock.acquire()
        try:
            self._topics_dir.mkdir(exist_ok=True)
            self._groups_dir.mkdir(exist_ok=True)
            self._empty_staging()
            for directory in sorted(self._topics_dir.iterdir()):
                if directory.is_dir():
                    self._topics[directory.name] = await Topic.open(directory.name, directory)
        except BaseException:
            await self._close_all([])  # the open error is the one to report
            raise
        self.closed = False
        logger.info("opened data directory %s with %d topics", self.path, len(self._topics))
        return self

    def _empty_staging(self) -> None:
        """Remove topic directories left half created or half deleted by a crash."""
        if self._staging_dir.exists():
            for leftover in self._staging_dir.iterdir():
                logger.warning("removing %s, left by an interrupted topic create or delete", leftover)
                shutil.rmtree(leftover)

    async def close(self) -> None:
        """Close consumers, groups and topics, flushing everything written. Safe to call twice.

        Open consumers are closed first, so auto-ack still commits what they
        returned. Every part is closed even when one fails (a full disk, say);
        the first error is raised at the end, and the directory is unlocked.
        """
        if self.closed:
            return
        errors: list[Exception] = []
        for consumer in list(self._consumers):
            await self._close_part(consumer, f"consumer of group {consumer._group_name!r}", errors)
        self.closed = True
        await self._close_all(errors)
        logger.info("closed data directory %s", self.path)
        if errors:
            raise errors[0]

    async def _close_all(self, errors: list[Exception]) -> None:
        try:
            for name, group in self._groups.items():
                await self._close_part(group, f"group {name!r}", errors)
            for name, topic in self._topics.items():
                await self._close_part(topic, f"topic {name!r}", errors)
        finally:
            self._groups.clear()
            self._runtimes.clear()
            self._topics.clear()
            self._lock.release()

    @staticmethod
    async def _close_part(part: Any, description: str, errors: list[Exception]) -> None:
        """Close `part`; on failure log and keep the error, so the other parts still close."""
        try:
            await part.close()
        except Exception as exc:  # noqa: BLE001 - every part must get its close; the first error is raised later
            logger.error("closing the %s failed: %s", description, exc)
            errors.append(exc)

    async def __aenter__(self) -> Log:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the log at {self.path} is closed; open it again with logq.open()")

    # -- topics -------------------------------------------------------------------

    async def create_topic(self, name: str, **settings: Any) -> TopicInfo:
        """Create a topic; `settings` are the fields of `TopicConfig`.

        Raises InvalidNameError, InvalidConfigError (unknown or out-of-range
        setting) or TopicExistsError.
        """
        self._check_open()
        validate_name(name, "topic")
        unknown = set(settings) - set(TopicConfig.__dataclass_fields__)
        if unknown:
            raise InvalidArgumentError(
                f"unknown topic setting {', '.join(sorted(unknown))}; "
                f"valid settings are {', '.join(TopicConfig.__dataclass_fields__)}"
            )
        config = TopicConfig(**settings)
        if name in self._topics or (self._topics_dir / name).exists():
            raise TopicExistsError(f"topic {name!r} already exists; delete it first or pick another name")
        self._topics[name] = await Topic.create(
            name, self._topics_dir / name, config, staging=self._staging_dir / f"create-{name}"
        )
        return self.describe_topic(name)

    def list_topics(self) -> list[str]:
        """Return the topic names, sorted."""
        self._check_open()
        return sorted(self._topics)

    def describe_topic(self, name: str) -> TopicInfo:
        """Return a topic's settings and per-partition offsets; raises UnknownTopicError."""
        topic = self._topic(name)
        partitions = [
            PartitionInfo(
                partition=number,
                log_start_offset=partition.log_start_offset,
                log_end_offset=partition.log_end_offset,
                high_watermark=partition.high_watermark,
                size_bytes=partition.size_bytes,
                segments=len(partition.segments),
            )
            for number, partition in enumerate(topic.partitions)
        ]
        return TopicInfo(name=name, config=topic.config, partitions=partitions)

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and all its messages; raises UnknownTopicError."""
        topic = self._topic(name)
        for consumer in [c for c in self._consumers if c.topic == name]:
            await consumer.close()
        del self._topics[name]
        await topic.close()
        await self._forget_topic_in_groups(name)
        # Renaming first makes the delete atomic: a crash leaves the whole
        # topic or nothing, and the next open empties the staging directory.
        doomed = self._staging_dir / f"delete-{name}"
        shutil.rmtree(doomed, ignore_errors=True)
        self._staging_dir.mkdir(exist_ok=True)
        topic.directory.rename(doomed)
        shutil.rmtree(doomed)
        logger.info("deleted topic %s", name)

    async def _forget_topic_in_groups(self, name: str) -> None:
        """Drop every group's state for a deleted topic, so a new topic of that name starts fresh."""
        for runtime in self._runtimes.values():
            runtime.topics.pop(name, None)
            for partition in [p for p in runtime.selectors if p[0] == name]:
                del runtime.selectors[partition]
        for group_name in self.list_groups():
            group = await self.group(group_name)
            await group.forget_topic(name)

    def _topic(self, name: str) -> Topic:
        self._check_open()
        topic = self._topics.get(name)
        if topic is None:
            validate_name(name, "topic")
            raise UnknownTopicError(
                f"topic {name!r} does not exist; create it with `logq topics create {name}` "
                "or Log.create_topic()"
            )
        return topic

    async def _topic_for_send(self, name: str) -> Topic:
        self._check_open()
        if name not in self._topics and self.auto_create_topics:
            validate_name(name, "topic")
            await self.create_topic(name)
        return self._topic(name)

    # -- producing --------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: Value,
        *,
        key: Key | None = None,
        headers: Headers | None = None,
        priority: int = 0,
        partition: int | None = None,
    ) -> int:
        """Append one message and return its offset in its partition.

        `value`: bytes are stored as they are, anything else as JSON.
        `key`: str or bytes; messages with the same key go to the same
        partition. `priority`: 0 (default) to 255, higher is more urgent.
        `partition`: override the choice by key or round-robin.
        Returns when the message reached the OS, or is on disk under the
        topic's `fsync="always"`. Creates the topic with default settings if
        it does not exist and `auto_create_topics` is on.
        Raises InvalidArgumentError for a bad value, key, header or priority,
        MessageTooLargeError above the topic's max message size, and
        DiskFullError when the disk is full (nothing is stored then).
        """
        offsets = await self.send_batch(
            topic, [value], key=key, headers=headers, priority=priority, partition=partition
        )
        return offsets[0]

    async def send_batch(
        self,
        topic: str,
        values: Iterable[Value],
        *,
        key: Key | None = None,
        headers: Headers | None = None,
        priority: int = 0,
        partition: int | None = None,
    ) -> list[int]:
        """Append several messages with shared key, headers and priority; return their offsets in order.

        The messages of each partition go in one record batch, so they are
        stored together or not at all. Arguments and errors are those of `send`,
        and a `values` that is a str, bytes or not iterable raises
        InvalidArgumentError.
        """
        target = await self._topic_for_send(topic)
        key_bytes = _encode_key(key)
        header_items = _check_headers(headers)
        _check_priority(priority)
        shared_bytes = len(key_bytes or b"") + sum(
            len(name.encode("utf-8")) + len(text.encode("utf-8")) for name, text in header_items
        )
        room = target.config.max_message_bytes - shared_bytes
        if not isinstance(values, list):
            values = _list_values(values)
        records: list[RecordInput] | PlainRecords
        if key_bytes is None and not header_items and all(type(value) is bytes for value in values):
            if values and max(map(len, values)) > room:
                _check_size(max(map(len, values)) + shared_bytes, target)
            records = PlainRecords(values, priority)  # type: ignore[arg-type]
            return await self._append_records(target, records, key_bytes, partition)
        records = []
        append = records.append
        make_record = tuple.__new__  # RecordInput(...) with keywords costs twice as much per message
        for value in values:
            if type(value) is bytes:
                data, flags = value, 0
            else:
                data, flags = encode_value(value)
            if len(data) > room:
                _check_size(len(data) + shared_bytes, target)
            append(make_record(RecordInput, (data, key_bytes, header_items, priority, flags)))
        return await self._append_records(target, records, key_bytes, partition)

    async def _append_records(self, target: Topic, records: list[RecordInput] | PlainRecords, key: bytes | None,
                              partition: int | None) -> list[int]:
        if not records:
            return []
        chosen = self._partition_for(target, key, partition)
        if chosen is not None:
            base = await target.append(chosen, records)
            return list(range(base, base + len(records)))
        return await self._send_round_robin(target, records)

    async def _send_round_robin(self, target: Topic, records: list[RecordInput] | PlainRecords) -> list[int]:
        by_partition: dict[int, list[int]] = defaultdict(list)
        for index in range(len(records)):
            by_partition[target.choose_partition(None)].append(index)
        offsets = [0] * len(records)
        for number, indexes in by_partition.items():
            base = await target.append(number, [records[i] for i in indexes])
            for delta, index in enumerate(indexes):
                offsets[index] = base + delta
        return offsets

    def _partition_for(self, target: Topic, key: bytes | None, partition: int | None) -> int | None:
        if partition is not None:
            count = target.config.partitions
            if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < count:
                raise InvalidArgumentError(
                    f"partition {partition!r} does not exist in topic {target.name!r}; use 0..{count - 1}"
                )
            return partition
        if key is not None or target.config.partitions == 1:
            return target.choose_partition(key) if key is not None else 0
        return None

    # -- consuming --------------------------------------------------------------------

    def consumer(
        self,
        topic: str,
        *,
        group: str,
        auto_ack: bool = True,
        start: StartPosition = "earliest",
        prefetch: int = 10,
    ) -> Consumer:
        """Return a new consumer of `topic` in consumer group `group`.

        `start` sets where a group that never read the topic begins:
        "earliest" (the log start offset, the default) or "latest" (only
        messages sent from now on). A group that has read it before continues
        at its committed offset. `prefetch`: messages the async iterator
        leases at a time. See `Consumer` for `auto_ack`.
        Raises UnknownTopicError, InvalidNameError or InvalidArgumentError.
        """
        target = self._topic(topic)
        validate_name(group, "group")
        if not isinstance(auto_ack, bool):
            raise InvalidArgumentError(f"auto_ack must be True or False, got {auto_ack!r}")
        if start not in ("earliest", "latest"):
            raise InvalidArgumentError(f"invalid start {start!r}; use 'earliest' or 'latest'")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 10_000:
            raise InvalidArgumentError(f"prefetch must be an int from 1 to 10000, got {prefetch!r}")
        consumer = Consumer(self, target, group, auto_ack=auto_ack, start=start, prefetch=prefetch)
        self._consumers.add(consumer)
        return consumer

    def _forget_consumer(self, consumer: Consumer) -> None:
        self._consumers.discard(consumer)

    async def group(self, name: str, *, create: bool = True) -> Group:
        """Return the open group `name`, opening its journal on first use (internal)."""
        self._check_open()
        validate_name(name, "group")
        group = self._groups.get(name)
        if group is not None:
            return group
        # Group.open awaits, so two tasks could otherwise open the same journal twice.
        async with self._group_open_lock:
            group = self._groups.get(name)
            if group is None:
                directory = self._groups_dir / name
                if not create and not directory.exists():
                    raise UnknownGroupError(f"consumer group {name!r} does not exist; see `logq groups list`")
                group = await Group.open(name, directory, fsync=self.group_fsync, clock=self.clock)
                try:
                    await self._forget_lost_tails(group)
                except BaseException:
                    await group.close()
                    raise
                self._groups[name] = group
        return group

    async def _forget_lost_tails(self, group: Group) -> None:
        """Make a group opened from disk forget offsets that logs opened in this process no longer hold."""
        for topic_name, number in list(group.states):
            topic = self._topics.get(topic_name)
            if topic is not None and number < len(topic.partitions):
                await group.forget_past_log_end(topic_name, number, topic.partitions[number].opened_end_offset)

    async def _runtime(self, name: str) -> GroupRuntime:
        """Return the delivery runtime of group `name`, shared by its consumers (internal)."""
        if name not in self._runtimes:
            group = await self.group(name)
            # Another task may have created the runtime while this one awaited.
            if name not in self._runtimes:
                self._runtimes[name] = GroupRuntime(self, group)
        return self._runtimes[name]

    async def _dead_letter_topic(self, name: str) -> Topic:
        """Return the dead-letter topic `name`, creating it with default settings (internal)."""
        if name not in self._topics:
            await self.create_topic(name)
        return self._topics[name]

    async def configure_group(self, name: str, **settings: Any) -> GroupConfig:
        """Change a group's settings (the fields of `GroupConfig`) and return them all.

        Creates the group if it does not exist. The settings are stored and
        apply to every consumer of the group from the next receive on.
        Raises InvalidConfigError for an unknown setting or a bad value.
        """
        group = await self.group(name)
        read_topics = {topic for topic, _ in group.states}
        if settings.get("dead_letter_topic") in read_topics:
            raise InvalidConfigError(
                f"dead_letter_topic={settings['dead_letter_topic']!r} is a topic that group {name!r} reads; "
                "dead letters would be delivered again, so pick another topic"
            )
        return await group.configure(**settings)

    async def group_config(self, name: str) -> GroupConfig:
        """Return a group's settings; raises UnknownGroupError."""
        return (await self.group(name, create=False)).config

    async def peek(self, topic: str, *, group: str, max_messages: int = 1) -> list[Message]:
        """Return what the group's next receives would get, changing no delivery state.

        Raises UnknownGroupError for a group that does not exist. A group that
        never read `topic` starts reading it at its log start offset.
        """
        await self.group(group, create=False)
        consumer = self.consumer(topic, group=group)
        try:
            return await consumer.peek(max_messages)
        finally:
            await consumer.close()

    async def dead_letters(self, topic: str, *, group: str) -> list[DeadLetter]:
        """List the dead letters that `group` produced for `topic`, oldest first."""
        return await dead_letters.list_dead_letters(self, topic, group)

    async def redrive(self, topic: str, *, group: str, offsets: Iterable[int] | None = None) -> RedriveReport:
        """Make dead letters ready again in the group that failed them; see `RedriveReport`.

        `offsets`: offsets in the dead-letter topic (all not yet redriven when None).
        Other groups are not affected: they neither see the message again nor a copy.
        Raises InvalidArgumentError when `offsets` is not an iterable of ints >= 0.
        """
        if offsets is not None:
            offsets = _check_offsets(offsets)
        return await dead_letters.redrive(self, topic, group, offsets)

    async def purge_dead_letters(self, topic: str, *, group: str) -> int:
        """Delete the group's dead-letter topic for `topic`; return how many messages it had.

        A dead-letter topic shared by several topics or groups (a custom
        `dead_letter_topic`) is deleted whole, with the dead letters of all of them.
        """
        return await dead_letters.purge(self, topic, group)

    def replay(
        self,
        topic: str,
        *,
        from_offset: int | None = None,
        from_time: datetime | int | None = None,
        partition: int | None = None,
    ) -> AsyncIterator[Message]:
        """Iterate over a topic's messages without a group, up to the high watermark at the start.

        `from_offset` applies to each partition, clamped to the log start
        offset. `from_time` (an aware datetime, or ms since the epoch) starts
        at the first message appended at or after it. Messages of several
        partitions are merged by timestamp. Raises UnknownTopicError and
        InvalidArgumentError (both start options, a bad partition).
        """
        target = self._topic(topic)
        if from_offset is not None and from_time is not None:
            raise InvalidArgumentError("pass from_offset or from_time, not both")
        if from_offset is not None and (isinstance(from_offset, bool) or not isinstance(from_offset, int) or from_offset < 0):
            raise InvalidArgumentError(f"from_offset must be an int >= 0, got {from_offset!r}")
        numbers = list(range(target.config.partitions))
        if partition is not None:
            numbers = [self._partition_for(target, None, partition)]  # type: ignore[list-item]
        start_ms = None if from_time is None else timestamp_to_ms(from_time)
        return replay_topic(target, numbers, from_offset=from_offset, from_time_ms=start_ms)

    # -- groups -------------------------------------------------------------------------

    def list_groups(self) -> list[str]:
        """Return the names of the consumer groups in the data directory, sorted."""
        self._check_open()
        return sorted(path.name for path in self._groups_dir.iterdir() if path.is_dir())

    async def describe_group(self, name: str) -> list[GroupPartitionInfo]:
        """Return a group's committed offset, lag and delivery counts per partition it reads.

        Raises UnknownGroupError.
        """
        group = await self.group(name, create=False)
        rows = []
        for (topic_name, number), state in sorted(group.states.items()):
            topic = self._topics.get(topic_name)
            if topic is None or number >= len(topic.partitions):
                continue
            high_watermark = topic.partitions[number].high_watermark
            rows.append(
                GroupPartitionInfo(
                    topic=topic_name,
                    partition=number,
                    # A redrive makes done messages below the committed offset pending again,
                    # and they count as not yet consumed.
                    committed_offset=state.first_not_done_offset(),
                    high_watermark=high_watermark,
                    lag=max(0, high_watermark - state.committed) + state.reopened_count(),
                    in_flight=state.in_flight(),
                    waiting=state.waiting(),
                    held=state.held_count(),
                    dead_lettered=group.dead_lettered.get((topic_name, number), 0),
                )
            )
        return rows

    async def reset_group(self, name: str, topic: str, *, to: str | int | datetime) -> list[GroupPartitionInfo]:
        """Move a group's committed offset on every partition of `topic`; return the new positions.

        `to`: "earliest", "latest", an offset (applied to each partition,
        clamped to its log start..log end), or a datetime / ms timestamp (the
        first message at or after it). Messages in flight are delivered again.
        A group that does not exist yet is created at that position, as
        Kafka's offset reset tool does. Raises UnknownTopicError and
        InvalidArgumentError.
        """
        target = self._topic(topic)
        group = await self.group(name)
        for number, partition in enumerate(target.partitions):
            offset = await _reset_target(partition, to)
            await group.reset(topic, number, offset)
        return [row for row in await self.describe_group(name) if row.topic == topic]

    async def skip_messages(self, group: str, topic: str, *, partition: int, start: int, end: int) -> int:
        """Mark offsets `start` to `end` - 1 of one partition done for `group` without delivering them.

        For messages a group must pass over: a damaged batch that a receive
        reports with CorruptRecordError (its `offsets` give the range), or
        poison messages an operator takes out of a work queue. They count as
        acked in this group only; leases on them end, and other groups still
        read them. Returns how many were not done before. Raises
        UnknownGroupError, UnknownTopicError, InvalidArgumentError (no such
        partition, an empty or negative range, or a partition the group has
        not read) and OffsetOutOfRangeError (`end` above the log end offset).
        """
        target = self._topic(topic)
        for name, value in (("partition", partition), ("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{name} must be an int >= 0, got {value!r}")
        if partition >= len(target.partitions):
            raise InvalidArgumentError(
                f"topic {topic!r} has no partition {partition}; pick a partition from 0 to {len(target.partitions) - 1}"
            )
        if start >= end:
            raise InvalidArgumentError(
                f"nothing to skip from offset {start} to {end}: end is exclusive, so it must be above start "
                f"(to skip offset {start} alone, use end {start + 1})"
            )
        group_state = await self.group(group, create=False)
        if (topic, partition) not in group_state.states:
            raise InvalidArgumentError(
                f"group {group!r} has not read {topic}/{partition} yet, so it has nothing to skip; "
                "start a consumer of the group on the topic, or use `logq groups reset`"
            )
        log_end = target.partitions[partition].log_end_offset
        if end > log_end:
            raise OffsetOutOfRangeError(
                f"cannot skip to offset {end} of {topic}/{partition}: it is above the log end offset "
                f"{log_end}; use an end of at most {log_end}"
            )
        runtime = self._runtimes.get(group)
        if runtime is None:
            skipped = await group_state.skip(topic, partition, start, end)
        else:
            # Under the runtime lock, so that no receive is choosing among these offsets meanwhile.
            async with runtime.lock:
                skipped = await group_state.skip(topic, partition, start, end)
        logger.warning("group %s skipped offsets %d..%d of %s/%d without delivering them (%d were not done)",
                       group, start, end - 1, topic, partition, skipped)
        if runtime is not None:
            runtime._wake_readers()
        return skipped

    async def flush(self) -> None:
        """Fsync every partition of every topic, whatever its fsync mode."""
        self._check_open()
        for topic in self._topics.values():
            for partition in topic.partitions:
                await partition.flush()


async def _reset_target(partition: PartitionLog, to: str | int | datetime) -> int:
    if to == "earliest":
        return partition.log_start_offset
    if to == "latest":
        return partition.high_watermark
    if isinstance(to, int) and not isinstance(to, bool):
        return min(max(to, partition.log_start_offset), partition.log_end_offset)
    if isinstance(to, datetime):
        return await first_offset_at(partition, timestamp_to_ms(to))
    raise InvalidArgumentError(f"invalid reset target {to!r}; use 'earliest', 'latest', an offset or a datetime")


def _encode_key(key: Key | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"key {key!r} is not valid UTF-8 text ({exc.reason}); pass bytes instead") from exc
    raise InvalidArgumentError(f"key must be str or bytes, got {type(key).__name__} {key!r}")


def _check_headers(headers: Headers | None) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    if not isinstance(headers, dict):
        raise InvalidArgumentError(f"headers must be a dict of str to str, got {type(headers).__name__}")
    if len(headers) > MAX_HEADERS:
        raise InvalidArgumentError(f"a message has {len(headers)} headers, the maximum is {MAX_HEADERS}")
    for name, text in headers.items():
        if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 0xFFFF:
            raise InvalidArgumentError(f"header name {name!r} must be a non-empty str of at most 65535 bytes")
        if not isinstance(text, str):
            raise InvalidArgumentError(
                f"header {name!r} has a {type(text).__name__} value {text!r}; header values must be str"
            )
        try:
            name.encode("utf-8")
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"header {name!r} is not valid UTF-8 text ({exc.reason}); use text without lone surrogates"
            ) from exc
    return tuple(headers.items())


def _list_values(values: Iterable[Value]) -> list[Value]:
    """Return the values of a batch as a list.

    Raises InvalidArgumentError for a str, bytes or non-iterable, which is
    most likely one value passed where a list of values belongs.
    """
    if isinstance(values, (str, bytes, bytearray, memoryview)):
        raise InvalidArgumentError(
            f"values must be an iterable of values, got the single {type(values).__name__} {values!r:.80}; "
            "use send() for one message or wrap it in a list"
        )
    try:
        return list(values)
    except TypeError:
        raise InvalidArgumentError(
            f"values must be an iterable of values, got {type(values).__name__} {values!r:.80}; "
            "pass a list of messages"
        ) from None


def _check_offsets(offsets: Iterable[int]) -> list[int]:
    """Return `offsets` as a list after checking that it is an iterable of ints >= 0."""
    if isinstance(offsets, (str, bytes)):
        raise InvalidArgumentError(f"offsets must be an iterable of ints >= 0, got {offsets!r:.80}; pass a list of ints")
    try:
        listed = list(offsets)
    except TypeError:
        raise InvalidArgumentError(
            f"offsets must be an iterable of ints >= 0, got {type(offsets).__name__} {offsets!r:.80}; pass a list of ints"
        ) from None
    for offset in listed:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgumentError(f"dead-letter offset {offset!r} is invalid; use an int >= 0")
    return listed


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise InvalidArgumentError(f"priority must be an int from 0 to {MAX_PRIORITY}, got {priority!r}")


def _check_size(size: int, topic: Topic) -> None:
    """Raise MessageTooLargeError when `size` (key, headers and value in bytes) exceeds the topic's limit."""
    limit = topic.config.max_message_bytes
    if size > limit:
        raise MessageTooLargeError(
            f"message of {size} bytes (key, headers and value) exceeds the max message size of "
            f"topic {topic.name!r}, {limit} bytes; send a smaller value or create the topic with "
            "a larger max_message_bytes"
        )


class _Opener:
    """Result of `logq.open`: await it, or use it with `async with`."""

    def __init__(self, log: Log) -> None:
        self._log = log

    def __await__(self) -> Generator[Any, None, Log]:
        return self._log._open().__await__()

    async def __aenter__(self) -> Log:
        return await self._log._open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._log.close()


def open(  # noqa: A001
    path: str | Path,
    *,
    auto_create_topics: bool = True,
    group_fsync: str = "interval",
    clock: Callable[[], float] = time.time,
) -> _Opener:
    """Open (creating if needed) the data directory at `path`.

    Use `async with logq.open(path) as log:` or `log = await logq.open(path)`.
    `auto_create_topics`: `send` creates a missing topic with default settings.
    `group_fsync`: fsync mode of group journals ("always", "interval" or
    "never"). Under "interval" a power failure may forget the last ~200 ms of
    acks, which causes redelivery, never loss. `clock`: the time source
    for leases and retry delays, in seconds since the epoch; tests pass a
    fake one.
    Raises DataDirLockedError when another process owns the directory.
    """
    if group_fsync not in ("always", "interval", "never"):
        raise InvalidArgumentError(f"invalid group_fsync {group_fsync!r}; use 'always', 'interval' or 'never'")
    if not isinstance(auto_create_topics, bool):
        raise InvalidArgumentError(f"auto_create_topics must be True or False, got {auto_create_topics!r}")
    if not callable(clock):
        raise InvalidArgumentError(
            f"clock must be a callable that returns seconds since the epoch, such as time.time, got {clock!r}"
        )
    return _Opener(Log(path, auto_create_topics=auto_create_topics, group_fsync=group_fsync, clock=clock))
