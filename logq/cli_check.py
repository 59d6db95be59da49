"""The `logq check` command: verify the files of a data directory and, with --repair, fix what is safe."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from logq.check import CheckReport, check as check_data_dir
from logq.cli_common import ExitCode, JsonOption, global_options


def check(
    ctx: typer.Context,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fix what is safe to fix: torn tails, indexes, the priority index, temporary files, snapshots.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check segments, indexes, priority indexes and group journals of the data directory.

    Prints one line per finding and a summary. Exits with code 9 when findings
    remain and 0 when the directory is clean. Without --repair it writes
    nothing, not even the lock file, so it can check a read-only copy.

    \b
    Example:
        logq check --repair
    """
    report = check_data_dir(global_options(ctx).data, repair=repair)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        for finding in report.findings:
            typer.echo(finding.line())
        if repair:
            for finding in report.remaining:
                typer.echo(f"still: {finding.line()}")
        typer.echo(_summary(report))
    if not report.clean:
        raise typer.Exit(ExitCode.FINDINGS)


def _summary(report: CheckReport) -> str:
    scope = (
        f"checked {_count(report.partitions, 'partition')}, {_count(report.segments, 'segment')}, "
        f"{_count(report.batches, 'batch', 'batches')}, {_count(report.groups, 'group')}"
    )
    found = f"{_count(len(report.findings), 'problem')} found"
    if report.clean and not report.findings:
        return f"{scope}: no problems found"
    if report.repair:
        repaired = sum(finding.repaired for finding in report.findings)
        return f"{scope}: {found}, {repaired} repaired, {len(report.remaining)} remain"
    repairable = sum(finding.repairable for finding in report.findings)
    return f"{scope}: {found}, {repairable} repairable with --repair"


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"
