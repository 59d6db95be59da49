"""Tests of the public async API: sending, consumer groups, replay and bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

import logq
from logq.topics import partition_for_key


async def drain(consumer: logq.Consumer, timeout: float = 0.2) -> list[logq.Message]:
    """Receive until a receive waits `timeout` seconds without a message."""
    received: list[logq.Message] = []
    while batch := await consumer.receive(50, timeout=timeout):
        received.extend(batch)
    return received


def test_all_names_exported() -> None:
    for name in logq.__all__:
        assert hasattr(logq, name), name
    assert "open" in logq.__all__
    assert "LogqError" in logq.__all__


async def test_send_returns_dense_offsets(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        offsets = [await log.send("t", f"m{i}") for i in range(5)]
        offsets += await log.send_batch("t", [b"a", b"b"])
        assert offsets == list(range(7))


@pytest.mark.parametrize(
    "value",
    [b"\x00\xffraw", b"", "text é", 42, 1.5, None, True, [1, "two"], {"nested": {"k": [1, 2]}}],
    ids=["bytes", "empty-bytes", "str", "int", "float", "none", "bool", "list", "dict"],
)
async def test_value_round_trip(data_dir: Path, value: object) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", value, key=b"\x00k", headers={"h": "v ü"}, priority=7)
        [message] = [m async for m in log.replay("t")]
        assert message.value == value
        assert message.key == b"\x00k"
        assert message.headers == {"h": "v ü"}
        assert message.priority == 7
        assert message.group is None


async def test_message_is_immutable_value(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", b"v", key="k", headers={"h": "1"}, priority=3)
        first = log.consumer("t", group="g", auto_ack=False)
        [message] = await first.receive(1)
        [replayed] = [m async for m in log.replay("t")]

        assert (message.offset, message.key, message.priority, message.raw_value) == (0, b"k", 3, b"v")
        assert message.headers == {"h": "1"}
        message.headers["h"] = "changed"
        assert message.headers == {"h": "1"}
        with pytest.raises(AttributeError):
            message.offset = 5  # type: ignore[misc]
        assert message != replayed
        assert "offset=0" in repr(message)
        assert "consumer" not in repr(message)
        await first.close()

        # Equality ignores the consumer that received the message.
        second = log.consumer("t", group="g", auto_ack=False)
        [again] = await second.receive(1)
        assert again.delivery_count == 2
        assert again != message
        twin = logq.Message.from_record("t", 0, again._record, group="g", delivery_count=2,
                                        lease_deadline=again.lease_deadline)
        assert twin == again
        assert hash(twin) == hash(again)


@pytest.mark.parametrize("bad", [None, "x", 5], ids=["none", "str", "int"])
async def test_ack_rejects_non_messages(data_dir: Path, bad: object) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", b"v")
        consumer = log.consumer("t", group="g", auto_ack=False)

        with pytest.raises(logq.InvalidArgumentError, match="expected a Message or a list of Messages"):
            await consumer.ack_batch(bad)  # type: ignore[arg-type]
        assert len(await consumer.receive(1)) == 1


async def test_keyed_messages_stay_in_one_partition(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=4)
        for i in range(20):
            await log.send("t", i, key="user-1")
        messages = [m async for m in log.replay("t")]
        assert {m.partition for m in messages} == {partition_for_key(b"user-1", 4)}
        assert [m.value for m in messages] == list(range(20))


async def test_unkeyed_messages_round_robin(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=3)
        await log.send_batch("t", list(range(9)))
        info = log.describe_topic("t")
        assert [p.log_end_offset for p in info.partitions] == [3, 3, 3]


async def test_two_groups_each_get_everything(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=2)
        await log.send_batch("t", list(range(100)))
        async with log.consumer("t", group="a") as first, log.consumer("t", group="b") as second:
            got_a = sorted(m.value for m in await drain(first))
            got_b = sorted(m.value for m in await drain(second))
        assert got_a == list(range(100))
        assert got_b == list(range(100))


async def test_competing_consumers_split_messages(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(200)))
        async with log.consumer("t", group="g") as one, log.consumer("t", group="g") as two:
            first = await one.receive(60)
            second = await two.receive(300)
        values = [m.value for m in first + second]
        assert len(first) == 60
        assert sorted(values) == list(range(200))


async def test_unacked_messages_go_back_on_close(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(10)))
        consumer = log.consumer("t", group="g", auto_ack=False)
        batch = await consumer.receive(10)
        await consumer.ack(batch[:4])
        await consumer.close()
        async with log.consumer("t", group="g") as again:
            assert [m.value for m in await drain(again)] == list(range(4, 10))


async def test_acks_survive_restart(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(10)))
        consumer = log.consumer("t", group="g", auto_ack=False)
        batch = await consumer.receive(10)
        await consumer.ack([batch[0], batch[1], batch[5]])
        await consumer.close()
    async with logq.open(data_dir) as log:
        [row] = await log.describe_group("g")
        assert row.committed_offset == 2
        async with log.consumer("t", group="g") as consumer:
            assert [m.value for m in await drain(consumer)] == [2, 3, 4, 6, 7, 8, 9]


async def test_ack_is_idempotent(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", "x")
        async with log.consumer("t", group="g", auto_ack=False) as consumer:
            [message] = await consumer.receive(1)
            assert await consumer.ack(message) == 1
            assert await consumer.ack(message) == 0
            await message.ack()


async def test_start_latest_skips_history(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", [1, 2, 3])
        async with log.consumer("t", group="g", start="latest") as consumer:
            assert await consumer.receive(10) == []
            await log.send("t", 4)
            assert [m.value for m in await consumer.receive(10)] == [4]


async def test_start_latest_counts_from_creation(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", [1, 2])
        consumer = log.consumer("t", group="g", start="latest")
        # Sent after the consumer was made but before its first receive: "from now on" includes it.
        await log.send("t", 3)
        assert [m.value for m in await consumer.receive(10)] == [3]
        await consumer.close()


async def test_blocking_receive_wakes_on_send(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        async with log.consumer("t", group="g") as consumer:
            waiter = asyncio.create_task(consumer.receive(1, timeout=30))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            await log.send("t", "wake")
            messages = await asyncio.wait_for(waiter, 5)
            assert [m.value for m in messages] == ["wake"]


async def test_receive_timeout_returns_empty(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        async with log.consumer("t", group="g") as consumer:
            started = asyncio.get_running_loop().time()
            assert await consumer.receive(1, timeout=0.1) == []
            assert asyncio.get_running_loop().time() - started >= 0.09


async def test_iterator_yields_in_order(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(250)))
        seen = []
        async with log.consumer("t", group="g") as consumer:
            async for message in consumer:
                seen.append(message.value)
                if len(seen) == 250:
                    break
        assert seen == list(range(250))
        [row] = await log.describe_group("g")
        assert row.committed_offset == 250


@pytest.mark.parametrize(
    ("target", "expected"),
    [("earliest", 0), ("latest", 10), (4, 4), (-5, 0), (99, 10)],
    ids=["earliest", "latest", "offset", "below-start", "above-end"],
)
async def test_reset_group(data_dir: Path, target: object, expected: int) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(10)))
        async with log.consumer("t", group="g") as consumer:
            await drain(consumer)
        [row] = await log.reset_group("g", "t", to=target)  # type: ignore[arg-type]
        assert row.committed_offset == expected
        async with log.consumer("t", group="g") as consumer:
            assert [m.value for m in await drain(consumer)] == list(range(expected, 10))


async def test_reset_and_replay_by_time(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", ["old"])
        await asyncio.sleep(0.02)
        boundary = datetime.now(UTC)
        await asyncio.sleep(0.02)
        await log.send_batch("t", ["new1", "new2"])
        assert [m.value async for m in log.replay("t", from_time=boundary)] == ["new1", "new2"]
        [row] = await log.reset_group("new-group", "t", to=boundary)
        assert row.committed_offset == 1


async def test_replay_merges_partitions_by_time(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=3)
        for i in range(12):
            await log.send("t", i, partition=i % 3)
        replayed = [m async for m in log.replay("t")]
        timestamps = [m.timestamp_ms for m in replayed]
        assert timestamps == sorted(timestamps)
        assert sorted(m.value for m in replayed) == list(range(12))
        for number in range(3):
            assert [m.value for m in replayed if m.partition == number] == list(range(number, 12, 3))
        assert [m.value async for m in log.replay("t", from_offset=3)] == [9, 10, 11]
        assert [m.value async for m in log.replay("t", partition=1)] == [1, 4, 7, 10]


async def test_reopen_keeps_topics_and_messages(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=2, compression="zstd", fsync="always")
        await log.send_batch("t", [{"n": i} for i in range(50)])
    async with logq.open(data_dir) as log:
        info = log.describe_topic("t")
        assert info.config.compression == "zstd"
        assert info.messages == 50
        assert sorted([m.value["n"] async for m in log.replay("t")]) == list(range(50))


async def test_delete_topic_removes_files(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", 1)
        await log.delete_topic("t")
        assert log.list_topics() == []
        assert not (data_dir / "topics" / "t").exists()


async def test_second_open_is_locked(data_dir: Path) -> None:
    async with logq.open(data_dir):
        with pytest.raises(logq.DataDirLockedError, match="already open in this process"):
            await logq.open(data_dir)


async def test_closed_log_raises(data_dir: Path) -> None:
    log = await logq.open(data_dir)
    await log.close()
    with pytest.raises(logq.ClosedError):
        await log.send("t", 1)


BAD_SENDS = [
    ({"topic": ""}, logq.InvalidNameError, "empty"),
    ({"topic": "../escape"}, logq.InvalidNameError, "path separator"),
    ({"topic": ".."}, logq.InvalidNameError, "'..'"),
    ({"topic": "a\x00b"}, logq.InvalidNameError, "control character"),
    ({"topic": "x" * 201}, logq.InvalidNameError, "maximum is 200"),
    ({"topic": 5}, logq.InvalidNameError, "must be a str"),
    ({"value": object()}, logq.InvalidArgumentError, "cannot encode"),
    ({"key": 12}, logq.InvalidArgumentError, "key must be str or bytes"),
    ({"headers": {"h": 1}}, logq.InvalidArgumentError, "header values must be str"),
    ({"headers": {"": "v"}}, logq.InvalidArgumentError, "header name"),
    ({"headers": ["h"]}, logq.InvalidArgumentError, "headers must be a dict"),
    ({"priority": 256}, logq.InvalidArgumentError, "0 to 255"),
    ({"priority": -1}, logq.InvalidArgumentError, "0 to 255"),
    ({"priority": True}, logq.InvalidArgumentError, "0 to 255"),
    ({"partition": 3}, logq.InvalidArgumentError, "use 0..0"),
    ({"value": b"x" * 2000}, logq.MessageTooLargeError, "max message size"),
    ({"headers": {"é" * 300: "ü" * 250}}, logq.MessageTooLargeError, "message of 1103 bytes"),
    ({"headers": {f"h{i}": "" for i in range(70_000)}}, logq.InvalidArgumentError, "maximum is 65535"),
]


@pytest.mark.parametrize(
    ("arguments", "error", "message"), BAD_SENDS, ids=[str(i) for i in range(len(BAD_SENDS))]
)
async def test_send_rejects_bad_input(data_dir: Path, arguments: dict, error: type, message: str) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", max_message_bytes=1000)
        await log.send("t", "kept")
        call = {"topic": "t", "value": "v", **arguments}
        with pytest.raises(error, match=message):
            await log.send(call.pop("topic"), call.pop("value"), **call)
        assert [m.value async for m in log.replay("t")] == ["kept"]


BAD_TOPIC_SETTINGS = [
    ({"partitions": 0}, "partitions=0"),
    ({"partitions": 5000}, "partitions=5000"),
    ({"segment_bytes": 10}, "segment_bytes=10"),
    ({"compression": "lz4"}, "compression 'lz4'"),
    ({"fsync": "sometimes"}, "fsync mode 'sometimes'"),
    ({"retention_ms": 0}, "retention_ms=0"),
    ({"partitions": "2"}, "must be an int"),
    ({"colour": "red"}, "unknown topic setting colour"),
]


@pytest.mark.parametrize(
    ("settings", "message"), BAD_TOPIC_SETTINGS, ids=[next(iter(s)) + str(i) for i, (s, _) in enumerate(BAD_TOPIC_SETTINGS)]
)
async def test_create_topic_rejects_bad_settings(data_dir: Path, settings: dict, message: str) -> None:
    async with logq.open(data_dir) as log:
        with pytest.raises(logq.InvalidArgumentError, match=message):
            await log.create_topic("t", **settings)
        assert log.list_topics() == []


async def test_create_existing_topic_raises(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        with pytest.raises(logq.TopicExistsError, match="already exists"):
            await log.create_topic("t")


async def test_unknown_topic_and_group_errors(data_dir: Path) -> None:
    async with logq.open(data_dir, auto_create_topics=False) as log:
        with pytest.raises(logq.UnknownTopicError, match="logq topics create missing"):
            await log.send("missing", 1)
        with pytest.raises(logq.UnknownTopicError):
            log.consumer("missing", group="g")
        with pytest.raises(logq.UnknownTopicError):
            log.replay("missing")
        with pytest.raises(logq.UnknownGroupError, match="nobody"):
            await log.describe_group("nobody")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_messages": 0}, "max_messages"),
        ({"max_messages": "3"}, "max_messages"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
    ],
    ids=["zero-count", "str-count", "negative-timeout", "str-timeout"],
)
async def test_receive_rejects_bad_arguments(data_dir: Path, arguments: dict, message: str) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        async with log.consumer("t", group="g") as consumer:
            with pytest.raises(logq.InvalidArgumentError, match=message):
                await consumer.receive(**arguments)


async def test_consumer_rejects_bad_group_and_start(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        with pytest.raises(logq.InvalidNameError):
            log.consumer("t", group="a/b")
        with pytest.raises(logq.InvalidArgumentError, match="'earliest' or 'latest'"):
            log.consumer("t", group="g", start="middle")  # type: ignore[arg-type]


async def test_replay_rejects_bad_arguments(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        with pytest.raises(logq.InvalidArgumentError, match="not both"):
            log.replay("t", from_offset=0, from_time=0)
        with pytest.raises(logq.InvalidArgumentError, match="from_offset"):
            log.replay("t", from_offset=-1)
        with pytest.raises(logq.InvalidArgumentError, match="time zone"):
            log.replay("t", from_time=datetime(2024, 1, 1))


async def test_ack_of_foreign_message_raises(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", 1)
        async with log.consumer("t", group="a", auto_ack=False) as first, log.consumer("t", group="b") as second:
            [message] = await first.receive(1)
            await second.receive(1)
            with pytest.raises(logq.InvalidArgumentError, match="group 'b'"):
                await second.ack(message)
        replayed = [m async for m in log.replay("t")]
        with pytest.raises(logq.InvalidArgumentError, match="without a consumer"):
            await replayed[0].ack()


async def test_log_close_commits_auto_acks(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(5)))
        consumer = log.consumer("t", group="g")
        assert len(await consumer.receive(5)) == 5
    async with logq.open(data_dir) as log:
        [row] = await log.describe_group("g")
        assert row.committed_offset == 5


async def test_interrupted_create_is_cleaned(data_dir: Path) -> None:
    leftover = data_dir / "staging" / "create-t"
    leftover.mkdir(parents=True)
    (leftover / "topic.json").write_bytes(b"{}")
    async with logq.open(data_dir) as log:
        assert log.list_topics() == []
        assert not leftover.exists()
        await log.create_topic("t")
        assert log.list_topics() == ["t"]


@pytest.mark.parametrize("style", ["iterate", "receive"])
async def test_auto_ack_skips_what_failed_in_async_with(data_dir: Path, style: str) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("jobs", [b"job-0", b"job-1", b"job-2", b"job-3"])
        with pytest.raises(RuntimeError, match="job-2 failed"):
            async with log.consumer("jobs", group="g") as consumer:
                if style == "iterate":
                    async for message in consumer:
                        if message.raw_value == b"job-2":
                            raise RuntimeError("job-2 failed")
                else:
                    await consumer.receive(2)
                    await consumer.receive(2)
                    raise RuntimeError("job-2 failed")
        again = log.consumer("jobs", group="g", auto_ack=False)
        redelivered = await again.receive(10, timeout=0)
        await again.close()

    # What was handled before the failing step is acked; the failing step's messages come back.
    # When iterating, job-3 was prefetched but never returned, so its delivery is taken back.
    counts = [2, 1] if style == "iterate" else [2, 2]
    assert [(m.raw_value, m.delivery_count) for m in redelivered] == list(zip([b"job-2", b"job-3"], counts))


async def test_keyless_sends_of_short_sessions_spread(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=3)
    for _ in range(12):
        async with logq.open(data_dir) as log:
            await log.send("t", b"one per open")
    async with logq.open(data_dir) as log:
        sizes = [p.high_watermark - p.log_start_offset for p in log.describe_topic("t").partitions]

    # Each open starts the round-robin at a random partition; all 12 in one has probability 3 ** -11.
    assert sum(sizes) == 12
    assert max(sizes) < 12
