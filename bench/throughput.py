"""Throughput of the embedded log: produce and consume rates beside a plain-file baseline.

Run from the repository root:

    python -m bench.throughput                  # defaults: 100,000 messages of 100 bytes, 3 runs
    python -m bench.throughput --fsync always   # durable sends; the per-call send row uses fewer messages
    python -m bench.throughput --json           # machine-readable results on stdout

Every run of every scenario gets a fresh data directory from `tempfile`,
removed afterwards. Each scenario reports the median, min and max rate over
`--runs` runs and the median CPU time per message (`time.process_time`, which
counts every thread of the process, including the worker threads that logq
uses for file writes). The ratio column divides a scenario's median rate by
the median rate of the plain-file baseline named beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import logq

TOPIC = "bench"
GROUP = "bench"

# Per-call sends under fsync="always" wait for one fsync each, and sequential
# sends cannot share one, so that row uses this many messages by default to
# keep a run short. On the machine in docs/benchmarks.md they ran at about
# 1,700 per second, so 100,000 would take about a minute per run.
ALWAYS_PER_CALL_MESSAGES = 10_000

# Length prefix of a plain-file baseline record: 4 bytes, little-endian.
LENGTH_PREFIX = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Settings:
    """Workload of one benchmark invocation, from the command line."""

    messages: int
    per_call_messages: int
    value_bytes: int
    batch_size: int
    fsync: str
    runs: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed run: messages moved, wall-clock seconds and CPU seconds of the process."""

    messages: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Messages per wall-clock second."""
        return self.messages / self.wall_seconds


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named workload, the baseline its ratio is taken against, and the coroutine that times one run."""

    name: str
    baseline: str | None
    run: Callable[[Path, Settings], Awaitable[Sample]]


class Stopwatch:
    """Wall-clock and process CPU time of a `with` block, started after a garbage collection."""

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self._wall_start = time.perf_counter()
        self._cpu_start = time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall_seconds = time.perf_counter() - self._wall_start
        self.cpu_seconds = time.process_time() - self._cpu_start

    def sample(self, messages: int) -> Sample:
        """Return the measured times as a Sample of `messages` messages."""
        return Sample(messages, self.wall_seconds, self.cpu_seconds)


def make_value(size: int) -> bytes:
    """Return `size` random bytes, so that no layer can profit from repeated content."""
    return os.urandom(size)


# -- logq scenarios --------------------------------------------------------------


async def produce_per_call(directory: Path, settings: Settings) -> Sample:
    """Time one `await log.send()` per message."""
    value = make_value(settings.value_bytes)
    count = settings.per_call_messages
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, fsync=settings.fsync)
        with Stopwatch() as watch:
            for _ in range(count):
                await log.send(TOPIC, value)
    return watch.sample(count)


async def produce_batched(directory: Path, settings: Settings) -> Sample:
    """Time `await log.send_batch()` with `batch_size` values per call."""
    value = make_value(settings.value_bytes)
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, fsync=settings.fsync)
        with Stopwatch() as watch:
            await send_all_batched(log, value, settings)
    return watch.sample(settings.messages)


async def send_all_batched(log: logq.Log, value: bytes, settings: Settings) -> None:
    """Send `settings.messages` copies of `value` in calls of `batch_size` values."""
    remaining = settings.messages
    while remaining > 0:
        size = min(settings.batch_size, remaining)
        await log.send_batch(TOPIC, [value] * size)
        remaining -= size


async def consume_auto_ack(directory: Path, settings: Settings) -> Sample:
    """Time one group receiving a filled topic with `receive(batch_size, timeout=0)` and auto-ack."""
    return await consume(directory, settings, auto_ack=True)


async def consume_explicit_ack(directory: Path, settings: Settings) -> Sample:
    """Time one group receiving a filled topic and acking each batch with `consumer.ack`."""
    return await consume(directory, settings, auto_ack=False)


async def consume(directory: Path, settings: Settings, *, auto_ack: bool) -> Sample:
    """Fill a topic with batched sends, then time one consumer reading all of it.

    The timed part covers joining the group, every receive and ack, and the
    consumer's close, which acks the last batch under auto-ack.
    """
    value = make_value(settings.value_bytes)
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, fsync=settings.fsync)
        await send_all_batched(log, value, settings)
        consumer = log.consumer(TOPIC, group=GROUP, auto_ack=auto_ack)
        with Stopwatch() as watch:
            received = await receive_all(consumer, settings, auto_ack=auto_ack)
            await consumer.close()
    return watch.sample(received)


async def receive_all(consumer: logq.Consumer, settings: Settings, *, auto_ack: bool) -> int:
    """Receive until `settings.messages` messages arrived; return the count.

    Raises RuntimeError when a non-blocking receive returns nothing before
    then. The topic was filled before the consumer started, so that is a bug.
    """
    received = 0
    while received < settings.messages:
        batch = await consumer.receive(settings.batch_size, timeout=0)
        if not batch:
            raise RuntimeError(
                f"receive returned no messages after {received} of {settings.messages}, "
                "although the topic was filled beforehand; report this as a logq bug"
            )
        if not auto_ack:
            await consumer.ack(batch)
        received += len(batch)
    return received


# -- plain-file baselines -----------------------------------------------------------


async def plain_file(directory: Path, settings: Settings) -> Sample:
    """Time framed records written to one file in `batch_size`-record writes, without fsync."""
    return write_framed_records(directory / "plain.log", settings, fsync=False)


async def plain_file_fsync(directory: Path, settings: Settings) -> Sample:
    """Time framed records written to one file in `batch_size`-record writes, with an fsync after each write."""
    return write_framed_records(directory / "plain.log", settings, fsync=True)


def write_framed_records(path: Path, settings: Settings, *, fsync: bool) -> Sample:
    """Write `settings.messages` records, each a 4-byte length prefix and the value.

    The records of each write are framed one by one in a Python loop and then
    written with one `write` call, so the baseline includes a per-record
    Python cost as logq does.
    """
    value = make_value(settings.value_bytes)
    with path.open("wb") as file, Stopwatch() as watch:
        remaining = settings.messages
        while remaining > 0:
            count = min(settings.batch_size, remaining)
            parts = []
            for _ in range(count):
                parts.append(LENGTH_PREFIX.pack(len(value)))
                parts.append(value)
            file.write(b"".join(parts))
            file.flush()
            if fsync:
                os.fsync(file.fileno())
            remaining -= count
    return watch.sample(settings.messages)


# -- running and reporting ------------------------------------------------------------

PLAIN_FILE = "plain file"
PLAIN_FILE_FSYNC = "plain file + fsync per write"


def build_scenarios(settings: Settings) -> list[Scenario]:
    """Return the scenarios in report order, each paired with the baseline of its ratio.

    Produce rows compare with the baseline of the same durability: the
    fsync-per-write file under fsync="always", the file without fsync
    otherwise. Consume rows never fsync the topic, so they compare with the
    file without fsync.
    """
    produce_baseline = PLAIN_FILE_FSYNC if settings.fsync == "always" else PLAIN_FILE
    return [
        Scenario("send, one per call", produce_baseline, produce_per_call),
        Scenario(f"send_batch, {settings.batch_size} per call", produce_baseline, produce_batched),
        Scenario("receive, auto-ack", PLAIN_FILE, consume_auto_ack),
        Scenario("receive + ack(batch)", PLAIN_FILE, consume_explicit_ack),
        Scenario(PLAIN_FILE, None, plain_file),
        Scenario(PLAIN_FILE_FSYNC, None, plain_file_fsync),
    ]


async def run_once(scenario: Scenario, settings: Settings) -> Sample:
    """Run `scenario` once in a fresh temporary data directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="logq-bench-") as directory:
        return await scenario.run(Path(directory), settings)


async def run_all(settings: Settings) -> dict[str, list[Sample]]:
    """Run every scenario `settings.runs` times; return the samples by scenario name."""
    samples: dict[str, list[Sample]] = {}
    for scenario in build_scenarios(settings):
        samples[scenario.name] = []
        for number in range(1, settings.runs + 1):
            print(f"{scenario.name}: run {number} of {settings.runs}", file=sys.stderr, flush=True)
            samples[scenario.name].append(await run_once(scenario, settings))
    return samples


def summarize(settings: Settings, samples: dict[str, list[Sample]]) -> list[dict[str, object]]:
    """Return one result row per scenario: rates (median, min, max), CPU per message and ratio."""
    median_rates = {name: statistics.median(s.rate for s in runs) for name, runs in samples.items()}
    rows: list[dict[str, object]] = []
    for scenario in build_scenarios(settings):
        runs = samples[scenario.name]
        rates = [sample.rate for sample in runs]
        cpu_per_message = [sample.cpu_seconds / sample.messages * 1e6 for sample in runs]
        ratio = None
        if scenario.baseline is not None:
            ratio = median_rates[scenario.name] / median_rates[scenario.baseline]
        rows.append(
            {
                "scenario": scenario.name,
                "messages": runs[0].messages,
                "messages_per_second": {
                    "median": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                },
                "cpu_us_per_message": statistics.median(cpu_per_message),
                "baseline": scenario.baseline,
                "ratio_to_baseline": ratio,
                "runs": [
                    {"messages": s.messages, "wall_seconds": s.wall_seconds, "cpu_seconds": s.cpu_seconds}
                    for s in runs
                ],
            }
        )
    return rows


def describe_machine() -> dict[str, object]:
    """Return the CPU count, CPU model, Python version and file system type of the temp directory."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": read_cpu_model(),
        "python": platform.python_version(),
        "temp_dir": tempfile.gettempdir(),
        "temp_dir_file_system": read_file_system_type(Path(tempfile.gettempdir())),
    }


def read_cpu_model() -> str:
    """Return the first "model name" of /proc/cpuinfo, or platform.processor() where that file is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_file_system_type(path: Path) -> str:
    """Return the type of the file system that contains `path`, from /proc/mounts, or "unknown"."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best_mount, best_type = "", "unknown"
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point, fs_type = fields[1], fields[2]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best_mount):
            best_mount, best_type = mount_point, fs_type
    return best_type


def format_table(settings: Settings, rows: list[dict[str, object]]) -> str:
    """Return the results as a plain-text table with a header of settings and notes."""
    header = (
        f"{'scenario':<32} {'messages':>9} {'median msg/s':>13} {'min msg/s':>11} {'max msg/s':>11} "
        f"{'CPU us/msg':>10} {'ratio':>9}  baseline"
    )
    lines = [
        f"logq throughput: {settings.value_bytes}-byte values, fsync={settings.fsync}, "
        f"batch size {settings.batch_size}, runs per scenario: {settings.runs}",
        "",
        header,
        "-" * len(header),
    ]
    for row in rows:
        rates = row["messages_per_second"]
        assert isinstance(rates, dict)
        ratio = row["ratio_to_baseline"]
        lines.append(
            f"{row['scenario']:<32} {row['messages']:>9,} {rates['median']:>13,.0f} {rates['min']:>11,.0f} "
            f"{rates['max']:>11,.0f} {row['cpu_us_per_message']:>10.2f} "
            f"{'' if ratio is None else f'{ratio:.3g}':>9}  {row['baseline'] or ''}"
        )
    lines.append("")
    lines.append("ratio = median msg/s of the row / median msg/s of its baseline row.")
    if settings.per_call_messages != settings.messages:
        lines.append(
            f"The per-call send row uses {settings.per_call_messages:,} messages instead of "
            f"{settings.messages:,} (set it with --per-call-messages)."
        )
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """Parse a command-line integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: use an integer >= 1")
    return value


def parse_settings(argv: list[str] | None) -> tuple[Settings, bool]:
    """Parse the command line; return the settings and whether to print JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Measure produce and consume throughput of logq beside a plain-file baseline.",
    )
    parser.add_argument("--messages", type=positive_int, default=100_000,
                        help="messages per run of each scenario (default: 100000)")
    parser.add_argument("--per-call-messages", type=positive_int, default=None,
                        help="messages per run of the one-send-per-call scenario (default: --messages, "
                             f"or {ALWAYS_PER_CALL_MESSAGES} under --fsync always)")
    parser.add_argument("--value-bytes", type=positive_int, default=100,
                        help="size of each message value in bytes (default: 100)")
    parser.add_argument("--batch-size", type=positive_int, default=1000,
                        help="values per send_batch call, max messages per receive, and records per "
                             "plain-file write (default: 1000)")
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="interval",
                        help="fsync setting of the benchmark topic (default: interval)")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="runs of each scenario; the report gives median, min and max (default: 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    arguments = parser.parse_args(argv)

    per_call_messages = arguments.per_call_messages
    if per_call_messages is None:
        per_call_messages = arguments.messages
        if arguments.fsync == "always":
            per_call_messages = min(arguments.messages, ALWAYS_PER_CALL_MESSAGES)
    settings = Settings(
        messages=arguments.messages,
        per_call_messages=per_call_messages,
        value_bytes=arguments.value_bytes,
        batch_size=arguments.batch_size,
        fsync=arguments.fsync,
        runs=arguments.runs,
    )
    return settings, arguments.json


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table, or JSON with --json."""
    settings, as_json = parse_settings(argv)
    samples = asyncio.run(run_all(settings))
    rows = summarize(settings, samples)
    if as_json:
        report = {
            "settings": {field: getattr(settings, field) for field in Settings.__dataclass_fields__},
            "machine": describe_machine(),
            "results": rows,
        }
        print(json.dumps(report, indent=2))
        return
    machine = describe_machine()
    print(
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"temp dir {machine['temp_dir']} on {machine['temp_dir_file_system']}"
    )
    print(format_table(settings, rows))


if __name__ == "__main__":
    main()
