"""Results of bench.scale: what one size measured, the target checks, and the text, Markdown and JSON reports."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import logq
from bench.scale_child import LEASE_SECONDS
from bench.scale_engines import Settings
from bench.throughput import describe_machine

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

# Throughput target: the rate with the largest log stored is at least 90% of the rate with the smallest.
THROUGHPUT_TARGET_RATIO = 0.90


@dataclass(slots=True)
class Chunk:
    """One timed stretch of `send_batch` calls while the log grows."""

    end: int
    messages: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Messages per wall-clock second."""
        return self.messages / self.wall_seconds


@dataclass(slots=True)
class SizeResult:
    """Everything measured for one engine at one log size.

    `reopen_after_writer` is the result of the first child that opened the
    data after the growing process closed it. `reopen_again` are the results
    of the children after it, each of which opened data that the child before
    it closed. `parent_memory_kib` is the RSS and peak RSS of the growing
    process after its consumer caught up.
    """

    size: int
    produce: Chunk
    growth: list[Chunk]
    catch_up: dict[str, Any]
    consume_runs: list[dict[str, Any]]
    reopen_after_writer: dict[str, Any]
    reopen_again: list[dict[str, Any]]
    in_flight: dict[str, Any]
    ack_holes: dict[str, Any]
    disk_bytes: int
    parent_memory_kib: dict[str, int | None]
    profile_path: str | None

    @property
    def consume_rate(self) -> float:
        """Median consume rate in messages per second."""
        return statistics.median(run["messages"] / run["wall_seconds"] for run in self.consume_runs)

    def reopen_again_median(self, key: str) -> float | None:
        """Return the median of `key`, such as "open_seconds", over the later reopen children, or None."""
        return median_or_none(self.reopen_again, key)


def median_or_none(runs: list[dict[str, Any]], key: str) -> float | None:
    """Return the median of `key` over `runs`, or None when there are no runs or one lacks the value."""
    values = [run.get(key) for run in runs]
    if not values or any(value is None for value in values):
        return None
    return statistics.median(values)  # type: ignore[type-var]


def mib(kib: float | None) -> float | None:
    """Convert KiB to MiB, keeping None."""
    return None if kib is None else kib / 1024


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def memory_per_message(result: dict[str, Any], messages: int) -> float | None:
    """Return the RSS a child gained from its open to the end of its receives, in bytes per message received."""
    before, after = result.get("rss_after_open_kib"), result.get("rss_after_receive_kib")
    if before is None or after is None:
        return None
    return (after - before) * 1024 / messages


# -- checks ------------------------------------------------------------------------------------


def compute_checks(results: list[SizeResult], settings: Settings) -> dict[str, Any]:
    """Compare the largest size with the smallest for the targets of the benchmark.

    Throughput: the rate at the largest size should be within 10% of that at
    the smallest (ratio >= 0.90). Reopen time and memory have no tolerance in
    the targets, so their ratios and growth per million messages are given
    without a verdict.
    """
    if len(results) < 2:
        return {"note": "fewer than two sizes, so there is nothing to compare"}
    small, large = results[0], results[-1]
    millions = (large.size - small.size) / 1_000_000
    produce_ratio = large.produce.rate / small.produce.rate
    consume_ratio = large.consume_rate / small.consume_rate
    checks: dict[str, Any] = {
        "smallest_size": small.size,
        "largest_size": large.size,
        "produce_ratio": produce_ratio,
        "produce_meets_target": produce_ratio >= THROUGHPUT_TARGET_RATIO,
        "consume_ratio": consume_ratio,
        "consume_meets_target": consume_ratio >= THROUGHPUT_TARGET_RATIO,
    }
    later = [chunk.rate for result in results for chunk in result.growth
             if chunk is not results[0].growth[0] and chunk.messages == settings.window]
    checks["produce_first_window_rate"] = results[0].growth[0].rate
    if later:
        checks["produce_later_windows"] = {"count": len(later), "min": min(later),
                                           "median": statistics.median(later), "max": max(later)}
    for key in ("open_seconds", "first_receive_seconds"):
        low, high = small.reopen_after_writer[key], large.reopen_after_writer[key]
        checks[f"after_writer_{key}_ratio"] = high / low
        checks[f"after_writer_{key}_ms_per_million"] = (high - low) * 1000 / millions
        low_again, high_again = small.reopen_again_median(key), large.reopen_again_median(key)
        checks[f"again_{key}_ratio"] = ratio(high_again, low_again)
    low_rss = small.reopen_after_writer.get("rss_after_open_kib")
    high_rss = large.reopen_after_writer.get("rss_after_open_kib")
    if low_rss is not None and high_rss is not None:
        checks["rss_after_open_growth_mib"] = (high_rss - low_rss) / 1024
        checks["rss_after_open_kib_per_million"] = (high_rss - low_rss) / millions
    low_again_rss = small.reopen_again_median("rss_after_open_kib")
    high_again_rss = large.reopen_again_median("rss_after_open_kib")
    if low_again_rss is not None and high_again_rss is not None:
        checks["again_rss_after_open_growth_mib"] = (high_again_rss - low_again_rss) / 1024
    for role, small_result, large_result in (("in_flight", small.in_flight, large.in_flight),
                                             ("ack_holes", small.ack_holes, large.ack_holes)):
        checks[f"{role}_bytes_per_message_smallest"] = memory_per_message(small_result, settings.window)
        checks[f"{role}_bytes_per_message_largest"] = memory_per_message(large_result, settings.window)
        checks[f"{role}_rss_ratio"] = ratio(large_result.get("rss_after_receive_kib"),
                                            small_result.get("rss_after_receive_kib"))
    return checks


def format_number(value: float | None, spec: str) -> str:
    """Format `value` with `spec`, or "n/a" for None."""
    return "n/a" if value is None else format(value, spec)


def format_checks(checks: dict[str, dict[str, Any]], settings: Settings) -> list[str]:
    """Return the target checks as text lines, one block per engine."""
    lines = []
    for name, found in checks.items():
        if "produce_ratio" not in found:
            lines.append(f"{name}: {found.get('note', 'no checks')}")
            continue
        small, large = found["smallest_size"], found["largest_size"]
        lines.append(f"{name}, {large:,} messages stored against {small:,}:")
        for kind in ("produce", "consume"):
            verdict = "meets" if found[f"{kind}_meets_target"] else "MISSES"
            lines.append(f"  {kind} msg/s ratio {found[f'{kind}_ratio']:.3f} "
                         f"(target >= {THROUGHPUT_TARGET_RATIO:.2f}: {verdict})")
        if "produce_later_windows" in found:
            windows = found["produce_later_windows"]
            lines.append(f"  produce windows of {settings.window:,}: the log's first "
                         f"{found['produce_first_window_rate']:,.0f} msg/s; the {windows['count']} after it: "
                         f"min {windows['min']:,.0f}, median {windows['median']:,.0f}, max {windows['max']:,.0f} msg/s")
        for key, label in (("open_seconds", "open"), ("first_receive_seconds", "open + first receive")):
            lines.append(
                f"  {label} after the writer closed: ratio {found[f'after_writer_{key}_ratio']:.2f}, "
                f"{found[f'after_writer_{key}_ms_per_million']:+.2f} ms per million messages; "
                f"opened again: ratio {format_number(found[f'again_{key}_ratio'], '.2f')}"
            )
        if "rss_after_open_growth_mib" in found:
            lines.append(f"  RSS after open (after the writer closed) grew {found['rss_after_open_growth_mib']:+.1f} "
                         f"MiB ({found['rss_after_open_kib_per_million']:+,.0f} KiB per million messages)"
                         + (f"; opened again: {found['again_rss_after_open_growth_mib']:+.1f} MiB"
                            if "again_rss_after_open_growth_mib" in found else ""))
        for role, label in (("in_flight", f"{settings.window:,} in flight"),
                            ("ack_holes", f"{settings.window:,} received with every other one acked")):
            lines.append(
                f"  RSS gained with {label}: "
                f"{format_number(found[f'{role}_bytes_per_message_smallest'], ',.0f')} bytes per message at "
                f"{small:,}, {format_number(found[f'{role}_bytes_per_message_largest'], ',.0f')} at {large:,}"
            )
    return lines


# -- table -------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "engine", "messages stored", "produce msg/s", "consume msg/s", "open s", "open + first receive s",
    "again: open + first receive s", "RSS after open MiB", "RSS in flight MiB", "RSS ack holes MiB", "disk MiB",
)


def table_rows(all_results: dict[str, list[SizeResult]]) -> list[list[str]]:
    """Return one row of formatted cells per engine and size, in TABLE_COLUMNS order."""
    rows = []
    for name, results in all_results.items():
        for result in results:
            first = result.reopen_after_writer
            rows.append([
                name,
                f"{result.size:,}",
                f"{result.produce.rate:,.0f}",
                f"{result.consume_rate:,.0f}",
                f"{first['open_seconds']:.4f}",
                f"{first['first_receive_seconds']:.4f}",
                format_number(result.reopen_again_median("first_receive_seconds"), ".4f"),
                format_number(mib(first.get("rss_after_open_kib")), ".1f"),
                format_number(mib(result.in_flight.get("rss_after_receive_kib")), ".1f"),
                format_number(mib(result.ack_holes.get("rss_after_receive_kib")), ".1f"),
                f"{result.disk_bytes / 2**20:,.0f}",
            ])
    return rows


def format_text_table(rows: list[list[str]]) -> str:
    """Return `rows` under TABLE_COLUMNS as aligned plain text."""
    widths = [max(len(column), *(len(row[index]) for row in rows)) for index, column in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(column.rjust(width) for column, width in zip(TABLE_COLUMNS, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)
    return "\n".join(lines)


def format_markdown_table(rows: list[list[str]]) -> str:
    """Return `rows` under TABLE_COLUMNS as a Markdown table."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def format_notes(settings: Settings) -> list[str]:
    """Return the lines under the table that describe how each column was measured."""
    window = f"{settings.window:,}"
    catch_up = ("receiving and acking every message before it" if settings.catch_up == "consume"
                else "a reset (--catch-up reset)")
    again = (f"the median of the {settings.reopen_runs - 1} children after it, each opening data that the child "
             "before it closed" if settings.reopen_runs > 1 else "not measured (--reopen-runs 1)")
    notes = [
        f"produce: send_batch of {settings.batch_size:,} values of {settings.value_bytes} bytes, timed over the "
        f"last {window} messages before the size was reached.",
        f"consume: receive({settings.batch_size:,}) + ack_batch of the last {window} messages by a consumer at "
        f"the size minus {window}; median of {settings.consume_runs} runs.",
        "open, open + first receive, RSS after open: the first child process that opened the data after the "
        "process that grew it closed it. The first receive takes one message for the consumer at the size "
        f"minus {window}. The data files were in the page cache. The growing process reopens the data at each "
        "size, so its last session appended the messages from the previous size on.",
        f"again: {again}.",
        f"RSS in flight: a child after receiving {window} messages without acking them. RSS ack holes: a child "
        f"that acked every other one of the {window}. Neither keeps the received messages.",
        f"The consumer reached the size minus {window} by {catch_up}.",
        "sqlite: the SQL of the sqlite3 WAL queue peer of bench.compare, synchronous=NORMAL, "
        f"transactions of {settings.sqlite_transaction_rows} rows, with acked rows kept (bench/scale_child.py).",
    ]
    if settings.profile:
        notes.append("--profile: the first reopen child of each size ran under cProfile, so its times include "
                     "the profiler's overhead.")
    return notes


# -- reports -----------------------------------------------------------------------------------


def describe_git() -> dict[str, Any]:
    """Return the commit of the repository and whether logq/ or bench/ have uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "logq", "bench"], cwd=REPOSITORY_ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": commit, "uncommitted_changes": bool(status.strip())}


def size_to_json(result: SizeResult) -> dict[str, Any]:
    """Return every measurement of one size as JSON-ready values."""
    return {
        "size": result.size,
        "produce": asdict(result.produce) | {"rate": result.produce.rate},
        "consume_rate": result.consume_rate,
        "consume_runs": result.consume_runs,
        "reopen_after_writer": result.reopen_after_writer,
        "reopen_again": result.reopen_again,
        "in_flight": result.in_flight,
        "ack_holes": result.ack_holes,
        "catch_up": result.catch_up,
        "disk_bytes": result.disk_bytes,
        "parent_memory_after_catch_up_kib": result.parent_memory_kib,
        "profile": result.profile_path,
        "growth": [asdict(chunk) | {"rate": chunk.rate} for chunk in result.growth],
    }


def build_report(all_results: dict[str, list[SizeResult]], settings: Settings, started: str, argv: list[str],
                 load_average: dict[str, list[float]]) -> dict[str, Any]:
    """Return the JSON-ready report: command, settings, machine, versions, every measurement and the checks.

    `load_average` contains the 1, 5 and 15 minute load averages at the start
    and the end of the run, because other processes on the machine change
    every rate.
    """
    settings_json = {key: value for key, value in asdict(settings).items() if key not in ("results_dir", "as_json")}
    return {
        "benchmark": "bench.scale",
        "started_utc": started,
        "command": " ".join(["python -m bench.scale", *argv]),
        "settings": settings_json | {"results_dir": str(settings.results_dir),
                                     "child_lease_seconds": LEASE_SECONDS},
        "machine": describe_machine() | {"load_average": load_average},
        "versions": {"logq": logq.__version__, "sqlite": sqlite3.sqlite_version, "git": describe_git()},
        "results": {name: [size_to_json(result) for result in results] for name, results in all_results.items()},
        "checks": {name: compute_checks(results, settings) for name, results in all_results.items()},
    }


def describe_load(load_average: dict[str, list[float]]) -> str:
    """Return the 1-minute load averages at the start and end of the run as text."""
    return f"load average {load_average['start'][0]:.2f} at the start and {load_average['end'][0]:.2f} at the end"


def format_report_text(report: dict[str, Any], rows: list[list[str]], settings: Settings) -> str:
    """Return the plain-text report printed without --json."""
    machine = report["machine"]
    lines = [
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"SQLite {report['versions']['sqlite']}, {describe_load(machine['load_average'])}",
        "",
        format_text_table(rows),
        "",
        *format_notes(settings),
        "",
        *format_checks(report["checks"], settings),
    ]
    return "\n".join(lines)


def format_report_markdown(report: dict[str, Any], rows: list[list[str]], settings: Settings) -> str:
    """Return the Markdown report that goes to the results directory."""
    machine = report["machine"]
    git = report["versions"]["git"]
    changes = " with uncommitted changes in logq/ or bench/" if git["uncommitted_changes"] else ""
    lines = [
        f"# bench.scale, {report['started_utc']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"SQLite {report['versions']['sqlite']}, {describe_load(machine['load_average'])}; "
        f"data under {report['settings']['parent_dir'] or machine['temp_dir']}; "
        f"logq {report['versions']['logq']} at commit {git['commit']}{changes}.",
        "",
        format_markdown_table(rows),
        "",
        *(f"- {note}" for note in format_notes(settings)),
        "",
        "## Target checks",
        "",
        "```",
        *format_checks(report["checks"], settings),
        "```",
    ]
    return "\n".join(lines) + "\n"


def write_results(report: dict[str, Any], markdown: str, results_dir: Path, stamp: str) -> tuple[Path, Path]:
    """Write the report as scale-<stamp>.json and scale-<stamp>.md in `results_dir`; return both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"scale-{stamp}.json"
    markdown_path = results_dir / f"scale-{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(markdown, encoding="utf-8")
    return json_path, markdown_path
