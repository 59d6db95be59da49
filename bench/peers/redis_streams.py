"""Redis Streams through redis-py's asyncio client, on a redis-server that the peer starts itself.

Each opened queue gets a fresh redis-server (bench.servers) on 127.0.0.1
with its data in the run's directory, the append-only file (AOF) on and RDB
snapshots off. The queue is one stream with one consumer group, created at
open with MKSTREAM, and one consumer in it:

- send is one XADD. send_batch is one XADD per value in one
  non-transactional pipeline, so a batch is one round trip.
- receive(n) is XREADGROUP ... COUNT n STREAMS <stream> >, without BLOCK, so
  it returns at once.
- ack is one XACK, and ack_batch is one XACK with the ids of all messages.

XACK removes an entry from the group's pending entries list but leaves it in
the stream, as a logq ack leaves the message in its log. Redis 7.0 has no
command that acks and deletes in one call, and the peer issues no XDEL or XTRIM.

Durability: appendfsync everysec ("interval") has a background thread fsync
the AOF once per second. appendfsync always ("always") fsyncs the AOF before
Redis replies to the commands that wrote it. Besides XADD and XACK, XREADGROUP
writes to the AOF too, because Redis logs each delivery to a group as an XCLAIM
so that the pending entries list survives a restart. Under "always" a receive
therefore waits for an fsync as well. AOF rewrites keep Redis's defaults (a
rewrite starts when the AOF is 100% larger than after the last rewrite and at
least 64 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import servers
from bench.peers.base import Durability, Peer, QueueClient, Workload

try:
    import redis
    import redis.asyncio
except ImportError:
    redis = None

# bench.compare lists the peer only when redis-py is installed and redis-server is on PATH.
AVAILABLE = redis is not None and servers.REDIS_SERVER is not None

APPENDFSYNC: dict[Durability, str] = {"interval": "everysec", "always": "always"}

STREAM = "bench"
GROUP = "bench"
CONSUMER = "bench-consumer"
FIELD = "payload"

# A Redis entry id is "<milliseconds>-<sequence>". The peer packs it into one
# integer as ms << 20 | sequence. Milliseconds since 1970 fit in 43 bits until
# the year 2248, so the result fits in the signed 64 bits of the delivery
# check's array. The sequence restarts at 0 in each new millisecond, so it stays
# below 2**20 unless a million entries share one millisecond, which happens
# only if the clock went back. message_ids raises then.
SEQUENCE_BITS = 20

# An entry as redis-py returns it: the id and the field-value pairs.
Entry = tuple[bytes, dict[bytes, bytes]]


def entry_id_to_int(entry_id: bytes) -> int:
    """Pack the Redis entry id b"<ms>-<seq>" into the integer ms << SEQUENCE_BITS | seq.

    Raises ValueError if the sequence part needs more than SEQUENCE_BITS bits,
    because the integer would then collide with an id of a later millisecond.
    """
    milliseconds, sequence = entry_id.split(b"-")
    sequence_number = int(sequence)
    if sequence_number >> SEQUENCE_BITS:
        raise ValueError(f"Redis entry id {entry_id!r} has a sequence above {2 ** SEQUENCE_BITS - 1}, "
                         "so it cannot be packed into an integer that is unique per message")
    return int(milliseconds) << SEQUENCE_BITS | sequence_number


def stream_entries(reply: Any) -> list[Entry]:
    """Return the entries of STREAM in an XREADGROUP reply, or [] for an empty reply.

    redis-py returns a list of [stream, entries] pairs under RESP2 and a dict
    from stream to entries under RESP3. Both forms are accepted.
    """
    if not reply:
        return []
    if isinstance(reply, dict):
        groups = list(reply.values())
    else:
        groups = [entries for _, entries in reply]
    entries: list[Entry] = []
    for group in groups:
        entries.extend(group)
    return entries


class RedisStreamsQueue(QueueClient):
    """One stream with one consumer group and one consumer, on a redis-server that `close` stops."""

    def __init__(self, server: servers.ServerProcess, client: redis.asyncio.Redis) -> None:
        self._server = server
        self._redis = client

    async def send_batch(self, values: list[bytes]) -> None:
        async with self._redis.pipeline(transaction=False) as pipeline:
            for value in values:
                pipeline.xadd(STREAM, {FIELD: value})
            await pipeline.execute()

    async def send(self, value: bytes) -> None:
        await self._redis.xadd(STREAM, {FIELD: value})

    async def receive(self, max_messages: int) -> list[Entry]:
        reply = await self._redis.xreadgroup(GROUP, CONSUMER, {STREAM: ">"}, count=max_messages)
        return stream_entries(reply)

    async def receive_wait(self, max_messages: int, timeout: float) -> list[Entry]:
        """Claim up to `max_messages` entries with XREADGROUP BLOCK, waiting up to `timeout` seconds.

        A timeout of 0 or less reads without BLOCK, because BLOCK 0 waits
        forever. A positive timeout is rounded up to whole milliseconds, at
        least 1, for the same reason.
        """
        if timeout <= 0:
            return await self.receive(max_messages)
        block_ms = max(1, int(timeout * 1000 + 0.999))
        reply = await self._redis.xreadgroup(GROUP, CONSUMER, {STREAM: ">"}, count=max_messages, block=block_ms)
        return stream_entries(reply)

    def message_ids(self, messages: Sequence[Entry]) -> list[int]:
        return [entry_id_to_int(entry_id) for entry_id, _ in messages]

    async def ack_batch(self, messages: Sequence[Entry]) -> None:
        await self._redis.xack(STREAM, GROUP, *[entry_id for entry_id, _ in messages])

    async def ack(self, message: Entry) -> None:
        await self._redis.xack(STREAM, GROUP, message[0])

    def server_cpu_seconds(self) -> float:
        """Return the CPU seconds redis-server has used so far, which time.process_time() does not count."""
        return self._server.cpu_seconds()

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        finally:
            self._server.stop()


class RedisStreamsPeer(Peer):
    name = "Redis Streams"

    def describe(self, durability: Durability, workload: Workload) -> str:
        return (f"redis-server, appendonly yes, appendfsync {APPENDFSYNC[durability]}, save \"\" (no RDB); "
                "XADD per send, XADDs in one non-transactional pipeline per send_batch, "
                "XREADGROUP COUNT n without BLOCK, XACK with all ids of a batch")

    def versions(self) -> dict[str, str]:
        assert redis is not None and servers.REDIS_SERVER is not None
        return {"redis-py": redis.__version__, "redis-server": servers.server_version(servers.REDIS_SERVER)}

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        server = await servers.start_redis(directory, APPENDFSYNC[durability])
        client = None
        try:
            client = redis.asyncio.Redis(host=servers.HOST, port=server.port)
            await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except BaseException:
            try:
                if client is not None:
                    await client.aclose()
            finally:
                server.stop()
            raise
        return RedisStreamsQueue(server, client)
