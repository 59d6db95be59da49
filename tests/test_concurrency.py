"""Concurrency tests: many producer and consumer tasks on one topic, cancellation at random points, and races.

Every test body runs under `asyncio.wait_for`, so a deadlock fails the test
instead of hanging it. Random choices use fixed seeds.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

import logq

T = TypeVar("T")
TEST_TIMEOUT_SECONDS = 30.0
SHORT_LEASE_SECONDS = 0.2


async def bounded(work: Awaitable[T], seconds: float = TEST_TIMEOUT_SECONDS) -> T:
    """Await `work`, failing with a timeout (a likely deadlock) after `seconds`."""
    return await asyncio.wait_for(work, seconds)


async def yields(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def assert_dense_and_readable(data_dir: Path, topic: str) -> list[logq.Message]:
    """Reopen the log and check that every partition's offsets are dense and every record reads back."""
    async with logq.open(data_dir) as log:
        info = log.describe_topic(topic)
        messages = [message async for message in log.replay(topic)]
        for partition in info.partitions:
            offsets = sorted(m.offset for m in messages if m.partition == partition.partition)
            assert offsets == list(range(partition.log_start_offset, partition.high_watermark))
        return messages


async def drain_group(log: logq.Log, topic: str, group: str, *, timeout: float = 0.5) -> list[logq.Message]:
    """Receive and ack with one fresh consumer until a receive waits `timeout` seconds in vain."""
    received: list[logq.Message] = []
    async with log.consumer(topic, group=group, auto_ack=False) as consumer:
        while batch := await consumer.receive(100, timeout=timeout):
            await consumer.ack(batch)
            received.extend(batch)
    return received


async def test_producers_consumers_groups(data_dir: Path) -> None:
    producers, per_producer, groups, consumers_per_group = 8, 60, 3, 4
    total = producers * per_producer

    async def produce(log: logq.Log, number: int) -> None:
        for i in range(0, per_producer, 3):
            if i % 2:
                await log.send_batch("jobs", [f"{number}-{i + j}" for j in range(3)])
            else:
                for j in range(3):
                    await log.send("jobs", f"{number}-{i + j}", priority=(i + j) % 3)
            await asyncio.sleep(0)

    async def consume(log: logq.Log, group: str, seen: Counter[tuple[int, int]], done: asyncio.Event) -> None:
        async with log.consumer("jobs", group=group, auto_ack=False) as consumer:
            while not done.is_set():
                batch = await consumer.receive(7, timeout=0.05)
                for message in batch:
                    seen[(message.partition, message.offset)] += 1
                await consumer.ack(batch)
                if sum(seen.values()) >= total:
                    done.set()

    async def scenario() -> list[Counter[tuple[int, int]]]:
        async with logq.open(data_dir) as log:
            await log.create_topic("jobs", partitions=3)
            for g in range(groups):
                await log.configure_group(f"g{g}", lease_timeout=60)
            seen = [Counter[tuple[int, int]]() for _ in range(groups)]
            events = [asyncio.Event() for _ in range(groups)]
            tasks = [asyncio.create_task(produce(log, p)) for p in range(producers)]
            tasks += [
                asyncio.create_task(consume(log, f"g{g}", seen[g], events[g]))
                for g in range(groups)
                for _ in range(consumers_per_group)
            ]
            await asyncio.gather(*tasks)
            for g in range(groups):
                rows = await log.describe_group(f"g{g}")
                assert sum(row.lag for row in rows) == 0
                assert sum(row.in_flight for row in rows) == 0
            return seen

    seen = await bounded(scenario())

    for counts in seen:
        assert len(counts) == total
        assert set(counts.values()) == {1}
    stored = await assert_dense_and_readable(data_dir, "jobs")
    assert len(stored) == total
    assert len({m.value for m in stored}) == total


@pytest.mark.parametrize("seed", range(4))
async def test_cancelled_receives_lose_nothing(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    count = 120

    async def receive_until_cancelled(log: logq.Log, acked: set[tuple[int, int]]) -> None:
        consumer = log.consumer("jobs", group="g", auto_ack=False)
        try:
            while True:
                batch = await consumer.receive(rng.randint(1, 8), timeout=0.01, lease=SHORT_LEASE_SECONDS)
                for message in batch:
                    await yields(rng.randint(0, 2))
                    if rng.random() < 0.7:
                        await message.ack()
                        acked.add((message.partition, message.offset))
        finally:
            if rng.random() < 0.5:
                await consumer.close()

    async def scenario() -> tuple[set[tuple[int, int]], list[logq.Message]]:
        async with logq.open(data_dir) as log:
            await log.create_topic("jobs", partitions=2)
            await log.send_batch("jobs", list(range(count)))
            acked: set[tuple[int, int]] = set()
            for _ in range(6):
                tasks = [asyncio.create_task(receive_until_cancelled(log, acked)) for _ in range(4)]
                await yields(rng.randint(1, 60))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            # Consumers left open hold leases until they expire.
            await asyncio.sleep(SHORT_LEASE_SECONDS * 1.5)
            rest = await drain_group(log, "jobs", "g")
            return acked, rest

    acked, rest = await bounded(scenario())

    redelivered = {(m.partition, m.offset) for m in rest}
    assert not acked & redelivered
    assert len(acked | redelivered) == count
    async with logq.open(data_dir) as log:
        rows = await log.describe_group("g")
        assert sum(row.lag for row in rows) == 0
        assert await drain_group(log, "jobs", "g", timeout=0.05) == []


@pytest.mark.parametrize("seed", range(4))
async def test_cancelled_sends_leave_whole_batches(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    returned: set[str] = set()

    async def send_until_cancelled(log: logq.Log, name: str) -> None:
        for i in range(1000):
            size = rng.randint(1, 5)
            values = [f"{name}-{i}-{j}-{size}" for j in range(size)]
            if size == 1:
                await log.send("jobs", values[0])
            else:
                # A key sends the whole batch to one partition, where it is one record batch.
                await log.send_batch("jobs", values, key=f"{name}-{i}")
            returned.update(values)

    async def scenario() -> None:
        async with logq.open(data_dir) as log:
            await log.create_topic("jobs", partitions=3, segment_bytes=4096, fsync="always")
            for round_number in range(5):
                tasks = [asyncio.create_task(send_until_cancelled(log, f"r{round_number}p{n}")) for n in range(4)]
                await yields(rng.randint(5, 200))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    await bounded(scenario())

    stored = await assert_dense_and_readable(data_dir, "jobs")
    values = Counter(m.value for m in stored)
    assert set(values.values()) == {1}
    assert returned <= set(values)
    batches = Counter(value.rsplit("-", 2)[0] for value in values)
    for value in values:
        batch, _, size = value.rsplit("-", 2)
        assert batches[batch] == int(size), value


@pytest.mark.parametrize("seed", range(3))
async def test_send_timeouts_leave_dense_log(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    returned: list[str] = []
    timed_out = 0

    async def scenario() -> None:
        nonlocal timed_out
        async with logq.open(data_dir) as log:
            await log.create_topic("jobs", partitions=2, fsync="always")
            for i in range(150):
                size = rng.randint(1, 4)
                values = [f"{i}-{j}-{size}" for j in range(size)]
                timeout = rng.choice([0, 1e-5, 1e-4, 1e-3])
                try:
                    await asyncio.wait_for(log.send_batch("jobs", values, key=str(i)), timeout)
                except TimeoutError:
                    timed_out += 1
                    continue
                returned.extend(values)

    await bounded(scenario())

    assert timed_out > 0
    stored = await assert_dense_and_readable(data_dir, "jobs")
    values = [m.value for m in stored]
    assert len(values) == len(set(values))
    assert set(returned) <= set(values)
    batches = Counter(value.rsplit("-", 2)[0] for value in values)
    for value in values:
        batch, _, size = value.rsplit("-", 2)
        assert batches[batch] == int(size), value


@pytest.mark.parametrize("seed", range(4))
async def test_cancelled_acks_and_nacks(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    count = 60
    acked: set[int] = set()

    async def settle(consumer: logq.Consumer, messages: list[logq.Message]) -> None:
        for message in messages:
            if rng.random() < 0.5:
                await consumer.ack(message)
                acked.add(message.offset)
            else:
                await consumer.nack(message, delay=0)

    async def scenario() -> None:
        async with logq.open(data_dir, group_fsync="always") as log:
            await log.send_batch("jobs", list(range(count)))
            consumer = log.consumer("jobs", group="g", auto_ack=False)
            for _ in range(10):
                messages = await consumer.receive(rng.randint(1, 10), lease=SHORT_LEASE_SECONDS)
                task = asyncio.create_task(settle(consumer, messages))
                await yields(rng.randint(0, 30))
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            # The log closes with leases still held, which the reopened group makes ready again.

    await bounded(scenario())

    async def reopened() -> tuple[list[logq.Message], list[logq.Message]]:
        async with logq.open(data_dir) as log:
            first = await drain_group(log, "jobs", "g", timeout=0.05)
            return first, await drain_group(log, "jobs", "g", timeout=0.05)

    rest, again = await bounded(reopened())
    offsets = [m.offset for m in rest]
    assert len(offsets) == len(set(offsets))
    assert not acked & set(offsets)
    assert again == []
    async with logq.open(data_dir) as log:
        rows = await log.describe_group("g")
        assert (rows[0].committed_offset, rows[0].in_flight, rows[0].waiting) == (count, 0, 0)


async def test_cancelled_waiting_receive(data_dir: Path) -> None:
    async def scenario() -> list[logq.Message]:
        async with logq.open(data_dir) as log:
            await log.create_topic("jobs")
            consumer = log.consumer("jobs", group="g", auto_ack=False)
            for timeout in (0.001, 0.005, 0.02):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(consumer.receive(5, timeout=None), timeout)
            await log.send("jobs", "late")
            [message] = await consumer.receive(5, timeout=1)
            await message.ack()
            await consumer.close()
            return await drain_group(log, "jobs", "g", timeout=0.05)

    assert await bounded(scenario()) == []


async def test_closing_consumer_releases_leases(data_dir: Path) -> None:
    async def scenario() -> list[logq.Message]:
        async with logq.open(data_dir) as log:
            await log.send_batch("jobs", list(range(10)))
            first = log.consumer("jobs", group="g", auto_ack=False)
            taken = await first.receive(10)
            assert len(taken) == 10
            await first.close()
            return await drain_group(log, "jobs", "g", timeout=0.05)

    rest = await bounded(scenario())
    assert sorted(m.value for m in rest) == list(range(10))
    assert {m.delivery_count for m in rest} == {2}


async def test_race_after_expired_lease(data_dir: Path) -> None:
    async def scenario() -> None:
        async with logq.open(data_dir) as log:
            await log.send("jobs", "one")
            first = log.consumer("jobs", group="g", auto_ack=False)
            second = log.consumer("jobs", group="g", auto_ack=False)
            [old] = await first.receive(1, lease=0.05)
            await asyncio.sleep(0.1)
            [new] = await second.receive(1, timeout=1)
            assert new.offset == old.offset
            assert new.delivery_count == 2

            with pytest.raises(logq.LeaseError):
                await first.nack(old)
            with pytest.raises(logq.LeaseError):
                await first.extend(old, seconds=5)
            with pytest.raises(logq.LeaseError):
                await first.reject(old)
            assert await first.ack(old) == 1
            assert await second.ack(new) == 0
            with pytest.raises(logq.LeaseError):
                await second.nack(new)
            await first.close()
            await second.close()
            rows = await log.describe_group("g")
            assert (rows[0].committed_offset, rows[0].in_flight, rows[0].waiting) == (1, 0, 0)

    await bounded(scenario())
    async with logq.open(data_dir) as log:
        assert await drain_group(log, "jobs", "g", timeout=0.05) == []


@pytest.mark.parametrize("seed", range(6))
async def test_ack_nack_extend_race(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    count = 20

    async def act(consumer: logq.Consumer, message: logq.Message, action: str) -> str:
        await yields(rng.randint(0, 3))
        try:
            if action == "ack":
                await consumer.ack(message)
            elif action == "nack":
                await consumer.nack(message)
            else:
                await consumer.extend(message, seconds=5)
        except logq.LeaseError:
            return "lease-error"
        return action

    async def scenario() -> tuple[set[int], list[logq.Message]]:
        async with logq.open(data_dir) as log:
            await log.send_batch("jobs", list(range(count)))
            first = log.consumer("jobs", group="g", auto_ack=False)
            second = log.consumer("jobs", group="g", auto_ack=False)
            acked: set[int] = set()
            for message in await first.receive(count):
                actions = [rng.choice(["ack", "nack", "extend"]) for _ in range(3)]
                outcomes = await asyncio.gather(
                    act(first, message, actions[0]),
                    act(second, message, actions[1]),
                    act(first, message, actions[2]),
                )
                if "ack" in outcomes:
                    acked.add(message.offset)
            await first.close()
            await second.close()
            return acked, await drain_group(log, "jobs", "g", timeout=0.05)

    acked, rest = await bounded(scenario())

    redelivered = {m.offset for m in rest}
    assert not acked & redelivered
    assert acked | redelivered == set(range(count))
    await assert_dense_and_readable(data_dir, "jobs")


@pytest.mark.parametrize("keyed", [False, True], ids=["bulk urgent run", "general path"])
async def test_failed_receive_takes_its_leases_back(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                    keyed: bool) -> None:
    """A receive that fails after leasing some messages makes them ready again with their delivery counts."""
    from logq.consumers.selection import PartitionSelector
    from logq.errors import StorageError

    real_read_one = PartitionSelector._read_one
    reads = 0

    async def failing_third_read(self: PartitionSelector, offset: int) -> object:
        nonlocal reads
        reads += 1
        if reads == 3:
            raise StorageError(f"injected read error at offset {offset}")
        return await real_read_one(self, offset)

    async with logq.open(data_dir) as log:
        # Urgent messages are read one at a time, by the bulk run and (with per-key ordering)
        # by the general path, so the third read fails after two leases.
        for number in range(5):
            await log.send("t", f"m{number}".encode(), key=f"k{number}" if keyed else None, priority=5)
        if keyed:
            await log.configure_group("g", key_ordering=True)
        consumer = log.consumer("t", group="g", auto_ack=False)
        monkeypatch.setattr(PartitionSelector, "_read_one", failing_third_read)

        with pytest.raises(StorageError, match="injected"):
            await consumer.receive(5)

        assert reads == 3
        monkeypatch.setattr(PartitionSelector, "_read_one", real_read_one)
        again = await bounded(consumer.receive(5))
        assert [(m.offset, m.delivery_count) for m in again] == [(n, 1) for n in range(5)]
        await consumer.ack(again)
        await consumer.close()
