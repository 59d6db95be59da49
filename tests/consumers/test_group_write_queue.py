"""Tests of the group's write queue: journal order, snapshots taken while events wait, and reopen.

A group applies each event at once and journals it later, in apply order. These
tests make many tasks change one group at the same time, with real fsyncs and
frequent snapshots, and check that a reopen rebuilds exactly the live state.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from logq.consumers import DeliveryState, Group
from logq.consumers import journal as journal_module
from logq.consumers.journal import SNAPSHOT_FILE_NAME, GroupJournal
from logq.errors import CorruptJournalError

START_TIME = 1_700_000_000.0
LOG_END = 10_000


def comparable(group: Group) -> dict[str, Any]:
    """Return the group state without lease owners, which a reopen cannot know."""
    body = group.snapshot_state()
    body.pop("unwritten_events")
    for partition in body["partitions"]:
        for entry in partition["pending"]:
            assert entry[3] != DeliveryState.LEASED.value, "every lease must be acked or failed before comparing"
    return body


async def reopen(group: Group) -> Group:
    """Close the journal without a snapshot and open the group again from its files."""
    await group.journal.close()
    return await Group.open(group.name, group.directory, clock=group.clock)


async def worker(group: Group, rng: random.Random, offsets: list[int], owner: int) -> None:
    """Deliver `offsets` in small batches and ack or fail each, yielding to other tasks between steps."""
    state = group.states[("t", 0)]
    while offsets:
        batch = offsets[: rng.randint(1, 4)]
        offsets = offsets[len(batch):]
        deadline = group.clock() + 30.0
        entries = [state.lease(offset, priority=0, key=None, owner=owner, deadline=deadline, key_ordering=False)
                   for offset in batch]
        await group.record_deliveries("t", 0, entries, deadline)
        for offset in batch:
            choice = rng.random()
            if choice < 0.5:
                await group.ack("t", 0, [offset], LOG_END)
            else:
                if choice < 0.7:
                    await group.extend("t", 0, offset, owner=owner, seconds=60.0)
                failing = asyncio.create_task(group.fail("t", 0, offset, owner=owner, delay=0.0, reason="test"))
                await asyncio.sleep(0)  # the fail is applied and waits for the journal
                if rng.random() < 0.5:
                    # Deliver the message again while its fail event still waits, so deliver,
                    # fail and deliver events of one offset are queued together.
                    deadline = group.clock() + 30.0
                    entry = state.lease(offset, priority=0, key=None, owner=owner, deadline=deadline,
                                        key_ordering=False)
                    delivering = group.record_deliveries("t", 0, [entry], deadline)
                    await asyncio.gather(failing, delivering)
                    if rng.random() < 0.5:
                        await group.ack("t", 0, [offset], LOG_END)
                    else:
                        await group.fail("t", 0, offset, owner=owner, delay=0.0, reason="again")
                else:
                    await failing
            if rng.random() < 0.3:
                await asyncio.sleep(0)


@pytest.mark.parametrize("seed", range(8))
async def test_concurrent_changes_replay_to_the_live_state(tmp_path: Path, seed: int) -> None:
    await check_replay_of_concurrent_changes(tmp_path, seed)


async def check_replay_of_concurrent_changes(tmp_path: Path, seed: int) -> int:
    """Run the workers with frequent snapshots and compare a reopen with the live state; return the last snapshot's unwritten count."""
    rng = random.Random(seed)
    group = await Group.open("g", tmp_path / "g", fsync="always", clock=lambda: START_TIME)
    group.journal.snapshot_every = rng.randint(1, 5)
    await group.join("t", 0, 0)
    offsets = list(range(200))
    rng.shuffle(offsets)
    slices = [sorted(offsets[number::8]) for number in range(8)]

    async def stop_snapshots() -> None:
        # Only the last snapshot matters to a reopen, so take it while the workers are busy.
        snapshot_file = tmp_path / "g" / SNAPSHOT_FILE_NAME
        while not snapshot_file.exists():
            await asyncio.sleep(0)
        for _ in range(rng.randint(0, 200)):
            await asyncio.sleep(0)
        group.journal.snapshot_every = 10**9

    await asyncio.gather(stop_snapshots(), *(worker(group, random.Random(rng.random()), part, owner)
                                             for owner, part in enumerate(slices, start=1)))
    live = comparable(group)
    snapshot = orjson.loads((tmp_path / "g" / SNAPSHOT_FILE_NAME).read_bytes())

    reopened = await reopen(group)
    try:
        assert comparable(reopened) == live
    finally:
        await reopened.close()
    return snapshot["unwritten_events"]


async def test_snapshot_skips_the_events_it_already_holds(tmp_path: Path) -> None:
    directory = tmp_path / "g"
    journal, _, _ = await GroupJournal.open(directory)
    events = [{"event": "reset", "topic": "t", "partition": 0, "offset": 0},
              {"event": "ack", "topic": "t", "partition": 0, "ranges": [[0, 1]]},
              {"event": "ack", "topic": "t", "partition": 0, "ranges": [[1, 2]]}]
    await journal.append(events[:1])
    # A snapshot that already contains the next event, which the journal stores after it.
    await journal.snapshot({"partitions": [], "redriven": [], "unwritten_events": 1})
    await journal.append(events[1:])
    await journal.close()

    reopened, snapshot, replayed = await GroupJournal.open(directory)
    await reopened.close()
    assert snapshot is not None and snapshot["journal_offset"] == 1
    assert replayed == events[2:]


async def test_snapshot_past_the_journal_end_moves_to_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "g"
    journal, _, _ = await GroupJournal.open(directory)
    await journal.append([{"event": "reset", "topic": "t", "partition": 0, "offset": 0}])
    # The process stopped before the three events the snapshot contains reached the journal.
    await journal.snapshot({"partitions": [], "redriven": [], "unwritten_events": 3})
    await journal.close()

    reopened, snapshot, replayed = await GroupJournal.open(directory)
    assert "contains 3 events that were never written to the journal" in caplog.text
    assert snapshot is not None and (snapshot["journal_offset"], snapshot["unwritten_events"]) == (1, 0)
    assert replayed == []
    stored = orjson.loads((directory / SNAPSHOT_FILE_NAME).read_bytes())
    assert (stored["journal_offset"], stored["unwritten_events"]) == (1, 0)
    # An event written now lands at offset 1, which the old snapshot would have skipped.
    later = {"event": "ack", "topic": "t", "partition": 0, "ranges": [[5, 6]]}
    await reopened.append([later])
    await reopened.close()

    again, _, replayed = await GroupJournal.open(directory)
    await again.close()
    assert replayed == [later]


@pytest.mark.parametrize("value", [-1, "2", 1.5, True, None])
async def test_bad_unwritten_count_is_a_corrupt_snapshot(tmp_path: Path, value: object) -> None:
    directory = tmp_path / "g"
    directory.mkdir()
    (directory / SNAPSHOT_FILE_NAME).write_bytes(orjson.dumps({"journal_offset": 0, "unwritten_events": value}))
    with pytest.raises(CorruptJournalError, match="unwritten_events"):
        await GroupJournal.open(directory)


async def test_cancelled_snapshot_finishes_its_write_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots share one temporary file, so a cancelled one must end its write before the next starts."""
    real_write = journal_module.write_file_atomically
    guard = threading.Lock()
    writing = 0
    peak = 0

    def slow_write(path: Path, data: bytes) -> None:
        nonlocal writing, peak
        with guard:
            writing += 1
            peak = max(peak, writing)
        time.sleep(0.05)
        real_write(path, data)
        with guard:
            writing -= 1

    monkeypatch.setattr(journal_module, "write_file_atomically", slow_write)
    journal, _, _ = await GroupJournal.open(tmp_path / "g")
    await journal.append([{"event": "reset", "topic": "t", "partition": 0, "offset": 0}])
    first = asyncio.create_task(journal.snapshot({"partitions": [], "redriven": [], "unwritten_events": 0}))
    await asyncio.sleep(0.01)
    first.cancel()
    second = asyncio.create_task(journal.snapshot({"partitions": [], "redriven": [], "unwritten_events": 0}))

    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    await journal.close()

    assert peak == 1
    assert orjson.loads((tmp_path / "g" / SNAPSHOT_FILE_NAME).read_bytes())["journal_offset"] == 1
