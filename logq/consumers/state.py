"""Delivery state of one consumer group on one partition, without any I/O.

Every offset of the partition is in one of these states for the group:

- done: acked or dead-lettered. Offsets below `committed` are done; done
  offsets above it are kept in a `RangeSet`.
- pending: delivered at least once and not done. A `Pending` entry is
  `leased` (held by one consumer until its lease deadline), `delayed` (nacked
  with a delay that has not passed) or `ready` (waiting for redelivery).
- held: found by the scan while an earlier message with the same key was
  pending, under per-key ordering. It becomes ready when that one is done.
- new: never delivered. The FIFO scan finds new offsets from `cursor` on;
  offsets below `cursor` are done, pending or held.

Times are seconds since the Unix epoch from the group's clock, so lease
deadlines and delays survive a restart. The state moves only through the
methods here, so property tests can drive it against a model.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from logq.consumers.ranges import RangeSet
from logq.errors import LeaseError, OffsetOutOfRangeError
from logq.segments.batch import Record


# Size of the lease heap from which `_push_lease` drops stale items.
LEASE_HEAP_COMPACT_ITEMS = 4096


class DeliveryState(enum.Enum):
    """State of a pending message."""

    READY = "ready"
    LEASED = "leased"
    DELAYED = "delayed"


_ALLOWED = {
    (DeliveryState.READY, DeliveryState.LEASED),
    (DeliveryState.LEASED, DeliveryState.READY),
    (DeliveryState.LEASED, DeliveryState.DELAYED),
    (DeliveryState.DELAYED, DeliveryState.READY),
}


@dataclass(slots=True)
class Pending:
    """A message delivered at least once and not done."""

    offset: int
    priority: int = 0
    key: bytes | None = None
    state: DeliveryState = DeliveryState.READY
    delivery_count: int = 0
    owner: int | None = None
    deadline: float | None = None  # lease end or delay end, seconds since the epoch
    first_failure: float | None = None
    last_failure: float | None = None
    last_reason: str | None = None

    def move(self, target: DeliveryState) -> None:
        """Change state, raising LeaseError for a transition the model does not allow."""
        if (self.state, target) not in _ALLOWED:
            raise LeaseError(
                f"offset {self.offset} cannot go from {self.state.value} to {target.value}"
            )
        self.state = target


@dataclass
class PartitionState:
    """Committed offset, acks above it, pending deliveries and held messages of one partition."""

    committed: int
    cursor: int = -1
    done: RangeSet = field(default_factory=RangeSet)
    pending: dict[int, Pending] = field(default_factory=dict)
    ready: list[tuple[int, int]] = field(default_factory=list)  # heap of (-priority, offset)
    delayed: list[tuple[float, int]] = field(default_factory=list)  # heap of (delay end, offset)
    # Heap of (lease deadline, offset), or (lease deadline, start, end) for a run leased at once.
    leases: list[tuple[float, int] | tuple[float, int, int]] = field(default_factory=list)
    held: dict[bytes, deque[tuple[int, int]]] = field(default_factory=dict)  # key -> (offset, priority)
    held_offsets: set[int] = field(default_factory=set)
    busy_keys: dict[bytes, int] = field(default_factory=dict)  # key -> its pending offset
    level_positions: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cursor < self.committed:
            self.cursor = self.committed

    # -- queries ----------------------------------------------------------------

    def is_done(self, offset: int) -> bool:
        """Return True when `offset` is below the committed offset or acked, and not pending."""
        if offset in self.pending:
            return False
        return offset < self.committed or offset in self.done

    def not_done(self, offsets: list[int]) -> list[int]:
        """Return the offsets of `offsets` that are not done, in their order."""
        pending, committed = self.pending, self.committed
        if not self.done:
            return [offset for offset in offsets if offset in pending or offset >= committed]
        return [offset for offset in offsets if not self.is_done(offset)]

    def done_count(self, start: int, end: int) -> int:
        """Return how many offsets in [start, end) are done."""
        below = max(0, min(end, self.committed) - start)
        return below + self.done.count_between(max(start, self.committed), end)

    def first_not_done(self, offset: int) -> int:
        """Return the first offset at or after `offset` that is not done, stepping over whole done ranges."""
        if offset < self.committed:
            offset = self.committed
        return self.done.end_of_range(offset)

    def is_known(self, offset: int) -> bool:
        """Return True when `offset` is done, pending or held, so no scan may deliver it as new."""
        return (
            offset < self.cursor or offset in self.pending or offset in self.held_offsets or self.is_done(offset)
        )

    def in_flight(self) -> int:
        """Number of leased messages."""
        return sum(1 for entry in self.pending.values() if entry.state is DeliveryState.LEASED)

    def waiting(self) -> int:
        """Number of messages waiting for redelivery (ready or delayed)."""
        return sum(1 for entry in self.pending.values() if entry.state is not DeliveryState.LEASED)

    def first_not_done_offset(self) -> int:
        """Return the lowest offset that is not done: the committed offset, or a redriven message below it."""
        below = [offset for offset in self.pending if offset < self.committed]
        return min(below) if below else self.committed

    def reopened_count(self) -> int:
        """Number of pending messages below the committed offset, which a redrive made ready again."""
        return sum(1 for offset in self.pending if offset < self.committed)

    def held_count(self) -> int:
        """Number of messages held back by per-key ordering."""
        return sum(len(queue) for queue in self.held.values())

    # -- the scan of new offsets ------------------------------------------------------

    def pass_over(self, offset: int) -> None:
        """Move the cursor past `offset` without delivering it."""
        if offset >= self.cursor:
            self.cursor = offset + 1

    def hold_if_key_busy(self, offset: int, priority: int, key: bytes | None) -> bool:
        """Hold a new message back when its key has a pending message; return True if held."""
        if key is None or key not in self.busy_keys:
            return False
        self.held.setdefault(key, deque()).append((offset, priority))
        self.held_offsets.add(offset)
        return True

    # -- transitions -------------------------------------------------------------------

    def lease(self, offset: int, *, priority: int, key: bytes | None, owner: int, deadline: float,
              key_ordering: bool) -> Pending:
        """Deliver `offset` to consumer `owner` until `deadline`; return its entry.

        Works for a new offset and for a ready pending one. Raises LeaseError
        for an offset that is done, leased or delayed.
        """
        entry = self.pending.get(offset)
        if entry is None:
            if self.is_done(offset):
                raise LeaseError(f"offset {offset} is done and cannot be delivered again")
            entry = Pending(offset=offset, priority=priority, key=key)
            self.pending[offset] = entry
            if key_ordering and key is not None:
                self.busy_keys[key] = offset
        entry.move(DeliveryState.LEASED)
        entry.delivery_count += 1
        entry.owner = owner
        entry.deadline = deadline
        self._push_lease((deadline, offset))
        if offset == self.cursor:
            self.cursor += 1
        return entry

    def lease_new_run(self, records: Sequence[Record], *, owner: int, deadline: float) -> list[Pending]:
        """Deliver new offsets, starting at the cursor, to `owner` until `deadline`.

        The bulk form of `lease` for what `PartitionSelector.take_fifo_run`
        returns. The caller guarantees that the offsets are new (not done,
        pending or held) and ascending, that every offset between two of them
        is known, and that the group has no per-key ordering. One lease heap
        item covers each stretch of consecutive offsets.
        """
        if not records:
            return []
        first = records[0].offset
        if first != self.cursor:
            raise LeaseError(f"offset {first} is not the cursor {self.cursor}, so it starts no run of new offsets")
        pending = self.pending
        leased = DeliveryState.LEASED
        entries = []
        stretch_start = previous = first
        for record in records:
            offset = record.offset
            if offset != previous + 1 and offset != first:
                self._push_lease((deadline, stretch_start, previous + 1))
                stretch_start = offset
            entry = Pending(offset, record.priority, record.key, leased, 1, owner, deadline)
            pending[offset] = entry
            entries.append(entry)
            previous = offset
        self._push_lease((deadline, stretch_start, previous + 1))
        self.cursor = previous + 1
        return entries

    def _push_lease(self, item: tuple[float, int] | tuple[float, int, int]) -> None:
        """Add a lease heap item, first dropping the items of acked or expired leases when they pile up.

        Acked leases leave their items until the deadline passes, so with
        receive(1) and a 30 s lease the heap would otherwise hold every
        message received in the last 30 s.
        """
        leases = self.leases
        if len(leases) >= LEASE_HEAP_COMPACT_ITEMS and len(leases) > 4 * len(self.pending):
            leases[:] = [
                (entry.deadline, entry.offset) for entry in self.pending.values()
                if entry.state is DeliveryState.LEASED
            ]
            heapq.heapify(leases)
        heapq.heappush(leases, item)

    def extend(self, offset: int, owner: int, deadline: float) -> Pending:
        """Move the lease deadline of `offset`; raises LeaseError unless `owner` holds its lease."""
        entry = self._leased_by(offset, owner)
        entry.deadline = deadline
        self._push_lease((deadline, offset))
        return entry

    def fail(self, offset: int, *, now: float, delay: float, reason: str, owner: int | None = None) -> Pending:
        """Record a failed delivery (nack, lease expiry, lost consumer) and schedule the redelivery.

        With `owner` set, raises LeaseError unless that consumer holds the lease.
        """
        entry = self._leased_by(offset, owner) if owner is not None else self.pending[offset]
        entry.first_failure = entry.first_failure if entry.first_failure is not None else now
        entry.last_failure = now
        entry.last_reason = reason
        entry.owner = None
        if delay > 0:
            entry.move(DeliveryState.DELAYED)
            entry.deadline = now + delay
            heapq.heappush(self.delayed, (entry.deadline, offset))
        else:
            entry.move(DeliveryState.READY)
            entry.deadline = None
            heapq.heappush(self.ready, (-entry.priority, offset))
        return entry

    def release(self, offset: int, *, undo_delivery: bool) -> None:
        """Make a leased message ready again without counting a failure.

        `undo_delivery` takes back its delivery count as well, for a message a
        consumer fetched but never handed to the application.
        """
        entry = self.pending[offset]
        entry.move(DeliveryState.READY)
        entry.owner = None
        entry.deadline = None
        if undo_delivery:
            entry.delivery_count = max(0, entry.delivery_count - 1)
        heapq.heappush(self.ready, (-entry.priority, offset))

    def ack(self, offset: int, log_end_offset: int) -> bool:
        """Mark `offset` done; return False when it already was.

        Raises OffsetOutOfRangeError for an offset at or above the log end
        offset, which was never written.
        """
        if offset >= log_end_offset or offset < 0:
            raise OffsetOutOfRangeError(
                f"cannot ack offset {offset}: it was never written (log end offset {log_end_offset})"
            )
        entry = self.pending.pop(offset, None)
        if entry is None and self.is_done(offset):
            return False
        if offset in self.held_offsets:
            self._drop_held(offset)
        if entry is not None and entry.key is not None and self.busy_keys.get(entry.key) == offset:
            self._release_key(entry.key)
        if offset >= self.committed:
            self.done.add(offset)
            self._advance_committed()
        return True

    def ack_range(self, start: int, end: int) -> None:
        """Mark every offset in [start, end) done, as `ack` on each would, with one range insert.

        The caller checked that the range was written.
        """
        pending, held = self.pending, self.held_offsets
        if end - start > len(pending) + len(held):
            # A wide range, such as a skip: visit only the pending and held offsets in it.
            offsets: Iterable[int] = sorted(o for o in (*pending, *held) if start <= o < end)
        else:
            offsets = range(start, end)
        for offset in offsets:
            entry = pending.pop(offset, None)
            if entry is not None:
                if entry.key is not None and self.busy_keys.get(entry.key) == offset:
                    self._release_key(entry.key)
            elif held and offset in held:
                self._drop_held(offset)
        start = max(start, self.committed)
        if start < end:
            self.done.add_range(start, end)
            self._advance_committed()

    def _advance_committed(self) -> None:
        self.committed = self.done.pop_run_from(self.committed)
        if self.cursor < self.committed:
            self.cursor = self.committed

    def _release_key(self, key: bytes) -> None:
        """Hand a key to its next held message, which becomes ready."""
        del self.busy_keys[key]
        queue = self.held.get(key)
        if not queue:
            self.held.pop(key, None)
            return
        offset, priority = queue.popleft()
        self.held_offsets.discard(offset)
        if not queue:
            del self.held[key]
        self.pending[offset] = Pending(offset=offset, priority=priority, key=key)
        self.busy_keys[key] = offset
        heapq.heappush(self.ready, (-priority, offset))

    def _drop_held(self, offset: int) -> None:
        """Remove a held message that was acked before its key came free, so it is never made ready."""
        self.held_offsets.discard(offset)
        for key, queue in self.held.items():
            for item in queue:
                if item[0] == offset:
                    queue.remove(item)
                    if not queue:
                        del self.held[key]
                    return

    def reopen(self, offset: int, *, priority: int, key: bytes | None) -> Pending:
        """Make a done offset ready again with a fresh delivery count (a redrive).

        Raises LeaseError for an offset that is not done.
        """
        if not self.is_done(offset):
            raise LeaseError(f"offset {offset} is not done, so it cannot be redriven")
        entry = Pending(offset=offset, priority=priority, key=key)
        self.pending[offset] = entry
        heapq.heappush(self.ready, (-priority, offset))
        return entry

    def reset(self, offset: int) -> None:
        """Move the committed offset and the cursor to `offset`, forgetting every delivery."""
        self.committed = offset
        self.cursor = offset
        self.done.clear()
        self.pending.clear()
        self.ready.clear()
        self.delayed.clear()
        self.leases.clear()
        self.held.clear()
        self.held_offsets.clear()
        self.busy_keys.clear()
        self.level_positions.clear()

    def skip_to(self, offset: int) -> None:
        """Forget offsets below `offset`, which retention deleted."""
        if offset <= self.committed:
            return
        # Held messages go first, so freeing a key below cannot make one of them pending.
        for stale in [o for o in self.held_offsets if o < offset]:
            self._drop_held(stale)
        for stale in [o for o in self.pending if o < offset]:
            entry = self.pending.pop(stale)
            if entry.key is not None and self.busy_keys.get(entry.key) == stale:
                self._release_key(entry.key)
        self.done.discard_below(offset)
        self.committed = offset
        self._advance_committed()

    def known_end(self) -> int:
        """Return one past the highest offset this state refers to: committed, cursor, done, pending or held."""
        ends = [self.committed, self.cursor]
        if self.done:
            ends.append(self.done.ends[-1])
        if self.pending:
            ends.append(max(self.pending) + 1)
        if self.held_offsets:
            ends.append(max(self.held_offsets) + 1)
        return max(ends)

    def forget_from(self, end: int) -> None:
        """Forget every offset at or above `end`, which the log no longer contains (a tail lost in a crash).

        New messages will be written at those offsets, so they must count as new.
        """
        if self.committed > end:
            self.reset(end)
            return
        for stale in [o for o in self.held_offsets if o >= end]:
            self._drop_held(stale)
        for stale in [o for o in self.pending if o >= end]:
            entry = self.pending.pop(stale)
            if entry.key is not None and self.busy_keys.get(entry.key) == stale:
                self._release_key(entry.key)
        self.done.discard_from(end)
        self.cursor = min(self.cursor, end)
        for level, position in self.level_positions.items():
            self.level_positions[level] = min(position, end)

    # -- timers --------------------------------------------------------------------------

    def due_leases(self, now: float) -> list[Pending]:
        """Return the leased entries whose deadline passed, earliest first."""
        expired = []
        # A lease extended or renewed to the same deadline has two equal heap items, so report it once.
        seen: set[int] = set()
        while self.leases and self.leases[0][0] <= now:
            item = heapq.heappop(self.leases)
            deadline = item[0]
            # An item is (deadline, offset) or, for a run leased at once, (deadline, start, end).
            offsets = range(item[1], item[2]) if len(item) == 3 else (item[1],)
            for offset in offsets:
                entry = self.pending.get(offset)
                if entry is None or entry.state is not DeliveryState.LEASED or entry.deadline != deadline:
                    continue
                if offset not in seen:
                    seen.add(offset)
                    expired.append(entry)
        return expired

    def promote_delayed(self, now: float) -> None:
        """Make delayed entries whose delay passed ready."""
        while self.delayed and self.delayed[0][0] <= now:
            deadline, offset = heapq.heappop(self.delayed)
            entry = self.pending.get(offset)
            if entry is not None and entry.state is DeliveryState.DELAYED and entry.deadline == deadline:
                entry.move(DeliveryState.READY)
                entry.deadline = None
                heapq.heappush(self.ready, (-entry.priority, offset))

    def peek_ready(self) -> Pending | None:
        """Return the most urgent ready entry (lowest offset within a priority), or None."""
        while self.ready:
            _, offset = self.ready[0]
            entry = self.pending.get(offset)
            if entry is not None and entry.state is DeliveryState.READY:
                return entry
            heapq.heappop(self.ready)
        return None

    def next_timer(self) -> float | None:
        """Return the earliest lease deadline or delay end, or None."""
        times = [heap[0][0] for heap in (self.leases, self.delayed) if heap]
        return min(times) if times else None

    def _leased_by(self, offset: int, owner: int | None) -> Pending:
        entry = self.pending.get(offset)
        if entry is None or entry.state is not DeliveryState.LEASED or (owner is not None and entry.owner != owner):
            state = "done" if entry is None else entry.state.value
            raise LeaseError(
                f"offset {offset} is not leased to this consumer (it is {state}); its lease may "
                "have expired and the message gone to another consumer"
            )
        return entry
