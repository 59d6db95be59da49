"""The exception hierarchy of logq.

Every error logq raises is a `LogqError`. The branches group errors by what the
caller should do about them::

    LogqError
    ├── StorageError                 the data directory or a file in it is unusable
    │   ├── CorruptRecordError       a record batch failed its CRC or does not parse
    │   ├── CorruptIndexError        an index file is damaged (rebuilt on open)
    │   ├── CorruptJournalError      a group journal or snapshot is damaged
    │   ├── DiskFullError            a write failed with ENOSPC
    │   └── DataDirLockedError       another process owns the data directory
    ├── InvalidArgumentError         the call itself is wrong; fix the argument
    │   ├── InvalidNameError         topic or group name
    │   ├── InvalidConfigError       topic settings
    │   └── MessageTooLargeError     value above the topic's max message size
    ├── NotFoundError
    │   ├── UnknownTopicError
    │   └── UnknownGroupError
    ├── TopicExistsError             create of a topic that is already there
    ├── OffsetOutOfRangeError        read below the log start or above the log end
    ├── LeaseError                   the message is not leased to this consumer
    ├── ClosedError                  use of a closed log or consumer
    └── LogqTimeoutError             also a built-in TimeoutError

`InvalidArgumentError` also subclasses `ValueError`, and `NotFoundError` also
subclasses `LookupError`, so callers that catch the built-in types keep working.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ClosedError",
    "CorruptIndexError",
    "CorruptJournalError",
    "CorruptRecordError",
    "DataDirLockedError",
    "DiskFullError",
    "InvalidArgumentError",
    "InvalidConfigError",
    "InvalidNameError",
    "LeaseError",
    "LogqError",
    "LogqTimeoutError",
    "MessageTooLargeError",
    "NotFoundError",
    "OffsetOutOfRangeError",
    "StorageError",
    "TopicExistsError",
    "UnknownGroupError",
    "UnknownTopicError",
]


class LogqError(Exception):
    """Base class of every error raised by logq."""


class StorageError(LogqError):
    """A file or directory of the data directory cannot be used as it is."""


class CorruptRecordError(StorageError):
    """A record batch failed its CRC check or its bytes do not parse.

    `path` is the damaged segment file and `offsets` the offsets that cannot
    be read, when the reader knows them (None otherwise).
    """

    def __init__(self, message: str, *, path: Path | None = None, offsets: range | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offsets = offsets
        self.explained = False  # set when a consumer group restated it with the way past the damage


class CorruptIndexError(StorageError):
    """An offset or time index file is damaged; logq rebuilds it on open."""


class CorruptJournalError(StorageError):
    """A group journal event or snapshot cannot be decoded."""


class DiskFullError(StorageError):
    """A write failed because the file system is full (ENOSPC)."""


class DataDirLockedError(StorageError):
    """Another process holds the lock of the data directory."""


class InvalidArgumentError(LogqError, ValueError):
    """An argument has a value logq cannot accept."""


class InvalidNameError(InvalidArgumentError):
    """A topic or group name breaks the naming rules."""


class InvalidConfigError(InvalidArgumentError):
    """A topic setting is out of range or of the wrong type."""


class MessageTooLargeError(InvalidArgumentError):
    """A message is larger than the topic's max message size."""


class NotFoundError(LogqError, LookupError):
    """A named object does not exist."""


class UnknownTopicError(NotFoundError):
    """The topic does not exist in this data directory."""


class UnknownGroupError(NotFoundError):
    """The consumer group does not exist in this data directory."""


class TopicExistsError(LogqError):
    """A topic of that name already exists."""


class OffsetOutOfRangeError(LogqError):
    """An offset lies below the log start offset or above the log end offset."""


class LeaseError(LogqError):
    """A nack, extend or lease-bound call on a message whose lease this consumer no longer holds."""


class ClosedError(LogqError):
    """The log or consumer was used after it was closed."""


class LogqTimeoutError(LogqError, TimeoutError):
    """An operation did not finish within its timeout."""
