"""Fixtures shared by the storage-engine tests."""

from __future__ import annotations

import pytest

from logq.segments import partition_log


class FakeClock:
    """Replacement for the `time` module inside partition_log, which only calls `time_ns`."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def time_ns(self) -> int:
        return self.now_ms * 1_000_000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Freeze append timestamps at a fixed time that a test can move forward."""
    fake = FakeClock(1_700_000_000_000)
    monkeypatch.setattr(partition_log, "time", fake)
    return fake
