"""Tests of Group: live changes, replay of the journal, snapshots and settings, on real files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logq.consumers import DeliveryState, Group, GroupConfig, Pending
from logq.consumers.config import CONFIG_FILE_NAME
from logq.consumers.journal import SNAPSHOT_FILE_NAME
from logq.errors import CorruptJournalError, InvalidConfigError, InvalidNameError, LeaseError, OffsetOutOfRangeError
from logq.segments import RecordInput

START_TIME = 1_700_000_000.0
LOG_END = 12
DLQ_TOPIC = "t.g.dlq"


class FakeClock:
    """A clock that moves only when a test sets `now`, in seconds since the epoch."""

    def __init__(self, now: float = START_TIME) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def open_group(directory: Path, clock: FakeClock) -> Group:
    return await Group.open("g", directory, clock=clock)


async def deliver(group: Group, partition: int, offsets: list[int], *, owner: int = 1, lease: float = 30.0,
                  key: bytes | None = None) -> list[Pending]:
    """Lease `offsets` of topic t to `owner` and journal the deliveries, as the delivery code does after selection."""
    state = group.states[("t", partition)]
    deadline = group.clock() + lease
    entries = [
        state.lease(offset, priority=0, key=key, owner=owner, deadline=deadline,
                    key_ordering=group.config.key_ordering)
        for offset in offsets
    ]
    await group.record_deliveries("t", partition, entries, deadline)
    return entries


async def reopen(group: Group, clock: FakeClock) -> Group:
    """Close the journal without a snapshot and open the group again, replaying every event since the last snapshot."""
    await group.journal.close()
    return await open_group(group.directory, clock)


def pending(group: Group, offset: int, partition: int = 0) -> Pending:
    return group.states[("t", partition)].pending[offset]


# -- replay of the journal ------------------------------------------------------------------------


async def test_reopen_restores_committed_and_done(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await group.join("t", 1, 5)
    assert await group.ack("t", 0, [0, 1, 2, 5, 6, 9], log_end_offset=LOG_END) == 6
    assert await group.ack("t", 1, [7], log_end_offset=LOG_END) == 1

    reopened = await reopen(group, clock)
    first = reopened.states[("t", 0)]
    second = reopened.states[("t", 1)]
    assert first.committed == 3
    assert first.done.ranges() == [(5, 7), (9, 10)]
    assert second.committed == 5
    assert second.done.ranges() == [(7, 8)]
    await reopened.close()


async def test_reopen_restores_counts_and_failures(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1])
    clock.now += 1
    await group.fail("t", 0, 1, owner=1, delay=0.0, reason="nacked")
    await deliver(group, 0, [1])
    clock.now += 1
    await group.fail("t", 0, 1, owner=1, delay=10.0, reason="nacked")
    await group.ack("t", 0, [0], log_end_offset=LOG_END)
    live = group.snapshot_state()

    reopened = await reopen(group, clock)
    entry = pending(reopened, 1)
    assert reopened.snapshot_state() == live
    assert entry.delivery_count == 2
    assert entry.state is DeliveryState.DELAYED
    assert entry.deadline == START_TIME + 12
    assert entry.first_failure == START_TIME + 1
    assert entry.last_failure == START_TIME + 2
    assert entry.last_reason == "nacked"
    await reopened.close()


async def test_reopen_after_snapshot_replays_rest(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1, 2])
    await group.ack("t", 0, [0], log_end_offset=LOG_END)
    await group.fail("t", 0, 2, owner=1, delay=5.0, reason="nacked")
    await group.journal.snapshot(group.snapshot_state())

    clock.now += 10
    await group.ack("t", 0, [1, 4], log_end_offset=LOG_END)
    group.states[("t", 0)].promote_delayed(clock.now)
    await deliver(group, 0, [2])
    await group.fail("t", 0, 2, owner=1, delay=0.0, reason="nacked")
    live = group.snapshot_state()

    snapshot = orjson.loads((tmp_path / "g" / SNAPSHOT_FILE_NAME).read_bytes())
    reopened = await reopen(group, clock)
    assert snapshot["partitions"][0]["committed"] == 1
    assert reopened.snapshot_state() == live
    assert reopened.states[("t", 0)].committed == 2
    assert pending(reopened, 2).delivery_count == 2
    await reopened.close()


async def test_reopen_fails_open_leases(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1])
    clock.now += 1
    await group.fail("t", 0, 1, owner=1, delay=0.0, reason="nacked")
    await deliver(group, 0, [1], owner=2)

    clock.now += 100
    reopened = await reopen(group, clock)
    first = pending(reopened, 0)
    second = pending(reopened, 1)
    assert first.state is DeliveryState.READY
    assert first.delivery_count == 1
    assert first.last_reason == "consumer lost"
    assert first.first_failure == START_TIME + 101
    assert second.state is DeliveryState.READY
    assert second.delivery_count == 2
    assert second.first_failure == START_TIME + 1
    assert second.last_failure == START_TIME + 101
    assert reopened.states[("t", 0)].peek_ready() is first

    # The conversion is journaled, so a second reopen finds nothing leased and counts nothing twice.
    converted = reopened.snapshot_state()
    clock.now += 100
    again = await reopen(reopened, clock)
    assert again.snapshot_state() == converted
    await again.close()


async def test_deliver_event_stores_runs(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1, 2])
    await deliver(group, 0, [4, 6])
    await deliver(group, 0, [7, 8], key=b"k")
    records = await group.journal.log.read(0)
    events = [orjson.loads(record.value) for record in records if b"deliver" in record.value]

    assert events[0]["runs"] == [[0, 3, 0]]
    assert "messages" not in events[0]
    assert events[1]["messages"] == [[4, 0, None], [6, 0, None]]
    assert events[2]["messages"] == [[7, 0, b"k".hex()], [8, 0, b"k".hex()]]  # keys are stored as hex
    live = group.snapshot_state()
    reopened = await reopen(group, clock)
    assert [pending(reopened, offset).delivery_count for offset in (0, 1, 2, 4, 6, 7, 8)] == [1] * 7
    assert pending(reopened, 7).key == b"k"
    assert [row["committed"] for row in reopened.snapshot_state()["partitions"]] == [
        row["committed"] for row in live["partitions"]
    ]
    await reopened.close()


async def test_close_leaves_nothing_to_replay(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await group.ack("t", 0, [0, 3], log_end_offset=LOG_END)
    live = group.snapshot_state()
    await group.close()

    reopened = await open_group(tmp_path / "g", clock)
    assert reopened.journal.events_since_snapshot == 0
    assert reopened.snapshot_state() == live
    await reopened.close()


# -- live changes ------------------------------------------------------------------------------


async def test_ack_unwritten_changes_nothing(tmp_path: Path) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    await group.join("t", 0, 0)
    journal_end = group.journal.log.log_end_offset
    with pytest.raises(OffsetOutOfRangeError, match="offset 12 of t/0.*log end offset 12"):
        await group.ack("t", 0, [0, 12], log_end_offset=LOG_END)
    assert group.states[("t", 0)].committed == 0
    assert group.journal.log.log_end_offset == journal_end
    await group.close()


async def test_ack_done_writes_no_event(tmp_path: Path) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    await group.join("t", 0, 0)
    await group.ack("t", 0, [0, 4], log_end_offset=LOG_END)
    journal_end = group.journal.log.log_end_offset
    assert await group.ack("t", 0, [0, 4], log_end_offset=LOG_END) == 0
    assert group.journal.log.log_end_offset == journal_end
    await group.close()


async def test_join_keeps_existing_state(tmp_path: Path) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    await group.join("t", 0, 4)
    await group.ack("t", 0, [4], log_end_offset=LOG_END)
    state = await group.join("t", 0, 0)
    assert state.committed == 5
    await group.close()


async def test_fail_by_other_owner_raises(tmp_path: Path) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    await group.join("t", 0, 0)
    await deliver(group, 0, [0], owner=1)
    with pytest.raises(LeaseError, match="offset 0 is not leased to this consumer"):
        await group.fail("t", 0, 0, owner=2, delay=None, reason="nacked")
    with pytest.raises(LeaseError, match="offset 0 is not leased to this consumer"):
        await group.extend("t", 0, 0, owner=2, seconds=10.0)
    assert pending(group, 0).state is DeliveryState.LEASED
    await group.close()


async def test_fail_uses_retry_policy(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.configure(retry_delay=2.0, retry_backoff=3.0)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0])
    await group.fail("t", 0, 0, owner=1, delay=None, reason="nacked")
    assert pending(group, 0).deadline == START_TIME + 2.0

    clock.now += 2
    group.states[("t", 0)].promote_delayed(clock.now)
    await deliver(group, 0, [0])
    entry = await group.fail("t", 0, 0, owner=1, delay=None, reason="nacked")
    assert entry.delivery_count == 2
    assert entry.deadline == clock.now + 6.0
    await group.close()


async def test_extend_delays_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0], lease=30.0)
    clock.now += 20
    deadline = await group.extend("t", 0, 0, owner=1, seconds=30.0)
    assert deadline == START_TIME + 50

    clock.now = START_TIME + 40
    assert await group.expire_leases() == []
    clock.now = START_TIME + 50
    expired = await group.expire_leases()
    assert [(topic, number, entry.offset) for topic, number, entry in expired] == [("t", 0, 0)]
    await group.close()


async def test_expire_leases_counts_failure(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.configure(retry_delay=5.0)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1], lease=10.0)
    await deliver(group, 0, [2], lease=20.0)

    clock.now += 10
    expired = await group.expire_leases()
    assert sorted(entry.offset for _, _, entry in expired) == [0, 1]
    assert pending(group, 0).state is DeliveryState.DELAYED
    assert pending(group, 0).deadline == clock.now + 5.0
    assert pending(group, 0).last_reason == "lease expired"
    assert pending(group, 2).state is DeliveryState.LEASED

    # Offsets 0 and 1 come back unchanged. Offset 2 is still leased, so the reopen fails it.
    live = group.snapshot_state()
    reopened = await reopen(group, clock)
    assert reopened.snapshot_state()["partitions"][0]["pending"][:2] == live["partitions"][0]["pending"][:2]
    await reopened.close()


async def test_expire_renewed_lease_once(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0], lease=10.0)
    await group.extend("t", 0, 0, owner=1, seconds=10.0)
    clock.now += 10
    expired = await group.expire_leases()
    assert len(expired) == 1
    assert pending(group, 0).delivery_count == 1
    await group.close()


async def test_release_undoes_unseen_deliveries(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1], owner=1)
    await deliver(group, 0, [2], owner=2)
    assert await group.release(1, unseen={("t", 0, 1)}) == 2
    assert pending(group, 0).delivery_count == 1
    assert pending(group, 1).delivery_count == 0
    assert pending(group, 0).state is DeliveryState.READY
    assert pending(group, 2).state is DeliveryState.LEASED

    # Offsets 0 and 1 come back unchanged. Offset 2 is still leased, so the reopen fails it.
    live = group.snapshot_state()
    reopened = await reopen(group, clock)
    assert reopened.snapshot_state()["partitions"][0]["pending"][:2] == live["partitions"][0]["pending"][:2]
    await reopened.close()


async def test_mark_dead_then_redrive(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0])
    await group.mark_dead("t", 0, 0, reason="rejected: bad input", dlq_topic=DLQ_TOPIC, dlq_offset=7)
    assert group.states[("t", 0)].committed == 1
    assert group.dead_lettered[("t", 0)] == 1

    await group.redrive("t", 0, 0, priority=2, key=b"k", dlq_topic=DLQ_TOPIC, dlq_offset=7)
    entry = pending(group, 0)
    assert entry.delivery_count == 0
    assert entry.priority == 2
    assert entry.key == b"k"
    assert group.redriven == {(DLQ_TOPIC, 7)}

    live = group.snapshot_state()
    reopened = await reopen(group, clock)
    assert reopened.snapshot_state() == live
    assert reopened.dead_lettered[("t", 0)] == 1
    assert reopened.redriven == {(DLQ_TOPIC, 7)}

    await reopened.forget_dead_letter_topic(DLQ_TOPIC)
    assert reopened.redriven == set()
    await reopened.close()


async def test_reset_forgets_deliveries(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1])
    await group.ack("t", 0, [0, 5], log_end_offset=LOG_END)
    await group.reset("t", 0, 3)
    state = group.states[("t", 0)]
    assert state.committed == 3
    assert not state.pending
    assert not state.done

    reopened = await reopen(group, clock)
    assert reopened.snapshot_state() == group.snapshot_state()
    await reopened.close()


async def test_skip_removed_moves_past_retention(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [2, 8])
    await group.ack("t", 0, [5, 6, 7, 10], log_end_offset=LOG_END)
    await group.skip_removed("t", 0, 5)
    state = group.states[("t", 0)]
    assert state.committed == 8
    assert sorted(state.pending) == [8]
    assert state.done.ranges() == [(10, 11)]

    journal_end = group.journal.log.log_end_offset
    await group.skip_removed("t", 0, 3)
    assert group.journal.log.log_end_offset == journal_end

    live = group.snapshot_state()
    reopened = await reopen(group, clock)
    assert reopened.states[("t", 0)].committed == 8
    assert reopened.states[("t", 0)].done.ranges() == live["partitions"][0]["done"]
    await reopened.close()


async def test_key_ordering_survives_reopen(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.configure(key_ordering=True)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0], key=b"k")
    await group.fail("t", 0, 0, owner=1, delay=0.0, reason="nacked")

    reopened = await reopen(group, clock)
    state = reopened.states[("t", 0)]
    assert state.hold_if_key_busy(1, 0, b"k")
    assert not state.hold_if_key_busy(2, 0, b"other")
    await reopened.close()


async def test_redelivery_after_delay_survives_reopen(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0])
    await group.fail("t", 0, 0, owner=1, delay=5.0, reason="nacked")
    clock.now += 5
    group.states[("t", 0)].promote_delayed(clock.now)
    await deliver(group, 0, [0])
    assert pending(group, 0).delivery_count == 2

    reopened = await reopen(group, clock)
    assert pending(reopened, 0).delivery_count == 2
    assert pending(reopened, 0).last_reason == "consumer lost"
    await reopened.close()


# -- damaged and unknown journal contents -----------------------------------------------------------


@pytest.mark.parametrize(
    "contents",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[1, 2]", id="not-object"),
        pytest.param(b'{"partitions": []}', id="no-journal-offset"),
    ],
)
async def test_corrupt_snapshot_raises(tmp_path: Path, contents: bytes) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    await group.join("t", 0, 0)
    await group.close()
    (tmp_path / "g" / SNAPSHOT_FILE_NAME).write_bytes(contents)
    with pytest.raises(CorruptJournalError, match="snapshot.json: not a valid group snapshot.*delete it"):
        await open_group(tmp_path / "g", FakeClock())


async def test_deleted_snapshot_rebuilds_from_journal(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await group.ack("t", 0, [0, 1, 4], log_end_offset=LOG_END)
    live = group.snapshot_state()
    await group.close()

    (tmp_path / "g" / SNAPSHOT_FILE_NAME).unlink()
    reopened = await open_group(tmp_path / "g", clock)
    assert reopened.snapshot_state() == live
    await reopened.close()


async def test_unknown_events_skipped(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await group.ack("t", 0, [0], log_end_offset=LOG_END)
    await group.journal.append([{"event": "compact", "topic": "t", "partition": 0, "offset": 9}])
    await group.journal.append([{"topic": "t", "partition": 0}])
    await group.journal.log.append([RecordInput(value=b"[1, 2]")])
    await group.ack("t", 0, [1, 3], log_end_offset=LOG_END)
    live = group.snapshot_state()

    reopened = await reopen(group, clock)
    assert reopened.snapshot_state() == live
    await reopened.close()


async def test_event_not_json_raises(tmp_path: Path) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    await group.join("t", 0, 0)
    await group.journal.log.append([RecordInput(value=b"{not json")])
    await group.journal.close()
    with pytest.raises(CorruptJournalError, match="event at offset 1 is not JSON"):
        await open_group(tmp_path / "g", FakeClock())


# -- settings --------------------------------------------------------------------------------------


async def test_configure_writes_group_json(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    config = await group.configure(max_deliveries=3, retry_delay=1.5, key_ordering=True)
    assert config == GroupConfig(max_deliveries=3, retry_delay=1.5, key_ordering=True)
    assert group.config == config
    assert GroupConfig.load(tmp_path / "g") == config
    await group.close()

    reopened = await open_group(tmp_path / "g", clock)
    assert reopened.config == config
    await reopened.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"max_deliveries": -1}, "max_deliveries=-1 is invalid", id="negative-max-deliveries"),
        pytest.param({"max_deliveries": True}, "max_deliveries=True is invalid", id="bool-max-deliveries"),
        pytest.param({"lease_timeout": 0}, "lease_timeout=0 is invalid", id="zero-lease-timeout"),
        pytest.param({"retry_delay": -1.0}, "retry_delay=-1.0 is invalid", id="negative-retry-delay"),
        pytest.param({"retry_backoff": 0.5}, "retry_backoff=0.5 is invalid", id="backoff-below-one"),
        pytest.param({"key_ordering": "yes"}, "key_ordering must be True or False", id="key-ordering-not-bool"),
        pytest.param({"starvation_limit": 0}, "starvation_limit=0 is invalid", id="zero-starvation-limit"),
        pytest.param({"no_such_setting": 1}, "unknown group setting no_such_setting", id="unknown-setting"),
    ],
)
async def test_configure_invalid_raises(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    with pytest.raises(InvalidConfigError, match=message):
        await group.configure(**changes)
    assert group.config == GroupConfig()
    assert not (tmp_path / "g" / CONFIG_FILE_NAME).exists()
    await group.close()


async def test_configure_invalid_dead_letter_topic(tmp_path: Path) -> None:
    group = await open_group(tmp_path / "g", FakeClock())
    with pytest.raises(InvalidNameError, match="invalid dead-letter topic name '../x'"):
        await group.configure(dead_letter_topic="../x")
    assert not (tmp_path / "g" / CONFIG_FILE_NAME).exists()
    await group.close()


# -- snapshots and journal size ------------------------------------------------------------------


async def test_snapshot_removes_old_segments(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    group.journal.snapshot_every = 10**9
    await group.join("t", 0, 0)
    # Acking every second offset makes one event with 4000 ranges, about 50 KB.
    for batch in range(40):
        base = batch * 8000
        await group.ack("t", 0, range(base + 1, base + 8000, 2), log_end_offset=10**6)
    segments_before = len(group.journal.log.segments)
    await group.ack("t", 0, [0], log_end_offset=10**6)
    await group.journal.snapshot(group.snapshot_state())
    live = group.snapshot_state()

    assert segments_before > 1
    assert len(group.journal.log.segments) == 1
    reopened = await reopen(group, clock)
    assert reopened.snapshot_state() == live
    assert reopened.states[("t", 0)].committed == 2
    await reopened.close()


async def test_snapshot_after_snapshot_every_events(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    group.journal.snapshot_every = 10
    await group.join("t", 0, 0)
    for offset in range(1, 26, 2):
        await group.ack("t", 0, [offset], log_end_offset=100)
    live = group.snapshot_state()

    snapshot = orjson.loads((tmp_path / "g" / SNAPSHOT_FILE_NAME).read_bytes())
    # One reset event from join and 13 ack events: a snapshot after the 10th, then 4 more.
    assert snapshot["journal_offset"] == 10
    assert group.journal.events_since_snapshot == 4
    reopened = await reopen(group, clock)
    assert reopened.snapshot_state() == live
    await reopened.close()


# -- random operations: the live state equals the replayed state ---------------------------------

OWNERS = st.integers(min_value=1, max_value=3)
PARTITIONS = st.integers(min_value=0, max_value=1)
OFFSETS = st.integers(min_value=0, max_value=LOG_END - 1)
PICKS = st.integers(min_value=0, max_value=20)
STRATEGIES = {
    "deliver": st.tuples(st.just("deliver"), PARTITIONS, OWNERS, st.integers(min_value=1, max_value=3),
                         st.sampled_from([10.0, 30.0])),
    "advance": st.tuples(st.just("advance"), st.sampled_from([0.5, 3.0, 5.0, 10.0])),
    "nack": st.tuples(st.just("nack"), PICKS, st.sampled_from([None, 0.0, 4.0, 4.0])),
    "ack": st.tuples(st.just("ack"), PARTITIONS, st.lists(OFFSETS, max_size=3)),
    "extend": st.tuples(st.just("extend"), PICKS, st.sampled_from([5.0, 20.0])),
    "release": st.tuples(st.just("release"), OWNERS, st.booleans()),
    "dead": st.tuples(st.just("dead"), PICKS),
    "redrive": st.tuples(st.just("redrive"), PARTITIONS, OFFSETS),
    "reset": st.tuples(st.just("reset"), PARTITIONS, OFFSETS),
    "skip": st.tuples(st.just("skip"), PARTITIONS, OFFSETS),
}
# Deliveries, nacks and clock steps come up more often than the rest, so that
# leases expire, delays pass and redeliveries happen in most examples.
NAMES = ["deliver"] * 5 + ["advance"] * 4 + ["nack"] * 3 + ["ack", "ack", "extend", "release", "dead", "redrive",
                                                           "reset", "skip"]
OPERATIONS = st.sampled_from(NAMES).flatmap(STRATEGIES.__getitem__)


def priority_of(offset: int) -> int:
    return offset % 3


class Driver:
    """Apply one operation to a group.

    A delivery takes ready messages first, then new ones from the cursor as
    the FIFO scan finds them, and leases them with the same calls as the
    delivery code.
    """

    def __init__(self, group: Group, clock: FakeClock) -> None:
        self.group = group
        self.clock = clock
        self.dlq_offset = 0

    def pick(self, index: int, leased_only: bool) -> tuple[int, Pending] | None:
        """Return the partition and entry of pending message number `index`, modulo their number."""
        entries = [
            (partition, entry)
            for (_, partition), state in sorted(self.group.states.items())
            for _, entry in sorted(state.pending.items())
            if entry.state is DeliveryState.LEASED or not leased_only
        ]
        return entries[index % len(entries)] if entries else None

    def choose(self, partition: int) -> int | None:
        state = self.group.states[("t", partition)]
        state.promote_delayed(self.clock.now)
        entry = state.peek_ready()
        if entry is not None:
            return entry.offset
        offset = state.cursor
        while offset < LOG_END and state.is_known(offset):
            state.pass_over(offset)
            offset = state.cursor
        return offset if offset < LOG_END else None

    async def run(self, operation: tuple[Any, ...]) -> None:
        name, *arguments = operation
        await getattr(self, name)(*arguments)

    async def deliver(self, partition: int, owner: int, count: int, lease: float) -> None:
        state = self.group.states[("t", partition)]
        deadline = self.clock.now + lease
        entries = []
        for _ in range(count):
            offset = self.choose(partition)
            if offset is None:
                break
            entries.append(state.lease(offset, priority=priority_of(offset), key=None, owner=owner,
                                       deadline=deadline, key_ordering=False))
        await self.group.record_deliveries("t", partition, entries, deadline)

    async def ack(self, partition: int, offsets: list[int]) -> None:
        await self.group.ack("t", partition, offsets, log_end_offset=LOG_END)

    async def nack(self, index: int, delay: float | None) -> None:
        picked = self.pick(index, leased_only=True)
        if picked is not None:
            partition, entry = picked
            assert entry.owner is not None
            await self.group.fail("t", partition, entry.offset, owner=entry.owner, delay=delay, reason="nacked")

    async def extend(self, index: int, seconds: float) -> None:
        picked = self.pick(index, leased_only=True)
        if picked is not None:
            partition, entry = picked
            assert entry.owner is not None
            await self.group.extend("t", partition, entry.offset, owner=entry.owner, seconds=seconds)

    async def release(self, owner: int, undo_even: bool) -> None:
        unseen = {
            (topic, number, offset)
            for (topic, number), state in self.group.states.items()
            for offset in state.pending
            if (offset % 2 == 0) is undo_even
        }
        await self.group.release(owner, unseen=unseen)

    async def advance(self, seconds: float) -> None:
        # The test moves the shared clock by `seconds` once, before every driver runs this step.
        await self.group.expire_leases()

    async def dead(self, index: int) -> None:
        picked = self.pick(index, leased_only=False)
        if picked is not None:
            partition, entry = picked
            self.dlq_offset += 1
            await self.group.mark_dead("t", partition, entry.offset, reason="max deliveries (5) reached",
                                       dlq_topic=DLQ_TOPIC, dlq_offset=self.dlq_offset)

    async def redrive(self, partition: int, offset: int) -> None:
        if self.group.states[("t", partition)].is_done(offset):
            self.dlq_offset += 1
            await self.group.redrive("t", partition, offset, priority=priority_of(offset), key=None,
                                     dlq_topic=DLQ_TOPIC, dlq_offset=self.dlq_offset)

    async def reset(self, partition: int, offset: int) -> None:
        await self.group.reset("t", partition, offset)

    async def skip(self, partition: int, offset: int) -> None:
        await self.group.skip_removed("t", partition, offset)


def after_restart(snapshot: dict[str, Any], now: float) -> dict[str, Any]:
    """Return `snapshot` with every leased message failed as "consumer lost" at `now`, as Group.open does."""
    converted = orjson.loads(orjson.dumps(snapshot))
    for partition in converted["partitions"]:
        for item in partition["pending"]:
            # Each item is [offset, priority, key, state, delivery count, deadline, first failure,
            # last failure, last reason].
            state, count, first_failure = item[3], item[4], item[6]
            if state == DeliveryState.LEASED.value:
                first_failure = now if first_failure is None else first_failure
                item[3:] = [DeliveryState.READY.value, count, None, first_failure, now, "consumer lost"]
    return converted


def comparable(group: Group) -> dict[str, Any]:
    """Return the group's snapshot body with due delays promoted, which selection does before each choice."""
    for state in group.states.values():
        state.promote_delayed(group.clock())
    return orjson.loads(orjson.dumps(group.snapshot_state()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPERATIONS, min_size=10, max_size=50), snapshot_at=st.integers(min_value=0, max_value=50))
async def test_replay_matches_live_state(tmp_path: Path, operations: list[tuple[Any, ...]], snapshot_at: int) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    clock = FakeClock()
    plain = await open_group(root / "plain", clock)
    snapshotted = await open_group(root / "snapshotted", clock)
    drivers = [Driver(plain, clock), Driver(snapshotted, clock)]
    for group in (plain, snapshotted):
        await group.join("t", 0, 0)
        await group.join("t", 1, 2)

    for step, operation in enumerate(operations):
        if step == snapshot_at % len(operations):
            await snapshotted.journal.snapshot(snapshotted.snapshot_state())
        if operation[0] == "advance":
            clock.now += operation[1]
        for driver in drivers:
            await driver.run(operation)

    live = comparable(plain)
    assert comparable(snapshotted) == live
    expected = after_restart(live, clock.now)
    for group in (plain, snapshotted):
        reopened = await reopen(group, clock)
        assert comparable(reopened) == expected, group.directory.name
        await reopened.close()


async def test_skip_counts_only_offsets_not_done(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [0, 1, 5])
    await group.ack("t", 0, [1, 7], LOG_END)

    # 0 and 5 are leased, 1 and 7 done: of 0..9 the skip finds 8 not done.
    assert await group.skip("t", 0, 0, 10) == 8
    assert await group.skip("t", 0, 2, 6) == 0

    state = group.states[("t", 0)]
    assert state.committed == 10
    assert state.pending == {}
    reopened = await reopen(group, clock)
    assert reopened.states[("t", 0)].committed == 10
    await reopened.close()


async def test_skip_of_wide_range_writes_one_event(tmp_path: Path) -> None:
    clock = FakeClock()
    group = await open_group(tmp_path / "g", clock)
    await group.join("t", 0, 0)
    await deliver(group, 0, [3, 4_000_000])
    end_before = group.journal.log.log_end_offset

    assert await group.skip("t", 0, 0, 10_000_000) == 10_000_000

    assert group.journal.log.log_end_offset == end_before + 1
    assert group.states[("t", 0)].pending == {}
    await group.close()


def test_dead_letter_topic_equal_to_source_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    config = GroupConfig(dead_letter_topic="orders")

    assert config.dead_letter_topic_for("orders", "billing") == "orders.billing.dlq"
    assert "would redeliver failed messages for ever" in caplog.text
    assert config.dead_letter_topic_for("payments", "billing") == "orders"
