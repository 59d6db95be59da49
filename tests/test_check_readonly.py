"""Tests that `logq check` without --repair writes nothing, so it works on read-only data directories.

The check takes a shared lock on the existing `.lock` file, or no lock when
the file is missing. These tests compare every entry of a directory before
and after a check, run checks against open logs and the other way round, and
check copies on a tmpfs remounted read-only. Mounting needs root, so those
tests skip where `mount` is not permitted.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import importlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import logq
from logq.cli import ExitCode
from logq.errors import DataDirLockedError, StorageError

TOPIC = "orders"
PARTITION = Path("topics") / TOPIC / "0"
PROCESS_TIMEOUT_SECONDS = 60
# `logq.check` is the function, so the module comes from importlib.
check_module = importlib.import_module("logq.check")
# An owner line of a writer that was killed, and an mtime far in the past, so a
# check that rewrites or touches the lock file changes one of them.
STALE_OWNER = b"pid 999999 on gone-host\n"
OLD_MTIME_NS = 1_500_000_000 * 10**9


async def _build(directory: Path) -> None:
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, partitions=2, segment_bytes=4096)
        for number in range(90):
            await log.send(TOPIC, {"n": number, "pad": "r" * 48}, priority=number % 2)
        async with log.consumer(TOPIC, group="audit") as consumer:
            for message in await consumer.receive(4, timeout=1.0):
                await message.ack()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine-readonly") / "data"
    asyncio.run(_build(directory))
    return directory


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def damage(root: Path) -> None:
    """Delete an offset index and append garbage to the last segment of partition 0: two repairable findings."""
    partition = root / PARTITION
    segments = sorted(partition.glob("*.log"))
    segments[0].with_suffix(".index").unlink()
    with segments[-1].open("ab") as segment:
        segment.write(b"\x07" * 37)


def entries(root: Path) -> dict[str, tuple[int, str, int, int]]:
    """Map `root` and every path under it to (file type, SHA-256 of a file's bytes, mtime ns, ctime ns).

    Directory mtimes change when an entry is created or removed, so a
    temporary file that a check creates and deletes again shows up too.
    """
    result = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
        name = path.relative_to(root).as_posix()
        result[name] = (stat.S_IFMT(info.st_mode), digest, info.st_mtime_ns, info.st_ctime_ns)
    return result


def report_without_path(report: logq.CheckReport) -> dict[str, object]:
    summary = report.to_json()
    del summary["path"]
    return summary


async def _open_and_close(root: Path) -> None:
    async with logq.open(root):
        pass


# -- nothing changes ------------------------------------------------------------------------


@pytest.mark.parametrize("damaged", [False, True], ids=["clean", "damaged"])
def test_check_leaves_directory_identical(data: Path, damaged: bool) -> None:
    if damaged:
        damage(data)
    lock_file = data / ".lock"
    lock_file.write_bytes(STALE_OWNER)
    os.utime(lock_file, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    before = entries(data)

    report = logq.check(data)

    assert entries(data) == before
    assert lock_file.read_bytes() == STALE_OWNER
    assert lock_file.stat().st_mtime_ns == OLD_MTIME_NS
    assert report.clean is not damaged


def test_check_creates_no_lock_file(data: Path) -> None:
    (data / ".lock").unlink()
    before = entries(data)

    report = logq.check(data)

    assert not (data / ".lock").exists()
    assert entries(data) == before
    assert report.clean


def test_check_without_lock_file_logs_it(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    (data / ".lock").unlink()

    with caplog.at_level("INFO", logger="logq.segments.lock"):
        logq.check(data)

    assert any(
        "does not exist" in record.getMessage() and str(data / ".lock") in record.getMessage()
        for record in caplog.records
    ), caplog.text


def test_repair_writes_owner_line(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    real_run = check_module._Inspection.run

    def run_and_read_lock_file(self: check_module._Inspection) -> None:
        seen.append((data / ".lock").read_bytes())
        real_run(self)

    monkeypatch.setattr(check_module._Inspection, "run", run_and_read_lock_file)

    logq.check(data, repair=True)

    assert seen[0].startswith(f"pid {os.getpid()} on ".encode())


# -- checks and writers exclude each other --------------------------------------------------


async def test_check_while_log_open_raises(data: Path) -> None:
    async with logq.open(data):
        with pytest.raises(DataDirLockedError) as caught:
            logq.check(data)

    assert f"is locked by pid {os.getpid()} on " in str(caught.value)
    assert str(data) in str(caught.value)


def test_open_during_check_raises(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[DataDirLockedError] = []
    real_run = check_module._Inspection.run

    def run_while_opening(self: check_module._Inspection) -> None:
        real_run(self)
        try:
            asyncio.run(_open_and_close(data))
        except DataDirLockedError as exc:
            errors.append(exc)

    monkeypatch.setattr(check_module._Inspection, "run", run_while_opening)
    (data / ".lock").write_bytes(STALE_OWNER)

    report = logq.check(data)

    assert report.clean
    assert len(errors) == 1
    message = str(errors[0])
    assert f"data directory {data} is locked for reading by another process" in message
    assert "logq check" in message
    # The stale owner line names a process that is gone, so the message must not repeat it.
    assert "999999" not in message


def test_open_after_check_succeeds(data: Path) -> None:
    logq.check(data)

    asyncio.run(_open_and_close(data))


def test_writer_during_unlocked_check_raises(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = check_module._Inspection.run

    def run_while_a_log_opens(self: check_module._Inspection) -> None:
        asyncio.run(_open_and_close(data))
        real_run(self)

    monkeypatch.setattr(check_module._Inspection, "run", run_while_a_log_opens)
    (data / ".lock").unlink()

    with pytest.raises(DataDirLockedError, match="opened data directory .* while it was read without a lock"):
        logq.check(data)


# -- read-only file systems -----------------------------------------------------------------


@pytest.fixture
def readonly_copy(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Return a function that copies a data directory onto a tmpfs, remounts it read-only and returns the copy.

    Skips the test when `mount` cannot run or is not permitted (it needs root).
    """
    mount_point = tmp_path / "readonly"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount to make a read-only tmpfs: {exc}")
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (it needs root): {result.stderr.strip()}")

    def copy_read_only(source: Path) -> Path:
        copy = mount_point / source.name
        shutil.copytree(source, copy)
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(mount_point)], capture_output=True, text=True, timeout=10,
        )
        if remount.returncode != 0:
            pytest.skip(f"remounting the tmpfs read-only failed: {remount.stderr.strip()}")
        with pytest.raises(OSError) as caught:
            (copy / "probe").touch()
        assert caught.value.errno == errno.EROFS
        return copy

    try:
        yield copy_read_only
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=10, check=False)


@pytest.mark.parametrize("lock_file", ["present", "absent"])
def test_check_readonly_mount_matches_writable(data: Path, readonly_copy, lock_file: str) -> None:
    damage(data)
    if lock_file == "absent":
        (data / ".lock").unlink()
    copy = readonly_copy(data)

    readonly_report = logq.check(copy)
    writable_report = logq.check(data)

    assert readonly_report.findings
    assert report_without_path(readonly_report) == report_without_path(writable_report)
    assert (copy / ".lock").exists() is (lock_file == "present")


def test_repair_on_readonly_mount_raises(data: Path, readonly_copy) -> None:
    damage(data)
    copy = readonly_copy(data)

    with pytest.raises(StorageError, match="cannot create the lock file"):
        logq.check(copy, repair=True)


def run_cli(data_dir: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run `python -m logq --data DATA_DIR ARGS...` in a child process, after the `prefix` command words."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "logq", "--data", str(data_dir), *args],
        capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS,
    )


def test_cli_check_readonly_copy_exits_zero(data: Path, readonly_copy) -> None:
    copy = readonly_copy(data)

    result = run_cli(copy, "check")

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert result.stdout.endswith(": no problems found\n")
    assert result.stderr == ""


def test_cli_check_unreadable_lock_file(data: Path) -> None:
    lock_file = data / ".lock"
    lock_file.chmod(0)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # Root reads any file through CAP_DAC_OVERRIDE, so drop it (and
        # CAP_DAC_READ_SEARCH) for the child, which keeps uid 0.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and setpriv (util-linux) is missing to drop CAP_DAC_OVERRIDE")
        dropped = "-dac_override,-dac_read_search"
        prefix = (setpriv, f"--inh-caps={dropped}", f"--bounding-set={dropped}", "--")

    result = run_cli(data, "check", prefix=prefix)

    if result.returncode != ExitCode.STORAGE and "Operation not permitted" in result.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {result.stderr.strip()}")
    assert result.returncode == ExitCode.STORAGE, result.stdout + result.stderr
    assert f"cannot open the lock file {lock_file} for reading" in result.stderr
    assert f"chmod a+r {lock_file}" in result.stderr
