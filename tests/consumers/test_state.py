"""Property tests of the per-partition group state against a plain model."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from logq.consumers import PartitionState
from logq.errors import OffsetOutOfRangeError

LOG_END = 40
OWNERS = st.sampled_from([1, 2, 3])


class GroupStateMachine(RuleBasedStateMachine):
    """Drive PartitionState with deliveries, acks, releases and resets.

    The model keeps the done offsets as a plain set and maps each in-flight
    offset to its owner. The committed offset must always be the lowest
    offset that is not done.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = PartitionState(committed=0)
        self.done: set[int] = set()
        self.held: dict[int, int] = {}
        self.released: set[int] = set()
        self.floor = 0

    def _model_committed(self) -> int:
        offset = self.floor
        while offset in self.done:
            offset += 1
        return offset

    @precondition(lambda self: self.state.released or self.state.cursor < LOG_END)
    @rule(owner=OWNERS)
    def deliver_next(self, owner: int) -> None:
        released = self.state.next_released(1)
        if released:
            offset = released[0]
            assert offset in self.released
        else:
            offset = self.state.cursor
            while offset < LOG_END and self.state.is_done(offset):
                self.state.pass_over(offset)
                offset = self.state.cursor
            if offset >= LOG_END:
                return
        assert offset not in self.done, f"offset {offset} is done but was delivered again"
        assert offset not in self.held, f"offset {offset} is already in flight"
        self.state.deliver(offset, owner)
        self.held[offset] = owner
        self.released.discard(offset)

    @rule(offset=st.integers(min_value=0, max_value=LOG_END - 1))
    def ack(self, offset: int) -> None:
        was_done = offset < self.floor or offset in self.done
        newly_done = self.state.ack(offset, LOG_END)
        assert newly_done is (not was_done)
        if offset >= self.floor:
            self.done.add(offset)
        self.held.pop(offset, None)

    @rule(offset=st.integers(min_value=LOG_END, max_value=LOG_END + 5))
    def ack_unwritten(self, offset: int) -> None:
        with pytest.raises(OffsetOutOfRangeError):
            self.state.ack(offset, LOG_END)

    @rule(owner=OWNERS)
    def release(self, owner: int) -> None:
        expected = {offset for offset, holder in self.held.items() if holder == owner}
        assert self.state.release(owner) == len(expected)
        for offset in expected:
            del self.held[offset]
            self.released.add(offset)

    @rule(offset=st.integers(min_value=0, max_value=LOG_END))
    def reset(self, offset: int) -> None:
        self.state.reset(offset)
        self.floor = offset
        self.done = set()
        self.held = {}
        self.released = set()

    @invariant()
    def committed_is_lowest_not_done(self) -> None:
        assert self.state.committed == self._model_committed()

    @invariant()
    def done_set_lies_above_committed(self) -> None:
        assert all(offset > self.state.committed for offset in self.state.done)

    @invariant()
    def in_flight_matches_model(self) -> None:
        assert self.state.in_flight == self.held


TestGroupStateMachine = GroupStateMachine.TestCase


def test_ack_out_of_order_advances_over_runs() -> None:
    state = PartitionState(committed=0)
    assert state.ack(2, 10)
    assert state.committed == 0
    assert state.ack(0, 10)
    assert state.committed == 1
    assert state.ack(1, 10)
    assert state.committed == 3
    assert state.done == set()


def test_ack_twice_is_noop() -> None:
    state = PartitionState(committed=0)
    assert state.ack(0, 5)
    assert not state.ack(0, 5)
    assert state.committed == 1


def test_ack_unwritten_offset_raises() -> None:
    state = PartitionState(committed=0)
    with pytest.raises(OffsetOutOfRangeError, match="log end offset 5"):
        state.ack(5, 5)
    assert state.committed == 0


def test_skip_to_drops_removed_offsets() -> None:
    state = PartitionState(committed=0)
    state.ack(3, 10)
    state.ack(7, 10)
    state.skip_to(5)
    assert state.committed == 5
    assert state.cursor == 5
    assert state.done == {7}
