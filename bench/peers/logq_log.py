"""logq itself, driven through its public API only, so its rows compare with the peers' rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import logq
from bench.peers.base import Durability, Peer, QueueClient, Workload

TOPIC = "bench"
GROUP = "bench"


class LogqQueue(QueueClient):
    """One topic with one partition and one consumer with explicit acks (auto_ack=False)."""

    def __init__(self, log: logq.Log) -> None:
        self._log = log
        self._consumer: logq.Consumer | None = None

    async def send_batch(self, values: list[bytes]) -> None:
        await self._log.send_batch(TOPIC, values)

    async def send(self, value: bytes) -> None:
        await self._log.send(TOPIC, value)

    async def send_batch_priorities(self, values: list[bytes], priorities: list[int]) -> list[int]:
        # send_batch takes one priority per call, so each run of equal
        # priorities is one call and one record batch.
        offsets: list[int] = []
        start = 0
        while start < len(values):
            end = start + 1
            while end < len(values) and priorities[end] == priorities[start]:
                end += 1
            offsets.extend(await self._log.send_batch(TOPIC, values[start:end], priority=priorities[start]))
            start = end
        return offsets

    async def receive(self, max_messages: int) -> list[logq.Message]:
        if self._consumer is None:
            # Created by the first receive, so joining the group is timed, as the
            # first claim of the SQLite peer is.
            self._consumer = self._log.consumer(TOPIC, group=GROUP, auto_ack=False)
        return await self._consumer.receive(max_messages, timeout=0)

    async def receive_wait(self, max_messages: int, timeout: float) -> list[logq.Message]:
        if self._consumer is None:
            self._consumer = self._log.consumer(TOPIC, group=GROUP, auto_ack=False)
        return await self._consumer.receive(max_messages, timeout=timeout)

    def message_ids(self, messages: Sequence[logq.Message]) -> list[int]:
        return [message.offset for message in messages]

    async def ack_batch(self, messages: Sequence[logq.Message]) -> None:
        assert self._consumer is not None
        await self._consumer.ack_batch(messages)

    async def ack(self, message: logq.Message) -> None:
        assert self._consumer is not None
        await self._consumer.ack(message)

    async def finish_consuming(self) -> None:
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None

    async def close(self) -> None:
        await self.finish_consuming()
        await self._log.close()


class LogqPeer(Peer):
    name = "logq"
    supports_priorities = True

    def describe(self, durability: Durability, workload: Workload) -> str:
        return f"topic fsync={durability!r}, group_fsync={durability!r}, 1 partition"

    def versions(self) -> dict[str, str]:
        return {"logq": logq.__version__}

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        # group_fsync matches the topic's fsync, so that under "always" an ack is on
        # disk when it returns, as a committed DELETE is under synchronous=FULL.
        log = await logq.open(directory, group_fsync=durability)
        await log.create_topic(TOPIC, fsync=durability)
        return LogqQueue(log)
