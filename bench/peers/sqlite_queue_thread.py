"""The sqlite3 WAL queue with every call moved off the event loop by `asyncio.to_thread`.

An asyncio program that must not block its loop on SQLite pays this cost.
The peer runs the SQL and transactions of bench.peers.sqlite_queue, plus one
hop to the default executor's worker threads per queue call. A `send_batch` or
`receive` of several transactions is one hop, not one per transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from bench.peers.base import Durability, Peer, QueueClient, Workload
from bench.peers.sqlite_queue import SqlitePeer, SqliteQueueTable


class ThreadedSqliteQueue(QueueClient):
    """The queue table, with each call run in a worker thread by `asyncio.to_thread`."""

    def __init__(self, table: SqliteQueueTable) -> None:
        self._table = table

    async def send_batch(self, values: list[bytes]) -> None:
        await asyncio.to_thread(self._table.send_batch, values)

    async def send(self, value: bytes) -> None:
        await asyncio.to_thread(self._table.send, value)

    async def send_batch_priorities(self, values: list[bytes], priorities: list[int]) -> list[int]:
        return await asyncio.to_thread(self._table.send_batch_priorities, values, priorities)

    async def receive(self, max_messages: int) -> list[tuple[int, bytes]]:
        return await asyncio.to_thread(self._table.receive, max_messages)

    def message_ids(self, messages: Sequence[tuple[int, bytes]]) -> list[int]:
        return self._table.message_ids(messages)

    async def ack_batch(self, messages: Sequence[tuple[int, bytes]]) -> None:
        await asyncio.to_thread(self._table.ack_batch, messages)

    async def ack(self, message: tuple[int, bytes]) -> None:
        await asyncio.to_thread(self._table.ack, message)

    async def close(self) -> None:
        await asyncio.to_thread(self._table.close)


class ThreadedSqlitePeer(SqlitePeer):
    name = "sqlite3 WAL queue (thread)"

    def describe(self, durability: Durability, workload: Workload) -> str:
        return super().describe(durability, workload) + ", each call in asyncio.to_thread"

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        # The default executor may run consecutive calls on different worker
        # threads. In the latency scenario a producer and a consumer task call at
        # the same time, so the table holds a lock for each transaction.
        table = SqliteQueueTable(directory / "queue.db", durability, workload.sqlite_transaction_rows,
                                 check_same_thread=False)
        return ThreadedSqliteQueue(table)

    async def open_priority_queue(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        table = SqliteQueueTable(directory / "queue.db", durability, workload.sqlite_transaction_rows,
                                 check_same_thread=False, priorities=True)
        return ThreadedSqliteQueue(table)
