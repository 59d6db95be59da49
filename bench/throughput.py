"""Throughput of the embedded log: produce and consume rates beside a plain-file baseline.

Run from the repository root:

    python -m bench.throughput                  # defaults: 100,000 messages of 100 bytes, 3 runs
    python -m bench.throughput --fsync always   # durable sends; the per-call send row uses fewer messages
    python -m bench.throughput --json           # machine-readable results on stdout

The scenarios are in bench/scenarios.py. Every run of every scenario gets a
fresh data directory from `tempfile`, removed afterwards. Each scenario
reports the median, min and max rate over `--runs` runs and the median CPU
time per message (`time.process_time`, which counts every thread of the
process, including the worker threads that logq uses for file I/O). The ratio
column divides a scenario's median rate by the median rate of the row named
beside it: a plain-file baseline, or for a priority row the same receive and
ack pattern without priorities.

Every consume run checks, after the timed part, that each message arrived
once and in priority-then-offset order. A failed check is printed to stderr
at once and again under the table, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from bench.scenarios import Sample, Scenario, Settings, build_scenarios, describe_priority_mix

# Per-call sends under fsync="always" wait for one fsync each, and sequential
# sends cannot share one, so that row uses this many messages by default to
# keep a run short. On the machine in docs/benchmarks.md they ran at about
# 1,700 per second, so 100,000 would take about a minute per run.
ALWAYS_PER_CALL_MESSAGES = 10_000

# The receive(1) rows pay a group journal write for every receive and every
# ack, so they use this many messages by default to keep a run short. On the
# machine in docs/benchmarks.md they ran at 2,000-2,400 messages per second.
RECEIVE_ONE_MESSAGES = 10_000


async def run_once(scenario: Scenario, settings: Settings) -> Sample:
    """Run `scenario` once in a fresh temporary data directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="logq-bench-") as directory:
        return await scenario.run(Path(directory), settings)


async def run_all(settings: Settings) -> dict[str, list[Sample]]:
    """Run every scenario `settings.runs` times; return the samples by scenario name.

    Prints progress, and every failed delivery order check, to stderr as it happens.
    """
    samples: dict[str, list[Sample]] = {}
    for scenario in build_scenarios(settings):
        samples[scenario.name] = []
        for number in range(1, settings.runs + 1):
            print(f"{scenario.name}: run {number} of {settings.runs}", file=sys.stderr, flush=True)
            sample = await run_once(scenario, settings)
            for error in sample.order_errors:
                print(f"ORDER CHECK FAILED: {scenario.name}, run {number}: {error}", file=sys.stderr, flush=True)
            samples[scenario.name].append(sample)
    return samples


def order_check_result(scenario: Scenario, runs: list[Sample]) -> str | None:
    """Return "ok" or "FAILED" for a consume scenario's delivery order check, or None for other scenarios."""
    if not scenario.consumes:
        return None
    return "FAILED" if any(sample.order_errors for sample in runs) else "ok"


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
                "order_check": order_check_result(scenario, runs),
                "runs": [
                    {
                        "messages": s.messages,
                        "wall_seconds": s.wall_seconds,
                        "cpu_seconds": s.cpu_seconds,
                        "order_errors": list(s.order_errors),
                    }
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
    width = max(len(str(row["scenario"])) for row in rows)
    header = (
        f"{'scenario':<{width}} {'messages':>9} {'median msg/s':>13} {'min msg/s':>11} {'max msg/s':>11} "
        f"{'CPU us/msg':>10} {'order':>6} {'ratio':>9}  baseline"
    )
    lines = [
        f"logq throughput: {settings.value_bytes}-byte values, fsync={settings.fsync}, "
        f"batch size {settings.batch_size}, runs per scenario: {settings.runs}, "
        f"priority seed {settings.seed}",
        "",
        header,
        "-" * len(header),
    ]
    for row in rows:
        rates = row["messages_per_second"]
        assert isinstance(rates, dict)
        ratio = row["ratio_to_baseline"]
        lines.append(
            f"{row['scenario']:<{width}} {row['messages']:>9,} {rates['median']:>13,.0f} {rates['min']:>11,.0f} "
            f"{rates['max']:>11,.0f} {row['cpu_us_per_message']:>10.2f} {row['order_check'] or '':>6} "
            f"{'' if ratio is None else f'{ratio:.3g}':>9}  {row['baseline'] or ''}"
        )
    lines.append("")
    lines.extend(format_notes(settings, rows))
    return "\n".join(lines)


def format_notes(settings: Settings, rows: list[dict[str, object]]) -> list[str]:
    """Return the lines under the table: column meanings, reduced message counts and order check failures."""
    lines = ["ratio = median msg/s of the row / median msg/s of its baseline row."]
    lines.append(
        "order = the delivery order check of every run: each message once, higher priority first, "
        "lower offset first within a priority, checked after the timed part."
    )
    lines.append(
        f"priorities: {describe_priority_mix()}, shuffled with the priority seed, "
        "sent with one send_batch call per run of equal priority (at most the batch size). "
        "'priority 0 in runs' sends the same calls with priority 0."
    )
    if settings.per_call_messages != settings.messages:
        lines.append(
            f"The per-call send row uses {settings.per_call_messages:,} messages instead of "
            f"{settings.messages:,} (set it with --per-call-messages)."
        )
    if settings.receive_one_messages != settings.messages:
        lines.append(
            f"The receive(1) rows use {settings.receive_one_messages:,} messages instead of "
            f"{settings.messages:,} (set it with --receive-one-messages)."
        )
    failures = [
        f"  {row['scenario']}, run {number}: {error}"
        for row in rows
        for number, run in enumerate(row["runs"], start=1)  # type: ignore[arg-type]
        for error in run["order_errors"]
    ]
    if failures:
        lines.append("")
        lines.append("ORDER CHECK FAILED: messages were lost, repeated, out of priority-then-offset order "
                     "or delivered with another priority:")
        lines.extend(failures)
    return lines


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
    parser.add_argument("--receive-one-messages", type=positive_int, default=None,
                        help="messages per run of the two receive(1) + ack scenarios "
                             f"(default: {RECEIVE_ONE_MESSAGES}, or --messages when that is smaller)")
    parser.add_argument("--value-bytes", type=positive_int, default=100,
                        help="size of each message value in bytes (default: 100)")
    parser.add_argument("--batch-size", type=positive_int, default=1000,
                        help="values per send_batch call, max messages per receive, and records per "
                             "plain-file write (default: 1000)")
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="interval",
                        help="fsync setting of the benchmark topic (default: interval)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the shuffle that orders the priorities of the priority scenarios (default: 1)")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="runs of each scenario; the report gives median, min and max (default: 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    arguments = parser.parse_args(argv)

    per_call_messages = arguments.per_call_messages
    if per_call_messages is None:
        per_call_messages = arguments.messages
        if arguments.fsync == "always":
            per_call_messages = min(arguments.messages, ALWAYS_PER_CALL_MESSAGES)
    receive_one_messages = arguments.receive_one_messages
    if receive_one_messages is None:
        receive_one_messages = min(arguments.messages, RECEIVE_ONE_MESSAGES)
    settings = Settings(
        messages=arguments.messages,
        per_call_messages=per_call_messages,
        receive_one_messages=receive_one_messages,
        value_bytes=arguments.value_bytes,
        batch_size=arguments.batch_size,
        fsync=arguments.fsync,
        seed=arguments.seed,
        runs=arguments.runs,
    )
    return settings, arguments.json


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table, or JSON with --json; return the exit status.

    The status is 1 when a delivery order check failed, 0 otherwise.
    """
    settings, as_json = parse_settings(argv)
    samples = asyncio.run(run_all(settings))
    rows = summarize(settings, samples)
    status = 1 if any(row["order_check"] == "FAILED" for row in rows) else 0
    if as_json:
        report = {
            "settings": {field: getattr(settings, field) for field in Settings.__dataclass_fields__},
            "machine": describe_machine(),
            "results": rows,
        }
        print(json.dumps(report, indent=2))
        return status
    machine = describe_machine()
    print(
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"temp dir {machine['temp_dir']} on {machine['temp_dir_file_system']}"
    )
    print(format_table(settings, rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
