"""Peers of bench.compare: logq and the systems a user would pick instead, one module each."""

from bench.peers.base import Peer
from bench.peers.logq_log import LogqPeer
from bench.peers.plain_file import PlainFilePeer
from bench.peers.sqlite_queue import SqlitePeer


def all_peers() -> list[Peer]:
    """Return every peer in report order, logq first, because each ratio divides logq's rate by a peer's."""
    return [LogqPeer(), SqlitePeer(), PlainFilePeer()]
