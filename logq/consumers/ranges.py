"""A set of integers stored as sorted, disjoint half-open ranges.

Acks above a group's committed offset usually come in runs (a batch of
consecutive offsets), so storing [start, end) ranges keeps the memory
proportional to the number of gaps, not to the number of acked offsets.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class RangeSet:
    """Sorted, disjoint, non-adjacent ranges [start, end) of integers.

    `add` and `__contains__` take O(log n) for n ranges, plus the cost of
    moving list items when a range is inserted or two ranges merge.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for start, end in ranges:
            self.add_range(start, end)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        slot = bisect.bisect_right(self.starts, value) - 1
        return slot >= 0 and value < self.ends[slot]

    def __len__(self) -> int:
        """Number of integers in the set (not the number of ranges)."""
        return sum(end - start for start, end in zip(self.starts, self.ends))

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __iter__(self) -> Iterator[int]:
        for start, end in zip(self.starts, self.ends):
            yield from range(start, end)

    def ranges(self) -> list[tuple[int, int]]:
        """Return the ranges as (start, end) pairs, ascending."""
        return list(zip(self.starts, self.ends))

    @property
    def range_count(self) -> int:
        """Number of stored ranges, the measure of the set's memory."""
        return len(self.starts)

    def first_at_or_after(self, value: int) -> int | None:
        """Return the smallest integer in the set that is >= `value`, or None."""
        slot = bisect.bisect_right(self.ends, value)
        if slot == len(self.starts):
            return None
        return max(self.starts[slot], value)

    def end_of_range(self, value: int) -> int:
        """Return the end of the range that contains `value`, or `value` itself when no range does."""
        slot = bisect.bisect_right(self.starts, value) - 1
        if slot >= 0 and value < self.ends[slot]:
            return self.ends[slot]
        return value

    def count_between(self, start: int, end: int) -> int:
        """Return how many integers of the set lie in [start, end)."""
        total = 0
        slot = max(bisect.bisect_right(self.ends, start), 0)
        while slot < len(self.starts) and self.starts[slot] < end:
            total += min(end, self.ends[slot]) - max(start, self.starts[slot])
            slot += 1
        return total

    def add(self, value: int) -> bool:
        """Add one integer; return False when it was already in the set."""
        if value in self:
            return False
        self.add_range(value, value + 1)
        return True

    def add_range(self, start: int, end: int) -> None:
        """Add every integer in [start, end), merging with touching ranges."""
        if start >= end:
            return
        first = bisect.bisect_left(self.ends, start)
        last = bisect.bisect_right(self.starts, end)
        if first < last:
            start = min(start, self.starts[first])
            end = max(end, self.ends[last - 1])
        self.starts[first:last] = [start]
        self.ends[first:last] = [end]

    def discard_below(self, value: int) -> None:
        """Remove every integer below `value`."""
        slot = bisect.bisect_right(self.ends, value)
        del self.starts[:slot]
        del self.ends[:slot]
        if self.starts and self.starts[0] < value:
            self.starts[0] = value

    def discard_from(self, value: int) -> None:
        """Remove every integer at or above `value`."""
        slot = bisect.bisect_left(self.starts, value)
        del self.starts[slot:]
        del self.ends[slot:]
        if self.ends and self.ends[-1] > value:
            self.ends[-1] = value

    def pop_run_from(self, value: int) -> int:
        """Remove the range that starts at `value` and return its end, or return `value` if none starts there."""
        slot = bisect.bisect_left(self.starts, value)
        if slot < len(self.starts) and self.starts[slot] == value:
            end = self.ends[slot]
            del self.starts[slot]
            del self.ends[slot]
            return end
        return value

    def clear(self) -> None:
        """Remove everything."""
        self.starts.clear()
        self.ends.clear()
