"""Pieces shared by the command modules of `logq`: global options, parameter types and running a coroutine.

Commands let `LogqError` and `OSError` propagate; the root group in
`logq.cli` turns them into one `error:` line and an exit code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

import logq
from logq import Log

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    """Options given before the command: the data directory and whether to show tracebacks."""

    data: Path
    debug: bool


TopicArgument = Annotated[str, typer.Argument(metavar="TOPIC", help="Topic name.", show_default=False)]
GroupArgument = Annotated[str, typer.Argument(metavar="GROUP", help="Consumer group name.", show_default=False)]
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
