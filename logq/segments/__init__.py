"""Storage engine of logq: record batches, segments, indexes and partition logs.

Internal: other logq packages import from here, never from the modules inside,
and users go through the public API in `logq`.
"""

from logq.segments.batch import CODEC_NAMES, CODEC_NONE, CODEC_ZSTD, FLAG_JSON, PlainRecords, Record, RecordInput
from logq.segments.lock import DataDirLock
from logq.segments.partition_log import FsyncMode, LogConfig, PartitionLog

__all__ = [
    "CODEC_NAMES",
    "CODEC_NONE",
    "CODEC_ZSTD",
    "FLAG_JSON",
    "DataDirLock",
    "FsyncMode",
    "LogConfig",
    "PartitionLog",
    "Record",
    "PlainRecords",
    "RecordInput",
]
