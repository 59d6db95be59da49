"""Tests of `logq ingest --follow` when a followed file is truncated, rewritten, rotated or replaced.

The end-to-end tests run `python -m logq ingest --follow` as a real process on
files under tmp_path, change the file while it is followed, stop the process
with SIGTERM and read the topic back with `Log.replay`. The other tests drive
`InputFile` and `Ingester` in-process to check single reads and polls.
"""

import asyncio
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import logq
from logq import cli_ingest
from logq.cli_ingest import FINGERPRINT_BYTES, Ingester, InputFile, ingest_files

LOGQ = [sys.executable, "-m", "logq"]
# Bounds every wait on the child, so a hung follower fails the test instead of hanging the run.
WAIT_SECONDS = 15
# Longer than several polls of FOLLOW_POLL_SECONDS, so the follower has looked at the file in between.
SEVERAL_POLLS_SECONDS = 0.8

OLD_LINES = [f"old line {number:02d} of the first content" for number in range(20)]
NEW_LINES = [f"new line {number:02d}, written after the change" for number in range(40)]
APPENDED_LINES = [f"appended line {number}" for number in range(5)]


def encode(lines: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


async def read_topic(data_dir: Path, topic: str) -> list[str]:
    """Return the values of `topic` in offset order, read with the Python API."""
    async with logq.open(data_dir) as log:
        return [message.raw_value.decode() async for message in log.replay(topic)]


def stored_values(data_dir: Path, topic: str) -> list[str]:
    return asyncio.run(read_topic(data_dir, topic))


class Follower:
    """A running `logq ingest FILE --follow` process whose stderr lines are collected by a thread."""

    def __init__(self, data_dir: Path, path: Path, topic: str) -> None:
        self.process = subprocess.Popen(
            [*LOGQ, "--data", str(data_dir), "ingest", str(path), "--topic", topic, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_seen: list[str] = []
        self._reader = threading.Thread(target=self._collect_stderr, daemon=True)
        self._reader.start()

    def _collect_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.put(line)
        self.stderr_lines.put(None)

    def wait_for_stderr(self, text: str) -> str:
        """Return the first new stderr line containing `text`; fail after WAIT_SECONDS or at the end of stderr."""
        deadline = time.monotonic() + WAIT_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.stderr_lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"stderr ended without a line containing {text!r}: {self.stderr_seen}")
            self.stderr_seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no stderr line contained {text!r} within {WAIT_SECONDS} s: {self.stderr_seen}")

    def stop(self) -> tuple[int, str, str]:
        """Send SIGTERM, wait for the exit and return the exit code, stdout and all of stderr."""
        self.process.send_signal(signal.SIGTERM)
        returncode = self.process.wait(timeout=WAIT_SECONDS)
        stdout = self.process.stdout.read()
        self._reader.join(timeout=WAIT_SECONDS)
        while (line := self.stderr_lines.get(timeout=WAIT_SECONDS)) is not None:
            self.stderr_seen.append(line)
        return returncode, stdout, "".join(self.stderr_seen)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def following(data_dir: Path, path: Path, topic: str) -> Iterator[Follower]:
    """Start a follower of `path` once its first pass is done, and kill it if the test leaves it running."""
    follower = Follower(data_dir, path, topic)
    try:
        follower.wait_for_stderr("following 1 file")
        yield follower
    finally:
        follower.kill()


def overwrite(path: Path, content: bytes) -> None:
    """Truncate `path` with O_TRUNC and write `content` in one write, as `echo ... > file` does."""
    with path.open("wb") as file:
        file.write(content)


def write_in_place(path: Path, content: bytes) -> None:
    """Write `content` over `path` from offset 0 in one pwrite, without truncating, so the size never drops."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, content, 0)
    finally:
        os.close(fd)


def copytruncate(path: Path, content: bytes) -> None:
    """Copy `path` aside, truncate it to 0 and append `content`, as logrotate's copytruncate and the writer do."""
    shutil.copyfile(path, path.with_name(path.name + ".1"))
    os.truncate(path, 0)
    with path.open("ab") as file:
        file.write(content)


def rename_and_create(path: Path, content: bytes) -> None:
    """Rename `path` aside and create a new file under its name."""
    path.rename(path.with_name(path.name + ".1"))
    path.write_bytes(content)


CHANGES: dict[str, tuple[Callable[[Path, bytes], None], str]] = {
    "overwrite": (overwrite, "reading it from the start"),
    "in place": (write_in_place, "file rewritten; reading it from the start"),
    "copytruncate": (copytruncate, "reading it from the start"),
    "rename": (rename_and_create, "file replaced"),
}


# -- the real follower process ----------------------------------------------------------


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_follow_change_between_polls(tmp_path: Path, data_dir: Path, change: str) -> None:
    """The file changes to longer content within one poll, and the follower is then given several polls."""
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES))
    apply_change, message = CHANGES[change]
    new_content = encode(NEW_LINES)
    assert len(new_content) > path.stat().st_size

    with following(data_dir, path, "logs") as follower:
        apply_change(path, new_content)
        notice = follower.wait_for_stderr(message)
        with path.open("ab") as file:
            file.write(encode(APPENDED_LINES))
        time.sleep(SEVERAL_POLLS_SECONDS)
        returncode, stdout, stderr = follower.stop()

    assert returncode == 0, stderr
    assert str(path) in notice
    assert stored_values(data_dir, "logs") == OLD_LINES + NEW_LINES + APPENDED_LINES
    assert f"ingested {len(OLD_LINES) + len(NEW_LINES) + len(APPENDED_LINES)} lines" in stdout


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_follow_change_right_before_stop(tmp_path: Path, data_dir: Path, change: str) -> None:
    """The stop signal follows the change at once, so the last pass at the stop has to notice it."""
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES))
    apply_change, message = CHANGES[change]

    with following(data_dir, path, "logs") as follower:
        apply_change(path, encode(NEW_LINES))
        returncode, stdout, stderr = follower.stop()

    assert returncode == 0, stderr
    assert message in stderr
    assert stored_values(data_dir, "logs") == OLD_LINES + NEW_LINES


def test_follow_truncate_to_shorter(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES))
    short_lines = NEW_LINES[:2]
    assert len(encode(short_lines)) < path.stat().st_size

    with following(data_dir, path, "logs") as follower:
        overwrite(path, encode(short_lines))
        notice = follower.wait_for_stderr("file truncated; reading it from the start")
        time.sleep(SEVERAL_POLLS_SECONDS)
        returncode, stdout, stderr = follower.stop()

    assert returncode == 0, stderr
    assert str(path) in notice
    assert stored_values(data_dir, "logs") == OLD_LINES + short_lines


def test_follow_rewrite_sends_held_partial_line(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES) + b"unterminated")

    with following(data_dir, path, "logs") as follower:
        overwrite(path, encode(NEW_LINES))
        follower.wait_for_stderr("file rewritten; reading it from the start")
        time.sleep(SEVERAL_POLLS_SECONDS)
        returncode, stdout, stderr = follower.stop()

    assert returncode == 0, stderr
    assert stored_values(data_dir, "logs") == OLD_LINES + ["unterminated"] + NEW_LINES


def test_follow_repeated_rewrites(tmp_path: Path, data_dir: Path) -> None:
    """Each rewrite is longer than the one before, so a size check alone would notice none of them.

    The pause after each notice lets the follower read the new content before
    the next rewrite replaces it, because content replaced unread is lost.
    """
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES))
    contents = [
        [f"round {round_number} line {number:02d} of the rewritten content" for number in range(30 + 10 * round_number)]
        for round_number in range(3)
    ]
    sizes = [len(encode(OLD_LINES))] + [len(encode(lines)) for lines in contents]
    assert sizes == sorted(sizes)

    with following(data_dir, path, "logs") as follower:
        for lines in contents:
            write_in_place(path, encode(lines))
            follower.wait_for_stderr("file rewritten; reading it from the start")
            time.sleep(SEVERAL_POLLS_SECONDS)
        returncode, stdout, stderr = follower.stop()

    assert returncode == 0, stderr
    assert stored_values(data_dir, "logs") == OLD_LINES + [line for lines in contents for line in lines]


# -- InputFile and Ingester in-process ----------------------------------------------------


async def read_all(source: InputFile) -> list[bytes]:
    values: list[bytes] = []
    while (chunk := await source.read_lines()) is not None:
        values.extend(chunk[0])
    return values


async def test_read_notices_rewrite_past_position(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES))
    source = InputFile(path, keep_newlines=False)
    await source.open()
    try:
        await read_all(source)
        overwrite(path, encode(NEW_LINES))

        assert await source.read_lines() is None
        assert source.change_seen == "rewritten"
        assert source.detect_change() == "rewritten"
    finally:
        await source.close()


async def test_read_notices_shorter_file(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES))
    source = InputFile(path, keep_newlines=False)
    await source.open()
    try:
        await read_all(source)
        os.truncate(path, 10)

        assert await source.read_lines() is None
        assert source.change_seen == "truncated"
        assert source.detect_change() == "truncated"
    finally:
        await source.close()


async def test_read_notices_rewrite_of_short_file(tmp_path: Path) -> None:
    """A file shorter than FINGERPRINT_BYTES is compared as a whole."""
    path = tmp_path / "app.log"
    path.write_bytes(b"a\nb\n")
    source = InputFile(path, keep_newlines=False)
    await source.open()
    try:
        assert await read_all(source) == [b"a", b"b"]
        overwrite(path, b"c\nd\ne\n")

        assert await source.read_lines() is None
        assert source.change_seen == "rewritten"
    finally:
        await source.close()


async def test_reopen_clears_change(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(encode(OLD_LINES))
    source = InputFile(path, keep_newlines=False)
    await source.open()
    try:
        await read_all(source)
        overwrite(path, encode(NEW_LINES))
        await source.read_lines()
        await source.close()
        await source.open()

        assert source.change_seen is None
        assert source.detect_change() is None
        assert await read_all(source) == [line.encode() for line in NEW_LINES]
    finally:
        await source.close()


async def test_rewrite_with_same_tail_bytes_is_missed(tmp_path: Path) -> None:
    """The known limit: a rewrite that keeps the FINGERPRINT_BYTES before the position reads on from there."""
    path = tmp_path / "app.log"
    old_content = encode(OLD_LINES)
    path.write_bytes(old_content)
    source = InputFile(path, keep_newlines=False)
    await source.open()
    try:
        await read_all(source)
        kept_tail = old_content[-FINGERPRINT_BYTES:]
        changed_head = b"x" * (len(old_content) - FINGERPRINT_BYTES)
        overwrite(path, changed_head + kept_tail + b"after the old end\n")

        assert await read_all(source) == [b"after the old end"]
        assert source.change_seen is None
    finally:
        await source.close()


async def test_idle_poll_reads_once(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll that finds no new data costs one pread of the fingerprint range."""
    path = tmp_path / "app.log"
    content = encode(OLD_LINES)
    path.write_bytes(content)
    source = InputFile(path, keep_newlines=False)
    await source.open()
    reads: list[tuple[int, int]] = []
    real_pread = os.pread

    def counting_pread(fd: int, size: int, offset: int) -> bytes:
        data = real_pread(fd, size, offset)
        reads.append((offset, len(data)))
        return data

    try:
        async with logq.open(data_dir) as log:
            ingester = Ingester(log, "logs", batch_size=100, on_read=lambda size: None)
            await ingester.read_to_end(source)
            monkeypatch.setattr(os, "pread", counting_pread)
            notices: list[str] = []
            await ingester.poll(source, notices.append)

        assert reads == [(len(content) - FINGERPRINT_BYTES, FINGERPRINT_BYTES)]
        assert notices == []
    finally:
        await source.close()


async def test_one_pass_stops_at_rewrite(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --follow, a file rewritten between two reads is sent up to the rewrite, with a warning."""
    path = tmp_path / "app.log"
    content = encode(OLD_LINES)
    path.write_bytes(content)
    chunk_bytes = 100
    monkeypatch.setattr(cli_ingest, "READ_CHUNK_BYTES", chunk_bytes)
    real_pread = os.pread
    reads = 0

    def pread_then_rewrite(fd: int, size: int, offset: int) -> bytes:
        nonlocal reads
        data = real_pread(fd, size, offset)
        reads += 1
        if reads == 1:
            overwrite(path, encode(NEW_LINES))
        return data

    monkeypatch.setattr(os, "pread", pread_then_rewrite)
    sources = await ingest_files(data_dir, [path], "logs", batch_size=100, keep_newlines=False, follow=False)

    first_chunk = content[:chunk_bytes]
    expected = [line.decode() for line in first_chunk.split(b"\n")]
    assert await read_topic(data_dir, "logs") == expected
    assert sources[0].bytes == chunk_bytes
    assert f"{path}: file rewritten while it was read" in capsys.readouterr().err

