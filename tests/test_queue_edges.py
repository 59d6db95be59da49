"""Edge cases of the queue semantics: deleted topics, dead-letter names, resets and bad numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import logq


async def test_recreated_topic_starts_group_fresh(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", ["old0", "old1", "old2"])
        async with log.consumer("t", group="g") as consumer:
            assert len(await consumer.receive(1)) == 1
        await log.delete_topic("t")
        await log.send("t", "new0")
        async with log.consumer("t", group="g", auto_ack=False) as consumer:
            [message] = await consumer.receive(5)
            assert message.value == "new0"
            assert await consumer.ack(message) == 1
    async with logq.open(data_dir) as log:
        [row] = await log.describe_group("g")
        assert row.committed_offset == 1


async def test_dead_letter_topic_cannot_be_source(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("loop", "m")
        async with log.consumer("loop", group="g") as consumer:
            await consumer.peek(1)
        with pytest.raises(logq.InvalidConfigError, match="reads"):
            await log.configure_group("g", dead_letter_topic="loop")


async def test_purge_refuses_foreign_dead_letters(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        for topic, group in (("a.b", "c"), ("a", "b.c")):
            await log.configure_group(group, max_deliveries=1)
            await log.send(topic, f"{topic}/{group}")
            async with log.consumer(topic, group=group, auto_ack=False) as consumer:
                [message] = await consumer.receive(1)
                await message.nack()
        with pytest.raises(logq.InvalidArgumentError, match="1 of its 2 messages"):
            await log.purge_dead_letters("a", group="b.c")
        assert len(await log.dead_letters("a.b", group="c")) == 1


async def test_long_topic_name_dead_letters(data_dir: Path) -> None:
    topic = "t" * 200
    async with logq.open(data_dir) as log:
        await log.configure_group("workers", max_deliveries=1)
        await log.send(topic, "hello")
        async with log.consumer(topic, group="workers", auto_ack=False) as consumer:
            [message] = await consumer.receive(1)
            await message.nack()
        [letter] = await log.dead_letters(topic, group="workers")
        assert letter.message.value == "hello"
        assert len(letter.dlq_topic.encode()) <= 200


async def test_redrive_skips_message_acked_after_reset(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", max_deliveries=1)
        await log.send("t", "a")
        async with log.consumer("t", group="g", auto_ack=False) as consumer:
            [message] = await consumer.receive(1)
            await message.nack()
        await log.reset_group("g", "t", to="earliest")
        async with log.consumer("t", group="g", auto_ack=False) as consumer:
            [message] = await consumer.receive(1)
            await message.ack()
        report = await log.redrive("t", group="g")
        assert report.redriven == []
        assert "not dead in the group" in report.skipped[0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"timeout": math.nan}, "timeout"), ({"timeout": math.inf}, "timeout"), ({"lease": math.nan}, "lease")],
    ids=["nan-timeout", "inf-timeout", "nan-lease"],
)
async def test_receive_rejects_non_finite(data_dir: Path, arguments: dict, message: str) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        async with log.consumer("t", group="g") as consumer:
            with pytest.raises(logq.InvalidArgumentError, match=message):
                await consumer.receive(1, **arguments)


async def test_nack_rejects_nan_delay(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", "x")
        async with log.consumer("t", group="g", auto_ack=False) as consumer:
            [message] = await consumer.receive(1)
            with pytest.raises(logq.InvalidArgumentError, match="delay"):
                await message.nack(delay=math.nan)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"key": "\udcff"}, "key"), ({"headers": {"h": "\udcff"}}, "header")],
    ids=["surrogate-key", "surrogate-header"],
)
async def test_send_rejects_lone_surrogates(data_dir: Path, arguments: dict, message: str) -> None:
    async with logq.open(data_dir) as log:
        with pytest.raises(logq.InvalidArgumentError, match=message):
            await log.send("t", b"x", **arguments)


@pytest.mark.parametrize(
    ("name", "message"),
    [("é" * 101, "202 bytes"), ("bad\udcff", "not valid UTF-8")],
    ids=["too-many-bytes", "surrogate"],
)
async def test_topic_name_byte_rules(data_dir: Path, name: str, message: str) -> None:
    async with logq.open(data_dir) as log:
        with pytest.raises(logq.InvalidNameError, match=message):
            await log.create_topic(name)


async def test_peek_unknown_group_raises(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", "x")
        with pytest.raises(logq.UnknownGroupError):
            await log.peek("t", group="nobody")
        assert log.list_groups() == []


async def test_lag_counts_redriven_messages(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", max_deliveries=1)
        await log.send_batch("t", [b"a", b"b", b"c"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        for message in await consumer.receive(3):
            await consumer.nack(message)
        [before] = await log.describe_group("g")
        await log.redrive("t", group="g")
        [after] = await log.describe_group("g")
        await consumer.close()

    assert (before.committed_offset, before.lag) == (3, 0)
    # The redriven messages are to be consumed again, so the group is behind by three.
    assert (after.committed_offset, after.lag, after.waiting) == (0, 3, 3)
