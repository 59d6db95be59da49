"""The PNG chart of a bench.compare run: msg/s per scenario and peer, and the latency percentiles.

One row of panels shows throughput, one panel per durability class, as
grouped bars of the median msg/s on a log scale with the min-max range as
error bars. When the latency scenario ran, a second row shows p50, p99 and
p99.9 per send rate and peer, also on a log scale. matplotlib is optional
(the `bench` extra of pyproject.toml). Without it `write_chart` logs a warning
and writes nothing.
"""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INSTALL_HINT = "install it with pip install -e '.[bench]'"

# Percentiles of the latency panels, as keys of a latency row's "latency_us".
LATENCY_PERCENTILES = ("p50", "p99", "p99.9")

# Width of the group of bars at one x position, in x units.
GROUP_WIDTH = 0.8


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """Draw the chart of `report` (as bench.compare builds it) into the PNG file `path`; return whether it did.

    Returns False, after logging a warning, when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError as error:
        logger.warning("chart skipped: matplotlib is not installed (%s); %s", error, INSTALL_HINT)
        return False

    rows = [row for row in report["results"] if row["supported"]]
    latency_rows = [row for row in report["latency"] if row["supported"]]
    classes = list(dict.fromkeys(row["durability"] for row in report["results"] + report["latency"]))
    peers = list(dict.fromkeys(row["peer"] for row in rows + latency_rows))
    panel_rows = 2 if latency_rows else 1
    figure = Figure(figsize=(7.5 * max(1, len(classes)), 5.5 * panel_rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panel_rows, max(1, len(classes)), squeeze=False)
    colors = {peer: f"C{index % 10}" for index, peer in enumerate(peers)}

    for column, durability in enumerate(classes):
        draw_throughput(axes[0][column], [row for row in rows if row["durability"] == durability], peers, colors)
        axes[0][column].set_title(f"throughput, durability {durability!r}")
        if latency_rows:
            draw_latency(axes[1][column], [row for row in latency_rows if row["durability"] == durability],
                         peers, colors)
            axes[1][column].set_title(f"end-to-end latency, durability {durability!r}")

    # One legend entry per peer, taken from the first panel that has the peer.
    handles: list[Any] = []
    labels: list[str] = []
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4) or 1)
    for axis in axes.flat:
        set_log_scale(axis, FuncFormatter(lambda value, _: f"{value:,.0f}"), NullFormatter())
    figure.suptitle(f"bench compare {report['started_utc']}, medians of {report['workload']['runs']} run(s); "
                    f"{report['machine']['nproc']} CPUs, {report['machine']['cpu_model']}", fontsize=10)
    figure.savefig(path, dpi=100)
    return True


def draw_throughput(axis: Any, rows: list[dict[str, Any]], peers: list[str], colors: dict[str, str]) -> None:
    """Draw grouped bars of the median msg/s of each scenario (x) and peer (bar), min-max as error bars."""
    scenarios = list(dict.fromkeys(row["scenario"] for row in rows))
    by_key = {(row["scenario"], row["peer"]): row for row in rows}
    present = [peer for peer in peers if any(row["peer"] == peer for row in rows)]
    width = GROUP_WIDTH / max(1, len(present))
    for index, peer in enumerate(present):
        positions, medians, below, above = [], [], [], []
        for position, scenario in enumerate(scenarios):
            row = by_key.get((scenario, peer))
            if row is None:
                continue
            rates = row["messages_per_second"]
            positions.append(position - GROUP_WIDTH / 2 + (index + 0.5) * width)
            medians.append(rates["median"])
            below.append(rates["median"] - rates["min"])
            above.append(rates["max"] - rates["median"])
        axis.bar(positions, medians, width, yerr=[below, above], capsize=2, label=peer, color=colors[peer])
    axis.set_ylabel("messages per second (median)")
    axis.set_xticks(range(len(scenarios)), [textwrap.fill(name, 16) for name in scenarios], fontsize=8)
    axis.grid(axis="y", which="major", alpha=0.3)


def draw_latency(axis: Any, rows: list[dict[str, Any]], peers: list[str], colors: dict[str, str]) -> None:
    """Draw grouped bars of p50, p99 and p99.9 in µs for each send rate (x) and peer (bar)."""
    rates = sorted({row["rate"] for row in rows})
    groups = [(rate, key) for rate in rates for key in LATENCY_PERCENTILES]
    by_key = {(row["rate"], row["peer"]): row for row in rows}
    present = [peer for peer in peers if any(row["peer"] == peer for row in rows)]
    width = GROUP_WIDTH / max(1, len(present))
    for index, peer in enumerate(present):
        positions, values = [], []
        for position, (rate, key) in enumerate(groups):
            row = by_key.get((rate, peer))
            value = None if row is None else row["latency_us"][key]
            if value is None:
                continue
            positions.append(position - GROUP_WIDTH / 2 + (index + 0.5) * width)
            values.append(value)
        axis.bar(positions, values, width, label=peer, color=colors[peer])
    axis.set_ylabel("latency in µs (median over runs)")
    axis.set_xticks(range(len(groups)), [f"{rate:,}/s\n{key}" for rate, key in groups], fontsize=8)
    axis.grid(axis="y", which="major", alpha=0.3)


def set_log_scale(axis: Any, major_formatter: Any, minor_formatter: Any) -> None:
    """Put the y axis on a log scale from the decade below the lowest bar, with plain-number labels.

    A bar on a log scale starts at the bottom of the axis. matplotlib's
    automatic limit can leave the shortest bar a sliver, so the bottom is set
    to a power of ten below every bar.
    """
    heights = [patch.get_height() for patch in axis.patches if patch.get_height() > 0]
    axis.set_yscale("log")
    if heights:
        bottom = 10 ** math.floor(math.log10(min(heights)))
        top = 10 ** math.ceil(math.log10(max(heights) * 1.5))
        axis.set_ylim(bottom, top)
    axis.yaxis.set_major_formatter(major_formatter)
    axis.yaxis.set_minor_formatter(minor_formatter)
