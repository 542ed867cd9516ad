"""The one metrics-table formatter (``wtal detect``/``postprocess``/``demo`` and ``bench``)."""

from __future__ import annotations

from wtal.tables import format_detection_metrics, format_metrics_table


def _protocol(maps: list[float]) -> dict:
    return {"mAP": {"0.10": maps[0], "0.50": maps[1]}, "averages": {"0.1:0.5": sum(maps) / 2}}


def test_plain_text_rows_per_tiou_and_average_columns_per_run():
    table = format_metrics_table({"base": _protocol([10.0, 5.5]), "full": _protocol([20, 4.125])})
    assert table.splitlines() == [
        "    tIoU          base          full",
        "    0.10         10.00         20.00",
        "    0.50          5.50          4.12",
        " 0.1:0.5          7.75         12.06",
    ]


def test_markdown_with_a_custom_cell():
    column = {"mAP": {"0.30": (1, 2)}, "averages": {}}
    table = format_metrics_table(
        {"a": column, "b": column}, lambda v: f"{v[0]}/{v[1]}", markdown=True
    )
    assert table == "| tIoU | a | b |\n|---|---|---|\n| 0.30 | 1/2 | 1/2 |"


def test_detection_metrics_end_with_the_headline():
    metrics = {"official": _protocol([3.0, 1.0]), "wtalc": _protocol([4.0, 2.0]), "headline": 2.0}
    lines = format_detection_metrics(metrics).splitlines()
    assert lines[0] == "    tIoU      official  legacy wtalc"
    assert lines[-1] == "average mAP (headline): 2.00"
    metrics["classification_map"] = 61.111
    last = format_detection_metrics(metrics).splitlines()[-1]
    assert last == "average mAP (headline): 2.00; video classification mAP: 61.11"
