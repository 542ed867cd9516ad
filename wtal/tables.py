"""Metrics tables: one row per tIoU threshold and per named average, one column per run.

The one formatter behind the mAP tables that ``wtal detect``, ``wtal postprocess`` and
``wtal demo`` print (plain text) and the mean +- std tables of ``wtal bench`` (Markdown, also
its ``bench.md``). ``wtal score`` prints :meth:`wtal.evaluation.DetectionMetrics.format_table`,
a single-run layout with per-class rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

NAME_WIDTH = 8
"""Width of the row-name column of a plain-text table (``0.1:0.7`` fits)."""
CELL_WIDTH = 14
"""Width of each value column of a plain-text table (a title like ``legacy wtalc`` fits)."""


def percent(value: float) -> str:
    """A metric in percent, two decimals: the cell of a single run's table."""
    return f"{value:.2f}"


def format_metrics_table(
    columns: Mapping[str, Mapping[str, Mapping[str, Any]]],
    cell: Callable[[Any], str] = percent,
    *,
    markdown: bool = False,
) -> str:
    """One row per key of the first column's ``"mAP"`` then ``"averages"``; one column per run.

    Args:
        columns: ``{title: {"mAP": {tiou: value}, "averages": {name: value}}}`` (a protocol's
            metrics, as ``metrics.json`` stores them); every column has the first one's keys.
        cell: formats one value (a float, or whatever the columns hold, e.g. bench's
            ``{"mean", "std", "values"}``).
        markdown: a Markdown table instead of right-aligned plain text.
    """
    first = next(iter(columns.values()))
    rows = [
        (key, [cell(column[part][key]) for column in columns.values()])
        for part in ("mAP", "averages")
        for key in first[part]
    ]
    if markdown:
        lines = ["| tIoU | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {key} | " + " | ".join(cells) + " |" for key, cells in rows]
    else:
        lines = [f"{'tIoU':>{NAME_WIDTH}}" + "".join(f"{n:>{CELL_WIDTH}}" for n in columns)]
        lines += [
            f"{key:>{NAME_WIDTH}}" + "".join(f"{c:>{CELL_WIDTH}}" for c in cells)
            for key, cells in rows
        ]
    return "\n".join(lines)


def format_detection_metrics(metrics: Mapping[str, Any]) -> str:
    """The table of both protocols of one detection run (``*.metrics.json``), then its
    headline numbers."""
    columns = {"official": metrics["official"], "legacy wtalc": metrics["wtalc"]}
    line = f"average mAP (headline): {metrics['headline']:.2f}"
    if metrics.get("classification_map") is not None:
        line += f"; video classification mAP: {metrics['classification_map']:.2f}"
    return format_metrics_table(columns) + "\n" + line
