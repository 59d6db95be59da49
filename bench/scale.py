"""Scale benchmark: throughput, reopen time and RSS of logq and a sqlite3 queue as the stored log grows.

Owns `python -m bench.scale` (and `python -m bench scale`) and the order of
the measurements. For each engine of bench.scale_engines it grows one data
directory through the sizes of `--sizes`, appending up to the next size
instead of starting again. At each size it measures:

- produce: `send_batch` calls of `--batch-size` values over the last
  `--window` messages sent before the size is reached;
- consume: a consumer at the size minus `--window` receives and acks the
  last `--window` messages in receives of `--batch-size`;
- reopen: fresh child processes (bench.scale_child) time the open and the
  first receive of that consumer, and read their RSS. The first child opens
  the data right after the growing process closed it, the later ones after
  the child before them closed it;
- memory: a child receives `--window` messages without acking them, and
  another acks every other one of them, and each reads its RSS.

bench.scale_report computes the target checks and writes the reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.scale_child import read_memory_kib
from bench.scale_engines import ENGINES, Engine, Settings, make_engine
from bench.scale_report import (
    Chunk,
    SizeResult,
    build_report,
    format_report_markdown,
    format_report_text,
    table_rows,
    write_results,
)
from bench.scenarios import Stopwatch, make_value
from bench.throughput import positive_int

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPOSITORY_ROOT / "bench" / "results"
DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000)

# Bytes on disk per message beyond the value, measured with 1,000,000 messages
# of 100 bytes sent in batches of 1,000: logq 24.7 (segments, indexes and
# group journals), sqlite3 35.2 (table and partial index). The free-space
# check adds a quarter and a fixed reserve for the sqlite write-ahead log.
DISK_OVERHEAD_BYTES = {"logq": 25, "sqlite": 36}
DISK_MARGIN = 1.25
DISK_RESERVE_BYTES = 256 * 1024 * 1024

# A child that runs longer than this is stuck; bench.scale then stops with an error.
CHILD_TIMEOUT_SECONDS = 900.0


def progress(message: str) -> None:
    """Print a progress line on stderr, so that stdout stays parseable under --json."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- parent-side measurements ------------------------------------------------------------------


async def grow(engine: Engine, start: int, end: int, value: bytes, settings: Settings) -> list[Chunk]:
    """Send messages start..end-1 in calls of `batch_size` values, timing stretches of `window` messages.

    The stretches are counted back from `end`, so the last one is the window
    right before `end`, and the first may be shorter.
    """
    chunks: list[Chunk] = []
    boundaries = list(range(end, start, -settings.window))[::-1]
    position = start
    for boundary in boundaries:
        count = boundary - position
        with Stopwatch() as watch:
            remaining = count
            while remaining > 0:
                size = min(settings.batch_size, remaining)
                await engine.send_batch([value] * size)
                remaining -= size
        chunks.append(Chunk(end=boundary, messages=count, wall_seconds=watch.wall_seconds,
                            cpu_seconds=watch.cpu_seconds))
        position = boundary
    return chunks


async def consume(engine: Engine, start: int, count: int, batch_size: int,
                  delivered: list[int] | None = None) -> None:
    """Receive and ack `count` messages for the main consumer, appending their offsets to `delivered` if given.

    The catch-up passes no list, because millions of offsets would grow the
    parent's RSS. Raises RuntimeError when a receive returns nothing before
    `count` messages arrived, although all of them were stored before it
    started.
    """
    received = 0
    while received < count:
        batch = await engine.receive(min(batch_size, count - received))
        if not batch:
            raise RuntimeError(f"{engine.name}: receive returned no message after {received} of {count} "
                               f"messages from offset {start}, although all of them were stored")
        received += len(batch)
        if delivered is not None:
            delivered.extend(engine.offsets(batch))
        await engine.ack_batch(batch)


def check_offsets(engine: Engine, delivered: list[int], start: int, count: int) -> None:
    """Raise RuntimeError unless `delivered` contains each offset start..start+count-1 exactly once."""
    expected = set(range(start, start + count))
    if len(delivered) != count or set(delivered) != expected:
        raise RuntimeError(f"{engine.name}: the consumer should receive offsets {start}..{start + count - 1} once "
                           f"each, but received {len(delivered)} messages, {len(set(delivered))} distinct, "
                           f"{len(expected - set(delivered))} missing")


async def catch_up(engine: Engine, start: int, end: int, settings: Settings) -> dict[str, Any]:
    """Move the main consumer from `start` to `end` by the `--catch-up` mode; return the mode, count and seconds.

    "consume" receives and acks every message, and "reset" skips them. Then
    the engine's own view of the consumer must show it at `end`.
    """
    started = time.perf_counter()
    if end > start and settings.catch_up == "consume":
        await consume(engine, start, end - start, settings.batch_size)
    elif end > start:
        await engine.skip_main(start, end)
    await engine.check_main_position(end)
    return {"mode": settings.catch_up, "messages": end - start, "seconds": time.perf_counter() - started}


async def time_consume(engine: Engine, start: int, settings: Settings) -> dict[str, Any]:
    """Time the main consumer receiving and acking `window` messages from `start`, then check them."""
    delivered: list[int] = []
    with Stopwatch() as watch:
        await consume(engine, start, settings.window, settings.batch_size, delivered)
    check_offsets(engine, delivered, start, settings.window)
    return {"messages": settings.window, "wall_seconds": watch.wall_seconds, "cpu_seconds": watch.cpu_seconds}


# -- child processes ---------------------------------------------------------------------------


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run bench.scale_child with `spec` in a fresh interpreter and return the JSON object it printed.

    Raises RuntimeError with the child's stderr when it fails, prints no
    JSON or runs longer than CHILD_TIMEOUT_SECONDS.
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPOSITORY_ROOT), environment.get("PYTHONPATH", "")) if part
    )
    command = [sys.executable, "-m", "bench.scale_child", json.dumps(spec)]
    try:
        completed = subprocess.run(command, cwd=REPOSITORY_ROOT, env=environment, capture_output=True, text=True,
                                   timeout=CHILD_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"child {spec['engine']} {spec['role']} timed out after "
                           f"{CHILD_TIMEOUT_SECONDS:.0f} s") from exc
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec['engine']} {spec['role']} failed with exit status "
                           f"{completed.returncode}:\n{completed.stderr.strip()}")
    return json.loads(lines[-1])


def write_profile_text(profile_path: Path) -> Path:
    """Write the 50 entries of a cProfile file with the highest cumulative time as text beside it."""
    text_path = profile_path.with_suffix(".txt")
    with open(text_path, "w", encoding="utf-8") as output:
        pstats.Stats(str(profile_path), stream=output).sort_stats("cumulative").print_stats(50)
    return text_path


async def run_reopen_children(engine: Engine, size: int, position: int, settings: Settings,
                              profile_prefix: Path | None) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """Run the reopen children of one size; return the first one's result, the later ones' and the profile.

    The engine is open on entry and on return. Each child leaves the message
    it received unacked, so the main consumer is rewound to `position` before
    every child but the first.
    """
    results = []
    profile_text = None
    for run in range(settings.reopen_runs):
        if run:
            await engine.rewind_main(position)
        await engine.close()
        spec = engine.child_spec("reopen")
        profile_path = None
        if run == 0 and profile_prefix is not None:
            profile_path = profile_prefix.with_name(f"{profile_prefix.name}-{engine.name}-{size}.prof")
            spec["profile_path"] = str(profile_path)
        progress(f"{engine.name}: reopen child {run + 1} of {settings.reopen_runs} at {size:,} messages")
        results.append(run_child(spec))
        if profile_path is not None:
            profile_text = str(write_profile_text(profile_path))
        await engine.open()
    return results[0], results[1:], profile_text


async def measure_size(engine: Engine, previous: int, size: int, value: bytes, settings: Settings,
                       profile_prefix: Path | None) -> SizeResult:
    """Grow the open engine from `previous` to `size` messages and take every measurement of that size.

    The engine is open on entry and on return. Its main consumer is at
    `previous` on entry and at `size` on return.
    """
    position = size - settings.window
    progress(f"{engine.name}: growing the log from {previous:,} to {size:,} messages")
    growth = await grow(engine, previous, size, value, settings)
    progress(f"{engine.name}: moving the main consumer from {previous:,} to {position:,} ({settings.catch_up})")
    caught_up = await catch_up(engine, previous, position, settings)
    rss, hwm = read_memory_kib()

    after_writer, again, profile_text = await run_reopen_children(engine, size, position, settings, profile_prefix)

    consume_runs = []
    for run in range(settings.consume_runs):
        await engine.rewind_main(position)
        progress(f"{engine.name}: consume run {run + 1} of {settings.consume_runs} at {size:,} messages")
        consume_runs.append(await time_consume(engine, position, settings))

    memory = {}
    for role in ("in-flight", "ack-holes"):
        await engine.prepare_child(role, position)
        await engine.close()
        progress(f"{engine.name}: {role} child at {size:,} messages")
        memory[role] = run_child(engine.child_spec(role))
        await engine.open()
    await engine.finish_size(size)

    return SizeResult(
        size=size, produce=growth[-1], growth=growth, catch_up=caught_up, consume_runs=consume_runs,
        reopen_after_writer=after_writer, reopen_again=again, in_flight=memory["in-flight"],
        ack_holes=memory["ack-holes"], disk_bytes=engine.disk_bytes(),
        parent_memory_kib={"rss_kib": rss, "hwm_kib": hwm}, profile_path=profile_text,
    )


async def run_engine(name: str, root: Path, settings: Settings, profile_prefix: Path | None) -> list[SizeResult]:
    """Measure one engine at each of its sizes in a new directory under `root`, removed afterwards."""
    engine = make_engine(name, root / name, settings)
    value = make_value(settings.value_bytes)
    results: list[SizeResult] = []
    previous = 0
    await engine.open()
    try:
        for size in settings.sizes_of(name):
            results.append(await measure_size(engine, previous, size, value, settings, profile_prefix))
            previous = size
    finally:
        await engine.close()
        shutil.rmtree(engine.directory, ignore_errors=True)
    return results


async def run_all(settings: Settings, root: Path, profile_prefix: Path | None) -> dict[str, list[SizeResult]]:
    """Run every engine that has sizes to measure, one after the other."""
    all_results = {}
    for name in ENGINES:
        if settings.sizes_of(name):
            all_results[name] = await run_engine(name, root, settings, profile_prefix)
    return all_results


# -- command line --------------------------------------------------------------------------------


def estimate_disk_bytes(settings: Settings) -> int:
    """Return an estimate of the free space a run needs: the larger engine at its largest size, with a margin.

    The engines run one after the other and each removes its directory, so
    only one exists at a time.
    """
    needs = [max(settings.sizes_of(name)) * (settings.value_bytes + DISK_OVERHEAD_BYTES[name])
             for name in ENGINES if settings.sizes_of(name)]
    return int(max(needs) * DISK_MARGIN) + DISK_RESERVE_BYTES


def parse_settings(argv: list[str]) -> Settings:
    """Parse the command line into Settings; exits with status 2 and a message for invalid options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="Measure throughput, reopen time and RSS of logq and a sqlite3 queue as the log grows.",
    )
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=list(DEFAULT_SIZES), metavar="N",
                        help="log sizes in messages at which to measure, grown in one data directory "
                             "(default: 100000 1000000 10000000)")
    parser.add_argument("--max-size", type=positive_int, default=None, metavar="N",
                        help="leave out the sizes above N, for a quicker run")
    parser.add_argument("--window", type=positive_int, default=100_000, metavar="N",
                        help="messages in the timed produce and consume windows and in flight in the memory "
                             "children (default: 100000); at most the smallest size")
    parser.add_argument("--batch-size", type=positive_int, default=1000, metavar="N",
                        help="values per send_batch call and max messages per receive (default: 1000)")
    parser.add_argument("--value-bytes", type=positive_int, default=100, metavar="N",
                        help="size of each value in bytes (default: 100)")
    parser.add_argument("--consume-runs", type=positive_int, default=3, metavar="N",
                        help="timed consume runs at each size; the table gives the median (default: 3)")
    parser.add_argument("--reopen-runs", type=positive_int, default=3, metavar="N",
                        help="reopen children at each size: the first after the growing process closed the "
                             "data, the others after the child before them (default: 3)")
    parser.add_argument("--catch-up", choices=("consume", "reset"), default="consume",
                        help="how the consumer reaches the size minus the window: by receiving and acking every "
                             "message (default) or by a reset, which is quicker")
    parser.add_argument("--skip-sqlite", action="store_true", help="measure logq only")
    parser.add_argument("--sqlite-max-size", type=positive_int, default=None, metavar="N",
                        help="leave out the sqlite sizes above N (default: the same sizes as logq)")
    parser.add_argument("--sqlite-transaction-rows", type=positive_int, default=100, metavar="N",
                        help="max rows per sqlite transaction, as in bench.compare (default: 100)")
    parser.add_argument("--dir", default=None, metavar="DIR",
                        help="directory in which to create the temporary data directory (default: the system "
                             "temp directory)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, metavar="DIR",
                        help="where to write scale-<UTC time>.json and .md (default: bench/results)")
    parser.add_argument("--profile", action="store_true",
                        help="run the first reopen child of each size under cProfile, all threads, and write "
                             "the statistics to the results directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    arguments = parser.parse_args(argv)

    sizes = sorted(set(arguments.sizes))
    if arguments.max_size is not None:
        sizes = [size for size in sizes if size <= arguments.max_size]
    if not sizes:
        parser.error(f"--max-size {arguments.max_size} leaves no size to measure; "
                     f"use at least {min(arguments.sizes)}")
    sqlite_sizes: list[int] = []
    if not arguments.skip_sqlite:
        sqlite_sizes = [size for size in sizes
                        if arguments.sqlite_max_size is None or size <= arguments.sqlite_max_size]
    if arguments.window > sizes[0]:
        parser.error(f"--window {arguments.window} exceeds the smallest size {sizes[0]}; use a window of at "
                     "most the smallest size")
    return Settings(
        sizes=tuple(sizes), sqlite_sizes=tuple(sqlite_sizes), window=arguments.window,
        batch_size=arguments.batch_size, value_bytes=arguments.value_bytes, consume_runs=arguments.consume_runs,
        reopen_runs=arguments.reopen_runs, catch_up=arguments.catch_up,
        sqlite_transaction_rows=arguments.sqlite_transaction_rows, parent_dir=arguments.dir,
        results_dir=arguments.results_dir, profile=arguments.profile, as_json=arguments.json,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the scale benchmark, print the report and write it to the results directory; return the exit status.

    The status is 1 when the file system of the data directory has too little
    free space, and 0 after a complete run. A failed measurement raises
    RuntimeError.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    settings = parse_settings(arguments)
    parent = Path(settings.parent_dir) if settings.parent_dir else Path(tempfile.gettempdir())
    needed = estimate_disk_bytes(settings)
    free = shutil.disk_usage(parent).free
    if free < needed:
        print(f"error: {parent} has {free / 2**30:.1f} GiB free and this run needs about {needed / 2**30:.1f} "
              "GiB; free some space, pick another file system with --dir, or measure fewer messages with "
              "--max-size", file=sys.stderr)
        return 1

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    profile_prefix = None
    if settings.profile:
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        profile_prefix = settings.results_dir / f"scale-{stamp}-reopen"
    load_at_start = list(os.getloadavg())
    root = Path(tempfile.mkdtemp(prefix="logq-scale-", dir=parent))
    try:
        all_results = asyncio.run(run_all(settings, root, profile_prefix))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    load_average = {"start": load_at_start, "end": list(os.getloadavg())}
    report = build_report(all_results, settings, stamp, arguments, load_average)
    rows = table_rows(all_results)
    markdown = format_report_markdown(report, rows, settings)
    json_path, markdown_path = write_results(report, markdown, settings.results_dir, stamp)
    if settings.as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report_text(report, rows, settings))
    progress(f"wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
