"""Peers of bench.compare: logq and the systems a user would pick instead, one module each."""

from bench.peers import litequeue_peer, nats_jetstream, persist_queue_peer, redis_streams
from bench.peers.base import Peer
from bench.peers.logq_log import LogqPeer
from bench.peers.plain_file import PlainFilePeer
from bench.peers.sqlite_queue import SqlitePeer
from bench.peers.sqlite_queue_thread import ThreadedSqlitePeer


def all_peers() -> list[Peer]:
    """Return every peer in report order, logq first, because each ratio divides logq's rate by a peer's.

    Peers on optional packages are left out when their package is not installed.
    The Redis and NATS peers are also left out when their server binary is not on PATH.
    """
    peers: list[Peer] = [LogqPeer(), SqlitePeer(), ThreadedSqlitePeer()]
    if persist_queue_peer.INSTALLED:
        peers.append(persist_queue_peer.PersistQueuePeer())
    if litequeue_peer.INSTALLED:
        peers.append(litequeue_peer.LiteQueuePeer())
    if redis_streams.AVAILABLE:
        peers.append(redis_streams.RedisStreamsPeer())
    if nats_jetstream.AVAILABLE:
        peers.append(nats_jetstream.NatsJetStreamPeer())
    peers.append(PlainFilePeer())
    return peers
