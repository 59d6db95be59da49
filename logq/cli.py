"""The `logq` command line, a thin Typer layer over the async API in `logq`.

Each command parses its options, runs one small coroutine against the data
directory with `asyncio.run`, and prints the result. This module contains
the app, the error handling and the topics and groups commands.
`logq.cli_messages` contains produce, consume and replay, `logq.cli_queue`
contains peek, groups configure and the dlq commands, `logq.cli_ingest`
contains ingest and `logq.cli_demo` contains demo. `logq.cli_format` formats
output, `logq.cli_input` parses input, and `logq.cli_common` defines the exit
codes. docs/cli.md describes every command and the exit codes.
"""

import contextlib
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import logq
from logq import (
    DataDirLockedError,
    InvalidArgumentError,
    Log,
    LogqError,
    NotFoundError,
    OffsetOutOfRangeError,
    StorageError,
    TopicConfig,
    TopicExistsError,
)
from logq.cli_check import check
from logq.cli_common import (
    ExitCode,
    GlobalOptions,
    GroupArgument,
    JsonOption,
    TopicArgument,
    confirm_or_exit,
    global_options,
    run_with_log,
)
from logq.cli_demo import demo
from logq.cli_format import counted, format_group, format_table, format_topic, group_to_json, to_json_line, topic_to_json
from logq.cli_ingest import ingest
from logq.cli_input import check_minimum, parse_reset_target
from logq.cli_messages import consume, produce, replay
from logq.cli_queue import dlq_app, groups_configure, peek
from logq.consumers import GroupConfig

__all__ = ["ExitCode", "app", "error_message", "exit_code_for"]

DEFAULT_DATA_DIR = Path("logq-data")
TOPIC_DEFAULTS = TopicConfig()


def exit_code_for(error: BaseException) -> ExitCode:
    """Return the exit code for an error that ends a command."""
    if isinstance(error, DataDirLockedError):
        return ExitCode.LOCKED
    if isinstance(error, (NotFoundError, FileNotFoundError)):
        return ExitCode.NOT_FOUND
    if isinstance(error, (InvalidArgumentError, OffsetOutOfRangeError)):
        return ExitCode.INVALID
    if isinstance(error, TopicExistsError):
        return ExitCode.EXISTS
    if isinstance(error, StorageError):
        return ExitCode.STORAGE
    return ExitCode.ERROR


def error_message(error: BaseException) -> str:
    """Return the one-line message for an error, e.g. `missing.log: No such file or directory`."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


def _name_rejected_number(error: typer.BadParameter) -> None:
    """Put the rejected text into an option's number-parsing error, which Typer words without it.

    Typer 0.29 converts int and float options with pydantic, whose message
    ("Input should be a valid integer, ...") leaves out the value. The
    pydantic error that caused it carries the value.
    """
    cause = error.__cause__
    if not error.message.startswith("Input should be a valid") or not hasattr(cause, "errors"):
        return
    problems = cause.errors()
    if not problems or "input" not in problems[0]:
        return
    kind = "number" if "number" in error.message else "integer"
    error.message = f"{problems[0]['input']!r} is not a valid {kind}"


class LogqGroup(TyperGroup):
    """The root command group, which turns the errors of every command into an exit code.

    A LogqError or OSError prints as one `error: <message>` line on stderr,
    with a traceback only under --debug.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.BadParameter as error:
            _name_rejected_number(error)
            raise
        except BrokenPipeError:
            # The reader of stdout went away, as in `logq consume ... | head`.
            _discard_stdout()
            raise typer.Exit(ExitCode.ERROR) from None
        except (LogqError, OSError) as error:
            if isinstance(ctx.obj, GlobalOptions) and ctx.obj.debug:
                raise
            typer.echo(f"error: {error_message(error)}", err=True)
            raise typer.Exit(exit_code_for(error)) from None


def _discard_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


app = typer.Typer(
    name="logq",
    cls=LogqGroup,
    help="logq: an embedded streaming log with consumer groups.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create, list, describe and delete topics.", no_args_is_help=True, rich_markup_mode=None)
groups_app = typer.Typer(
    help="List, describe, configure, reset and skip messages of consumer groups.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(topics_app, name="topics")
app.add_typer(groups_app, name="groups")
app.add_typer(dlq_app, name="dlq")
app.command()(produce)
app.command()(consume)
app.command()(peek)
app.command()(replay)
app.command()(ingest)
app.command()(demo)
app.command()(check)
groups_app.command("configure")(groups_configure)


@app.callback()
def main(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option("--data", envvar="LOGQ_DATA", help="Data directory, created if it does not exist.")
    ] = DEFAULT_DATA_DIR,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and logq's INFO logs on stderr.")] = False,
) -> None:
    """logq: an embedded streaming log with consumer groups.

    \b
    Example:
        logq --data ./logq-data topics list
    """
    ctx.obj = GlobalOptions(data=data, debug=debug)
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- topics -----------------------------------------------------------------------


class Compression(str, Enum):
    """Record batch compression of a topic."""

    none = "none"
    zstd = "zstd"


class FsyncMode(str, Enum):
    """When a topic's appends are fsynced."""

    always = "always"
    interval = "interval"
    never = "never"


@topics_app.command("create")
def topics_create(
    ctx: typer.Context,
    name: TopicArgument,
    partitions: Annotated[int, typer.Option(help="Number of partitions, 1 to 1024.")] = TOPIC_DEFAULTS.partitions,
    segment_bytes: Annotated[
        int, typer.Option(help="Size in bytes at which a segment rolls (16 MiB by default).")
    ] = TOPIC_DEFAULTS.segment_bytes,
    compression: Annotated[
        Compression, typer.Option(help="Compression of each record batch.")
    ] = Compression(TOPIC_DEFAULTS.compression),
    fsync: Annotated[
        FsyncMode,
        typer.Option(help="always waits for fsync on each send, interval fsyncs every --fsync-interval-ms, never leaves it to the OS."),
    ] = FsyncMode(TOPIC_DEFAULTS.fsync),
    fsync_interval_ms: Annotated[
        int, typer.Option(help="Period of --fsync interval, in ms.")
    ] = TOPIC_DEFAULTS.fsync_interval_ms,
    max_message_bytes: Annotated[
        int, typer.Option(help="Largest message in bytes, key, headers and value together (1 MiB by default).")
    ] = TOPIC_DEFAULTS.max_message_bytes,
    retention_bytes: Annotated[
        int | None,
        typer.Option(help="Size in bytes per partition above which the oldest segments are deleted. [default: keep all]"),
    ] = None,
    retention_ms: Annotated[
        int | None,
        typer.Option(help="Age in ms after which segments are deleted. [default: keep all]"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a topic.

    \b
    Example:
        logq topics create orders --partitions 3 --compression zstd
    """
    settings = {
        "partitions": partitions,
        "segment_bytes": segment_bytes,
        "compression": compression.value,
        "fsync": fsync.value,
        "fsync_interval_ms": fsync_interval_ms,
        "max_message_bytes": max_message_bytes,
        "retention_bytes": retention_bytes,
        "retention_ms": retention_ms,
    }

    async def work(log: Log) -> logq.TopicInfo:
        return await log.create_topic(name, **settings)

    info = run_with_log(ctx, work)
    if json_output:
        typer.echo(to_json_line(topic_to_json(info)))
    else:
        typer.echo(f"created topic {info.name} with {counted(len(info.partitions), 'partition')}")


@topics_app.command("list")
def topics_list(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List the topics with their partition count, message count and size.

    \b
    Example:
        logq topics list --json
    """

    async def work(log: Log) -> list[logq.TopicInfo]:
        return [log.describe_topic(name) for name in log.list_topics()]

    rows = [
        {
            "name": info.name,
            "partitions": len(info.partitions),
            "messages": info.messages,
            "size_bytes": sum(partition.size_bytes for partition in info.partitions),
        }
        for info in run_with_log(ctx, work)
    ]
    if json_output:
        typer.echo(to_json_line(rows))
    elif not rows:
        typer.echo(f"no topics in {global_options(ctx).data}; create one with `logq topics create NAME`", err=True)
    else:
        typer.echo(format_table(["topic", "partitions", "messages", "size bytes"], [list(r.values()) for r in rows]))


@topics_app.command("describe")
def topics_describe(ctx: typer.Context, name: TopicArgument, json_output: JsonOption = False) -> None:
    """Show a topic's settings and the offsets and size of each partition.

    \b
    Example:
        logq topics describe orders
    """

    async def work(log: Log) -> logq.TopicInfo:
        return log.describe_topic(name)

    info = run_with_log(ctx, work)
    typer.echo(to_json_line(topic_to_json(info)) if json_output else format_topic(info))


@topics_app.command("delete")
def topics_delete(
    ctx: typer.Context,
    name: TopicArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking for confirmation.")] = False,
) -> None:
    """Delete a topic and all its messages, after a confirmation.

    Without --yes it prompts for confirmation on the terminal. It fails when
    standard input is not a terminal, so scripts must pass --yes.

    \b
    Example:
        logq topics delete orders --yes
    """

    async def describe(log: Log) -> logq.TopicInfo:
        return log.describe_topic(name)

    async def delete(log: Log) -> None:
        await log.delete_topic(name)

    # The data directory stays unlocked while the prompt waits for an answer.
    info = run_with_log(ctx, describe)
    if not yes:
        confirm_or_exit(
            f"Delete topic {name!r} and its {info.messages} messages?",
            refusal=f"not deleting topic {name!r}",
            declined=f"topic {name!r} was not deleted",
        )
    run_with_log(ctx, delete)
    typer.echo(f"deleted topic {name}")


# -- groups -----------------------------------------------------------------------


@groups_app.command("list")
def groups_list(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List the consumer groups with the topics they read and their total lag.

    \b
    Example:
        logq groups list
    """

    async def work(log: Log) -> list[tuple[str, list[logq.GroupPartitionInfo]]]:
        return [(name, await log.describe_group(name)) for name in log.list_groups()]

    rows = [
        {"group": name, "topics": sorted({row.topic for row in positions}), "lag": sum(row.lag for row in positions)}
        for name, positions in run_with_log(ctx, work)
    ]
    if json_output:
        typer.echo(to_json_line(rows))
    elif not rows:
        typer.echo(f"no consumer groups in {global_options(ctx).data}", err=True)
    else:
        typer.echo(format_table(["group", "topics", "lag"], [[r["group"], ",".join(r["topics"]), r["lag"]] for r in rows]))


@groups_app.command("describe")
def groups_describe(ctx: typer.Context, group: GroupArgument, json_output: JsonOption = False) -> None:
    """Show a group's settings and, per partition, its committed offset, lag and delivery counts.

    The counts are the messages in flight (leased), waiting for redelivery,
    held back by per-key ordering, and sent to the dead-letter topic.

    \b
    Example:
        logq groups describe billing --json
    """

    async def work(log: Log) -> tuple[GroupConfig, list[logq.GroupPartitionInfo]]:
        return await log.group_config(group), await log.describe_group(group)

    config, rows = run_with_log(ctx, work)
    typer.echo(to_json_line(group_to_json(group, config, rows)) if json_output else format_group(group, config, rows))


@groups_app.command("reset")
def groups_reset(
    ctx: typer.Context,
    group: GroupArgument,
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic whose partitions are reset.")],
    to: Annotated[
        str,
        typer.Option(help="earliest, latest, an offset (applied to each partition) or an ISO 8601 time (UTC when no zone is given)."),
    ],
    json_output: JsonOption = False,
) -> None:
    """Move a group's committed offset on every partition of a topic; messages in flight are delivered again.

    \b
    Example:
        logq groups reset billing --topic orders --to 2024-05-01T00:00:00Z
    """
    target = parse_reset_target(to)

    async def work(log: Log) -> tuple[GroupConfig, list[logq.GroupPartitionInfo]]:
        rows = await log.reset_group(group, topic, to=target)
        return await log.group_config(group), rows

    config, rows = run_with_log(ctx, work)
    typer.echo(to_json_line(group_to_json(group, config, rows)) if json_output else format_group(group, config, rows))


@groups_app.command("skip")
def groups_skip(
    ctx: typer.Context,
    group: GroupArgument,
    topic: Annotated[str, typer.Option("--topic", "-t", help="Topic of the messages to skip.")],
    partition: Annotated[int, typer.Option("--partition", "-p", help="Partition of the messages to skip.")],
    start: Annotated[int, typer.Option("--from", help="First offset to skip.")],
    end: Annotated[int, typer.Option("--to", help="Offset after the last one to skip (exclusive).")],
    json_output: JsonOption = False,
) -> None:
    """Mark offsets FROM to TO - 1 of one partition done for a group without delivering them.

    For a damaged batch that a consumer reports, or poison messages. Other
    groups still read them.

    \b
    Example:
        logq groups skip billing --topic orders --partition 0 --from 1291 --to 1300
    """

    check_minimum(start, 0, "--from")
    check_minimum(end, 0, "--to")
    if end <= start:
        raise typer.BadParameter(
            f"{end} is not above --from {start}; --to is exclusive, so pass --to {start + 1} to skip offset "
            f"{start} alone", param_hint="'--to'",
        )

    async def work(log: Log) -> tuple[int, GroupConfig, list[logq.GroupPartitionInfo]]:
        skipped = await log.skip_messages(group, topic, partition=partition, start=start, end=end)
        rows = [row for row in await log.describe_group(group) if row.topic == topic]
        return skipped, await log.group_config(group), rows

    skipped, config, rows = run_with_log(ctx, work)
    if json_output:
        typer.echo(to_json_line({"skipped": skipped, **group_to_json(group, config, rows)}))
    else:
        typer.echo(f"skipped {counted(skipped, 'message')} of {topic}/{partition} in group {group}")
        typer.echo(format_group(group, config, rows))


if __name__ == "__main__":
    app(prog_name="logq")
