"""NATS JetStream through nats-py, on a nats-server that the peer starts itself.

Each opened queue gets a fresh nats-server with JetStream (bench.servers) on
127.0.0.1, its store in the run's directory. The queue is one stream with file
storage and one durable pull consumer with explicit acks, both created at open.

The stream uses work-queue retention, which the NATS docs describe for work
queues. The server deletes a message once a consumer acks it, and it rejects
a second consumer with an overlapping filter. Limits retention with a
durable consumer would also deliver each message once, but the acked messages
would stay in the stream until a limit removed them, so the user would have to
set limits that never drop unacked work. Work-queue retention costs the server a
delete per ack, as the SQLite peer's DELETE does.

The consumer's max_ack_pending is -1 (no limit). With the default of 1,000
(nats-server 2.15.1), a fetch of 1,000 messages would return fewer while
earlier messages are still unacked.

- send is `js.publish`, which waits for the server's PubAck.
- send_batch is one `js.publish_async` per value, then waits for all PubAcks.
  `publish_async` sends without waiting, so a batch of 1,000 messages is
  written to the socket at once, as Redis's pipeline does.
- receive(n) is `fetch(n)` on the pull subscription. The fetch returns [] if
  no message arrives within RECEIVE_TIMEOUT.
- ack is `msg.ack_sync()`, a request that returns once the server has
  processed the ack, like a returned XACK or a committed DELETE. `msg.ack()`
  would only publish the ack and return before the server saw it, so a
  crash of the server could redeliver acked messages. ack_batch runs
  `ack_sync` for every message concurrently and waits for all replies.
- Message ids are stream sequences, `msg.metadata.sequence.stream`.

Durability: under "interval" the configuration sets no sync_interval, so the
server's default applies. nats-server 2.15.1 reports it as 2 minutes in its
/varz monitoring endpoint, which matches `defaultSyncInterval` in the server's
server/filestore.go and the "Syncing data to disk" section of the JetStream
concepts page on docs.nats.io. The file store then writes through the page
cache and fsyncs at most 2 minutes later. Under "always" the configuration
sets `sync_interval: always`, which makes the file store fsync every write.
Traced with strace on nats-server 2.15.1, the server fsyncs the message block
before it sends a PubAck, and fsyncs the deletion of an acked message before
it replies to `ack_sync`. The consumer's own state file is fsynced by a
background task shortly after that reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bench import servers
from bench.peers.base import Durability, Peer, QueueClient, Workload

try:
    import nats
    import nats.errors
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import api
    from nats.js.client import JetStreamContext
except ImportError:
    nats = None

# bench.compare lists the peer only when nats-py is installed and nats-server is on PATH.
AVAILABLE = nats is not None and servers.NATS_SERVER is not None

# The sync_interval setting of each class. None leaves it out of the configuration.
SYNC_INTERVAL: dict[Durability, str | None] = {"interval": None, "always": "always"}

# The server default of sync_interval, as nats-server 2.15.1 reports it in /varz.
DEFAULT_SYNC_INTERVAL = "2 min"

STREAM = "bench"
SUBJECT = "bench"
DURABLE = "bench"

# Seconds a receive waits for the first message. A fetch from a non-empty
# stream returns as soon as the messages arrive. For a batch above 1, nats-py
# 2.16 sends a pull request with no_wait, and the server replies with the
# messages it has. For a batch of 1 the server replies with the next message.
# The timeout is far above a loopback round trip, so a busy server does not
# make a receive return [] from a non-empty stream.
# NOTE: on an empty stream, receive returns [] only after this timeout, where the
# other peers return at once.
RECEIVE_TIMEOUT = 0.1

# fetch rejects a timeout of 0, so receive_wait waits at least this many seconds.
MIN_FETCH_TIMEOUT = 0.001

# Seconds to wait for the PubAcks of a batch and for the reply to each ack.
# The futures of publish_async have no timeout of their own, and the default of
# ack_sync, 1 s, would expire under "always" when 1,000 concurrent acks each wait
# for an fsync of 1 ms or more.
REQUEST_TIMEOUT = 60.0


class NatsJetStreamQueue(QueueClient):
    """One stream and one durable pull consumer, on a nats-server that `close` stops."""

    def __init__(self, server: servers.ServerProcess, connection: NatsClient, jetstream: JetStreamContext,
                 subscription: JetStreamContext.PullSubscription) -> None:
        self._server = server
        self._connection = connection
        self._jetstream = jetstream
        self._subscription = subscription

    async def send_batch(self, values: list[bytes]) -> None:
        futures = [await self._jetstream.publish_async(SUBJECT, value) for value in values]
        await asyncio.wait_for(asyncio.gather(*futures), REQUEST_TIMEOUT)

    async def send(self, value: bytes) -> None:
        await self._jetstream.publish(SUBJECT, value, timeout=REQUEST_TIMEOUT)

    async def receive(self, max_messages: int) -> list[Msg]:
        return await self._fetch(max_messages, RECEIVE_TIMEOUT)

    async def receive_wait(self, max_messages: int, timeout: float) -> list[Msg]:
        """Fetch up to `max_messages` messages, waiting up to `timeout` seconds (at least MIN_FETCH_TIMEOUT)."""
        return await self._fetch(max_messages, max(timeout, MIN_FETCH_TIMEOUT))

    async def _fetch(self, max_messages: int, timeout: float) -> list[Msg]:
        try:
            return await self._subscription.fetch(max_messages, timeout=timeout)
        except nats.errors.TimeoutError:
            return []

    def message_ids(self, messages: Sequence[Msg]) -> list[int]:
        return [message.metadata.sequence.stream for message in messages]

    async def ack_batch(self, messages: Sequence[Msg]) -> None:
        await asyncio.gather(*(message.ack_sync(timeout=REQUEST_TIMEOUT) for message in messages))

    async def ack(self, message: Msg) -> None:
        await message.ack_sync(timeout=REQUEST_TIMEOUT)

    def server_cpu_seconds(self) -> float:
        """Return the CPU seconds nats-server has used so far, which time.process_time() does not count."""
        return self._server.cpu_seconds()

    async def close(self) -> None:
        try:
            await self._connection.close()
        finally:
            self._server.stop()


class NatsJetStreamPeer(Peer):
    name = "NATS JetStream"

    def describe(self, durability: Durability, workload: Workload) -> str:
        sync_interval = SYNC_INTERVAL[durability]
        if sync_interval is None:
            sync = f"sync_interval not set (nats-server 2.15.1 default: {DEFAULT_SYNC_INTERVAL})"
        else:
            sync = f"sync_interval: {sync_interval}"
        return (f"nats-server -js, {sync}; file storage, work-queue retention, durable pull consumer, "
                "explicit acks, max_ack_pending -1; publish per send, publish_async per send_batch, "
                "fetch(n), ack_sync per message")

    def versions(self) -> dict[str, str]:
        assert servers.NATS_SERVER is not None
        return {"nats-py": metadata.version("nats-py"), "nats-server": servers.server_version(servers.NATS_SERVER)}

    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        server = await servers.start_nats(directory, SYNC_INTERVAL[durability])
        connection = None
        try:
            # The client does not reconnect, so a server that went away fails the run instead of stalling it.
            connection = await nats.connect(f"nats://{servers.HOST}:{server.port}", allow_reconnect=False)
            jetstream = connection.jetstream()
            await jetstream.add_stream(api.StreamConfig(
                name=STREAM,
                subjects=[SUBJECT],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.WORK_QUEUE,
                num_replicas=1,
            ))
            subscription = await jetstream.pull_subscribe(
                SUBJECT,
                durable=DURABLE,
                stream=STREAM,
                config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=-1),
            )
        except BaseException:
            try:
                if connection is not None:
                    await connection.close()
            finally:
                server.stop()
            raise
        return NatsJetStreamQueue(server, connection, jetstream, subscription)
