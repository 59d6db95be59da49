"""Crash tests of consumer groups: workers in real child processes die by SIGKILL.

The child script, tests/queue_child.py, runs a worker of group "workers" on
topic "jobs" and prints the messages it acked and those it still leases.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

import logq

CHILD_SCRIPT = Path(__file__).with_name("queue_child.py")
CHILD_TIMEOUT_SECONDS = 60
MAX_DELIVERIES = 3  # the setting queue_child.py gives the group
JOBS = [f"job-{number}" for number in range(8)]


def parse_lines(output: bytes) -> list[tuple[str, str, int]]:
    """Return (status, value, delivery count) for each line the child printed."""
    lines = []
    for line in output.decode().splitlines():
        status, value, count = line.split()
        lines.append((status, value, int(count)))
    return lines


async def run_worker(data_dir: Path) -> tuple[int, list[tuple[str, str, int]]]:
    """Run one child in "work" mode until it exits, and return its exit code and printed lines."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD_SCRIPT), "work", str(data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), CHILD_TIMEOUT_SECONDS)
    assert child.returncode in (0, -signal.SIGKILL), stderr.decode()
    return child.returncode, parse_lines(stdout)


async def run_stalled_worker(data_dir: Path, count: int) -> list[tuple[str, str, int]]:
    """Run one child in "stall" mode, SIGKILL it once it printed `count` lines, and return them."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD_SCRIPT), "stall", str(data_dir), str(count),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    output = b""
    try:
        for _ in range(count):
            output += await asyncio.wait_for(child.stdout.readline(), CHILD_TIMEOUT_SECONDS)
    finally:
        child.kill()
        _, stderr = await child.communicate()
    lines = parse_lines(output)
    assert len(lines) == count, stderr.decode()
    return lines


async def send_jobs(data_dir: Path, jobs: list[str]) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("jobs")
        await log.send_batch("jobs", jobs)


async def test_poison_message_dead_lettered(data_dir: Path) -> None:
    jobs = JOBS[:3] + ["poison"] + JOBS[3:]
    await send_jobs(data_dir, jobs)

    exit_codes = []
    acked: list[str] = []
    for _ in range(MAX_DELIVERIES + 1):
        exit_code, lines = await run_worker(data_dir)
        exit_codes.append(exit_code)
        acked += [value for status, value, _ in lines if status == "acked"]
        if exit_code == 0:
            break

    assert exit_codes[-1] == 0
    assert exit_codes[:-1] == [-signal.SIGKILL] * (len(exit_codes) - 1)
    assert len(exit_codes) - 1 <= MAX_DELIVERIES
    assert Counter(acked) == Counter(JOBS)

    async with logq.open(data_dir) as log:
        [letter] = await log.dead_letters("jobs", group="workers")
        assert letter.message.value == "poison"
        assert letter.delivery_count == MAX_DELIVERIES
        assert letter.message.headers["logq.dlq.delivery_count"] == str(MAX_DELIVERIES)
        [row] = await log.describe_group("workers")
        assert row.committed_offset == len(jobs)
        assert row.dead_lettered == 1


async def test_killed_worker_keeps_counts(data_dir: Path) -> None:
    await send_jobs(data_dir, JOBS)

    counts: dict[str, list[int]] = defaultdict(list)
    acked: list[str] = []
    for _ in range(3):
        lines = await run_stalled_worker(data_dir, 3)
        for status, value, count in lines:
            assert value not in acked, f"{value} was acked before, then delivered again"
            counts[value].append(count)
        acked += [value for status, value, _ in lines if status == "acked"]

    exit_code, lines = await run_worker(data_dir)
    assert exit_code == 0
    for _, value, count in lines:
        assert value not in acked, f"{value} was acked before, then delivered again"
        counts[value].append(count)
    acked += [value for _, value, _ in lines]

    assert Counter(acked) == Counter(JOBS)
    # Redeliveries come first, lowest offset first, so job-2 is leased by two
    # killed children and acked by the third.
    assert counts["job-2"] == [1, 2, 3]
    for value, seen in counts.items():
        assert seen == list(range(1, len(seen) + 1)), f"delivery counts of {value}: {seen}"
    async with logq.open(data_dir) as log:
        assert await log.dead_letters("jobs", group="workers") == []
        [row] = await log.describe_group("workers")
        assert row.committed_offset == len(JOBS)
