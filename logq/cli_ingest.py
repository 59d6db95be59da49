"""The command `logq ingest`: one message per line of text files, keyed by the file's name, optionally tailing them.

Each file's lines go through `Log.send_batch` with the file's base name as the
key, so all lines of a file land in one partition in file order. Files are
opened with aiofiles and read with `os.pread` in a worker thread, both off the
event loop.
"""

import asyncio
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import aiofiles
import typer

import logq
from logq import Log
from logq.cli_common import global_options, run
from logq.cli_format import counted
from logq.cli_input import StopSignal, check_distinct_names, check_minimum, split_lines

READ_CHUNK_BYTES = 1024 * 1024
# A record batch ends at this size even before --batch-size lines, so a file of
# long lines does not build batches of hundreds of MiB.
MAX_BATCH_BYTES = 1024 * 1024
FOLLOW_POLL_SECONDS = 0.2
# Each read of a regular file also fetches up to this many bytes before the read
# position and compares them with the bytes read there before. A file that was
# truncated and grew back past the read position within one poll is noticed so.
FINGERPRINT_BYTES = 64
DEFAULT_BATCH_SIZE = 1000


def ingest(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Text files to read, one message per line.")],
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic to send to, created if it does not exist.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep reading lines appended to the files, like tail -F, until Ctrl-C.")
    ] = False,
    keep_newlines: Annotated[
        bool,
        typer.Option("--keep-newlines", help="Store each line with its terminator, so a file's messages concatenate to its exact bytes."),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Lines per record batch. A batch also ends at 1 MiB.")] = DEFAULT_BATCH_SIZE,
) -> None:
    """Send each line of text files as one message, keyed by the file's name.

    A line ends at LF, and a CR before it is part of the terminator, which is
    dropped unless --keep-newlines is given. All lines of one file land in one
    partition in file order. A summary line per file follows at the end.

    \b
    Example:
        logq ingest /var/log/syslog /var/log/auth.log --topic logs --follow
    """
    check_minimum(batch_size, 1, "--batch-size")
    check_distinct_names(files)
    data = global_options(ctx).data

    async def work() -> list[InputFile]:
        return await ingest_files(data, files, topic, batch_size=batch_size, keep_newlines=keep_newlines, follow=follow)

    sources = run(work)
    typer.echo("\n".join(summary_lines(sources, topic)))


class InputFile:
    """One input file: its open handle, the unterminated line read so far and what was sent.

    `lines` counts messages sent, and `bytes` the file bytes they cover,
    line terminators included. `change_seen` is "truncated" or "rewritten"
    once a read found the file shorter than the read position or different in
    the bytes before it, and None otherwise. Reads return None from then on
    until `open` starts the file again.
    """

    def __init__(self, path: Path, *, keep_newlines: bool) -> None:
        self.path = path
        self.key = path.name
        self.keep_newlines = keep_newlines
        self.size = 0
        self.lines = 0
        self.bytes = 0
        self._handle: Any = None
        self._identity: tuple[int, int] | None = None
        self._regular = True
        self._position = 0
        self._partial = b""
        self._fingerprint = b""
        self.change_seen: str | None = None

    async def open(self) -> None:
        """Open the file from its start; raises OSError naming the file when it is missing or unreadable."""
        self._handle = await aiofiles.open(self.path, "rb")
        status = os.fstat(self._handle.fileno())
        self._identity = (status.st_dev, status.st_ino)
        # A pipe, such as the path bash gives for <(command), cannot be read
        # at an offset, so it is read in order without the fingerprint check.
        self._regular = stat.S_ISREG(status.st_mode)
        self.size = status.st_size
        self._position = 0
        self._partial = b""
        self._fingerprint = b""
        self.change_seen = None

    async def close(self) -> None:
        """Close the handle; safe to call twice."""
        if self._handle is not None:
            await self._handle.close()
            self._handle = None

    async def read_lines(self) -> tuple[list[bytes], int] | None:
        """Read the next chunk; return its complete lines and the bytes they used, or None at the end of the file.

        A regular file is read with one pread that starts up to
        FINGERPRINT_BYTES before the read position. When those bytes differ
        from the ones read there before, or the file now ends before the read
        position, this sets `change_seen` and returns None.
        """
        if self._handle is None or self.change_seen is not None:
            return None
        if not self._regular:
            data = await self._handle.read(READ_CHUNK_BYTES)
            if not data:
                return None
            self._position += len(data)
            return self._split_lines(data)

        overlap = len(self._fingerprint)
        data = await asyncio.to_thread(
            os.pread, self._handle.fileno(), overlap + READ_CHUNK_BYTES, self._position - overlap
        )
        if len(data) < overlap:
            self.change_seen = "truncated"
            return None
        # NOTE: a rewrite that puts the same bytes in this range is not
        # noticed, and reading goes on at the old position in the new content.
        if data[:overlap] != self._fingerprint:
            self.change_seen = "rewritten"
            return None
        if len(data) == overlap:
            return None
        self._position += len(data) - overlap
        self._fingerprint = data[-FINGERPRINT_BYTES:]
        return self._split_lines(memoryview(data)[overlap:])

    def _split_lines(self, data: bytes | memoryview) -> tuple[list[bytes], int]:
        buffer = self._partial + data
        values, used = split_lines(buffer, keep_newlines=self.keep_newlines)
        self._partial = buffer[used:]
        return values, used

    def take_partial(self) -> bytes:
        """Return the unterminated line read so far (possibly b"") and forget it."""
        partial, self._partial = self._partial, b""
        return partial

    def detect_change(self) -> str | None:
        """Return "replaced", "truncated" or "rewritten" when the file must be read again from its start.

        "replaced" means another file now has this path, as after log
        rotation. "truncated" and "rewritten" come from `change_seen`, or
        "truncated" from a size below the read position. A missing path
        returns None, so a rotated file that was not recreated yet is waited
        for.
        """
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        if (status.st_dev, status.st_ino) != self._identity:
            return "replaced"
        if self.change_seen is not None:
            return self.change_seen
        if self._regular and status.st_size < self._position:
            return "truncated"
        return None


class Ingester:
    """Sends the lines of input files to a topic in record batches and keeps the counts per file."""

    def __init__(self, log: Log, topic: str, *, batch_size: int, on_read: Callable[[int], None]) -> None:
        self.log = log
        self.topic = topic
        self.batch_size = batch_size
        self.on_read = on_read

    async def read_to_end(self, source: InputFile) -> None:
        """Send every complete line up to the current end of `source`."""
        while (chunk := await source.read_lines()) is not None:
            values, used = chunk
            await self.send(source, values)
            source.bytes += used
            self.on_read(used)

    async def send_partial(self, source: InputFile) -> None:
        """Send the unterminated line read so far, if any, as one message."""
        partial = source.take_partial()
        if partial:
            await self.send(source, [partial])
            source.bytes += len(partial)
            self.on_read(len(partial))

    async def send(self, source: InputFile, values: list[bytes]) -> None:
        """Send values with the file's key, in batches of at most `batch_size` lines and about 1 MiB."""
        start = 0
        while start < len(values):
            end = start + 1
            size = len(values[start])
            while end < len(values) and end - start < self.batch_size and size + len(values[end]) <= MAX_BATCH_BYTES:
                size += len(values[end])
                end += 1
            try:
                await self.log.send_batch(self.topic, values[start:end], key=source.key)
            except logq.MessageTooLargeError:
                # send_batch checks every size before it appends, so nothing of this batch is stored yet.
                await self._send_before_oversized(source, values[start:end])
                raise
            source.lines += end - start
            start = end

    async def _send_before_oversized(self, source: InputFile, values: list[bytes]) -> None:
        """Send the lines of a rejected batch that come before its first line above the max message size.

        Raises MessageTooLargeError naming the file, the line, its size and
        the fix. Returns without raising when no line is too large, and the
        caller then re-raises the original error.
        """
        limit = self.log.describe_topic(self.topic).config.max_message_bytes
        key_bytes = len(source.key.encode())
        index = next((i for i, value in enumerate(values) if len(value) + key_bytes > limit), None)
        if index is None:
            return
        if index:
            await self.log.send_batch(self.topic, values[:index], key=source.key)
            source.lines += index
        line = source.lines + 1
        raise logq.MessageTooLargeError(
            f"line {line} of {source.path} makes a message of {len(values[index]) + key_bytes} bytes with its "
            f"key (the file name), above the max message size of topic {self.topic!r} ({limit} bytes); the "
            f"lines before it were sent, it and the lines after it were not. Split or shorten the line, or "
            f"ingest into a topic created with `logq topics create NAME --max-message-bytes "
            f"{len(values[index]) + key_bytes}`"
        )

    async def follow(self, sources: list[InputFile], stop: StopSignal, notify: Callable[[str], None]) -> None:
        """Send lines as they are appended to `sources` until a stop signal, then send what remains.

        An unterminated line waits for its newline while following. It is sent
        as it is when its file is truncated, rewritten or replaced, and at the
        stop, so no byte that was read is dropped.
        """
        while not await stop.sleep(FOLLOW_POLL_SECONDS):
            for source in sources:
                await self.poll(source, notify)
        for source in sources:
            await self.poll(source, notify)
            await self.send_partial(source)

    async def poll(self, source: InputFile, notify: Callable[[str], None]) -> None:
        """Send the new lines of `source`, and read its file again from the start when it changed.

        A change is what `InputFile.detect_change` reports. The changed file
        is reopened, announced through `notify` and read to its current end.
        """
        await self.read_to_end(source)
        change = source.detect_change()
        if change is None:
            return
        await self.send_partial(source)
        await source.close()
        try:
            await source.open()
        except FileNotFoundError:
            notify(f"{source.path}: file {change} and then removed; waiting for it to reappear")
            return
        notify(f"{source.path}: file {change}; reading it from the start")
        await self.read_to_end(source)


async def ingest_files(
    data: Path, paths: list[Path], topic: str, *, batch_size: int, keep_newlines: bool, follow: bool
) -> list[InputFile]:
    """Send the lines of `paths` to `topic` in the data directory `data`; return the files with their counts.

    Every file is opened before the data directory, so a missing or
    unreadable file fails before anything is sent. A progress bar on stderr
    follows the first pass. With `follow`, the files are then tailed until
    SIGINT or SIGTERM.
    """
    sources = await open_inputs(paths, keep_newlines=keep_newlines)
    try:
        async with logq.open(data) as log:
            await _read_sources(log, sources, topic, batch_size=batch_size, follow=follow)
    finally:
        for source in sources:
            await source.close()
    return sources


async def _read_sources(log: Log, sources: list[InputFile], topic: str, *, batch_size: int, follow: bool) -> None:
    total_bytes = sum(source.size for source in sources)
    with typer.progressbar(length=total_bytes, label=f"ingesting into {topic}", file=sys.stderr) as bar:
        ingester = Ingester(log, topic, batch_size=batch_size, on_read=bar.update)
        for source in sources:
            await ingester.read_to_end(source)
            if not follow:
                await ingester.send_partial(source)
            if not follow and source.change_seen is not None:
                typer.echo(
                    f"{source.path}: file {source.change_seen} while it was read; "
                    f"sent its first {counted(source.bytes, 'byte')} and skipped the rest",
                    err=True,
                )
    if not follow:
        return
    ingester.on_read = lambda size: None
    with StopSignal() as stop:
        # Printed once the signal handlers are in place, so a caller that
        # waits for this line can stop the follower with SIGTERM right away.
        typer.echo(f"following {counted(len(sources), 'file')}; press Ctrl-C to stop", err=True)
        await ingester.follow(sources, stop, notify=lambda text: typer.echo(text, err=True))


async def open_inputs(paths: list[Path], *, keep_newlines: bool) -> list[InputFile]:
    """Open every input file, so a missing or unreadable one fails before anything is sent."""
    sources = [InputFile(path, keep_newlines=keep_newlines) for path in paths]
    try:
        for source in sources:
            await source.open()
    except BaseException:
        for source in sources:
            await source.close()
        raise
    return sources


def summary_lines(sources: list[InputFile], topic: str) -> list[str]:
    """Return one summary line per file and a total line."""
    lines = [f"{source.path}: {counted(source.lines, 'line')}, {counted(source.bytes, 'byte')}" for source in sources]
    total_lines = sum(source.lines for source in sources)
    total_bytes = sum(source.bytes for source in sources)
    lines.append(
        f"ingested {counted(total_lines, 'line')}, {counted(total_bytes, 'byte')} "
        f"from {counted(len(sources), 'file')} into topic {topic}"
    )
    return lines
