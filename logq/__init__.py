"""logq: an embedded streaming log with consumer groups, for asyncio.

Usage::

    import logq

    async with logq.open("./data") as log:
        offset = await log.send("orders", {"id": 1}, key="customer-7")
        async with log.consumer("orders", group="billing") as consumer:
            for message in await consumer.receive(10, timeout=1.0):
                print(message.offset, message.value)

This module is the whole public API; `logq.segments` and `logq.consumers` are
internal.
"""

from logq.check import CheckReport, Finding, check
from logq.consumer import Consumer
from logq.errors import (
    ClosedError,
    CorruptIndexError,
    CorruptJournalError,
    CorruptRecordError,
    DataDirLockedError,
    DiskFullError,
    InvalidArgumentError,
    InvalidConfigError,
    InvalidNameError,
    LeaseError,
    LogqError,
    LogqTimeoutError,
    MessageTooLargeError,
    NotFoundError,
    OffsetOutOfRangeError,
    StorageError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicError,
)
from logq.log import GroupPartitionInfo, Log, PartitionInfo, TopicInfo, open
from logq.message import Message
from logq.topics import TopicConfig

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "ClosedError",
    "Consumer",
    "CorruptIndexError",
    "CorruptJournalError",
    "CorruptRecordError",
    "DataDirLockedError",
    "DiskFullError",
    "Finding",
    "GroupPartitionInfo",
    "InvalidArgumentError",
    "InvalidConfigError",
    "InvalidNameError",
    "LeaseError",
    "Log",
    "LogqError",
    "LogqTimeoutError",
    "Message",
    "MessageTooLargeError",
    "NotFoundError",
    "OffsetOutOfRangeError",
    "PartitionInfo",
    "StorageError",
    "TopicConfig",
    "TopicExistsError",
    "TopicInfo",
    "UnknownGroupError",
    "UnknownTopicError",
    "check",
    "open",
]
