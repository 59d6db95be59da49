"""A work queue on the standard library's sqlite3 in WAL mode: the peer a user would write by hand.

One table contains the messages. A consumer claims the oldest unclaimed rows
with one UPDATE ... RETURNING and acks them by deleting them. Every statement
runs in an explicit transaction of at most `sqlite_transaction_rows` rows.

The calls run on the event loop's thread and block it, so this peer pays no
hop to a worker thread, where logq pays one for each file write.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.peers.base import Durability, Peer, QueueClient, Workload

# synchronous=NORMAL in WAL mode syncs the WAL only at checkpoints, so a power
# failure may lose the latest commits, like logq's fsync="interval".
# synchronous=FULL syncs the WAL at every commit, like fsync="always".
SYNCHRONOUS = {"interval": "NORMAL", "always": "FULL"}

CONSUMER_NAME = "bench-consumer"

SCHEMA = """
CREATE TABLE queue (
    id INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    claimed_by TEXT,
    claimed_at REAL
)
"""

CLAIM = """
UPDATE queue SET claimed_by = ?, claimed_at = ?
WHERE id IN (SELECT id FROM queue WHERE claimed_by IS NULL ORDER BY id LIMIT ?)
RETURNING id, payload
"""


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Yield consecutive slices of `items` of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SqliteQueueTable:
    """The queue table in one SQLite database file, with blocking calls for one producer and one consumer.

    `SqliteQueue` calls it on the event loop's thread and `ThreadedSqliteQueue`
    through `asyncio.to_thread`, so both peers run the same SQL.
    """

    def __init__(self, path: Path, durability: Durability, transaction_rows: int,
                 check_same_thread: bool = True) -> None:
        # isolation_level=None leaves transactions to the explicit BEGIN and COMMIT below.
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(f"PRAGMA synchronous={SYNCHRONOUS[durability]}")
        self._connection.execute(SCHEMA)
        self._transaction_rows = transaction_rows

    def send_batch(self, values: list[bytes]) -> None:
        for chunk in chunks(values, self._transaction_rows):
            with self._transaction():
                self._connection.executemany("INSERT INTO queue (payload) VALUES (?)", [(v,) for v in chunk])

    def send(self, value: bytes) -> None:
        with self._transaction():
            self._connection.execute("INSERT INTO queue (payload) VALUES (?)", (value,))

    def receive(self, max_messages: int) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = []
        while len(rows) < max_messages:
            limit = min(self._transaction_rows, max_messages - len(rows))
            with self._transaction():
                claimed = self._connection.execute(CLAIM, (CONSUMER_NAME, time.time(), limit)).fetchall()
            rows.extend(claimed)
            if len(claimed) < limit:
                break
        return rows

    def ack_batch(self, messages: Sequence[tuple[int, bytes]]) -> None:
        for chunk in chunks(messages, self._transaction_rows):
            placeholders = ",".join("?" * len(chunk))
            with self._transaction():
                self._connection.execute(f"DELETE FROM queue WHERE id IN ({placeholders})", [row[0] for row in chunk])

    def ack(self, message: tuple[int, bytes]) -> None:
        with self._transaction():
            self._connection.execute("DELETE FROM queue WHERE id = ?", (message[0],))

    def close(self) -> None:
        self._connection.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection)


class SqliteQueue(QueueClient):
    """The queue table, called on the event loop's thread, which each call blocks."""

    def __init__(self, table: SqliteQueueTable) -> None:
        self._table = table

    async def send_batch(self, values: list[bytes]) -> None:
        self._table.send_batch(values)

    async def send(self, value: bytes) -> None:
        self._table.send(value)

    async def receive(self, max_messages: int) -> list[tuple[int, bytes]]:
        return self._table.receive(max_messages)

    def message_ids(self, messages: Sequence[tuple[int, bytes]]) -> list[int]:
        return [row[0] for row in messages]

    async def ack_batch(self, messages: Sequence[tuple[int, bytes]]) -> None:
        self._table.ack_batch(messages)

    async def ack(self, message: tuple[int, bytes]) -> None:
        self._table.ack(message)

    async def close(self) -> None:
        self._table.close()


class _Transaction:
    """BEGIN IMMEDIATE on entry; COMMIT on normal exit, ROLLBACK on an exception."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._connection.execute("ROLLBACK" if exc_type is not None else "COMMIT")


class SqlitePeer(Peer):
    name = "sqlite3 WAL queue"

    def describe(self, durability: Durability, workload: Workload) -> str:
        return (f"journal_mode=WAL, synchronous={SYNCHRONOUS[durability]}, "
                f"transactions of at most {workload.sqlite_transaction_rows} rows")

    def versions(self) -> dict[str, str]:
        return {"sqlite": sqlite3.sqlite_version}

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        return SqliteQueue(SqliteQueueTable(directory / "queue.db", durability, workload.sqlite_transaction_rows))
