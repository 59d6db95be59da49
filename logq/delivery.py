"""Delivery for one consumer group: leasing messages, failures and dead-lettering.

A `GroupRuntime` joins a group's state (logq.consumers) to the topics it
reads: it chooses messages with one selector per partition, leases them to
consumers, handles nacks and lease expiry, and copies messages that failed
too often to the dead-letter topic. All consumers of a group in one process
share its runtime.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from logq.consumers import Group, GroupConfig, PartitionSelector, Pending
from logq.consumers.selection import Candidate
from logq.errors import CorruptRecordError, InvalidArgumentError
from logq.message import Message
from logq.segments import Record, RecordInput
from logq.topics import Topic

if TYPE_CHECKING:
    from logq.consumer import Consumer
    from logq.log import Log

logger = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "logq.dlq."


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class GroupRuntime:
    """The live side of one consumer group: selectors, leases and the dead-letter path."""

    def __init__(self, log: Log, group: Group) -> None:
        self.log = log
        self.group = group
        self.selectors: dict[tuple[str, int], PartitionSelector] = {}
        self.lock = asyncio.Lock()
        self.topics: dict[str, Topic] = {}
        # Topic name -> (notify_count, deliverable_changes) when a receive last found nothing left.
        self._exhausted: dict[str, tuple[int, int]] = {}
        # (partition, file, first offset) of each damage already logged.
        self._reported_damage: set[tuple[str, Path | None, int | None]] = set()
        group.on_timer = self._wake_readers

    def _wake_readers(self) -> None:
        for topic in self.topics.values():
            topic.notify_readers()

    async def join(self, topic: Topic, start: str, *, latest: list[int] | None = None) -> None:
        """Start the group on every partition of `topic` it has not read yet.

        `start` "latest" starts at `latest` (one offset per partition), or at
        the current high watermarks when it is None.
        """
        self.topics[topic.name] = topic
        for number, partition in enumerate(topic.partitions):
            if start == "earliest":
                initial = partition.log_start_offset
            elif latest is not None:
                initial = min(latest[number], partition.high_watermark)
            else:
                initial = partition.high_watermark
            state = await self.group.join(topic.name, number, initial)
            if (topic.name, number) not in self.selectors:
                self.selectors[(topic.name, number)] = PartitionSelector(
                    partition, topic.priority_indexes[number], state
                )

    def selector(self, topic: str, number: int) -> PartitionSelector:
        """Return the selector of a partition, recreating it if a reset replaced the state."""
        selector = self.selectors[(topic, number)]
        state = self.group.states[(topic, number)]
        if selector.state is not state:
            selector.state = state
            selector.reset()
        return selector

    # -- receiving ---------------------------------------------------------------------

    async def take(self, consumer: Consumer, topic: Topic, order: list[int], limit: int, lease: float) -> list[Message]:
        """Lease up to `limit` messages of `topic` to `consumer`, most urgent first across partitions.

        `order` breaks ties between partitions whose next messages have the
        same priority and timestamp.
        """
        # The state of the group and the topic before this receive. A receive that finds
        # everything delivered stores it, so the next one can return at once if it is unchanged.
        marker = (topic.notify_count, self.group.deliverable_changes)
        if self._nothing_new(topic, marker):
            return []
        async with self.lock:
            picks: list[tuple[int, Record, Pending | None]] = []
            try:
                await self.handle_expired()
                now = self.group.clock()
                deadline = now + lease
                for number in order:
                    partition = topic.partitions[number]
                    await self.group.skip_removed(topic.name, number, partition.log_start_offset)
                dead, stopped_at_damage = await self._pick(topic, order, limit, now, owner=consumer.id,
                                                           deadline=deadline, picks=picks)
                for number in order:
                    entries = [entry for picked, _, entry in picks if picked == number]
                    await self.group.record_deliveries(topic.name, number, entries, deadline)  # type: ignore[arg-type]
                for number, record, entry in dead:
                    await self.dead_letter(topic.name, number, record, entry, reason=self._max_reason(entry))
            except BaseException as exc:
                self._take_back(topic.name, picks, exc)
                if isinstance(exc, CorruptRecordError) and not exc.explained:
                    raise self._explain_damage(topic, None, exc) from exc
                raise
            if len(picks) < limit and not dead and not stopped_at_damage:
                self._exhausted[topic.name] = marker
            topic_name, group_name = topic.name, self.group.name
            return [
                Message.delivered(topic_name, number, record, group_name, entry.delivery_count,  # type: ignore[union-attr]
                                  deadline, consumer)
                for number, record, entry in picks
            ]

    def _explain_damage(self, topic: Topic, number: int | None, error: CorruptRecordError) -> CorruptRecordError:
        """Return `error` restated for this group, with the way past the damaged offsets.

        `number` is the partition being read, or None to find it from the damaged file.
        """
        if number is None:
            number = next((n for n, partition in enumerate(topic.partitions)
                           if error.path is not None and error.path.parent == partition.directory), None)
        where = f"{topic.name}/{number}" if number is not None else topic.name
        command = (f"logq groups skip {self.group.name} --topic {topic.name} --partition "
                   f"{'P' if number is None else number}")
        if error.offsets is not None:
            remedy = (f"skip them for this group with `{command} --from {error.offsets.start} --to "
                      f"{error.offsets.stop}` (Log.skip_messages)")
        else:
            remedy = (f"run `logq check` to find the damaged offsets and where valid batches resume, then skip "
                      f"them for this group with `{command} --from FIRST --to RESUME` (Log.skip_messages)")
        report = (where, error.path, None if error.offsets is None else error.offsets.start)
        if report not in self._reported_damage:
            # Every receive meets the damage again until it is skipped, so it is logged once.
            self._reported_damage.add(report)
            logger.error("group %s cannot read past damage in %s: %s", self.group.name, where, error)
        explained = CorruptRecordError(
            f"group {self.group.name!r} cannot read on in {where}: {error}. Restore the segment from a copy, or {remedy}",
            path=error.path, offsets=error.offsets,
        )
        explained.explained = True
        return explained

    def _take_back(self, topic_name: str, picks: list[tuple[int, Record, Pending | None]], error: BaseException) -> None:
        """Make the leases of a receive that failed ready again, since the application never got them."""
        if not picks:
            return
        for number in sorted({number for number, _, _ in picks}):
            self.group.take_back(topic_name, number, [record.offset for picked, record, _ in picks if picked == number])
        log = logger.debug if isinstance(error, asyncio.CancelledError) else logger.warning
        log("group %s: a receive of %s failed after leasing %d messages (%r); they are ready again",
            self.group.name, topic_name, len(picks), error)
        self._wake_readers()

    def _nothing_new(self, topic: Topic, marker: tuple[int, int]) -> bool:
        """Return True when a receive of `topic` would find nothing, judged without reading anything.

        That holds when the last receive found every message delivered,
        nothing was appended and no deliverable-making event happened since
        (`marker` is unchanged), and no lease or delay is due. Per-key
        ordering always takes the full path, because an ack can free a key.
        """
        if self._exhausted.get(topic.name) != marker or self.group.config.key_ordering:
            return False
        timer = self.group.next_timer()
        return timer is None or timer > self.group.clock()

    async def peek(self, topic: Topic, limit: int, order: list[int]) -> list[Message]:
        """Return what a receive with the same partition `order` would get, changing no delivery state."""
        async with self.lock:
            await self.handle_expired()
            picks: list[tuple[int, Record, Pending | None]] = []
            await self._pick(topic, order, limit, self.group.clock(), owner=None, deadline=None, picks=picks)
            return [
                Message.from_record(topic.name, number, record, group=self.group.name,
                                    delivery_count=entry.delivery_count if entry else 0)
                for number, record, entry in picks
            ]

    async def _pick(
        self, topic: Topic, order: list[int], limit: int, now: float, *, owner: int | None, deadline: float | None,
        picks: list[tuple[int, Record, Pending | None]],
    ) -> tuple[list[tuple[int, Record, Pending]], bool]:
        """Choose up to `limit` messages into `picks`, merging the partitions' next candidates by priority.

        With `owner` set, leases each pick to that consumer as it is appended,
        so `picks` names every lease even when this raises, and returns the
        entries that reached max deliveries for dead-lettering. With `owner`
        None (a peek) nothing is leased or held, and the selectors' starvation
        counts are restored afterwards. The flag returned is True when a
        damaged batch stopped a partition after other messages were chosen;
        the damage is raised when nothing else is left.
        """
        config = self.group.config
        selectors = {number: self.selector(topic.name, number) for number in order}
        if owner is not None:
            if len(order) == 1:
                await self._take_urgent_run(selectors[order[0]], order[0], limit, now, owner, deadline, picks)  # type: ignore[arg-type]
            if len(picks) < limit:
                picks += await self._take_fifo_runs(selectors, order, limit - len(picks), now, owner, deadline)  # type: ignore[arg-type]
            if len(picks) == limit:
                return [], False
        streaks = {number: selector.streak for number, selector in selectors.items()}
        excluded: dict[int, set[int]] = {number: set() for number in order}
        peeked_keys: dict[int, set[bytes]] = {number: set() for number in order}
        heads: dict[int, tuple[Candidate, int]] = {}  # partition -> (next candidate, streak before choosing it)
        exhausted: set[int] = set()
        dead: list[tuple[int, Record, Pending]] = []
        damaged: list[CorruptRecordError] = []
        while len(picks) < limit:
            for number in order:
                if number not in heads and number not in exhausted:
                    try:
                        head = await self._next_candidate(selectors[number], config, now, excluded[number],
                                                          peeked_keys[number], owner, dead, number)
                    except CorruptRecordError as exc:
                        # Other partitions, and the messages before the damage, are still delivered.
                        damaged.append(self._explain_damage(topic, number, exc))
                        head = None
                    if head is None:
                        exhausted.add(number)
                    else:
                        heads[number] = head
            if not heads:
                break
            number = min(heads, key=lambda n: (-heads[n][0].record.priority, heads[n][0].record.timestamp_ms,
                                               order.index(n)))
            candidate, _ = heads.pop(number)
            record, entry = candidate.record, candidate.entry
            if owner is None:
                excluded[number].add(record.offset)
                if config.key_ordering and record.key is not None:
                    peeked_keys[number].add(record.key)
            else:
                entry = selectors[number].state.lease(
                    record.offset, priority=record.priority, key=record.key, owner=owner,
                    deadline=deadline, key_ordering=config.key_ordering,  # type: ignore[arg-type]
                )
            picks.append((number, record, entry))
        # A candidate chosen but not delivered must not count as passing over an older message.
        for number, (_, streak_before) in heads.items():
            selectors[number].streak = streak_before
        if owner is None:
            for number, selector in selectors.items():
                selector.streak = streaks[number]
        if damaged and not picks and not dead:
            raise damaged[0]
        return dead, bool(damaged)

    async def _take_urgent_run(
        self, selector: PartitionSelector, number: int, limit: int, now: float, owner: int, deadline: float,
        picks: list[tuple[int, Record, Pending | None]],
    ) -> None:
        """Lease new messages above priority 0 of a one-partition receive in bulk, most urgent first, into `picks`.

        Leases nothing when the group's settings need the general path (see
        `PartitionSelector.lease_urgent_run`). The FIFO run or the general
        path then continues from where it stopped. `picks` gets the leases
        made before an error too.
        """
        leased: list[tuple[Record, Pending]] = []
        try:
            await selector.lease_urgent_run(self.group.config, now, limit, owner, deadline, leased)
        except CorruptRecordError:
            pass  # the general path meets the same damage and reports it
        finally:
            picks.extend((number, record, entry) for record, entry in leased)

    async def _take_fifo_runs(
        self, selectors: dict[int, PartitionSelector], order: list[int], limit: int, now: float, owner: int,
        deadline: float,
    ) -> list[tuple[int, Record, Pending | None]]:
        """Lease new messages in bulk when only default-priority messages in log order compete.

        Returns the leased picks, possibly none; the general path of `_pick`
        then fills up to `limit`. With several partitions the runs merge by
        timestamp, earlier partitions in `order` first on ties, as the general
        path would choose them. A partition whose run stopped early (at a
        message the general path must judge) makes the merge unsafe, so then
        nothing is leased here.
        """
        runs: list[tuple[int, list[Record]]] = []
        for number in order:
            try:
                found = await selectors[number].take_fifo_run(self.group.config, now, limit)
            except CorruptRecordError:
                return []  # the general path delivers what lies before the damage and reports it
            if found is None:
                return []
            run, complete = found
            if not complete and len(order) > 1:
                return []
            if run:
                runs.append((number, run))
        if len(runs) == 1:
            number, run = runs[0]
            records = run[:limit]
            entries = selectors[number].state.lease_new_run(records, owner=owner, deadline=deadline)
            return [(number, record, entry) for record, entry in zip(records, entries)]

        merged = heapq.merge(*([(number, record) for record in run] for number, run in runs),
                             key=lambda pick: pick[1].timestamp_ms)
        chosen = list(itertools.islice(merged, limit))
        picks: list[tuple[int, Record, Pending | None]] = []
        for number, _ in runs:
            records = [record for picked, record in chosen if picked == number]
            entries = selectors[number].state.lease_new_run(records, owner=owner, deadline=deadline)
            picks.extend((number, record, entry) for record, entry in zip(records, entries))
        picks.sort(key=lambda pick: (pick[1].timestamp_ms, order.index(pick[0])))
        return picks

    async def _next_candidate(
        self, selector: PartitionSelector, config: GroupConfig, now: float, excluded: set[int],
        peeked_keys: set[bytes], owner: int | None, dead: list[tuple[int, Record, Pending]], number: int,
    ) -> tuple[Candidate, int] | None:
        while True:
            streak_before = selector.streak
            candidate = await selector.choose(config, now, exclude=excluded, hold=owner is not None)
            if candidate is None:
                return None
            record, entry = candidate.record, candidate.entry
            exhausted = entry is not None and config.max_deliveries and entry.delivery_count >= config.max_deliveries
            # A peek skips messages whose key it already returned, as a receive would hold them.
            held_by_peek = entry is None and record.key is not None and record.key in peeked_keys
            if not exhausted and not held_by_peek:
                return candidate, streak_before
            selector.streak = streak_before
            excluded.add(record.offset)
            if exhausted and owner is not None:
                dead.append((number, record, entry))  # type: ignore[arg-type]

    # -- failures ------------------------------------------------------------------------

    def _max_reason(self, entry: Pending) -> str:
        last = f"; last failure: {entry.last_reason}" if entry.last_reason else ""
        return f"max deliveries ({self.group.config.max_deliveries}) reached{last}"

    async def handle_expired(self) -> None:
        """Count expired leases as failures and dead-letter those that reached max deliveries."""
        for topic_name, number, entry in await self.group.expire_leases():
            await self._dead_letter_if_exhausted(topic_name, number, entry)

    async def nack(self, message: Message, owner: int, delay: float | None) -> None:
        """Record a failed delivery of `message` by consumer `owner` and schedule its redelivery."""
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0):
            raise InvalidArgumentError(f"delay must be a number of seconds >= 0 or None, got {delay!r}")
        try:
            async with self.lock:
                await self.handle_expired()
                entry = await self.group.fail(message.topic, message.partition, message.offset, owner=owner,
                                              delay=delay, reason="nacked")
                await self._dead_letter_if_exhausted(message.topic, message.partition, entry)
        finally:
            # Also after a failed journal write: the message is ready in memory all the same.
            self._wake_readers()

    async def _dead_letter_if_exhausted(self, topic_name: str, number: int, entry: Pending) -> None:
        max_deliveries = self.group.config.max_deliveries
        if not max_deliveries or entry.delivery_count < max_deliveries:
            return
        topic = self.topics.get(topic_name)
        if topic is None:
            return
        partition = topic.partitions[number]
        if entry.offset < partition.log_start_offset:
            # Retention deleted the message, so there is nothing to copy; it is done.
            logger.warning("group %s: offset %d of %s/%d reached max deliveries after retention deleted it; "
                           "marking it done without a dead-letter copy", self.group.name, entry.offset,
                           topic_name, number)
            await self.group.ack(topic_name, number, [entry.offset], partition.log_end_offset)
            return
        records = await partition.read(entry.offset, max_bytes=1)
        record = next((r for r in records if r.offset == entry.offset), None)
        if record is not None:
            await self.dead_letter(topic_name, number, record, entry, reason=self._max_reason(entry))

    async def reject(self, message: Message, owner: int, reason: str) -> None:
        """Dead-letter `message` at once; raises LeaseError unless `owner` holds its lease."""
        if not isinstance(reason, str) or not reason:
            raise InvalidArgumentError(f"reason must be a non-empty str, got {reason!r}")
        async with self.lock:
            await self.handle_expired()
            state = self.group.states[(message.topic, message.partition)]
            entry = state._leased_by(message.offset, owner)
            now = self.group.clock()
            entry.first_failure = entry.first_failure if entry.first_failure is not None else now
            entry.last_failure = now
            record = await self._record_of(message)
            await self.dead_letter(message.topic, message.partition, record, entry, reason=f"rejected: {reason}")

    async def _record_of(self, message: Message) -> Record:
        records = await self.topics[message.topic].partitions[message.partition].read(message.offset, max_bytes=1)
        return next(r for r in records if r.offset == message.offset)

    async def dead_letter(self, topic_name: str, number: int, record: Record, entry: Pending, *, reason: str) -> None:
        """Copy a message to the dead-letter topic with headers naming its source, then mark it done.

        The copy comes first: a crash between the two steps leaves the
        message pending, so it may reach the dead-letter topic twice but is
        never lost.
        """
        dlq_name = self.group.config.dead_letter_topic_for(topic_name, self.group.name)
        headers = dict(record.headers)
        headers.update({
            DLQ_HEADER_PREFIX + "topic": topic_name,
            DLQ_HEADER_PREFIX + "partition": str(number),
            DLQ_HEADER_PREFIX + "offset": str(record.offset),
            DLQ_HEADER_PREFIX + "group": self.group.name,
            DLQ_HEADER_PREFIX + "reason": reason,
            DLQ_HEADER_PREFIX + "delivery_count": str(entry.delivery_count),
            DLQ_HEADER_PREFIX + "first_failure": _iso(entry.first_failure),
            DLQ_HEADER_PREFIX + "last_failure": _iso(entry.last_failure),
            DLQ_HEADER_PREFIX + "timestamp_ms": str(record.timestamp_ms),
        })
        copy = RecordInput(value=record.value, key=record.key, headers=tuple(headers.items()),
                           priority=record.priority, flags=record.flags)
        dlq = await self.log._dead_letter_topic(dlq_name)
        dlq_offset = await dlq.append(0, [copy])
        await self.group.mark_dead(topic_name, number, record.offset, reason=reason, dlq_topic=dlq_name,
                                   dlq_offset=dlq_offset)
