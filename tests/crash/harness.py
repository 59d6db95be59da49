"""Crash matrix: kill logq child processes with SIGKILL at random points, reopen, check invariants.

A lane is one data directory. Each round of a lane starts
tests/crash/crash_child.py on that directory and kills it with SIGKILL a
seeded random delay after the child reports that it started. Then it takes a
census of the files on disk, reopens the directory in this process and checks:

- every send the child saw return is stored at its offset with its value,
  unless retention deleted its segment;
- offsets are dense from the log start offset to the log end offset, every
  batch passes its CRC when read, and each producer stream is stored in order
  with no gap or duplicate;
- records seen at the previous check are still there, unless retention
  deleted them, and the log start offset never moves backwards;
- a group's committed offset never moves backwards, and every offset whose
  ack returned is done in the reopened group state;
- no offset is delivered again after its ack returned or after a check found
  it done, delivery counts of one offset strictly increase, never pass the
  group's max deliveries, and the stored count is never below one seen;
- every offset that a group marked dead-lettered has a copy in the
  dead-letter topic.

Lanes run in parallel. The seed fixes each lane's workload and kill delays,
so a failure names the seed, lane and round to run again. Timing still
varies from run to run, so a rerun hits nearby kill points, not the same
instruction.

NOTE: SIGKILL ends a process, not the machine, so the page cache keeps every
completed write. A missing or misplaced fsync, which only a power failure
exposes, passes these checks.

Run a matrix from the command line with
`python tests/crash/harness.py --seed 7 --lanes 4 --rounds 50`. To repeat a
failure in lane L at round R, pass its seed with `--lanes L+1 --rounds R+1`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

import logq
from logq.errors import CorruptRecordError, LogqError

if __package__:
    from .crash_child import GROUPS, MAX_BATCH, decode_value
else:  # run as a script
    from crash_child import GROUPS, MAX_BATCH, decode_value  # type: ignore[no-redef]

CHILD_SCRIPT = Path(__file__).with_name("crash_child.py")
START_TIMEOUT_SECONDS = 30.0
# Dead-letter topic of each group that can dead-letter (the default name, <topic>.<group>.dlq).
DEAD_LETTER_TOPICS = {"workers": "events.workers.dlq"}
TOPICS = ("events", "bulk")
# Entry sizes of the segment indexes and of the priority index, in bytes.
INDEX_ENTRY_SIZES = {".index": 8, ".timeindex": 12}
PRIORITY_INDEX_NAME = "priority.index"
PRIORITY_INDEX_ENTRY_SIZE = 9

# Where the child was at the kill, from the last phase line it wrote.
KILL_PHASES = {
    "closed": "killed while opening (recovery, topic and group setup)",
    "opened": "killed while producing and consuming",
    "closing": "killed while closing (final snapshot)",
}

_current_lane: contextvars.ContextVar[LaneState | None] = contextvars.ContextVar("crash_lane", default=None)


@dataclass
class MatrixReport:
    """Totals of one crash-matrix run: kill points, phases seen and checks made."""

    seed: int
    lanes: int
    rounds_per_lane: int
    kill_points: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """Return the report as indented JSON."""
        return json.dumps({
            "seed": self.seed, "lanes": self.lanes, "rounds_per_lane": self.rounds_per_lane,
            "kill_points": self.kill_points, "seconds": round(self.seconds, 1),
            "phases": dict(sorted(self.phases.items())), "checks": dict(sorted(self.checks.items())),
            "failures": self.failures,
        }, indent=2)


@dataclass
class LaneState:
    """State of one lane: the acknowledged results so far and the previous check's observations."""

    number: int
    directory: Path
    side_log: Path
    rng: random.Random
    side_log_position: int = 0
    # topic -> offset -> (stream, seq) of every send that returned
    sends: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    max_acked_seq: dict[str, int] = field(default_factory=dict)
    # (group, topic) -> offsets whose ack returned
    acked: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    # (group, topic, offset) -> highest delivery count seen
    counts: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # previous check: (group, topic) -> committed offset and done ranges
    committed: dict[tuple[str, str], int] = field(default_factory=dict)
    done_ranges: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    # previous check: topic -> log start offset and offset -> (stream, seq)
    log_start: dict[str, int] = field(default_factory=dict)
    records: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    recovery_events: Counter[str] = field(default_factory=Counter)
    # group -> max deliveries found at the previous check (0: never dead-letters)
    max_deliveries: dict[str, int] = field(default_factory=dict)
    # last phase the child noted: "closed" (or a fresh round) means it was opening
    session_phase: str = "closed"


class _RecoveryLogHandler(logging.Handler):
    """Count what recovery logged (torn tails, rebuilt indexes, orphaned leases) for the current lane."""

    def emit(self, record: logging.LogRecord) -> None:
        lane = _current_lane.get()
        if lane is None:
            return
        message = str(record.msg)
        if message.startswith("opened partition") and isinstance(record.args, tuple):
            truncated, rebuilt = record.args[-2], record.args[-1]
            if truncated:
                lane.recovery_events["recovery truncated a torn tail"] += 1
            if rebuilt:
                lane.recovery_events["recovery rebuilt an index"] += 1
        elif "were leased when the previous process stopped" in message:
            lane.recovery_events["recovery failed orphaned leases"] += 1
        elif "left by an interrupted topic create or delete" in message:
            lane.recovery_events["recovery removed a staged topic"] += 1


# -- the census of files on disk ----------------------------------------------------------


def _partition_dirs(directory: Path) -> list[Path]:
    return sorted([*directory.glob("topics/*/0"), *directory.glob("groups/*/journal")])


def take_census(directory: Path) -> dict[str, object]:
    """Return the segment base offsets of every partition and journal, the snapshot offsets and leftovers."""
    segments = {}
    for partition in _partition_dirs(directory):
        segments[str(partition.relative_to(directory))] = {
            int(path.stem) for path in partition.glob("*.log") if path.stem.isdigit()
        }
    snapshots = {}
    for path in directory.glob("groups/*/snapshot.json"):
        try:
            snapshots[path.parent.name] = orjson.loads(path.read_bytes())["journal_offset"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            snapshots[path.parent.name] = None
    torn_indexes = []
    for partition in _partition_dirs(directory):
        for path in partition.iterdir():
            if path.name == PRIORITY_INDEX_NAME:
                entry_size = PRIORITY_INDEX_ENTRY_SIZE
            else:
                entry_size = INDEX_ENTRY_SIZES.get(path.suffix, 0)
            if entry_size and path.stat().st_size % entry_size:
                torn_indexes.append(path)
    return {
        "segments": segments,
        "snapshots": snapshots,
        "temp_files": sorted(path.name for path in directory.rglob("*.tmp")),
        "torn_indexes": len(torn_indexes),
        "staged": any((directory / "staging").glob("*")),
    }


def count_phases(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Name the phases that ran between two censuses or were cut short by the kill."""
    phases = []
    old_segments: dict[str, set[int]] = before["segments"]  # type: ignore[assignment]
    new_segments: dict[str, set[int]] = after["segments"]  # type: ignore[assignment]
    # A partition created in this round starts with a segment, which is no roll.
    if any(new_segments[name] - old_segments[name] for name in new_segments if name in old_segments):
        phases.append("segment roll")
    for name, offsets in old_segments.items():
        removed = offsets - new_segments.get(name, set())
        if removed and name.startswith("topics/"):
            phases.append("retention deleted segments")
        elif removed:
            phases.append("snapshot deleted journal segments")
    if after["snapshots"] != before["snapshots"]:
        phases.append("group snapshot written")
    for name in after["temp_files"]:  # type: ignore[attr-defined]
        phases.append(f"killed while replacing {name.removesuffix('.tmp')}")
    if after["torn_indexes"]:
        phases.append("killed during an index write")
    if after["staged"]:
        phases.append("killed during a topic create")
    return sorted(set(phases))


# -- one round -----------------------------------------------------------------------------


def _kill_delay(rng: random.Random, max_delay: float) -> float:
    """Return seconds from the child's start to the kill: half short (open, recovery), half long (work)."""
    if rng.random() < 0.5:
        return rng.uniform(0.0, min(0.03, max_delay))
    return rng.uniform(0.0, max_delay)


async def run_child(lane: LaneState, round_number: int, child_seed: int, delay: float) -> str | None:
    """Start the child and SIGKILL it `delay` seconds after it started. Return a failure message or None."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD_SCRIPT), str(lane.directory), str(lane.side_log), str(round_number),
        str(child_seed), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    try:
        started = await asyncio.wait_for(child.stdout.readline(), START_TIMEOUT_SECONDS)
        if started.strip() == b"started":
            await asyncio.sleep(delay)
    except TimeoutError:
        return f"child did not start within {START_TIMEOUT_SECONDS} s"
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        _, stderr = await child.communicate()
    if child.returncode != -signal.SIGKILL:
        return f"child exited with code {child.returncode} before the kill: {stderr.decode()[-2000:]}"
    return None


def read_side_log(lane: LaneState, report: MatrixReport) -> list[str]:
    """Apply the side-log lines written since the last call and return the violations they show."""
    with open(lane.side_log, "rb") as handle:
        handle.seek(lane.side_log_position)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    lane.side_log_position += len(complete)
    failures = []
    for line in complete.decode().splitlines():
        kind, *fields = line.split()
        if kind == "P":
            lane.session_phase = fields[0]
        elif kind == "S":
            topic, offset, stream, seq = fields[0], int(fields[1]), fields[2], int(fields[3])
            lane.sends.setdefault(topic, {})[offset] = (stream, seq)
            lane.max_acked_seq[stream] = max(lane.max_acked_seq.get(stream, -1), seq)
        elif kind == "A":
            lane.acked.setdefault((fields[0], fields[1]), set()).add(int(fields[2]))
        elif kind == "D":
            failures += _check_delivery(lane, report, fields[0], fields[1], int(fields[2]), int(fields[3]))
    return failures


def _check_delivery(lane: LaneState, report: MatrixReport, group: str, topic: str, offset: int,
                    count: int) -> list[str]:
    failures = []
    report.checks["deliveries checked"] += 1
    if offset in lane.acked.get((group, topic), ()):
        failures.append(f"group {group} received {topic}@{offset} again after its ack returned")
    if offset < lane.committed.get((group, topic), -1) or any(
        start <= offset < end for start, end in lane.done_ranges.get((group, topic), ())
    ):
        failures.append(f"group {group} received {topic}@{offset}, which the previous check found done")
    max_deliveries = lane.max_deliveries.get(group, 0)
    if max_deliveries and count > max_deliveries:
        failures.append(f"group {group} received {topic}@{offset} with delivery count {count}, "
                        f"above max deliveries {max_deliveries}")
    key = (group, topic, offset)
    if count <= lane.counts.get(key, 0):
        failures.append(f"group {group} received {topic}@{offset} with delivery count {count}, "
                        f"not above the {lane.counts[key]} seen before")
    lane.counts[key] = max(count, lane.counts.get(key, 0))
    return failures


# -- checks after reopening ------------------------------------------------------------------


async def check_topic(log: logq.Log, lane: LaneState, report: MatrixReport, topic: str) -> list[str]:
    """Check one topic's offsets, CRCs, stream order and acknowledged sends against the lane's history."""
    failures = []
    info = log.describe_topic(topic).partitions[0]
    start, end = info.log_start_offset, info.log_end_offset
    if info.high_watermark != end:
        failures.append(f"{topic}: high watermark {info.high_watermark} is not the log end offset {end} after open")
    if start < lane.log_start.get(topic, 0):
        failures.append(f"{topic}: log start offset moved back from {lane.log_start[topic]} to {start}")

    records: dict[int, tuple[str, int]] = {}
    offsets: list[int] = []
    try:
        async for message in log.replay(topic, from_offset=start):
            offsets.append(message.offset)
            try:
                records[message.offset] = decode_value(message.raw_value)
            except ValueError as exc:
                failures.append(f"{topic}@{message.offset}: wrong content: {exc}")
    except CorruptRecordError as exc:
        failures.append(f"{topic}: a read from the reopened log raised {exc}")
    report.checks["records read and decoded"] += len(offsets)
    if offsets != list(range(start, start + len(offsets))) or start + len(offsets) != end:
        failures.append(f"{topic}: offsets are not dense from {start} to {end}: read {len(offsets)} records, "
                        f"first gap near {_first_gap(offsets, start)}")

    failures += _check_streams(lane, topic, records)
    for offset, expected in lane.sends.get(topic, {}).items():
        if offset < start:
            continue
        report.checks["acknowledged sends found"] += 1
        if records.get(offset) != expected:
            failures.append(f"{topic}@{offset}: send of {expected[0]}:{expected[1]} returned this offset, "
                            f"but the reopened log has {records.get(offset)}")
    for offset, previous in lane.records.get(topic, {}).items():
        if offset >= start:
            report.checks["records kept since the previous check"] += 1
            if records.get(offset) != previous:
                failures.append(f"{topic}@{offset}: held {previous} at the previous check, now {records.get(offset)}")
    lane.sends[topic] = {o: v for o, v in lane.sends.get(topic, {}).items() if o >= start}
    lane.log_start[topic] = start
    lane.records[topic] = records
    return failures


def _first_gap(offsets: list[int], start: int) -> int:
    for expected, offset in enumerate(offsets, start):
        if offset != expected:
            return expected
    return start + len(offsets)


def _check_streams(lane: LaneState, topic: str, records: dict[int, tuple[str, int]]) -> list[str]:
    """Check that each producer stream is stored in send order with no gap, and not past its last send."""
    failures = []
    last: dict[str, tuple[int, int]] = {}
    for offset in sorted(records):
        stream, seq = records[offset]
        if stream in last and seq != last[stream][1] + 1:
            failures.append(f"{topic}@{offset}: {stream}:{seq} follows {stream}:{last[stream][1]} "
                            f"at offset {last[stream][0]}")
        last[stream] = (offset, seq)
    for stream, (offset, seq) in last.items():
        # Only the batch in flight at the kill may be stored without its send returning.
        if seq > lane.max_acked_seq.get(stream, -1) + MAX_BATCH:
            failures.append(f"{topic}@{offset}: {stream}:{seq} is stored, but the last send that returned "
                            f"was {stream}:{lane.max_acked_seq.get(stream)}")
    return failures


async def check_group(log: logq.Log, lane: LaneState, report: MatrixReport, group_name: str,
                      dead_letter_sources: set[int]) -> list[str]:
    """Check a group's committed offset, done offsets, delivery counts and dead letters."""
    topic = GROUPS[group_name]
    key = (group_name, topic)
    if group_name not in log.list_groups():
        return [f"group {group_name} was lost"] if key in lane.committed else []
    group = await log.group(group_name, create=False)
    state = group.states.get((topic, 0))
    if state is None:
        return [f"group {group_name} lost its state for {topic}"] if key in lane.committed else []
    failures = []
    report.checks["committed offsets compared"] += 1
    if state.committed < lane.committed.get(key, 0):
        failures.append(f"group {group_name}: committed offset of {topic} moved back from "
                        f"{lane.committed[key]} to {state.committed}")
    for offset in lane.acked.get(key, ()):
        report.checks["acked offsets found done"] += 1
        if not state.is_done(offset):
            failures.append(f"group {group_name}: {topic}@{offset} was acked but is not done after reopening")
    max_deliveries = group.config.max_deliveries
    lane.max_deliveries[group_name] = max_deliveries
    for offset, entry in state.pending.items():
        seen = lane.counts.get((group_name, topic, offset), 0)
        report.checks["stored delivery counts compared"] += 1
        if entry.delivery_count < seen:
            failures.append(f"group {group_name}: {topic}@{offset} has delivery count {entry.delivery_count} "
                            f"after reopening, below the {seen} a consumer saw")
        if max_deliveries and entry.delivery_count > max_deliveries:
            failures.append(f"group {group_name}: {topic}@{offset} has delivery count {entry.delivery_count}, "
                            f"above max deliveries {max_deliveries}")
    for offset in group.dead_offsets.get((topic, 0), set()):
        report.checks["dead letters found"] += 1
        if offset not in dead_letter_sources:
            failures.append(f"group {group_name}: {topic}@{offset} is marked dead-lettered but has no copy "
                            f"in {DEAD_LETTER_TOPICS[group_name]}")
    lane.committed[key] = state.committed
    lane.done_ranges[key] = list(state.done.ranges())
    # Acked offsets below the committed offset need no separate tracking any more.
    lane.acked[key] = {offset for offset in lane.acked.get(key, ()) if offset >= state.committed}
    lane.counts = {k: count for k, count in lane.counts.items() if k[:2] != key or k[2] >= state.committed}
    return failures


async def dead_letter_sources(log: logq.Log, topic: str) -> set[int]:
    """Return the source offsets named by the dead letters in `topic` (empty if it does not exist)."""
    if topic not in log.list_topics():
        return set()
    return {int(message.headers["logq.dlq.offset"]) async for message in log.replay(topic)}


async def check_lane(lane: LaneState, report: MatrixReport) -> list[str]:
    """Reopen the lane's directory, run every check and return the violations found."""
    failures = read_side_log(lane, report)
    try:
        async with logq.open(lane.directory) as log:
            for topic in TOPICS:
                if topic in log.list_topics():
                    failures += await check_topic(log, lane, report, topic)
            for group_name in GROUPS:
                dead_letter_topic = DEAD_LETTER_TOPICS.get(group_name)
                sources = await dead_letter_sources(log, dead_letter_topic) if dead_letter_topic else set()
                failures += await check_group(log, lane, report, group_name, sources)
    except LogqError as exc:
        failures.append(f"reopening the data directory raised {type(exc).__name__}: {exc}")
    except Exception:  # noqa: BLE001 - any other error is a failure of this round, with its traceback
        failures.append(f"checking the reopened data directory failed:\n{traceback.format_exc()}")
    return failures


async def run_lane(lane: LaneState, rounds: int, max_delay: float, report: MatrixReport) -> None:
    """Run `rounds` kill-and-check rounds on one lane, stopping at the first failed round."""
    _current_lane.set(lane)
    for round_number in range(rounds):
        child_seed = lane.rng.getrandbits(32)
        delay = _kill_delay(lane.rng, max_delay)
        before = take_census(lane.directory)
        failure = await run_child(lane, round_number, child_seed, delay)
        report.kill_points += 1
        after = take_census(lane.directory)
        report.phases.update(count_phases(before, after))
        lane.recovery_events.clear()
        lane.session_phase = "closed"
        failures = [failure] if failure else []
        failures += await check_lane(lane, report)
        report.phases[KILL_PHASES[lane.session_phase]] += 1
        report.phases.update(lane.recovery_events.keys())
        if failures:
            context = (f"seed {report.seed} lane {lane.number} round {round_number} "
                       f"(kill {delay * 1000:.1f} ms after start, child seed {child_seed})")
            report.failures += [f"{context}: {message}" for message in failures[:20]]
            return


async def run_matrix(seed: int, lanes: int, rounds: int, workdir: Path, *, max_delay: float = 0.25) -> MatrixReport:
    """Run `lanes` lanes of `rounds` kill points each under `workdir` and return the report.

    `max_delay` is the longest wait, in seconds, between a child's start and its kill.
    """
    report = MatrixReport(seed=seed, lanes=lanes, rounds_per_lane=rounds)
    states = []
    for number in range(lanes):
        directory = workdir / f"lane{number}"
        directory.mkdir(parents=True, exist_ok=True)
        states.append(LaneState(number=number, directory=directory / "data", side_log=directory / "side.log",
                                rng=random.Random(f"{seed}:{number}")))
        states[-1].side_log.touch()
    logq_logger = logging.getLogger("logq")
    handler = _RecoveryLogHandler()
    saved = (logq_logger.level, logq_logger.propagate)
    logq_logger.addHandler(handler)
    logq_logger.setLevel(logging.INFO)
    logq_logger.propagate = False
    started = time.monotonic()
    try:
        await asyncio.gather(*(run_lane(state, rounds, max_delay, report) for state in states))
    finally:
        logq_logger.removeHandler(handler)
        logq_logger.setLevel(saved[0])
        logq_logger.propagate = saved[1]
    report.seconds = time.monotonic() - started
    return report


def main() -> int:
    """Run a crash matrix from the command line, print its report and return 1 on any failure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().getrandbits(32),
                        help="seed of every lane's workload and kill delays (default: random)")
    parser.add_argument("--lanes", type=int, default=4, help="data directories run in parallel")
    parser.add_argument("--rounds", type=int, default=50, help="kill points per lane")
    parser.add_argument("--max-delay-ms", type=float, default=250.0,
                        help="longest wait between a child's start and its kill, in milliseconds")
    parser.add_argument("--workdir", type=Path, help="directory for the lanes (default: a new temporary one)")
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="logq-crash-"))
    report = asyncio.run(run_matrix(arguments.seed, arguments.lanes, arguments.rounds, workdir,
                                    max_delay=arguments.max_delay_ms / 1000))
    print(report.summary())
    print(f"lanes are in {workdir}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
