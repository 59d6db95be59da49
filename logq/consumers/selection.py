"""The choice of the next message a consumer group delivers from one partition.

Three sources compete for each delivery:

- ready redeliveries (nacked, expired or redriven messages), by priority;
- new messages above the default priority, found through the priority index,
  most urgent level first and in offset order within a level;
- new messages in log order from the group's cursor (the FIFO scan), which
  is how default-priority messages are found.

The winner is the candidate with the highest priority, and the lowest offset
among equals, so delivery is FIFO within a priority level. With a
starvation limit, the oldest candidate wins after that many deliveries in a
row that passed it over. Each call costs O(log n) per priority level in use
plus amortized O(1) for the FIFO scan.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass

from logq.consumers.config import GroupConfig
from logq.consumers.priority_index import PriorityIndex
from logq.consumers.state import DeliveryState, PartitionState, Pending
from logq.segments import PartitionLog, Record

logger = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
OUT_OF_ORDER_RECORDS = 20_000  # cap of the out-of-order cache, about 4 MB at 200-byte records
MAX_SCAN = 100_000  # records the FIFO scan examines per call before giving up on this partition


@dataclass(slots=True)
class Candidate:
    """A message that could be delivered next; `entry` is set for a redelivery."""

    record: Record
    entry: Pending | None

    @property
    def rank(self) -> tuple[int, int]:
        """Sort key: higher priority first, then lower offset."""
        return (-self.record.priority, self.record.offset)


class PartitionSelector:
    """Chooses messages for one group from one partition; shared by that group's consumers.

    Keeps the records read ahead of the cursor, so consecutive receives do not
    read and decode the same batches again.
    """

    def __init__(self, log: PartitionLog, index: PriorityIndex | None, state: PartitionState) -> None:
        self.log = log
        self.index = index
        self.state = state
        self.read_ahead: deque[Record] = deque()
        # Records read out of FIFO order (urgent messages, redeliveries) with
        # the urgent records that followed them in the same read, so the next
        # urgent message of the same batch costs no read and no decode.
        self.out_of_order: OrderedDict[int, Record] = OrderedDict()
        self.streak = 0

    async def choose(self, config: GroupConfig, now: float, *, exclude: set[int], hold: bool) -> Candidate | None:
        """Return the next message to deliver, or None when nothing is ready.

        Changes nothing but caches, the cursor over done offsets, and (when
        `hold` is true) messages held back by per-key ordering. Offsets in
        `exclude` are skipped, which is how `peek` looks past its own picks.
        """
        self.state.promote_delayed(now)
        candidates = []
        for finder in (self._ready, self._urgent, self._fifo):
            candidate = await finder(config, exclude, hold)
            if candidate is not None:
                candidates.append(candidate)
        if not candidates:
            return None
        best = min(candidates, key=lambda candidate: candidate.rank)
        return self._apply_starvation_limit(config, best, candidates)

    async def lease_urgent_run(
        self, config: GroupConfig, now: float, limit: int, owner: int, deadline: float,
        leased: list[tuple[Record, Pending]],
    ) -> None:
        """Lease up to `limit` new messages above priority 0 to `owner`, in the order `choose` would return them.

        The bulk path of a receive for messages from the priority index: most
        urgent level first, offset order within a level. It applies when the
        group has no per-key ordering and no starvation limit, and stops
        before a level that a ready redelivery of equal or higher priority
        competes with, so `choose` decides from there. Appends each record
        with its new entry to `leased` as it is leased, so a caller whose
        receive fails midway can take those leases back.
        """
        state = self.state
        if self.index is None or config.key_ordering or config.starvation_limit is not None:
            return
        state.promote_delayed(now)
        self.streak = 0
        start_count = len(leased)
        end = self.log.high_watermark
        start = max(state.committed, self.log.log_start_offset)
        for level in self.index.levels():
            ready = state.peek_ready()
            if ready is not None and ready.priority >= level:
                return
            offset = self.index.first_at_or_after(level, max(state.level_positions.get(level, start), start))
            while offset is not None and offset < end:
                if len(leased) - start_count >= limit:
                    return
                if not state.is_known(offset):
                    record = await self._read_one(offset)
                    if record is None:
                        # Retention deleted it meanwhile; the general path skips it.
                        return
                    entry = state.lease(offset, priority=record.priority, key=record.key, owner=owner,
                                        deadline=deadline, key_ordering=False)
                    leased.append((record, entry))
                state.level_positions[level] = offset + 1
                offset = self.index.first_at_or_after(level, offset + 1)

    async def take_fifo_run(self, config: GroupConfig, now: float, limit: int) -> tuple[list[Record], bool] | None:
        """Return up to `limit` new messages in log order when nothing else competes for them.

        This is the bulk path of a receive. It applies when no redelivery is
        ready, no message above the default priority waits in the priority
        index and the group has no per-key ordering. Then `choose` would
        return these same records one by one. Returns None when it
        does not apply. Otherwise returns the records, to be leased by the
        caller before its next await, and whether the run ended because of
        `limit` or the end of the log (True) rather than at a message the
        general path must judge (False). Changes nothing but caches and the
        cursor over done offsets.
        """
        state = self.state
        state.promote_delayed(now)
        if config.key_ordering or state.peek_ready() is not None:
            return None
        found = await self._collect_fifo_run(config, limit)
        if found is not None and found[0] and found[0][0].offset != state.cursor:
            # Retention deleted the offsets at the cursor while this run read the log.
            # The next receive moves the group past them; the general path copes meanwhile.
            return None
        return found

    async def _collect_fifo_run(self, config: GroupConfig, limit: int) -> tuple[list[Record], bool] | None:
        """Collect the run for `take_fifo_run`, which checks that it still starts at the cursor."""
        state = self.state
        if state.cursor < self.log.log_start_offset:
            return None
        if await self._urgent(config, set(), False) is not None:
            return None
        self.streak = 0
        self._trim_read_ahead()

        read_ahead = self.read_ahead
        pending, held, done = state.pending, state.held_offsets, state.done
        # Below the first done offset at or after the cursor, `offset in done` is False,
        # so the loop checks the range set only past that point.
        first_done = done.first_at_or_after(state.cursor)
        done_from = math.inf if first_done is None else first_done
        run: list[Record] = []
        position = 0
        while len(run) < limit:
            if position >= len(read_ahead):
                start = read_ahead[-1].offset + 1 if read_ahead else state.cursor
                start, position = self._step_over_done(start, position, at_cursor=not run)
                if start >= self.log.high_watermark:
                    return run, True
                more = await self.log.read(max(start, self.log.log_start_offset), max_bytes=READ_BYTES)
                if not more:
                    return run, True
                read_ahead.extend(more)
            record = read_ahead[position]
            position += 1
            offset = record.offset
            if offset in pending or offset in held or (offset >= done_from and offset in done):
                # Known offsets inside the run (urgent messages leased ahead of the
                # cursor, acks out of order) are skipped. Before the run starts, the cursor passes them.
                if not run:
                    state.pass_over(offset)
                continue
            if record.priority:
                # Appended while this run read the log: the general path weighs it.
                return run, False
            run.append(record)
        return run, True

    def _apply_starvation_limit(self, config: GroupConfig, best: Candidate, candidates: list[Candidate]) -> Candidate:
        oldest = min(candidates, key=lambda candidate: candidate.record.offset)
        if config.starvation_limit is None or oldest is best:
            self.streak = 0
            return best
        self.streak += 1
        if self.streak > config.starvation_limit:
            self.streak = 0
            return oldest
        return best

    async def _ready(self, config: GroupConfig, exclude: set[int], hold: bool) -> Candidate | None:
        while True:
            entry = self.state.peek_ready() if not exclude else self._first_ready_not_in(exclude)
            if entry is None:
                return None
            record = await self._read_one(entry.offset)
            if record is not None:
                return Candidate(record, entry)
            # Retention deleted the record of a redelivery, so nothing is left to deliver.
            logger.warning("offset %d of %s was deleted by retention before its redelivery; dropping it",
                           entry.offset, self.log.directory)
            self.state.ack(entry.offset, math.inf)  # type: ignore[arg-type]

    def _first_ready_not_in(self, exclude: set[int]) -> Pending | None:
        for _, offset in sorted(self.state.ready):
            entry = self.state.pending.get(offset)
            if entry is not None and entry.state is DeliveryState.READY and offset not in exclude:
                return entry
        return None

    async def _urgent(self, config: GroupConfig, exclude: set[int], hold: bool) -> Candidate | None:
        if self.index is None:
            return None
        end = self.log.high_watermark
        start = max(self.state.committed, self.log.log_start_offset)
        for level in self.index.levels():
            offset = self.index.first_at_or_after(level, max(self.state.level_positions.get(level, start), start))
            while offset is not None and offset < end:
                if self.state.is_known(offset):
                    self.state.level_positions[level] = offset + 1
                elif offset not in exclude:
                    record = await self._read_one(offset)
                    if record is not None and not self._held(config, record, hold, exclude):
                        return Candidate(record, None)
                offset = self.index.first_at_or_after(level, offset + 1)
        return None

    def _trim_read_ahead(self) -> None:
        """Drop read-ahead records below the cursor, and all of them when they start past it."""
        cursor = self.state.cursor
        while self.read_ahead and self.read_ahead[0].offset < cursor:
            self.read_ahead.popleft()
        if self.read_ahead and self.read_ahead[0].offset > cursor:
            self.read_ahead.clear()

    async def _fifo(self, config: GroupConfig, exclude: set[int], hold: bool) -> Candidate | None:
        state = self.state
        self._trim_read_ahead()
        scanned = 0
        position = 0
        while scanned < MAX_SCAN:
            if position >= len(self.read_ahead):
                start = self.read_ahead[-1].offset + 1 if self.read_ahead else state.cursor
                start, position = self._step_over_done(start, position, at_cursor=start == state.cursor)
                if start >= self.log.high_watermark:
                    return None
                more = await self.log.read(max(start, self.log.log_start_offset), max_bytes=READ_BYTES)
                if not more:
                    return None
                self.read_ahead.extend(more)
            record = self.read_ahead[position]
            position += 1
            scanned += 1
            at_cursor = record.offset == state.cursor
            if state.is_known(record.offset) or record.offset in exclude:
                if at_cursor and record.offset not in exclude:
                    state.pass_over(record.offset)
                continue
            if self._held(config, record, hold, exclude):
                if at_cursor:
                    state.pass_over(record.offset)
                continue
            return Candidate(record, None)
        return None

    def _step_over_done(self, start: int, position: int, *, at_cursor: bool) -> tuple[int, int]:
        """Return where a scan that ran out of read-ahead at `start` reads next, and its read-ahead position.

        Done offsets need no read, and a skipped damaged batch cannot be read
        at all, so a scan steps over a whole done range. The read-ahead must
        stay consecutive, so it is emptied then; `at_cursor` moves the cursor
        along when everything before `start` was passed over.
        """
        resume = self.state.first_not_done(start)
        if resume == start:
            return start, position
        self.read_ahead.clear()
        if at_cursor:
            self.state.pass_over(resume - 1)
        return resume, 0

    def _held(self, config: GroupConfig, record: Record, hold: bool, exclude: set[int]) -> bool:
        """Apply per-key ordering to a new message; return True when it must wait."""
        if not config.key_ordering or record.key is None or record.key not in self.state.busy_keys:
            return False
        if hold:
            self.state.hold_if_key_busy(record.offset, record.priority, record.key)
        else:
            exclude.add(record.offset)
        return True

    async def _read_one(self, offset: int) -> Record | None:
        if self.read_ahead:
            # The read-ahead contains consecutive offsets, so the slot is a subtraction.
            slot = offset - self.read_ahead[0].offset
            if 0 <= slot < len(self.read_ahead) and self.read_ahead[slot].offset == offset:
                return self.read_ahead[slot]
        cached = self.out_of_order.get(offset)
        if cached is not None:
            self.out_of_order.move_to_end(offset)
            return cached
        if offset < self.log.log_start_offset or offset >= self.log.high_watermark:
            return None
        records = await self.log.read(offset, max_bytes=READ_BYTES)
        found = None
        for record in records:
            if record.offset == offset:
                found = record
            elif record.priority:
                self.out_of_order[record.offset] = record
        while len(self.out_of_order) > OUT_OF_ORDER_RECORDS:
            self.out_of_order.popitem(last=False)
        return found

    def reset(self) -> None:
        """Drop cached records and the starvation count, after a group reset."""
        self.read_ahead.clear()
        self.out_of_order.clear()
        self.streak = 0

