"""Crash-matrix tests: SIGKILL producer and consumer children at random points, then check invariants.

The default run does a few hundred kill points. `python -m pytest -m crash_long tests/crash`
runs thousands. Set LOGQ_CRASH_SEED to repeat a run's workload and kill
delays, and LOGQ_CRASH_ROUNDS to change the rounds per lane of the long run.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import orjson
import pytest

import logq
from logq.consumers import PartitionSelector, journal

from .harness import KILL_PHASES, MatrixReport, run_matrix

LANES = 4
CI_ROUNDS_PER_LANE = 75
LONG_ROUNDS_PER_LANE = 900
# Phases the CI run must reach at least once, or its kill points prove little.
REQUIRED_PHASES = (
    "segment roll",
    "retention deleted segments",
    "group snapshot written",
    "snapshot deleted journal segments",
    "recovery failed orphaned leases",
    KILL_PHASES["closed"],
    KILL_PHASES["opened"],
)


def crash_seed() -> int:
    """Return LOGQ_CRASH_SEED when set, or a fresh random seed that failure messages name."""
    text = os.environ.get("LOGQ_CRASH_SEED")
    return int(text) if text else random.SystemRandom().getrandbits(32)


def assert_clean(report: MatrixReport) -> None:
    """Fail with the seed, the failed rounds and the report when any invariant broke."""
    print(report.summary())
    assert not report.failures, (
        f"crash matrix failed with seed {report.seed}; rerun with LOGQ_CRASH_SEED={report.seed}:\n"
        + "\n".join(report.failures)
    )


async def test_crash_matrix_ci(tmp_path: Path) -> None:
    report = await run_matrix(crash_seed(), LANES, CI_ROUNDS_PER_LANE, tmp_path)

    assert_clean(report)
    assert report.kill_points == LANES * CI_ROUNDS_PER_LANE
    for phase in REQUIRED_PHASES:
        assert report.phases[phase] > 0, f"seed {report.seed}: no round reached {phase!r}"
    assert report.checks["acknowledged sends found"] > 0
    assert report.checks["acked offsets found done"] > 0


@pytest.mark.crash_long
async def test_crash_matrix_long(tmp_path: Path) -> None:
    rounds = int(os.environ.get("LOGQ_CRASH_ROUNDS", LONG_ROUNDS_PER_LANE))
    report = await run_matrix(crash_seed(), LANES, rounds, tmp_path)

    assert_clean(report)
    assert report.kill_points == LANES * rounds


async def test_snapshot_keeps_event_journaled_during_flush(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A consumer's first receive of topic "b" journals its start position while
    # an ack's snapshot waits for its flush. Every snapshot written from then on
    # must contain "b", or a crash before the next snapshot loses it.
    snapshots: list[dict[str, object]] = []
    write_file_atomically = journal.write_file_atomically

    def record_snapshot(path: Path, data: bytes) -> None:
        if path.name == journal.SNAPSHOT_FILE_NAME:
            snapshots.append(orjson.loads(data))
        write_file_atomically(path, data)

    monkeypatch.setattr(journal, "write_file_atomically", record_snapshot)
    async with logq.open(data_dir) as log:
        await log.send("a", b"a0")
        await log.send("b", b"b0")
        first = log.consumer("a", group="workers", auto_ack=False)
        [message] = await first.receive(1)
        group = await log.group("workers")
        group.journal.snapshot_every = group.journal.events_since_snapshot + 1
        second = log.consumer("b", group="workers", auto_ack=False)

        _, received = await asyncio.gather(first.ack(message), second.receive(1))

        assert [m.offset for m in received] == [0]
    assert snapshots
    for snapshot in snapshots:
        partitions = {(item["topic"], item["partition"]) for item in snapshot["partitions"]}  # type: ignore[attr-defined]
        assert ("b", 0) in partitions, f"snapshot at journal offset {snapshot['journal_offset']} lacks b/0"


async def lease_message_then_lose_it_to_retention(log: logq.Log, *, lease: float) -> tuple[logq.Consumer, logq.Message]:
    """Lease offset 0 at its last allowed delivery, then append until retention deletes its segment."""
    await log.create_topic("jobs", segment_bytes=4096, retention_bytes=4096)
    await log.configure_group("workers", max_deliveries=1)
    await log.send("jobs", b"first")
    consumer = log.consumer("jobs", group="workers", auto_ack=False)
    [message] = await consumer.receive(1, lease=lease)
    for _ in range(100):
        await log.send("jobs", b"x" * 200)
    assert log.describe_topic("jobs").partitions[0].log_start_offset > message.offset
    return consumer, message


async def test_nack_after_retention_deleted_message(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        consumer, message = await lease_message_then_lose_it_to_retention(log, lease=30.0)

        await consumer.nack(message)
        # Nothing is left to copy to the dead-letter topic, so the message is simply done.
        [row] = await log.describe_group("workers")
        assert row.in_flight == 0
        assert row.committed_offset >= message.offset + 1


async def test_receive_after_expired_lease_deleted(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        consumer, _ = await lease_message_then_lose_it_to_retention(log, lease=0.01)
        await asyncio.sleep(0.05)

        assert await consumer.receive(5, timeout=0) != []


async def test_receive_while_retention_passes_cursor(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In a live process an append that rolls a segment runs retention at any
    # await of a receive. Here retention runs once, at the receive's first
    # await after it moved the group past deleted offsets.
    async with logq.open(data_dir) as log:
        await log.create_topic("jobs", segment_bytes=4096)
        for number in range(60):
            await log.send("jobs", b"%03d" % number + b"x" * 200)
        partition = log.describe_topic("jobs").partitions[0]
        assert partition.segments > 2
        storage = log._topic("jobs").partitions[0]
        urgent = PartitionSelector._urgent

        async def urgent_after_retention(self: PartitionSelector, *args: object) -> object:
            monkeypatch.setattr(PartitionSelector, "_urgent", urgent)
            await storage.delete_segments_before(storage.segments[1].next_offset)
            return await urgent(self, *args)

        monkeypatch.setattr(PartitionSelector, "_urgent", urgent_after_retention)
        consumer = log.consumer("jobs", group="workers", auto_ack=False)

        messages = await consumer.receive(5)

        assert [message.offset for message in messages] == list(range(storage.log_start_offset,
                                                                        storage.log_start_offset + 5))
