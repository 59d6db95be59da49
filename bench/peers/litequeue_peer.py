"""litequeue's LiteQueue: a put/pop/done queue on SQLite, optional (`pip install litequeue`).

LiteQueue has no batch calls, so `send_batch` is one `put` per value, a
receive is up to `max_messages` calls of `pop`, and `ack_batch` is one `done`
per message. Each call commits its own transaction, and the calls run on the
event loop's thread and block it, as the sqlite3 peer's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bench.peers.base import Durability, Peer, QueueClient, Workload

try:
    import litequeue
except ImportError:
    litequeue = None

# bench.compare lists the peer only when the optional package is installed.
INSTALLED = litequeue is not None

# litequeue 0.9 sets synchronous=NORMAL on its connection, which matches
# "interval". For "always" the peer sets FULL on `LiteQueue.conn` afterwards.
SYNCHRONOUS = {"interval": "NORMAL", "always": "FULL"}


class LiteQueueClient(QueueClient):
    """One LiteQueue in a database file, with one producer and one consumer."""

    def __init__(self, path: Path, durability: Durability) -> None:
        self._queue = litequeue.LiteQueue(path)
        self._queue.conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[durability]}")
        # Message ids are UUID strings, and the delivery check needs integers,
        # so each put records its message's position in the order of sends.
        self._positions: dict[str, int] = {}

    async def send_batch(self, values: list[bytes]) -> None:
        for value in values:
            self._put(value)

    async def send(self, value: bytes) -> None:
        self._put(value)

    def _put(self, value: bytes) -> None:
        # NOTE: `put` is typed for str. SQLite stores the bytes value as a BLOB in
        # the TEXT column, and `pop` returns it as bytes.
        message = self._queue.put(value)
        self._positions[message.message_id] = len(self._positions)

    async def receive(self, max_messages: int) -> list[litequeue.Message]:
        messages = []
        for _ in range(max_messages):
            message = self._queue.pop()
            if message is None:
                break
            messages.append(message)
        return messages

    def message_ids(self, messages: Sequence[litequeue.Message]) -> list[int]:
        return [self._positions[message.message_id] for message in messages]

    async def ack_batch(self, messages: Sequence[litequeue.Message]) -> None:
        for message in messages:
            self._queue.done(message.message_id)

    async def ack(self, message: litequeue.Message) -> None:
        self._queue.done(message.message_id)

    async def close(self) -> None:
        self._queue.close()


class LiteQueuePeer(Peer):
    name = "litequeue"

    # Each pop sorts every ready row by message id (litequeue 0.9 uses the status
    # index and a temporary B-tree for ORDER BY), so a pop costs time in proportion
    # to the queue's length. Consuming the default 100,000 messages takes many
    # minutes, so the peer runs only when named with --peer.
    in_default_run = False

    def describe(self, durability: Durability, workload: Workload) -> str:
        return (f"journal_mode=WAL, synchronous={SYNCHRONOUS[durability]}, "
                "one transaction per put, pop and done")

    def versions(self) -> dict[str, str]:
        return {"litequeue": metadata.version("litequeue")}

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        return LiteQueueClient(directory / "queue.db", durability)
