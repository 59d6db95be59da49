"""Input of the `logq` command line: option values, lines of files and standard input, and stop signals.

The option parsers raise `typer.BadParameter`, which Typer prints as a usage
error (exit code 2) that names the option, the value and the accepted forms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import orjson
import typer

from logq import InvalidArgumentError

T = TypeVar("T")

TIME_EXAMPLE = "2024-05-01T12:00:00Z"


def split_lines(data: bytes, *, keep_newlines: bool) -> tuple[list[bytes], int]:
    """Split the complete lines off the front of `data`; return their values and the bytes they used.

    A line ends at b"\\n", and a b"\\r" right before it belongs to the line
    terminator. The values keep the terminator with `keep_newlines`, else they
    drop it. Bytes after the last b"\\n" form an unterminated line, which the
    caller keeps until more data or the end of the input arrives.
    """
    used = data.rfind(b"\n") + 1
    if used == 0:
        return [], 0
    lines = data[:used].split(b"\n")[:-1]
    if keep_newlines:
        return [line + b"\n" for line in lines], used
    return [line[:-1] if line.endswith(b"\r") else line for line in lines], used


async def read_stdin_lines(stream: BinaryIO, chunk_bytes: int = 64 * 1024) -> AsyncIterator[list[bytes]]:
    """Yield lists of lines (terminators dropped) from a binary stream as the data arrives.

    A daemon thread reads whatever is available, so a slow writer such as
    `tail -f` is forwarded line by line. The thread is not in the event loop's
    executor, because `asyncio.run` waits for those threads when it ends, and
    a read blocked on a terminal would then keep Ctrl-C from exiting. An
    unterminated last line is yielded at the end of the stream.

    Each list contains the lines that one read completed, so a line longer than
    `chunk_bytes` arrives whole, in the list of the read that found its end.
    """
    chunks: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=4)
    reader = threading.Thread(
        target=_pump_chunks,
        args=(_chunk_reader(stream, chunk_bytes), asyncio.get_running_loop(), chunks),
        name="logq-stdin-reader",
        daemon=True,
    )
    reader.start()
    # The chunks of the unterminated line so far. They are joined once, when its
    # end arrives, so a line of many chunks costs time linear in its length.
    # NOTE: the whole line is held in memory, whatever the topic's max message size.
    pending: list[bytes] = []
    while True:
        data = await chunks.get()
        if isinstance(data, Exception):
            raise data
        if not data:
            break
        if b"\n" not in data:
            pending.append(data)
            continue
        buffer = b"".join([*pending, data]) if pending else data
        values, used = split_lines(buffer, keep_newlines=False)
        pending = [buffer[used:]] if used < len(buffer) else []
        yield values
    if pending:
        yield [b"".join(pending)]


def _chunk_reader(stream: BinaryIO, chunk_bytes: int) -> Callable[[], bytes]:
    """Return a function that reads the next available bytes of `stream`, b"" at its end."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):
        # An in-memory stream, as in tests, has no file descriptor.
        return lambda: stream.read1(chunk_bytes)  # type: ignore[attr-defined]
    # os.read takes no lock of the io module, so the interpreter can exit while it blocks.
    return lambda: os.read(descriptor, chunk_bytes)


def _pump_chunks(
    read: Callable[[], bytes], loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[bytes | Exception]
) -> None:
    """Put each chunk, the final b"" or the read error on `chunks`, waiting while the queue is full."""
    while True:
        data: bytes | Exception
        try:
            data = read()
        except (OSError, ValueError) as error:
            # ValueError: the stream was closed under the reader, as CliRunner does after a test.
            data = error
        put = chunks.put(data)
        try:
            asyncio.run_coroutine_threadsafe(put, loop).result()
        except RuntimeError:
            put.close()  # the event loop is closed, so the chunk has no reader
            return
        except concurrent.futures.CancelledError:
            return  # the event loop cancelled the put when it stopped
        if not isinstance(data, bytes) or not data:
            return


def parse_value(value: str | bytes, where: str, *, json_values: bool) -> Any:
    """Return the payload to send for one value: the decoded JSON with `json_values`, else its bytes.

    A str argument is turned back into the bytes the OS passed. Invalid JSON
    in an argument is a usage error, and in a line of standard input an
    InvalidArgumentError; `where` names the value in the message.
    """
    if not json_values:
        return os.fsencode(value) if isinstance(value, str) else value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as error:
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        message = f"{where} {text[:80]!r} is not valid JSON ({error}); quote text as a JSON string or drop --json-values"
        if isinstance(value, str):
            raise typer.BadParameter(message, param_hint="VALUES") from None
        raise InvalidArgumentError(message) from None


def check_distinct_names(files: list[Path]) -> None:
    """Raise a usage error when two input files share a base name, which is their message key."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.name in seen:
            raise typer.BadParameter(
                f"{seen[path.name]} and {path} have the same name {path.name!r}, which is the message key; "
                "rename one or ingest them into separate topics",
                param_hint="FILE",
            )
        seen[path.name] = path


def parse_headers(items: list[str] | None) -> dict[str, str]:
    """Parse repeated `--header NAME=VALUE` options into a dict."""
    headers: dict[str, str] = {}
    for item in items or []:
        name, separator, value = item.partition("=")
        if not separator:
            raise typer.BadParameter(
                f"header {item!r} has no '='; write it as NAME=VALUE, for example --header source=web",
                param_hint="'--header'",
            )
        if not name:
            raise typer.BadParameter(f"header {item!r} has an empty name; write it as NAME=VALUE", param_hint="'--header'")
        if not _is_utf8(item):
            raise typer.BadParameter(f"header {item!r} is not valid UTF-8; headers are text", param_hint="'--header'")
        if name in headers:
            raise typer.BadParameter(f"header {name!r} is given twice; give each header once", param_hint="'--header'")
        headers[name] = value
    return headers


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_time(text: str, option: str) -> datetime:
    """Parse an ISO 8601 time; a time without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time; write it like {TIME_EXAMPLE} (UTC when no zone is given)",
            param_hint=f"'{option}'",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def parse_reset_target(text: str) -> str | int | datetime:
    """Parse the `--to` value of `groups reset`: earliest, latest, an offset or an ISO 8601 time."""
    if text in ("earliest", "latest"):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return parse_time(text, "--to")
    except typer.BadParameter:
        raise typer.BadParameter(
            f"{text!r} is not a valid reset target; use earliest, latest, an offset >= 0 "
            f"or an ISO 8601 time such as {TIME_EXAMPLE}",
            param_hint="'--to'",
        ) from None


def check_minimum(value: float | None, minimum: float, option: str) -> None:
    """Raise a usage error naming `option` when `value` is below `minimum`, or is NaN or infinite."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number; pass {option} {minimum} or more", param_hint=f"'{option}'")
    if value is not None and value < minimum:
        raise typer.BadParameter(f"{value} is below the minimum {minimum}; pass {option} {minimum} or more", param_hint=f"'{option}'")


class StopSignal:
    """Turns SIGINT (Ctrl-C) and SIGTERM into an event, so long-running commands finish their work and exit 0.

    Use it with `with` inside the running event loop. A signal that the parent
    process set to be ignored stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._installed: list[signal.Signals] = []

    def __enter__(self) -> StopSignal:
        loop = asyncio.get_running_loop()
        for number in self.SIGNALS:
            if signal.getsignal(number) is not signal.SIG_IGN:
                loop.add_signal_handler(number, self.event.set)
                self._installed.append(number)
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop = asyncio.get_running_loop()
        for number in self._installed:
            loop.remove_signal_handler(number)
        self._installed.clear()

    @property
    def stopped(self) -> bool:
        """Whether a stop signal arrived."""
        return self.event.is_set()

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds` or until a stop signal; return whether one arrived."""
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except TimeoutError:
            pass
        return self.event.is_set()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T | None:
        """Run `coroutine` until it returns or a stop signal arrives; return None if it was stopped.

        A stopped coroutine is cancelled and awaited, so its cleanup runs first.
        """
        if self.event.is_set():
            coroutine.close()
            return None
        task = asyncio.ensure_future(coroutine)
        waiter = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return None
