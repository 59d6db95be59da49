"""persist-queue's SQLiteAckQueue: a put/get/ack queue on SQLite, optional (`pip install persist-queue`).

SQLiteAckQueue has no batch calls, so `send_batch` is one `put` per value, a
receive is up to `max_messages` calls of `get(block=False)`, and `ack_batch` is
one `ack` per message. Each of those calls commits its own transaction. The
calls run on the event loop's thread and block it, as the sqlite3 peer's do.

An ack only marks the row acked, and every `get` scans past the acked rows
from the start of the table, so the peer deletes them with
`clear_acked_data` once per `batch_size` acks, as a long-running user must.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.peers.base import Durability, Peer, QueueClient, Workload

try:
    import persistqueue
    from persistqueue.exceptions import Empty
except ImportError:
    persistqueue = None

# bench.compare lists the peer only when the optional package is installed.
INSTALLED = persistqueue is not None

# persist-queue 1.1.0 opens its connections with journal_mode=WAL and sets no
# synchronous pragma, so SQLite's default synchronous=FULL applies: every
# commit is synced, under both durability classes.
SYNCHRONOUS = "FULL"


class PersistQueue(QueueClient):
    """One SQLiteAckQueue in the data directory, with one producer and one consumer."""

    def __init__(self, directory: Path, clear_every: int) -> None:
        # auto_commit=False would leave puts uncommitted until task_done, but
        # SQLiteAckQueue 1.1.0 does not support it: it warns and sets True.
        # multithreading=False opens one connection, which is enough because
        # every call runs on the event loop's thread.
        self._queue = persistqueue.SQLiteAckQueue(str(directory), auto_commit=True, multithreading=False)
        self._clear_every = clear_every
        self._acks_since_clear = 0

    async def send_batch(self, values: list[bytes]) -> None:
        for value in values:
            self._queue.put(value)

    async def send(self, value: bytes) -> None:
        self._queue.put(value)

    async def receive(self, max_messages: int) -> list[dict[str, Any]]:
        messages = []
        for _ in range(max_messages):
            try:
                # raw=True returns {"pqid": ..., "data": ..., "timestamp": ...}, so the ack can name the row id.
                messages.append(self._queue.get(block=False, raw=True))
            except Empty:
                break
        return messages

    def message_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        return [message["pqid"] for message in messages]

    async def ack_batch(self, messages: Sequence[dict[str, Any]]) -> None:
        for message in messages:
            self._ack(message)

    async def ack(self, message: dict[str, Any]) -> None:
        self._ack(message)

    def _ack(self, message: dict[str, Any]) -> None:
        self._queue.ack(id=message["pqid"])
        self._acks_since_clear += 1
        if self._acks_since_clear >= self._clear_every:
            # max_delete=None and keep_latest=None delete every acked row in one transaction.
            self._queue.clear_acked_data(max_delete=None, keep_latest=None)
            self._acks_since_clear = 0

    async def close(self) -> None:
        self._queue.close()


class PersistQueuePeer(Peer):
    name = "persist-queue SQLiteAckQueue"

    def describe(self, durability: Durability, workload: Workload) -> str:
        return (f"auto_commit=True, multithreading=False, journal_mode=WAL, synchronous={SYNCHRONOUS} "
                "(the library's fixed settings, the same in both classes), one transaction per put, get and ack, "
                f"clear_acked_data every {workload.batch_size} acks")

    def versions(self) -> dict[str, str]:
        return {"persist-queue": metadata.version("persist-queue")}

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        return PersistQueue(directory, clear_every=workload.batch_size)
