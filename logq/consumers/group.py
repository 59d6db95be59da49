"""A consumer group: its delivery state per partition, rebuilt from its journal.

Every change to the state is an event. A live change applies the event to the
in-memory state at once and queues it; one writer at a time takes the whole
queue and appends it to the journal. So the journal contains the events in the
order they were applied, and replaying it after a crash rebuilds the same
state. A write that fails (a full disk, say) leaves its events at the front
of the queue, so the next write stores them before anything newer, and a
call returns only once every event applied before it is in the journal.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from logq.consumers.config import CONFIG_FILE_NAME, GroupConfig
from logq.consumers.journal import Event, GroupJournal
from logq.consumers.state import DeliveryState, PartitionState, Pending
from logq.errors import LogqError, OffsetOutOfRangeError
from logq.segments.files import write_file_atomically

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
PartitionKey = tuple[str, int]


def _key_text(key: bytes | None) -> str | None:
    return None if key is None else key.hex()


def _key_bytes(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


# Events after which a message may be deliverable that was not before: a reset
# or commit moves the start, a fail or release readies a lease, a redrive
# reopens a dead message, and forget drops a topic's state. Deliveries, acks
# and dead-lettering only take messages away, except that under per-key
# ordering an ack frees a key, which the receive path handles apart.
DELIVERABLE_EVENTS = frozenset({"reset", "commit", "fail", "release", "redrive", "forget", "truncate"})


class Group:
    """The state of one consumer group across the partitions it reads.

    Coroutines here are safe from any task of the event loop that opened it.
    """

    def __init__(self, name: str, directory: Path, journal: GroupJournal, config: GroupConfig, clock: Clock) -> None:
        self.name = name
        self.directory = directory
        self.journal = journal
        self.config = config
        self.clock = clock
        self.states: dict[PartitionKey, PartitionState] = {}
        self.dead_lettered: dict[PartitionKey, int] = {}
        # Offsets that are done because they were dead-lettered (not acked), so
        # only those can be redriven. A reset or a redrive removes them.
        self.dead_offsets: dict[PartitionKey, set[int]] = {}
        self.redriven: set[tuple[str, int]] = set()  # (dead-letter topic, dead-letter offset)
        self._timer: asyncio.TimerHandle | None = None
        # Events that can make a message deliverable (see DELIVERABLE_EVENTS) and
        # settings changes so far, so a receive can tell that nothing changed.
        self.deliverable_changes = 0
        self._timer_when = 0.0  # the group-clock time `_timer` was armed for
        self.on_timer: Callable[[], None] | None = None
        # Events applied to the state and not yet in the journal, oldest first.
        self._unwritten: list[Event] = []
        self._queued = 0  # events queued since the group opened
        self._written = 0  # how many of those the journal stored
        self._write_lock = asyncio.Lock()  # held by the one task that writes the queue

    # -- opening, replay and snapshots -------------------------------------------------

    @classmethod
    async def open(cls, name: str, directory: Path, *, fsync: str = "interval", clock: Clock = time.time) -> Group:
        """Open or create the group in `directory`, replaying its snapshot and journal.

        Messages that were leased when the previous process stopped count as
        failed deliveries ("consumer lost") and become ready at once.
        """
        journal, snapshot, events = await GroupJournal.open(directory, fsync=fsync)
        group = cls(name, directory, journal, GroupConfig.load(directory), clock)
        if snapshot is not None:
            group._restore(snapshot)
        for event in events:
            group._apply(event)
        await group._fail_orphaned_leases()
        return group

    def _restore(self, snapshot: Event) -> None:
        for item in snapshot.get("partitions", []):
            state = PartitionState(committed=item["committed"])
            for start, end in item.get("done", []):
                state.done.add_range(start, end)
            for offset, priority, key, status, count, deadline, first, last, reason in item.get("pending", []):
                entry = Pending(
                    offset=offset, priority=priority, key=_key_bytes(key), state=DeliveryState(status),
                    delivery_count=count, deadline=deadline, first_failure=first, last_failure=last,
                    last_reason=reason,
                )
                state.pending[offset] = entry
                self._requeue(state, entry)
            partition = (item["topic"], item["partition"])
            self.states[partition] = state
            self.dead_lettered[partition] = item.get("dead_lettered", 0)
            self.dead_offsets[partition] = set(item.get("dead_offsets", []))
        self.redriven = {(topic, offset) for topic, offset in snapshot.get("redriven", [])}

    def _requeue(self, state: PartitionState, entry: Pending) -> None:
        """Put a restored entry on the heap its state belongs to."""
        if entry.state is DeliveryState.READY:
            heapq.heappush(state.ready, (-entry.priority, entry.offset))
        elif entry.state is DeliveryState.DELAYED and entry.deadline is not None:
            heapq.heappush(state.delayed, (entry.deadline, entry.offset))
        elif entry.state is DeliveryState.LEASED and entry.deadline is not None:
            heapq.heappush(state.leases, (entry.deadline, entry.offset))
        if self.config.key_ordering and entry.key is not None:
            state.busy_keys[entry.key] = entry.offset

    def snapshot_state(self) -> Event:
        """Return the whole state as the JSON-ready body of a snapshot.

        `unwritten_events` counts the queued events, which the state already
        contains and the journal stores next; a reopen must not apply them again.
        """
        partitions = []
        for (topic, number), state in sorted(self.states.items()):
            pending = [
                [e.offset, e.priority, _key_text(e.key), e.state.value, e.delivery_count, e.deadline,
                 e.first_failure, e.last_failure, e.last_reason]
                for e in sorted(state.pending.values(), key=lambda entry: entry.offset)
            ]
            partitions.append({
                "topic": topic, "partition": number, "committed": state.committed,
                "done": state.done.ranges(), "pending": pending,
                "dead_lettered": self.dead_lettered.get((topic, number), 0),
                "dead_offsets": sorted(self.dead_offsets.get((topic, number), ())),
            })
        return {"partitions": partitions, "redriven": sorted(self.redriven),
                "unwritten_events": len(self._unwritten)}

    async def _fail_orphaned_leases(self) -> None:
        now = self.clock()
        events = []
        for (topic, number), state in self.states.items():
            for entry in [e for e in state.pending.values() if e.state is DeliveryState.LEASED]:
                events.append(self._fail_event(topic, number, entry, now, delay=0.0, reason="consumer lost"))
        if events:
            logger.warning("group %s: %d messages were leased when the previous process stopped; "
                           "they count as failed deliveries and become ready", self.name, len(events))
            await self._commit(events)

    async def close(self) -> None:
        """Write the queued events, snapshot the state so the next open replays nothing, and close the journal.

        When the queued events cannot be written, the snapshot still contains
        them. Raises the snapshot's error (DiskFullError, StorageError) when
        that fails too; the journal is closed either way.
        """
        if self._timer is not None:
            self._timer.cancel()
        try:
            async with self._write_lock:
                if self._unwritten:
                    try:
                        await self._write_queued(snapshot_when_due=False)
                    except (LogqError, OSError) as exc:
                        logger.warning("group %s: %d events could not be journaled at close (%s); "
                                       "the snapshot keeps them", self.name, len(self._unwritten), exc)
                await self.journal.snapshot(self.snapshot_state)
        finally:
            await self.journal.close()

    async def configure(self, **changes: Any) -> GroupConfig:
        """Change and store the group's settings; see GroupConfig. Returns the new settings."""
        config = self.config.with_changes(**changes)
        await asyncio.to_thread(write_file_atomically, self.directory / CONFIG_FILE_NAME, config.to_json())
        self.config = config
        self.deliverable_changes += 1  # turning key ordering off, say, frees held messages
        logger.info("group %s configured: %s", self.name, changes)
        return config

    # -- applying events -----------------------------------------------------------------

    def _apply(self, event: Event) -> None:
        """Apply one journal event to the in-memory state. Unknown event types are skipped."""
        kind = event.get("event")
        handler = getattr(self, f"_apply_{kind}", None)
        if handler is None:
            return
        if kind in DELIVERABLE_EVENTS:
            self.deliverable_changes += 1
        handler(event, self.states.get((event.get("topic"), event.get("partition"))))  # type: ignore[arg-type]

    def _apply_reset(self, event: Event, state: PartitionState | None) -> None:
        partition = (event["topic"], event["partition"])
        self.dead_offsets.pop(partition, None)
        if state is None:
            self.states[partition] = PartitionState(committed=event["offset"])
        else:
            state.reset(event["offset"])

    def _apply_forget(self, event: Event, state: PartitionState | None) -> None:
        for partition in [p for p in self.states if p[0] == event["topic"]]:
            del self.states[partition]
            self.dead_lettered.pop(partition, None)
            self.dead_offsets.pop(partition, None)

    def _apply_commit(self, event: Event, state: PartitionState | None) -> None:
        # Written by the first journal format: the committed offset after acks.
        if state is None:
            self.states[(event["topic"], event["partition"])] = PartitionState(committed=event["offset"])
        else:
            state.skip_to(event["offset"])

    def _apply_truncate(self, event: Event, state: PartitionState | None) -> None:
        if state is not None:
            state.forget_from(event["offset"])

    def _apply_deliver(self, event: Event, state: PartitionState | None) -> None:
        if state is None:
            return
        messages = event.get("messages", [])
        for start, end, priority in event.get("runs", []):
            messages = [*messages, *([offset, priority, None] for offset in range(start, end))]
        for offset, priority, key in messages:
            entry = state.pending.get(offset)
            if entry is not None and entry.state is DeliveryState.DELAYED:
                # The live group delivered it after its delay passed. Promotion writes no event.
                entry.move(DeliveryState.READY)
            if state.is_done(offset) or (entry is not None and entry.state is not DeliveryState.READY):
                continue
            state.lease(offset, priority=priority, key=_key_bytes(key), owner=0,
                        deadline=event["deadline"], key_ordering=self.config.key_ordering)

    def _apply_ack(self, event: Event, state: PartitionState | None) -> None:
        if state is None:
            return
        for start, end in event["ranges"]:
            state.ack_range(start, end)

    def _apply_fail(self, event: Event, state: PartitionState | None) -> None:
        entry = None if state is None else state.pending.get(event["offset"])
        if state is not None and entry is not None and entry.state is DeliveryState.LEASED:
            state.fail(event["offset"], now=event["time"], delay=event["delay"], reason=event["reason"])

    def _apply_release(self, event: Event, state: PartitionState | None) -> None:
        for offset in event["offsets"] if state is not None else []:
            entry = state.pending.get(offset)
            if entry is not None and entry.state is DeliveryState.LEASED:
                state.release(offset, undo_delivery=event["undo"])

    def _apply_extend(self, event: Event, state: PartitionState | None) -> None:
        entry = None if state is None else state.pending.get(event["offset"])
        if entry is not None and entry.state is DeliveryState.LEASED:
            state.extend(event["offset"], entry.owner, event["deadline"])  # type: ignore[union-attr, arg-type]

    def _apply_dead(self, event: Event, state: PartitionState | None) -> None:
        if state is None:
            return
        partition = (event["topic"], event["partition"])
        if state.ack(event["offset"], math.inf):  # type: ignore[arg-type]
            self.dead_lettered[partition] = self.dead_lettered.get(partition, 0) + 1
            self.dead_offsets.setdefault(partition, set()).add(event["offset"])

    def _apply_redrive(self, event: Event, state: PartitionState | None) -> None:
        dead = self.dead_offsets.get((event["topic"], event["partition"]), set())
        if state is not None and state.is_done(event["offset"]) and event["offset"] in dead:
            dead.discard(event["offset"])
            key = _key_bytes(event["key"])
            state.reopen(event["offset"], priority=event["priority"], key=key)
            if self.config.key_ordering and key is not None and key not in state.busy_keys:
                state.busy_keys[key] = event["offset"]
        self.redriven.add((event["dlq_topic"], event["dlq_offset"]))

    def _apply_purge(self, event: Event, state: PartitionState | None) -> None:
        self.redriven = {item for item in self.redriven if item[0] != event["dlq_topic"]}

    async def _commit(self, events: list[Event]) -> None:
        """Apply `events`, queue them and return once the journal contains them."""
        for event in events:
            self._apply(event)
        self._queue(events)
        self._arm_timer()
        await self.flush()

    def _queue(self, events: list[Event]) -> None:
        """Queue events that the state already contains, for the next journal write."""
        self._unwritten.extend(events)
        self._queued += len(events)

    async def flush(self) -> None:
        """Return once every event applied so far is in the journal.

        Raises the journal's error (DiskFullError, StorageError) when a write
        fails. The state keeps the events, which stay queued in order, so a
        later call, `close` or a snapshot stores them. The failed change took
        effect in memory, so a retried ack finds nothing new and a retried
        nack finds the lease ended.
        """
        target = self._queued
        while self._written < target:
            async with self._write_lock:
                if self._written < target:
                    await self._write_queued()

    async def _write_queued(self, *, snapshot_when_due: bool = True) -> None:
        """Append the whole queue to the journal as one batch. Call with the write lock held."""
        batch, self._unwritten = self._unwritten, []
        log = self.journal.log
        end_before = log.log_end_offset
        try:
            snapshot_due = await self.journal.append(batch)
        except BaseException as exc:
            if log.log_end_offset > end_before:
                # Stored before the error (a cancelled fsync wait, say): the events are in the journal.
                self._written += len(batch)
                self.journal.events_since_snapshot += len(batch)
            else:
                self._unwritten[:0] = batch
                if not isinstance(exc, asyncio.CancelledError):
                    logger.warning("group %s: journal write of %d events failed, kept for the next write: %s",
                                   self.name, len(batch), exc)
            raise
        self._written += len(batch)
        if snapshot_due and snapshot_when_due:
            await self._snapshot()

    async def _snapshot(self) -> None:
        """Take a snapshot after `snapshot_every` events. Call with the write lock held.

        A failed snapshot loses nothing, because the journal keeps every
        event, so it is logged and tried again after another
        `snapshot_every` events.
        """
        try:
            await self.journal.snapshot(self.snapshot_state)
        except (LogqError, OSError) as exc:
            self.journal.events_since_snapshot = 0
            logger.error("group %s: snapshot failed, the journal keeps every event; next attempt after %d "
                         "more events: %s", self.name, self.journal.snapshot_every, exc)

    # -- live changes ------------------------------------------------------------------

    async def join(self, topic: str, partition: int, initial_offset: int) -> PartitionState:
        """Return a partition's state, starting it at `initial_offset` if the group never read it."""
        state = self.states.get((topic, partition))
        if state is None:
            await self._commit([{"event": "reset", "topic": topic, "partition": partition, "offset": initial_offset}])
            logger.info("group %s starts %s/%d at offset %d", self.name, topic, partition, initial_offset)
            state = self.states[(topic, partition)]
            for entry in state.pending.values():
                if self.config.key_ordering and entry.key is not None:
                    state.busy_keys[entry.key] = entry.offset
        return state

    async def record_deliveries(self, topic: str, partition: int, entries: list[Pending], deadline: float) -> None:
        """Journal deliveries that selection already applied to the state."""
        if not entries:
            return
        event: Event = {"event": "deliver", "topic": topic, "partition": partition, "deadline": deadline}
        first, last, priority = entries[0].offset, entries[-1].offset, entries[0].priority
        if last - first == len(entries) - 1 and all(e.key is None and e.priority == priority for e in entries):
            # A bulk receive: consecutive offsets of one priority without keys, stored as one range.
            event["runs"] = [[first, last + 1, priority]]
        else:
            event["messages"] = [[e.offset, e.priority, _key_text(e.key)] for e in entries]
        self._queue([event])
        self._arm_timer()
        await self.flush()

    async def skip(self, topic: str, partition: int, start: int, end: int) -> int:
        """Mark offsets [start, end) done without delivering them; return how many were not done before.

        The caller checked that the partition state exists and that `end` is
        at most the log end offset. One ack event covers the whole range, so a
        wide skip costs as much as a narrow one.
        """
        state = self.states[(topic, partition)]
        fresh = (end - start) - state.done_count(start, end)
        if fresh:
            await self._commit([{"event": "ack", "topic": topic, "partition": partition, "ranges": [[start, end]]}])
        else:
            await self.flush()
        # A skip can unblock a scan that stopped at unreadable offsets, so receives must look again.
        self.deliverable_changes += 1
        return fresh

    def take_back(self, topic: str, partition: int, offsets: list[int]) -> None:
        """Undo deliveries of `offsets` that never reached the application, as a failed receive needs.

        The leases become ready with their delivery counts restored. The
        release event is queued and reaches the journal with the next write.
        """
        state = self.states.get((topic, partition))
        if state is None:
            return
        leased = [o for o in offsets if (e := state.pending.get(o)) is not None and e.state is DeliveryState.LEASED]
        if leased:
            event = {"event": "release", "topic": topic, "partition": partition, "offsets": leased, "undo": True}
            self._apply(event)
            self._queue([event])

    async def ack(self, topic: str, partition: int, offsets: Iterable[int], log_end_offset: int) -> int:
        """Mark `offsets` done; return how many were not done before.

        Raises OffsetOutOfRangeError, before changing anything, for an offset
        that was never written.
        """
        offsets = sorted(set(offsets))
        if offsets and (offsets[0] < 0 or offsets[-1] >= log_end_offset):
            bad = offsets[0] if offsets[0] < 0 else offsets[-1]
            raise OffsetOutOfRangeError(
                f"cannot ack offset {bad} of {topic}/{partition}: it was never written "
                f"(log end offset {log_end_offset})"
            )
        state = self.states[(topic, partition)]
        fresh = state.not_done(offsets)
        if fresh:
            await self._commit([{"event": "ack", "topic": topic, "partition": partition, "ranges": _to_ranges(fresh)}])
        else:
            # Done already, maybe by an event whose write failed: store it before reporting success.
            await self.flush()
        return len(fresh)

    def _fail_event(self, topic: str, partition: int, entry: Pending, now: float, *, delay: float | None,
                    reason: str) -> Event:
        if delay is None:
            delay = self.config.redelivery_delay(entry.delivery_count)
        return {"event": "fail", "topic": topic, "partition": partition, "offset": entry.offset,
                "time": now, "delay": delay, "reason": reason}

    async def fail(self, topic: str, partition: int, offset: int, *, owner: int, delay: float | None,
                   reason: str) -> Pending:
        """Record a nack by consumer `owner`; raises LeaseError unless it holds the lease.

        `delay` None uses the group's retry policy. Returns the entry; the
        caller dead-letters it when its delivery count reached the maximum.
        """
        state = self.states[(topic, partition)]
        entry = state._leased_by(offset, owner)
        await self._commit([self._fail_event(topic, partition, entry, self.clock(), delay=delay, reason=reason)])
        return entry

    async def extend(self, topic: str, partition: int, offset: int, *, owner: int, seconds: float) -> float:
        """Move a lease deadline to `seconds` from now; return the new deadline.

        Raises LeaseError unless consumer `owner` holds the lease.
        """
        state = self.states[(topic, partition)]
        state._leased_by(offset, owner)
        deadline = self.clock() + seconds
        await self._commit([{"event": "extend", "topic": topic, "partition": partition, "offset": offset,
                             "deadline": deadline}])
        return deadline

    async def release(self, owner: int, *, unseen: set[tuple[str, int, int]]) -> int:
        """Make the leases of consumer `owner` ready again; return how many there were.

        Offsets in `unseen` (topic, partition, offset) were never handed to the
        application, so their delivery is taken back too.
        """
        events = []
        for (topic, number), state in self.states.items():
            offsets = [o for o, e in state.pending.items() if e.state is DeliveryState.LEASED and e.owner == owner]
            for undo in (True, False):
                chosen = [o for o in offsets if ((topic, number, o) in unseen) is undo]
                if chosen:
                    events.append({"event": "release", "topic": topic, "partition": number,
                                   "offsets": chosen, "undo": undo})
        if events:
            await self._commit(events)
        return sum(len(event["offsets"]) for event in events)

    async def mark_dead(self, topic: str, partition: int, offset: int, *, reason: str, dlq_topic: str,
                        dlq_offset: int) -> None:
        """Mark a message done because it was copied to the dead-letter topic."""
        await self._commit([{"event": "dead", "topic": topic, "partition": partition, "offset": offset,
                             "reason": reason, "dlq_topic": dlq_topic, "dlq_offset": dlq_offset}])
        logger.warning("group %s dead-lettered %s/%d@%d to %s@%d: %s",
                       self.name, topic, partition, offset, dlq_topic, dlq_offset, reason)

    async def redrive(self, topic: str, partition: int, offset: int, *, priority: int, key: bytes | None,
                      dlq_topic: str, dlq_offset: int) -> None:
        """Make a dead-lettered message ready again in this group only, with a fresh delivery count."""
        await self._commit([{"event": "redrive", "topic": topic, "partition": partition, "offset": offset,
                             "priority": priority, "key": _key_text(key), "dlq_topic": dlq_topic,
                             "dlq_offset": dlq_offset}])

    def is_dead(self, topic: str, partition: int, offset: int) -> bool:
        """Return True when `offset` is done because it was dead-lettered and not redriven since."""
        return offset in self.dead_offsets.get((topic, partition), ())

    async def forget_topic(self, topic: str) -> None:
        """Drop every partition state of `topic`, after the topic was deleted."""
        if any(partition[0] == topic for partition in self.states):
            await self._commit([{"event": "forget", "topic": topic}])
            logger.info("group %s forgot topic %s, which was deleted", self.name, topic)

    async def forget_dead_letter_topic(self, dlq_topic: str) -> None:
        """Forget which dead letters of `dlq_topic` were redriven, after that topic was deleted."""
        await self._commit([{"event": "purge", "dlq_topic": dlq_topic}])

    async def reset(self, topic: str, partition: int, offset: int) -> None:
        """Set a partition's committed offset to `offset` and forget every delivery."""
        await self._commit([{"event": "reset", "topic": topic, "partition": partition, "offset": offset}])
        logger.info("group %s reset %s/%d to offset %d", self.name, topic, partition, offset)

    async def forget_past_log_end(self, topic: str, partition: int, log_end_offset: int) -> None:
        """Forget offsets at or above the log end offset, which a log that lost its tail no longer contains.

        Without this, messages written at those offsets again would count as
        done or delivered and never reach the group.
        """
        state = self.states[(topic, partition)]
        known_end = state.known_end()
        if known_end > log_end_offset:
            logger.warning(
                "group %s: %s/%d ends at offset %d, but the group refers to offsets up to %d (the log lost its "
                "tail, as a power failure or a truncated file leaves it); forgetting them, so messages written "
                "from offset %d on are delivered", self.name, topic, partition, log_end_offset, known_end - 1,
                log_end_offset,
            )
            await self._commit([{"event": "truncate", "topic": topic, "partition": partition,
                                 "offset": log_end_offset}])

    async def skip_removed(self, topic: str, partition: int, log_start_offset: int) -> None:
        """Move a partition past offsets that retention deleted before the group finished them."""
        state = self.states[(topic, partition)]
        if state.committed < log_start_offset:
            logger.warning(
                "group %s: offsets %d..%d of %s/%d were deleted by retention before they were done; "
                "continuing at the log start offset %d",
                self.name, state.committed, log_start_offset - 1, topic, partition, log_start_offset,
            )
            await self._commit([{"event": "commit", "topic": topic, "partition": partition,
                                 "offset": log_start_offset}])

    async def expire_leases(self) -> list[tuple[str, int, Pending]]:
        """Count every lease past its deadline as a failed delivery; return the failed entries."""
        now = self.clock()
        expired = []
        events = []
        for (topic, number), state in self.states.items():
            for entry in state.due_leases(now):
                expired.append((topic, number, entry))
                events.append(self._fail_event(topic, number, entry, now, delay=None, reason="lease expired"))
        if events:
            logger.info("group %s: %d leases expired", self.name, len(events))
            await self._commit(events)
        return expired

    # -- timers ---------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """Return the earliest lease deadline or delay end of any partition, or None."""
        times = [t for t in (state.next_timer() for state in self.states.values()) if t is not None]
        return min(times) if times else None

    def _arm_timer(self) -> None:
        """Schedule `on_timer` for the next deadline, so waiting receivers wake when it passes."""
        if self.on_timer is None:
            return
        when = self.next_timer()
        if when is None:
            # A timer still armed for an earlier deadline only wakes readers early, which is harmless.
            return
        if self._timer is not None:
            if self._timer_when <= when:
                # Most writes end here: rescheduling a loop timer per journal write cost several µs.
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = asyncio.get_running_loop().call_later(max(0.0, when - self.clock()), self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        if self.on_timer is not None:
            self.on_timer()
        # The deadline this timer was armed for may have gone (acked or extended), so arm
        # the next one. A deadline already passed is left to the readers just woken,
        # which expire it, instead of a timer that would fire again at once.
        when = self.next_timer()
        if when is not None and when > self.clock():
            self._arm_timer()


def _to_ranges(offsets: list[int]) -> list[list[int]]:
    """Turn sorted distinct offsets into [start, end) ranges."""
    if offsets and offsets[-1] - offsets[0] == len(offsets) - 1:
        return [[offsets[0], offsets[-1] + 1]]
    ranges: list[list[int]] = []
    for offset in offsets:
        if ranges and ranges[-1][1] == offset:
            ranges[-1][1] += 1
        else:
            ranges.append([offset, offset + 1])
    return ranges
