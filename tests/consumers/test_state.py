"""Tests of PartitionState: a state machine against a plain model, the transition table and per-key ordering."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from logq.consumers import DeliveryState, PartitionState, Pending
from logq.errors import LeaseError, OffsetOutOfRangeError

LOG_END = 24
START_TIME = 1_000.0
OWNERS = st.sampled_from([1, 2, 3])
LEASE_SECONDS = st.sampled_from([5.0, 10.0])
DELAYS = st.sampled_from([0.0, 0.0, 3.0, 7.0])
UNWRITTEN = st.one_of(st.integers(min_value=-3, max_value=-1), st.integers(min_value=LOG_END, max_value=LOG_END + 3))

READY = DeliveryState.READY
LEASED = DeliveryState.LEASED
DELAYED = DeliveryState.DELAYED


def priority_of(offset: int) -> int:
    """Return the priority of the record at `offset`: 0, 1 or 2, fixed per offset as in a real log."""
    return (offset * 5) % 3


def runs(values: set[int]) -> int:
    """Return how many maximal runs of consecutive integers `values` contains."""
    return sum(1 for value in values if value - 1 not in values)


@dataclass(frozen=True)
class FakeRecord:
    """The fields of a log record that `lease_new_run` reads."""

    offset: int
    priority: int
    key: bytes | None = None


@dataclass
class Expected:
    """The model of one pending offset."""

    state: DeliveryState
    priority: int
    delivery_count: int = 0
    owner: int | None = None
    deadline: float | None = None
    first_failure: float | None = None
    last_failure: float | None = None


class PartitionStateMachine(RuleBasedStateMachine):
    """Drive one PartitionState with leases, acks, nacks, expiry, releases, resets, redrives and skips.

    The model keeps the offsets acked since the last reset (`acked`), the
    reset offset (`floor`) and the pending offsets. An offset is done when it
    is not pending and lies below the floor or was acked. A redriven offset is
    pending again but stays acked, so it does not move the committed offset
    back. The committed offset is the lowest offset at or above the floor that
    was never acked.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = PartitionState(committed=0)
        self.now = START_TIME
        self.floor = 0
        self.acked: set[int] = set()
        self.pending: dict[int, Expected] = {}
        self.previous_counts: dict[int, int] = {}
        self.lowered: set[int] = set()

    # -- the model ------------------------------------------------------------------

    def is_done(self, offset: int) -> bool:
        return offset not in self.pending and (offset < self.floor or offset in self.acked)

    def committed(self) -> int:
        offset = self.floor
        while offset in self.acked:
            offset += 1
        return offset

    def first_new(self) -> int | None:
        for offset in range(LOG_END):
            if not self.is_done(offset) and offset not in self.pending:
                return offset
        return None

    def offsets_in(self, state: DeliveryState) -> list[int]:
        return sorted(offset for offset, expected in self.pending.items() if expected.state is state)

    def most_urgent_ready(self) -> int | None:
        ready = self.offsets_in(READY)
        return min(ready, key=lambda offset: (-self.pending[offset].priority, offset)) if ready else None

    def done_offsets(self) -> list[int]:
        return [offset for offset in range(LOG_END) if self.is_done(offset)]

    def not_done_offsets(self) -> list[int]:
        return [offset for offset in range(LOG_END) if not self.is_done(offset)]

    def record_failure(self, offset: int, delay: float) -> None:
        expected = self.pending[offset]
        if expected.first_failure is None:
            expected.first_failure = self.now
        expected.last_failure = self.now
        expected.owner = None
        if delay > 0:
            expected.state = DELAYED
            expected.deadline = self.now + delay
        else:
            expected.state = READY
            expected.deadline = None

    # -- rules --------------------------------------------------------------------------

    @rule(owner=OWNERS, seconds=LEASE_SECONDS)
    def lease_next_new(self, owner: int, seconds: float) -> None:
        # The FIFO scan in selection.py moves the cursor over known offsets the same way.
        offset = self.state.cursor
        while offset < LOG_END and self.state.is_known(offset):
            self.state.pass_over(offset)
            offset = self.state.cursor
        expected = self.first_new()
        if offset >= LOG_END:
            assert expected is None, f"the scan found no new offset but {expected} is new"
            return
        assert offset == expected

        deadline = self.now + seconds
        entry = self.state.lease(offset, priority=priority_of(offset), key=None, owner=owner, deadline=deadline,
                                 key_ordering=False)
        assert entry.delivery_count == 1
        self.pending[offset] = Expected(LEASED, priority_of(offset), delivery_count=1, owner=owner, deadline=deadline)

    @rule(owner=OWNERS, seconds=LEASE_SECONDS, size=st.integers(min_value=1, max_value=6))
    def lease_new_run(self, owner: int, seconds: float, size: int) -> None:
        # The bulk path of selection.py: pass over known offsets at the cursor, then lease
        # the new offsets that follow, skipping known ones.
        offset = self.state.cursor
        while offset < LOG_END and self.state.is_known(offset):
            self.state.pass_over(offset)
            offset = self.state.cursor
        run = []
        while offset < LOG_END and len(run) < size:
            if not self.state.is_known(offset):
                run.append(FakeRecord(offset, priority_of(offset)))
            offset += 1
        if run:
            assert run[0].offset == self.first_new()

        deadline = self.now + seconds
        entries = self.state.lease_new_run(run, owner=owner, deadline=deadline)
        assert [entry.offset for entry in entries] == [record.offset for record in run]
        for record in run:
            self.pending[record.offset] = Expected(LEASED, record.priority, delivery_count=1, owner=owner,
                                                   deadline=deadline)

    @precondition(lambda self: self.state.cursor + 1 < LOG_END)
    @rule()
    def lease_new_run_off_cursor_raises(self) -> None:
        cursor = self.state.cursor
        with pytest.raises(LeaseError, match="starts no run of new offsets"):
            self.state.lease_new_run([FakeRecord(cursor + 1, 0)], owner=1, deadline=self.now + 5)

    @precondition(lambda self: self.offsets_in(READY))
    @rule(owner=OWNERS, seconds=LEASE_SECONDS)
    def lease_ready(self, owner: int, seconds: float) -> None:
        entry = self.state.peek_ready()
        assert entry is not None
        deadline = self.now + seconds
        self.state.lease(entry.offset, priority=entry.priority, key=None, owner=owner, deadline=deadline,
                         key_ordering=False)
        expected = self.pending[entry.offset]
        expected.state = LEASED
        expected.delivery_count += 1
        expected.owner = owner
        expected.deadline = deadline

    @precondition(lambda self: self.done_offsets())
    @rule(data=st.data())
    def lease_done_raises(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(self.done_offsets()))
        with pytest.raises(LeaseError, match=f"offset {offset} is done"):
            self.state.lease(offset, priority=priority_of(offset), key=None, owner=1, deadline=self.now + 5,
                             key_ordering=False)

    @rule(offset=st.integers(min_value=0, max_value=LOG_END - 1))
    def ack(self, offset: int) -> None:
        newly_done = not self.is_done(offset)
        assert self.state.ack(offset, LOG_END) is newly_done
        self.pending.pop(offset, None)
        if offset >= self.floor:
            self.acked.add(offset)

    @rule(start=st.integers(min_value=0, max_value=LOG_END - 1), size=st.integers(min_value=1, max_value=8))
    def ack_range(self, start: int, size: int) -> None:
        end = min(start + size, LOG_END)
        self.state.ack_range(start, end)
        for offset in range(start, end):
            self.pending.pop(offset, None)
            if offset >= self.floor:
                self.acked.add(offset)

    @rule(offset=UNWRITTEN)
    def ack_unwritten_raises(self, offset: int) -> None:
        with pytest.raises(OffsetOutOfRangeError, match=f"log end offset {LOG_END}"):
            self.state.ack(offset, LOG_END)

    @precondition(lambda self: self.offsets_in(LEASED))
    @rule(data=st.data(), delay=DELAYS)
    def nack(self, data: st.DataObject, delay: float) -> None:
        offset = data.draw(st.sampled_from(self.offsets_in(LEASED)))
        owner = self.pending[offset].owner
        assert owner is not None
        other = owner % 3 + 1
        with pytest.raises(LeaseError, match=f"offset {offset} is not leased to this consumer"):
            self.state.fail(offset, now=self.now, delay=delay, reason="nacked", owner=other)

        self.state.fail(offset, now=self.now, delay=delay, reason="nacked", owner=owner)
        self.record_failure(offset, delay)

    @precondition(lambda self: any(self.pending.get(o) is None or self.pending[o].state is not LEASED
                                   for o in range(LOG_END)))
    @rule(data=st.data())
    def nack_unleased_raises(self, data: st.DataObject) -> None:
        offsets = [o for o in range(LOG_END) if o not in self.pending or self.pending[o].state is not LEASED]
        offset = data.draw(st.sampled_from(offsets))
        with pytest.raises(LeaseError, match=f"offset {offset} is not leased"):
            self.state.fail(offset, now=self.now, delay=0.0, reason="nacked", owner=1)

    @precondition(lambda self: self.offsets_in(LEASED))
    @rule(data=st.data(), seconds=LEASE_SECONDS)
    def extend(self, data: st.DataObject, seconds: float) -> None:
        offset = data.draw(st.sampled_from(self.offsets_in(LEASED)))
        owner = self.pending[offset].owner
        assert owner is not None
        with pytest.raises(LeaseError):
            self.state.extend(offset, owner % 3 + 1, self.now + seconds)

        self.state.extend(offset, owner, self.now + seconds)
        self.pending[offset].deadline = self.now + seconds

    @rule(seconds=st.integers(min_value=0, max_value=12), delay=st.sampled_from([0.0, 2.0]))
    def advance_clock(self, seconds: int, delay: float) -> None:
        self.now += seconds
        due = self.state.due_leases(self.now)
        expected = [o for o in self.offsets_in(LEASED) if (self.pending[o].deadline or 0.0) <= self.now]
        assert sorted(entry.offset for entry in due) == expected
        deadlines = [entry.deadline for entry in due]
        assert deadlines == sorted(deadlines)  # type: ignore[type-var]

        for entry in due:
            self.state.fail(entry.offset, now=self.now, delay=delay, reason="lease expired")
            self.record_failure(entry.offset, delay)

        self.state.promote_delayed(self.now)
        for offset in self.offsets_in(DELAYED):
            if self.pending[offset].deadline <= self.now:  # type: ignore[operator]
                self.pending[offset].state = READY
                self.pending[offset].deadline = None

    @rule(owner=OWNERS, undo=st.booleans())
    def release_owner(self, owner: int, undo: bool) -> None:
        offsets = [o for o in self.offsets_in(LEASED) if self.pending[o].owner == owner]
        for offset in offsets:
            self.state.release(offset, undo_delivery=undo)
            expected = self.pending[offset]
            expected.state = READY
            expected.owner = None
            expected.deadline = None
            if undo:
                expected.delivery_count -= 1
                self.lowered.add(offset)

    @rule(offset=st.integers(min_value=0, max_value=LOG_END))
    def reset(self, offset: int) -> None:
        self.state.reset(offset)
        self.lowered.update(self.pending)
        self.floor = offset
        self.acked = set()
        self.pending = {}

    @precondition(lambda self: self.done_offsets())
    @rule(data=st.data())
    def reopen(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(self.done_offsets()))
        entry = self.state.reopen(offset, priority=priority_of(offset), key=None)
        assert entry.delivery_count == 0
        self.pending[offset] = Expected(READY, priority_of(offset))

    @precondition(lambda self: self.not_done_offsets())
    @rule(data=st.data())
    def reopen_not_done_raises(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(self.not_done_offsets()))
        with pytest.raises(LeaseError, match=f"offset {offset} is not done"):
            self.state.reopen(offset, priority=priority_of(offset), key=None)

    @rule(offset=st.integers(min_value=0, max_value=LOG_END))
    def skip_to(self, offset: int) -> None:
        before = self.committed()
        self.state.skip_to(offset)
        if offset <= before:
            return
        self.floor = offset
        self.acked = {o for o in self.acked if o >= offset}
        self.pending = {o: expected for o, expected in self.pending.items() if o >= offset}

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def committed_matches_model(self) -> None:
        assert self.state.committed == self.committed()

    @invariant()
    def done_matches_model(self) -> None:
        for offset in range(-2, LOG_END + 2):
            assert self.state.is_done(offset) is self.is_done(offset), f"offset {offset}"

    @invariant()
    def pending_offsets_match_model(self) -> None:
        assert sorted(self.state.pending) == sorted(self.pending)

    @invariant()
    def pending_entries_match_model(self) -> None:
        for offset, entry in self.state.pending.items():
            expected = self.pending[offset]
            assert entry.state is expected.state, f"offset {offset}"
            assert entry.delivery_count == expected.delivery_count, f"offset {offset}"
            assert entry.deadline == expected.deadline, f"offset {offset}"
            assert entry.first_failure == expected.first_failure, f"offset {offset}"
            assert entry.last_failure == expected.last_failure, f"offset {offset}"

    @invariant()
    def done_offset_never_pending(self) -> None:
        for offset in self.state.pending:
            assert not self.state.is_done(offset), f"offset {offset}"

    @invariant()
    def delivery_counts_never_decrease(self) -> None:
        counts = {offset: entry.delivery_count for offset, entry in self.state.pending.items()}
        for offset, count in counts.items():
            if offset in self.previous_counts and offset not in self.lowered:
                assert count >= self.previous_counts[offset], f"offset {offset}"
        self.previous_counts = counts
        self.lowered = set()

    @invariant()
    def leased_entry_has_one_owner(self) -> None:
        for offset, entry in self.state.pending.items():
            if entry.state is LEASED:
                assert entry.owner == self.pending[offset].owner, f"offset {offset}"
            else:
                assert entry.owner is None, f"offset {offset}"

    @invariant()
    def in_flight_counts_leases(self) -> None:
        assert self.state.in_flight() == len(self.offsets_in(LEASED))

    @invariant()
    def waiting_counts_ready_and_delayed(self) -> None:
        assert self.state.waiting() == len(self.offsets_in(READY)) + len(self.offsets_in(DELAYED))

    @invariant()
    def peek_ready_is_most_urgent(self) -> None:
        entry = self.state.peek_ready()
        assert (entry.offset if entry is not None else None) == self.most_urgent_ready()

    @invariant()
    def cursor_never_passes_new_offset(self) -> None:
        for offset in range(min(self.state.cursor, LOG_END)):
            assert self.is_done(offset) or offset in self.pending, f"offset {offset}"

    @invariant()
    def done_holds_acks_above_committed(self) -> None:
        committed = self.state.committed
        assert set(self.state.done) == {offset for offset in self.acked if offset > committed}

    @invariant()
    def done_ranges_are_minimal(self) -> None:
        above = {offset for offset in self.acked if offset > self.state.committed}
        assert self.state.done.range_count == runs(above)


PartitionStateMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestPartitionStateMachine = PartitionStateMachine.TestCase


# -- the transition check ---------------------------------------------------------------------

ALL_STATES = list(DeliveryState)
ALLOWED = [(READY, LEASED), (LEASED, READY), (LEASED, DELAYED), (DELAYED, READY)]
DISALLOWED = [(source, target) for source in ALL_STATES for target in ALL_STATES if (source, target) not in ALLOWED]


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=[f"{s.value}-{t.value}" for s, t in ALLOWED])
def test_move_allowed(source: DeliveryState, target: DeliveryState) -> None:
    entry = Pending(offset=7, state=source)
    entry.move(target)
    assert entry.state is target


@pytest.mark.parametrize(("source", "target"), DISALLOWED, ids=[f"{s.value}-{t.value}" for s, t in DISALLOWED])
def test_move_disallowed_raises(source: DeliveryState, target: DeliveryState) -> None:
    entry = Pending(offset=7, state=source)
    with pytest.raises(LeaseError) as raised:
        entry.move(target)
    message = str(raised.value)
    assert f"from {source.value}" in message
    assert f"to {target.value}" in message
    assert "offset 7" in message
    assert entry.state is source


def test_disallowed_table_is_complete() -> None:
    assert len(ALLOWED) + len(DISALLOWED) == len(ALL_STATES) ** 2
    assert len(DISALLOWED) == 5


# -- single transitions ----------------------------------------------------------------------


def lease(state: PartitionState, offset: int, *, owner: int = 1, deadline: float = 10.0, key: bytes | None = None,
          key_ordering: bool = False) -> Pending:
    return state.lease(offset, priority=0, key=key, owner=owner, deadline=deadline, key_ordering=key_ordering)


def test_ack_out_of_order_advances_committed() -> None:
    state = PartitionState(committed=0)
    assert state.ack(2, 10)
    assert state.committed == 0
    assert state.ack(0, 10)
    assert state.committed == 1
    assert state.ack(1, 10)
    assert state.committed == 3
    assert not state.done


def test_ack_done_offset_returns_false() -> None:
    state = PartitionState(committed=5)
    assert not state.ack(3, 10)
    assert state.ack(5, 10)
    assert not state.ack(5, 10)
    assert state.committed == 6


def test_ack_unwritten_offset_changes_nothing() -> None:
    state = PartitionState(committed=0)
    with pytest.raises(OffsetOutOfRangeError, match="offset 5.*log end offset 5"):
        state.ack(5, 5)
    assert state.committed == 0
    assert not state.done


def test_nack_with_delay_waits_until_deadline() -> None:
    state = PartitionState(committed=0)
    lease(state, 0)
    state.fail(0, now=100.0, delay=5.0, reason="nacked", owner=1)
    state.promote_delayed(104.9)
    assert state.peek_ready() is None
    state.promote_delayed(105.0)
    assert state.peek_ready() is state.pending[0]


def test_lease_heap_drops_acked_items() -> None:
    state = PartitionState(committed=0)
    for offset in range(10_000):
        state.lease(offset, priority=0, key=None, owner=1, deadline=START_TIME + 30, key_ordering=False)
        if offset != 5:
            state.ack(offset, 10_000)
    assert len(state.leases) <= 4097
    [expired] = state.due_leases(START_TIME + 31)
    assert expired.offset == 5


def test_due_leases_earliest_first() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, deadline=30.0)
    lease(state, 1, deadline=10.0)
    lease(state, 2, deadline=20.0)
    lease(state, 3, deadline=40.0)
    assert [entry.offset for entry in state.due_leases(30.0)] == [1, 2, 0]


def test_due_leases_skips_extended_lease() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, deadline=10.0)
    state.extend(0, 1, 50.0)
    assert state.due_leases(20.0) == []
    assert [entry.offset for entry in state.due_leases(50.0)] == [0]


def test_due_leases_reports_released_offset_once() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, deadline=10.0)
    state.fail(0, now=1.0, delay=0.0, reason="nacked", owner=1)
    lease(state, 0, deadline=10.0)
    assert [entry.offset for entry in state.due_leases(10.0)] == [0]


def test_release_undo_takes_back_delivery() -> None:
    state = PartitionState(committed=0)
    lease(state, 0)
    state.release(0, undo_delivery=True)
    assert state.pending[0].delivery_count == 0
    assert state.pending[0].state is READY


def test_reopen_gives_fresh_count() -> None:
    state = PartitionState(committed=0)
    lease(state, 0)
    state.fail(0, now=1.0, delay=0.0, reason="nacked", owner=1)
    lease(state, 0)
    state.ack(0, 10)
    entry = state.reopen(0, priority=2, key=None)
    assert entry.delivery_count == 0
    assert state.committed == 1
    assert state.peek_ready() is entry


def test_skip_to_drops_removed_offsets() -> None:
    state = PartitionState(committed=0)
    lease(state, 1)
    state.ack(3, 10)
    state.ack(7, 10)
    state.skip_to(5)
    assert state.committed == 5
    assert state.cursor == 5
    assert list(state.done) == [7]
    assert not state.pending


def test_reset_forgets_deliveries() -> None:
    state = PartitionState(committed=0)
    lease(state, 0)
    state.ack(4, 10)
    state.reset(2)
    assert state.committed == 2
    assert state.cursor == 2
    assert not state.pending
    assert not state.done
    assert not state.is_done(4)


# -- per-key ordering -------------------------------------------------------------------------


KEYED_LOG_END = 16


def key_of(offset: int) -> bytes | None:
    """Return the key of the record at `offset`: b"a", b"b" or no key, in turn."""
    return (b"a", b"b", None)[offset % 3]


class KeyOrderingMachine(RuleBasedStateMachine):
    """Drive a PartitionState under per-key ordering with a FIFO scan, leases, nacks, acks and resets.

    The machine checks that a key never has two pending messages, that a
    held message waits behind a lower pending offset of its key, and that a
    held message becomes ready only in the ack that frees its key.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = PartitionState(committed=0)
        self.acked: set[int] = set()
        self.first_deliveries: dict[bytes, list[int]] = {}

    def held_offsets(self) -> dict[int, bytes]:
        return {offset: key for key, queue in self.state.held.items() for offset, _ in queue}

    def leased_offsets(self) -> list[int]:
        return sorted(o for o, entry in self.state.pending.items() if entry.state is LEASED)

    def lease(self, offset: int, owner: int) -> None:
        entry = self.state.lease(offset, priority=0, key=key_of(offset), owner=owner, deadline=10.0,
                                 key_ordering=True)
        key = key_of(offset)
        if entry.delivery_count == 1 and key is not None:
            self.first_deliveries.setdefault(key, []).append(offset)

    @rule(owner=OWNERS)
    def scan_next_new(self, owner: int) -> None:
        # The FIFO scan in selection.py holds back a message whose key is busy and moves the cursor past it.
        state = self.state
        while state.cursor < KEYED_LOG_END:
            offset = state.cursor
            if state.is_known(offset) or state.hold_if_key_busy(offset, 0, key_of(offset)):
                state.pass_over(offset)
                continue
            self.lease(offset, owner)
            return

    @precondition(lambda self: self.state.peek_ready() is not None)
    @rule(owner=OWNERS)
    def lease_ready(self, owner: int) -> None:
        entry = self.state.peek_ready()
        assert entry is not None
        self.lease(entry.offset, owner)

    @precondition(lambda self: self.leased_offsets())
    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(self.leased_offsets()))
        self.state.fail(offset, now=1.0, delay=0.0, reason="nacked")

    @rule(offset=st.integers(min_value=0, max_value=KEYED_LOG_END - 1))
    def ack(self, offset: int) -> None:
        held_before = self.held_offsets()
        pending_before = set(self.state.pending)
        self.state.ack(offset, KEYED_LOG_END)
        self.acked.add(offset)

        released = [o for o in held_before if o in self.state.pending]
        assert len(released) <= 1
        for held in released:
            assert offset in pending_before, f"held offset {held} became ready after an ack of a message not pending"
            assert key_of(held) == key_of(offset)
            assert held == min(o for o, key in held_before.items() if key == key_of(offset))

    @rule(offset=st.integers(min_value=0, max_value=KEYED_LOG_END))
    def reset(self, offset: int) -> None:
        self.state.reset(offset)
        self.acked = set()
        self.first_deliveries = {}

    @invariant()
    def one_pending_per_key(self) -> None:
        keys = [entry.key for entry in self.state.pending.values() if entry.key is not None]
        assert len(keys) == len(set(keys))

    @invariant()
    def held_waits_behind_lower_pending(self) -> None:
        pending_by_key = {entry.key: offset for offset, entry in self.state.pending.items()}
        for offset, key in self.held_offsets().items():
            assert key in pending_by_key, f"offset {offset} is held but key {key!r} has nothing pending"
            assert pending_by_key[key] < offset, f"offset {offset}"

    @invariant()
    def held_neither_pending_nor_done(self) -> None:
        for offset in self.held_offsets():
            assert offset not in self.state.pending, f"offset {offset}"
            assert not self.state.is_done(offset), f"offset {offset}"

    @invariant()
    def held_offsets_match_queues(self) -> None:
        assert set(self.held_offsets()) == self.state.held_offsets

    @invariant()
    def acked_never_pending(self) -> None:
        for offset in self.state.pending:
            assert offset not in self.acked, f"offset {offset}"

    @invariant()
    def key_delivered_in_offset_order(self) -> None:
        for key, offsets in self.first_deliveries.items():
            assert offsets == sorted(offsets), f"key {key!r}"


KeyOrderingMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestKeyOrderingMachine = KeyOrderingMachine.TestCase


def test_key_held_until_earlier_acked() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, key=b"k", key_ordering=True)
    assert state.hold_if_key_busy(1, 0, b"k")
    assert state.hold_if_key_busy(2, 0, b"k")
    assert not state.hold_if_key_busy(3, 0, b"other")
    assert state.held_count() == 2
    assert state.is_known(1)
    assert state.peek_ready() is None

    state.ack(0, 10)
    ready = state.peek_ready()
    assert ready is not None
    assert ready.offset == 1
    assert ready.delivery_count == 0
    assert state.held_count() == 1


def test_key_stays_held_after_nack() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, key=b"k", key_ordering=True)
    state.hold_if_key_busy(1, 0, b"k")
    state.fail(0, now=1.0, delay=0.0, reason="nacked", owner=1)
    assert state.peek_ready() is state.pending[0]
    assert 1 not in state.pending

    lease(state, 0, key=b"k", key_ordering=True)
    state.ack(0, 10)
    assert state.peek_ready() is state.pending[1]


def test_key_passes_to_next_in_order() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, key=b"k", key_ordering=True)
    state.hold_if_key_busy(1, 0, b"k")
    state.hold_if_key_busy(2, 0, b"k")
    state.ack(0, 10)
    lease(state, 1, key=b"k", key_ordering=True)
    assert 2 not in state.pending

    state.ack(1, 10)
    assert state.peek_ready() is state.pending[2]
    assert state.held_count() == 0


def test_key_not_held_without_key_ordering() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, key=b"k", key_ordering=False)
    assert not state.hold_if_key_busy(1, 0, b"k")


def test_acked_held_offset_never_redelivered() -> None:
    state = PartitionState(committed=0)
    lease(state, 0, key=b"k", key_ordering=True)
    state.hold_if_key_busy(1, 0, b"k")
    state.hold_if_key_busy(2, 0, b"k")
    assert state.ack(1, 10)

    state.ack(0, 10)
    assert 1 not in state.pending
    assert state.is_done(1)
    assert state.peek_ready() is state.pending[2]
    assert state.committed == 2


def test_skip_to_drops_held_below() -> None:
    state = PartitionState(committed=0)
    state.lease(0, priority=0, key=b"k", owner=1, deadline=10.0, key_ordering=True)
    assert state.hold_if_key_busy(1, 0, b"k")
    assert state.hold_if_key_busy(5, 0, b"k")
    state.skip_to(3)
    assert state.committed == 3
    assert 1 not in state.pending
    assert 1 not in state.held_offsets
    assert 5 in state.pending
