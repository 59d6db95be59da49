"""Tests of `logq check`: output lines, the summary, --json, --repair and exit codes, on real damaged data directories."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import logq
from logq.cli import ExitCode, app

PARTITION = Path("topics") / "orders" / "0"
PROCESS_TIMEOUT_SECONDS = 30

runner = CliRunner()
# The journal's batch count depends on how the consumer's acks were batched.
SCOPE = r"checked 2 partitions, 4 segments, \d+ batches, 1 group: "


def invoke(data_dir: Path, *args: str):
    """Run `logq --data DATA_DIR ARGS...` in-process and return the CliRunner result."""
    return runner.invoke(app, ["--data", str(data_dir), *args])


async def _build(directory: Path) -> None:
    async with logq.open(directory) as log:
        await log.create_topic("orders", partitions=1, segment_bytes=4096)
        for number in range(80):
            await log.send("orders", {"n": number, "pad": "y" * 40}, priority=number % 2)
        async with log.consumer("orders", group="billing") as consumer:
            for message in await consumer.receive(3, timeout=1.0):
                await message.ack()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine-cli") / "data"
    asyncio.run(_build(directory))
    return directory


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def test_check_clean_exit_zero(data: Path) -> None:
    result = invoke(data, "check")

    assert result.exit_code == ExitCode.OK, result.output
    [summary] = result.stdout.splitlines()
    assert re.fullmatch(SCOPE + "no problems found", summary)


def test_check_reports_and_repairs_index(data: Path) -> None:
    index = sorted((data / PARTITION).glob("*.index"))[0]
    index.unlink()

    result = invoke(data, "check")

    assert result.exit_code == ExitCode.FINDINGS, result.output
    finding, summary = result.stdout.splitlines()
    assert finding == f"{PARTITION.as_posix()}/{index.name}: missing [repairable with --repair]"
    assert re.fullmatch(SCOPE + "1 problem found, 1 repairable with --repair", summary)
    assert not index.exists()

    repaired = invoke(data, "check", "--repair")

    assert repaired.exit_code == ExitCode.OK, repaired.output
    finding, summary = repaired.stdout.splitlines()
    assert finding == f"{PARTITION.as_posix()}/{index.name}: missing [repaired]"
    assert re.fullmatch(SCOPE + "1 problem found, 1 repaired, 0 remain", summary)
    assert index.exists()
    assert invoke(data, "check").exit_code == ExitCode.OK


def test_check_unrepairable_keeps_exit_code(data: Path) -> None:
    first = sorted((data / PARTITION).glob("*.log"))[0]
    content = bytearray(first.read_bytes())
    content[200] ^= 0x04
    first.write_bytes(bytes(content))

    result = invoke(data, "check", "--repair")

    assert result.exit_code == ExitCode.FINDINGS, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{PARTITION.as_posix()}/{first.name}, position ")
    assert lines[0].endswith("[not repairable]")
    assert "with valid batches after it" in lines[0]
    assert lines[1] == "still: " + lines[0]
    assert re.fullmatch(SCOPE + "1 problem found, 0 repaired, 1 remain", lines[2])
    assert first.read_bytes() == bytes(content)


def test_check_json_report(data: Path) -> None:
    temp = data / PARTITION / "priority.index.tmp"
    temp.write_bytes(b"half")

    result = invoke(data, "check", "--json")

    assert result.exit_code == ExitCode.FINDINGS, result.output
    report = json.loads(result.stdout)
    assert report["clean"] is False
    assert report["repair"] is False
    assert report["findings"] == [
        {
            "path": f"{PARTITION.as_posix()}/priority.index.tmp",
            "kind": "temp-file",
            "problem": "leftover temporary file of an interrupted rewrite",
            "repairable": True,
            "position": None,
            "offset": None,
            "repaired": False,
        }
    ]
    assert report["remaining"] == report["findings"]
    assert temp.exists()


def test_check_missing_directory_not_found(tmp_path: Path) -> None:
    result = invoke(tmp_path / "absent", "check")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert result.stderr.startswith(f"error: data directory {tmp_path / 'absent'} does not exist")


HOLD_LOCK = textwrap.dedent(
    """
    import asyncio, sys
    import logq

    async def main():
        async with logq.open(sys.argv[1]):
            print("locked", flush=True)
            await asyncio.to_thread(sys.stdin.read)

    asyncio.run(main())
    """
)


def test_check_locked_directory(data: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "locked\n"
        result = invoke(data, "check")
        holder.stdin.close()
        holder.wait(timeout=PROCESS_TIMEOUT_SECONDS)
    finally:
        if holder.poll() is None:
            holder.kill()

    assert result.exit_code == ExitCode.LOCKED, result.output
    assert result.stderr.startswith(f"error: data directory {data} is locked by pid {holder.pid} on ")
    assert result.stdout == ""


def test_check_without_lock_file_creates_none(data: Path) -> None:
    (data / ".lock").unlink()

    result = invoke(data, "check")

    assert result.exit_code == ExitCode.OK, result.output
    assert not (data / ".lock").exists()
