"""Pieces shared by the command modules of `logq`: global options, parameter types and running a coroutine.

Commands let `LogqError` and `OSError` propagate; the root group in
`logq.cli` turns them into one `error:` line and an exit code.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

import logq
from logq import Log

T = TypeVar("T")


class ExitCode(IntEnum):
    """Exit codes of `logq`, listed in docs/cli.md for scripts."""

    OK = 0
    ERROR = 1  # any other logq error, an OS error, a declined confirmation, or a failed demo check
    USAGE = 2  # Typer's code for a bad command line or option value
    NOT_FOUND = 3  # unknown topic, group or dead letter, missing input file
    LOCKED = 4  # another process owns the data directory
    INVALID = 5  # logq rejected a value: a name, a topic or group setting, a message size
    EXISTS = 6  # the topic already exists
    STORAGE = 7  # a file in the data directory is corrupt or unusable, or the disk is full
    NOTHING_REDRIVEN = 8  # `dlq redrive` had dead letters to redrive and redrove none of them
    FINDINGS = 9  # `check` found damage that is still there (not repaired, or not repairable)
    INTERRUPTED = 130  # Ctrl-C outside --follow (Typer's code, 128 + SIGINT)


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    """Options given before the command: the data directory and whether to show tracebacks."""

    data: Path
    debug: bool


TopicArgument = Annotated[str, typer.Argument(metavar="TOPIC", help="Topic name.", show_default=False)]
GroupArgument = Annotated[str, typer.Argument(metavar="GROUP", help="Consumer group name.", show_default=False)]
GroupOption = Annotated[
    str, typer.Option("--group", "-g", help="Consumer group name.", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text.")]
CountOption = Annotated[
    int | None, typer.Option("--count", "-n", help="Stop after this many messages. [default: no limit]")
]


def global_options(ctx: typer.Context) -> GlobalOptions:
    """Return the options that the app callback stored on the root context."""
    options = ctx.find_root().obj
    assert isinstance(options, GlobalOptions), "the app callback sets the global options"
    return options


def run(entry: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `entry()` on a new event loop and return its result."""
    return asyncio.run(entry())


def run_with_log(ctx: typer.Context, work: Callable[[Log], Awaitable[T]]) -> T:
    """Open the data directory, run `work` on it, close it and return the result."""
    data = global_options(ctx).data

    async def open_and_work() -> T:
        async with logq.open(data) as log:
            return await work(log)

    return run(open_and_work)


def confirm_or_exit(question: str, *, refusal: str, declined: str) -> None:
    """Ask `question` on the terminal and exit unless the user confirms.

    Without a terminal on standard input no reply can be read, so it prints
    `refusal` (such as "not deleting topic 'orders'") with the reason and exits
    with the usage code. After a no it prints `declined` and exits with code 1.
    """
    if not sys.stdin.isatty():
        typer.echo(
            f"error: {refusal}: standard input is not a terminal, so no answer can be read; "
            "pass --yes to skip the confirmation",
            err=True,
        )
        raise typer.Exit(ExitCode.USAGE)
    if not typer.confirm(question):
        typer.echo(declined, err=True)
        raise typer.Exit(ExitCode.ERROR)
