"""A work queue on the standard library's sqlite3 in WAL mode: the peer a user would write by hand.

One table contains the messages. A consumer claims the oldest unclaimed rows
with one UPDATE ... RETURNING and acks them by deleting them. Every statement
runs in an explicit transaction of at most `sqlite_transaction_rows` rows.
The priority scenario uses a second table, `priority_queue`, with a priority
column and an index in claim order, so the other scenarios run the same
schema and SQL as without it.

The calls run on the event loop's thread and block it, so this peer pays no
hop to a worker thread, where logq pays one for each file write.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.peers.base import Durability, Peer, QueueClient, Workload

# synchronous=NORMAL in WAL mode syncs the WAL only at checkpoints, so a power
# failure may lose the latest commits, like logq's fsync="interval".
# synchronous=FULL syncs the WAL at every commit, like fsync="always".
SYNCHRONOUS = {"interval": "NORMAL", "always": "FULL"}

CONSUMER_NAME = "bench-consumer"

# Bit position of the table's empty count in a message id; row ids stay far below 2**40.
ID_EPOCH_SHIFT = 40

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

PRIORITY_SCHEMA = """
CREATE TABLE priority_queue (
    id INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    claimed_by TEXT,
    claimed_at REAL
)
"""

# The unclaimed rows in claim order, so a claim reads the first entries of the
# index and sorts nothing (EXPLAIN QUERY PLAN: SCAN ... USING INDEX priority_queue_ready).
PRIORITY_INDEX = """
CREATE INDEX priority_queue_ready ON priority_queue (priority DESC, id) WHERE claimed_by IS NULL
"""

PRIORITY_CLAIM = """
UPDATE priority_queue SET claimed_by = ?, claimed_at = ?
WHERE id IN (SELECT id FROM priority_queue WHERE claimed_by IS NULL ORDER BY priority DESC, id LIMIT ?)
RETURNING id, payload, priority
"""


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Yield consecutive slices of `items` of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SqliteQueueTable:
    """The queue table in one SQLite database file, with blocking calls for one producer and one consumer.

    `SqliteQueue` calls it on the event loop's thread and `ThreadedSqliteQueue`
    through `asyncio.to_thread`, so both peers run the same SQL. With
    `priorities` the messages go to the `priority_queue` table, which
    `send_batch_priorities` needs; `send` and `send_batch` give them priority 0.
    """

    def __init__(self, path: Path, durability: Durability, transaction_rows: int,
                 check_same_thread: bool = True, priorities: bool = False) -> None:
        # isolation_level=None leaves transactions to the explicit BEGIN and COMMIT below.
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(f"PRAGMA synchronous={SYNCHRONOUS[durability]}")
        self._transaction_rows = transaction_rows
        self._priorities = priorities
        # Held for each transaction, because the latency scenario's producer and
        # consumer tasks call the threaded peer from two worker threads at once.
        self._lock = threading.Lock()
        # SQLite gives a new row max(rowid) + 1, so once every row is acked and
        # deleted, the next row gets id 1 again. `message_ids` puts the number of
        # times the table became empty above ID_EPOCH_SHIFT, which keeps ids unique
        # and increasing in send order, as bench.peers.base requires. Only this
        # object writes to the file, so its count of rows is exact.
        # NOTE: ids repeat if an ack deletes the newest row while older rows remain
        # and more rows are sent afterwards. No scenario does that: FIFO receives
        # are acked in id order, and the priority queue is filled beforehand.
        self._row_count = 0
        self._id_epoch = 0
        if priorities:
            self._connection.execute(PRIORITY_SCHEMA)
            self._connection.execute(PRIORITY_INDEX)
            self._table = "priority_queue"
            self._insert = "INSERT INTO priority_queue (payload, priority) VALUES (?, 0)"
            self._delete_one = "DELETE FROM priority_queue WHERE id = ?"
            self._claim = PRIORITY_CLAIM
        else:
            self._connection.execute(SCHEMA)
            self._table = "queue"
            self._insert = "INSERT INTO queue (payload) VALUES (?)"
            self._delete_one = "DELETE FROM queue WHERE id = ?"
            self._claim = CLAIM

    def send_batch(self, values: list[bytes]) -> None:
        for chunk in chunks(values, self._transaction_rows):
            with self._transaction():
                self._connection.executemany(self._insert, [(v,) for v in chunk])
                self._row_count += len(chunk)

    def send(self, value: bytes) -> None:
        with self._transaction():
            self._connection.execute(self._insert, (value,))
            self._row_count += 1

    def send_batch_priorities(self, values: list[bytes], priorities: list[int]) -> list[int]:
        """Insert `values[i]` with priority `priorities[i]`, in transactions of at most `transaction_rows` rows.

        Returns the row id of each value. Raises NotImplementedError unless
        the table was opened with `priorities`.
        """
        if not self._priorities:
            raise NotImplementedError("the queue table has no priority column; open it with priorities=True")
        ids: list[int] = []
        for start in range(0, len(values), self._transaction_rows):
            end = start + self._transaction_rows
            with self._transaction():
                # One INSERT per row, because executemany leaves no row id per row.
                for value, priority in zip(values[start:end], priorities[start:end]):
                    cursor = self._connection.execute(
                        "INSERT INTO priority_queue (payload, priority) VALUES (?, ?)", (value, priority))
                    ids.append(self._message_id(cursor.lastrowid))
                    self._row_count += 1
        return ids

    def receive(self, max_messages: int) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = []
        while len(rows) < max_messages:
            limit = min(self._transaction_rows, max_messages - len(rows))
            with self._transaction():
                claimed = self._connection.execute(self._claim, (CONSUMER_NAME, time.time(), limit)).fetchall()
            if self._priorities:
                # The ORDER BY orders the subquery only: SQLite 3.40.1 emitted the
                # rows of UPDATE ... RETURNING in id order when tried, so each claim
                # is sorted here into the order the consumer promises.
                claimed.sort(key=lambda row: (-row[2], row[0]))
                claimed = [(row[0], row[1]) for row in claimed]
            rows.extend(claimed)
            if len(claimed) < limit:
                break
        return rows

    def ack_batch(self, messages: Sequence[tuple[int, bytes]]) -> None:
        for chunk in chunks(messages, self._transaction_rows):
            placeholders = ",".join("?" * len(chunk))
            with self._transaction():
                cursor = self._connection.execute(f"DELETE FROM {self._table} WHERE id IN ({placeholders})",
                                                  [row[0] for row in chunk])
                self._count_deleted(cursor.rowcount)

    def ack(self, message: tuple[int, bytes]) -> None:
        with self._transaction():
            cursor = self._connection.execute(self._delete_one, (message[0],))
            self._count_deleted(cursor.rowcount)

    def message_ids(self, messages: Sequence[tuple[int, bytes]]) -> list[int]:
        """Return the message id of each claimed row: its row id plus the table's empty count above bit 40."""
        epoch = self._id_epoch << ID_EPOCH_SHIFT
        return [epoch | row[0] for row in messages]

    def _message_id(self, row_id: int) -> int:
        return (self._id_epoch << ID_EPOCH_SHIFT) | row_id

    def _count_deleted(self, deleted: int) -> None:
        self._row_count -= deleted
        if self._row_count == 0:
            self._id_epoch += 1

    def close(self) -> None:
        self._connection.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection, self._lock)


class SqliteQueue(QueueClient):
    """The queue table, called on the event loop's thread, which each call blocks."""

    def __init__(self, table: SqliteQueueTable) -> None:
        self._table = table

    async def send_batch(self, values: list[bytes]) -> None:
        self._table.send_batch(values)

    async def send(self, value: bytes) -> None:
        self._table.send(value)

    async def send_batch_priorities(self, values: list[bytes], priorities: list[int]) -> list[int]:
        return self._table.send_batch_priorities(values, priorities)

    async def receive(self, max_messages: int) -> list[tuple[int, bytes]]:
        return self._table.receive(max_messages)

    def message_ids(self, messages: Sequence[tuple[int, bytes]]) -> list[int]:
        return self._table.message_ids(messages)

    async def ack_batch(self, messages: Sequence[tuple[int, bytes]]) -> None:
        self._table.ack_batch(messages)

    async def ack(self, message: tuple[int, bytes]) -> None:
        self._table.ack(message)

    async def close(self) -> None:
        self._table.close()


class _Transaction:
    """The lock and BEGIN IMMEDIATE on entry; COMMIT on normal exit, ROLLBACK on an exception, then unlock."""

    def __init__(self, connection: sqlite3.Connection, lock: threading.Lock) -> None:
        self._connection = connection
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self._connection.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        finally:
            self._lock.release()


class SqlitePeer(Peer):
    name = "sqlite3 WAL queue"
    supports_priorities = True

    def describe(self, durability: Durability, workload: Workload) -> str:
        return (f"journal_mode=WAL, synchronous={SYNCHRONOUS[durability]}, "
                f"transactions of at most {workload.sqlite_transaction_rows} rows")

    def versions(self) -> dict[str, str]:
        return {"sqlite": sqlite3.sqlite_version}

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        return SqliteQueue(SqliteQueueTable(directory / "queue.db", durability, workload.sqlite_transaction_rows))

    async def open_priority_queue(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        table = SqliteQueueTable(directory / "queue.db", durability, workload.sqlite_transaction_rows,
                                 priorities=True)
        return SqliteQueue(table)
