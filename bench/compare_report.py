"""The Markdown report of bench.compare and the result files it writes to the results directory.

`format_report` turns the report dictionary that bench.compare builds into
Markdown: the throughput table, the latency table, notes on what each column
means and how noisy the run was. `write_results` writes that Markdown and the
dictionary as JSON under names that carry the run's start time in UTC.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.latency import IDLE_STOP_SECONDS, MIN_OVERRUN_SECONDS
from bench.scenarios import describe_priority_mix

# A row whose runs spread more than this, in percent of the median, counts as noisy in the noise summary.
NOISY_PERCENT = 10.0


@dataclass(frozen=True, slots=True)
class ResultPaths:
    """The files of one run in the results directory."""

    json: Path
    markdown: Path
    chart: Path


def result_paths(directory: Path, started: datetime) -> ResultPaths:
    """Create `directory` if missing and return unused file names compare-<UTC time>[-N].json, .md and .png."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{started.strftime('%Y%m%dT%H%M%SZ')}"
    number = 1
    while True:
        name = stem if number == 1 else f"{stem}-{number}"
        paths = ResultPaths(directory / f"{name}.json", directory / f"{name}.md", directory / f"{name}.png")
        if not any(path.exists() for path in (paths.json, paths.markdown, paths.chart)):
            return paths
        number += 1


def write_results(paths: ResultPaths, report: dict[str, Any], markdown: str) -> None:
    """Write `report` as JSON and `markdown` to their paths."""
    paths.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths.markdown.write_text(markdown, encoding="utf-8")


# -- noise ---------------------------------------------------------------------------------


def describe_noise(rows: list[dict[str, Any]], latency_rows: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """Return the largest spread of any row and how many rows spread more than NOISY_PERCENT.

    The spread of a throughput row is that of its msg/s, of a latency row
    that of its p99. With one run per row there is no spread, and the
    largest is None.
    """
    spreads = [(row["noise_percent"], throughput_label(row)) for row in rows if row.get("noise_percent") is not None]
    spreads += [(row["noise_percent"], latency_label(row)) for row in latency_rows
                if row.get("noise_percent") is not None]
    if not spreads:
        return {"runs": runs, "largest_percent": None, "largest_row": None, "noisy_rows": 0, "rows_with_spread": 0}
    largest, label = max(spreads)
    return {
        "runs": runs,
        "largest_percent": largest,
        "largest_row": label,
        "noisy_rows": sum(1 for spread, _ in spreads if spread > NOISY_PERCENT),
        "rows_with_spread": len(spreads),
    }


def throughput_label(row: dict[str, Any]) -> str:
    """Return "class / scenario / peer" of a throughput row."""
    return f"{row['durability']} / {row['scenario']} / {row['peer']}"


def latency_label(row: dict[str, Any]) -> str:
    """Return "class / latency at N msg/s / peer" of a latency row."""
    return f"{row['durability']} / latency at {row['rate']:,} msg/s / {row['peer']}"


# -- Markdown --------------------------------------------------------------------------------


def number(value: float | None, digits: int = 0) -> str:
    """Format `value` with thousands separators and `digits` decimals, or "" for None."""
    return "" if value is None else f"{value:,.{digits}f}"


def format_report(report: dict[str, Any], chart_note: str) -> str:
    """Return the whole Markdown report of one run; `chart_note` is the chart's file name or why it is missing."""
    machine = report["machine"]
    lines = [
        f"# bench compare, {report['started_utc']}",
        "",
        f"command: `{report['command']}`",
        "",
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"temp dir {machine['temp_dir']} on {machine['temp_dir_file_system']}",
        "",
        "versions: " + ", ".join(f"{name} {version}" for name, version in report["versions"].items()),
        "",
    ]
    lines += format_throughput(report["workload"], report["results"])
    if report["latency"]:
        lines += format_latency(report["workload"], report["latency"])
    lines += format_noise(report["noise"])
    lines += ["", f"chart: {chart_note}"]
    return "\n".join(lines) + "\n"


def format_throughput(workload: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Return the throughput section: table, settings of each peer, column notes and failed checks."""
    lines = [
        "## Throughput",
        "",
        f"{workload['value_bytes']}-byte values, batch size {workload['batch_size']}, "
        f"runs per row: {workload['runs']}, msg/s median (min-max)",
        "",
        "| class | scenario | peer | messages | median msg/s | min | max | noise % | CPU µs/msg "
        "| server CPU µs/msg | logq/peer | check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if not row["supported"]:
            lines.append(f"| {row['durability']} | {row['scenario']} | {row['peer']} "
                         "| | | | | | | | | not supported |")
            continue
        rates = row["messages_per_second"]
        ratio = row["logq_to_peer_ratio"]
        lines.append(
            f"| {row['durability']} | {row['scenario']} | {row['peer']} | {row['messages']:,} "
            f"| {number(rates['median'])} | {number(rates['min'])} | {number(rates['max'])} "
            f"| {number(row['noise_percent'], 1)} | {number(row['cpu_us_per_message'], 2)} "
            f"| {number(row['server_cpu_us_per_message'], 2)} | {'' if ratio is None else f'{ratio:.3g}'} "
            f"| {row['check'] or ''} |"
        )

    lines += ["", "Settings of each peer and class:"]
    described = dict.fromkeys((row["durability"], row["peer"], row["settings"]) for row in rows if row["supported"])
    for durability, peer, settings in described:
        lines.append(f"- {durability}, {peer}: {settings}")
    lines += [
        "",
        "- logq/peer = logq's median msg/s / the peer's median msg/s in the same scenario and class.",
        "- noise % = (max - min) / median of the row's msg/s over its runs; empty with one run.",
        "- CPU µs/msg = `time.process_time()` of this process per message, all its threads, median over runs.",
        "- server CPU µs/msg = CPU time of the peer's server process per message, median over runs; "
        "empty for peers that run inside this process.",
        "- check = every message of a consume run was delivered exactly once, checked after the timed part; "
        "for the priority scenario also higher priority first and send order within a priority.",
        f"- priorities: {describe_priority_mix()}, shuffled with seed {workload['seed']}.",
        "- not supported = the peer has no such operation (the priority scenario needs message priorities).",
    ]
    if workload["per_call_messages"] != workload["messages"]:
        lines.append(f"- The one-per-call produce rows use {workload['per_call_messages']:,} messages "
                     "(--per-call-messages).")
    if workload["receive_one_messages"] != workload["messages"]:
        lines.append(f"- The receive(1) rows use {workload['receive_one_messages']:,} messages "
                     "(--receive-one-messages).")
    lines += format_failures(rows, throughput_label)
    return lines


def format_latency(workload: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Return the latency section: table, method notes and failed checks."""
    lines = [
        "",
        "## End-to-end latency",
        "",
        f"{workload['value_bytes']}-byte values, {number(workload['latency_seconds'], 1)} s measured after "
        f"{number(workload['latency_warmup_seconds'], 1)} s of warm-up per run, runs per row: {workload['runs']}, "
        "µs median over runs (max: over all runs)",
        "",
        "| class | target msg/s | peer | messages | achieved msg/s | p50 µs | p99 µs | p99.9 µs | max µs "
        "| send lag p50 µs | send lag p99 µs | noise % | check |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if not row["supported"]:
            lines.append(f"| {row['durability']} | {row['rate']:,} | {row['peer']} | | | | | | | | | | not supported |")
            continue
        latency = row["latency_us"]
        lag = row["send_lag_us"]
        messages = f"{row['messages']:,}"
        if row["runs_stopped_at_time_limit"]:
            messages += f" of {row['planned_messages']:,}"
        lines.append(
            f"| {row['durability']} | {row['rate']:,} | {row['peer']} | {messages} "
            f"| {number(row['achieved_rate'])} | {number(latency['p50'])} | {number(latency['p99'])} "
            f"| {number(latency['p99.9'])} | {number(latency['max'])} | {number(lag['p50'])} | {number(lag['p99'])} "
            f"| {number(row['noise_percent'], 1)} | {row['check']} |"
        )
    lines += [
        "",
        "- A producer task sends one message per `send` at the times start + i / rate and never waits for the "
        "consumer. A consumer task in the same event loop calls `receive_wait` with up to the batch size and acks "
        "each message with `ack`.",
        "- latency = the time the consumer's receive returned the message minus its scheduled send time, so a "
        "producer behind schedule adds to it.",
        "- send lag = the start of a `send` minus its scheduled time: the share of the latency spent before the "
        "message reached the queue.",
        "- achieved msg/s = measured messages / (last arrival - first scheduled send); below the target rate, "
        "the peer did not keep up and the latency grew during the run.",
        "- N of M messages = the peer fell so far behind that the producer stopped at the time limit (the schedule's "
        f"length, at least {MIN_OVERRUN_SECONDS:g} s, after the last scheduled send) in at least one run. The "
        "percentiles then leave out the unsent messages, whose latency would have been higher still.",
        "- noise % = (max - min) / median of p99 over the runs.",
        "- The runs use an event loop on select(), whose waits have µs resolution, instead of the default epoll loop.",
        "- check = every sent message arrived exactly once; after the producer finished, the consumer stops when all "
        f"arrived or after {IDLE_STOP_SECONDS:g} s without a message.",
    ]
    lines += format_failures(rows, latency_label)
    return lines


def format_noise(noise: dict[str, Any]) -> list[str]:
    """Return the noise summary: the largest spread and how many rows spread more than NOISY_PERCENT."""
    lines = ["", "## Noise", ""]
    if noise["largest_percent"] is None:
        if noise["runs"] < 2:
            lines.append("Not measured, because each row ran once; use --runs 3 or more for a spread.")
        else:
            lines.append("No row has a spread, because no row completed two or more runs.")
        return lines
    lines.append(
        f"Largest spread (max - min) / median: {noise['largest_percent']:.1f}% ({noise['largest_row']}). "
        f"{noise['noisy_rows']} of {noise['rows_with_spread']} rows spread more than {NOISY_PERCENT:g}%."
    )
    return lines


def format_failures(rows: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> list[str]:
    """Return a list of every failed delivery check of `rows`, or no lines when all passed."""
    failures = [f"  {label(row)}: {error}" for row in rows for error in row["delivery_errors"]]
    if not failures:
        return []
    return ["", "DELIVERY CHECK FAILED: messages were lost, delivered more than once or out of order:", *failures]
