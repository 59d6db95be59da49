"""Tests of RangeSet against a plain Python set of integers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from logq.consumers.ranges import RangeSet

VALUES = st.integers(min_value=-5, max_value=40)


def runs(values: set[int]) -> list[tuple[int, int]]:
    """Return the maximal runs of consecutive integers in `values` as [start, end) pairs."""
    found: list[tuple[int, int]] = []
    for value in sorted(values):
        if found and found[-1][1] == value:
            found[-1] = (found[-1][0], value + 1)
        else:
            found.append((value, value + 1))
    return found


class RangeSetMachine(RuleBasedStateMachine):
    """Apply the same changes to a RangeSet and to a set, and compare them after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges = RangeSet()
        self.model: set[int] = set()

    @rule(value=VALUES)
    def add(self, value: int) -> None:
        expected = value not in self.model
        assert self.ranges.add(value) is expected
        self.model.add(value)

    @rule(start=VALUES, length=st.integers(min_value=-2, max_value=12))
    def add_range(self, start: int, length: int) -> None:
        self.ranges.add_range(start, start + length)
        self.model.update(range(start, start + length))

    @rule(value=VALUES)
    def discard_below(self, value: int) -> None:
        self.ranges.discard_below(value)
        self.model = {item for item in self.model if item >= value}

    @rule(value=VALUES)
    def pop_run_from(self, value: int) -> None:
        expected_end = value
        if value in self.model and value - 1 not in self.model:
            while expected_end in self.model:
                self.model.remove(expected_end)
                expected_end += 1
        assert self.ranges.pop_run_from(value) == expected_end

    @rule()
    def clear(self) -> None:
        self.ranges.clear()
        self.model.clear()

    @invariant()
    def members_match(self) -> None:
        assert set(self.ranges) == self.model

    @invariant()
    def contains_matches(self) -> None:
        for value in range(-8, 60):
            assert (value in self.ranges) is (value in self.model), f"value {value}"

    @invariant()
    def len_counts_integers(self) -> None:
        assert len(self.ranges) == len(self.model)

    @invariant()
    def bool_means_not_empty(self) -> None:
        assert bool(self.ranges) is bool(self.model)

    @invariant()
    def ranges_are_maximal_runs(self) -> None:
        assert self.ranges.ranges() == runs(self.model)

    @invariant()
    def range_count_is_minimal(self) -> None:
        assert self.ranges.range_count == len(runs(self.model))


RangeSetMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestRangeSetMachine = RangeSetMachine.TestCase


@pytest.mark.parametrize(
    ("added", "expected"),
    [
        pytest.param([(0, 3), (3, 5)], [(0, 5)], id="touching-after"),
        pytest.param([(3, 5), (0, 3)], [(0, 5)], id="touching-before"),
        pytest.param([(0, 2), (3, 5), (2, 3)], [(0, 5)], id="fills-gap"),
        pytest.param([(0, 2), (4, 6), (8, 9), (1, 8)], [(0, 9)], id="spans-three"),
        pytest.param([(0, 4), (1, 2)], [(0, 4)], id="inside"),
        pytest.param([(0, 2), (3, 5)], [(0, 2), (3, 5)], id="one-apart"),
        pytest.param([(4, 4), (6, 2)], [], id="empty-and-reversed"),
    ],
)
def test_add_range_merges(added: list[tuple[int, int]], expected: list[tuple[int, int]]) -> None:
    ranges = RangeSet()
    for start, end in added:
        ranges.add_range(start, end)
    assert ranges.ranges() == expected


def test_add_next_integer_extends_range() -> None:
    ranges = RangeSet([(0, 3)])
    assert ranges.add(3)
    assert ranges.ranges() == [(0, 4)]


def test_add_joins_two_ranges() -> None:
    ranges = RangeSet([(0, 2), (3, 5)])
    assert ranges.add(2)
    assert ranges.range_count == 1


def test_add_member_returns_false() -> None:
    ranges = RangeSet([(0, 2)])
    assert not ranges.add(1)
    assert ranges.ranges() == [(0, 2)]


def test_constructor_merges_ranges() -> None:
    ranges = RangeSet([(5, 7), (0, 2), (2, 5)])
    assert ranges.ranges() == [(0, 7)]


def test_len_counts_integers_not_ranges() -> None:
    ranges = RangeSet([(0, 3), (10, 20)])
    assert len(ranges) == 13
    assert ranges.range_count == 2


def test_contains_rejects_non_integers() -> None:
    ranges = RangeSet([(0, 3)])
    assert "1" not in ranges
    assert 1.5 not in ranges


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0, [(2, 4), (6, 9)], id="below-all"),
        pytest.param(2, [(2, 4), (6, 9)], id="at-first-start"),
        pytest.param(3, [(3, 4), (6, 9)], id="inside-first"),
        pytest.param(4, [(6, 9)], id="at-first-end"),
        pytest.param(7, [(7, 9)], id="inside-second"),
        pytest.param(9, [], id="at-last-end"),
    ],
)
def test_discard_below(value: int, expected: list[tuple[int, int]]) -> None:
    ranges = RangeSet([(2, 4), (6, 9)])
    ranges.discard_below(value)
    assert ranges.ranges() == expected


@pytest.mark.parametrize(
    ("value", "expected_end", "expected"),
    [
        pytest.param(2, 4, [(6, 9)], id="first-range"),
        pytest.param(6, 9, [(2, 4)], id="second-range"),
        pytest.param(3, 3, [(2, 4), (6, 9)], id="inside-range"),
        pytest.param(5, 5, [(2, 4), (6, 9)], id="in-gap"),
    ],
)
def test_pop_run_from(value: int, expected_end: int, expected: list[tuple[int, int]]) -> None:
    ranges = RangeSet([(2, 4), (6, 9)])
    assert ranges.pop_run_from(value) == expected_end
    assert ranges.ranges() == expected


@pytest.mark.parametrize(("ranges", "value", "end"), [
    ([], 5, 5),
    ([(2, 6)], 2, 6),
    ([(2, 6)], 5, 6),
    ([(2, 6)], 6, 6),
    ([(2, 6), (8, 9)], 1, 1),
    ([(2, 6), (8, 9)], 8, 9),
])
def test_end_of_range(ranges: list[tuple[int, int]], value: int, end: int) -> None:
    assert RangeSet(ranges).end_of_range(value) == end


@settings(max_examples=300)
@given(pairs=st.lists(st.tuples(VALUES, st.integers(min_value=0, max_value=8)), max_size=8),
       start=VALUES, length=st.integers(min_value=0, max_value=30))
def test_count_between_matches_set(pairs: list[tuple[int, int]], start: int, length: int) -> None:
    ranges = RangeSet((first, first + size) for first, size in pairs)
    model = {value for first, size in pairs for value in range(first, first + size)}
    assert ranges.count_between(start, start + length) == len(model & set(range(start, start + length)))
