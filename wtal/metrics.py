"""What an evaluation reports: :class:`DetectionMetrics` (with its JSON and its table), the
averages over tIoU ranges that papers quote, and the video classification mAP.

Numpy only, like :mod:`wtal.evaluation`, which computes the detection numbers. Numbers are
percentages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REPORTED_AVERAGES: dict[str, tuple[float, float]] = {
    "0.1:0.7": (0.1, 0.7),
    "0.1:0.5": (0.1, 0.5),
    "0.3:0.7": (0.3, 0.7),
    "0.5:0.95": (0.5, 0.95),
}
"""Averages papers report: name -> inclusive tIoU range. Reported when the evaluated
thresholds cover both ends of the range."""

_THRESHOLD_ATOL = 1e-9  # two thresholds closer than this are the same threshold


@dataclass(frozen=True)
class DetectionMetrics:
    """Result of :func:`wtal.evaluation.evaluate_detections`. AP / mAP values are percentages.

    Attributes:
        protocol: ``"official"`` or ``"wtalc"``.
        subset: the GT subset evaluated.
        tious: (T,) thresholds.
        class_names: (C,) the classes averaged, in order of first appearance in the GT.
        ap_per_class: (C, T) AP of each class at each threshold.
        map_per_tiou: (T,) mAP at each threshold.
        average: mean of ``map_per_tiou``.
        averages: name -> mean mAP over a range of :data:`REPORTED_AVERAGES`.
        num_videos: videos evaluated.
        num_ground_truth: GT instances evaluated.
        num_predictions: predictions in the results.
        num_evaluated: predictions that took part in the matching.
        ignored_unknown_video: predictions for videos outside the evaluated subset.
        ignored_unknown_label: predictions for labels absent from the subset's GT.
        ignored_ambiguous: predictions dropped by the ambiguous filter.
        classes_without_predictions: classes that got no prediction (AP 0).
    """

    protocol: str
    subset: str
    tious: tuple[float, ...]
    class_names: tuple[str, ...]
    ap_per_class: np.ndarray
    map_per_tiou: np.ndarray
    average: float
    averages: dict[str, float]
    num_videos: int
    num_ground_truth: int
    num_predictions: int
    num_evaluated: int
    ignored_unknown_video: int
    ignored_unknown_label: int
    ignored_ambiguous: int
    classes_without_predictions: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (tIoU keys formatted like ``"0.50"``)."""
        keys = [_tiou_key(t) for t in self.tious]
        return {
            "protocol": self.protocol,
            "subset": self.subset,
            "tiou_thresholds": list(self.tious),
            "mAP": dict(zip(keys, map(float, self.map_per_tiou), strict=True)),
            "average_mAP": float(self.average),
            "averages": dict(self.averages),
            "per_class_AP": {
                name: [float(x) for x in row]
                for name, row in zip(self.class_names, self.ap_per_class, strict=True)
            },
            "counts": {
                "videos": self.num_videos,
                "ground_truth": self.num_ground_truth,
                "predictions": self.num_predictions,
                "evaluated": self.num_evaluated,
                "ignored_unknown_video": self.ignored_unknown_video,
                "ignored_unknown_label": self.ignored_unknown_label,
                "ignored_ambiguous": self.ignored_ambiguous,
            },
            "classes_without_predictions": list(self.classes_without_predictions),
        }

    def format_table(self, per_class: bool = False) -> str:
        """Human-readable summary; with ``per_class`` one AP row per class."""
        name_w = max([len("tIoU")] + ([len(c) for c in self.class_names] if per_class else []))
        name_w = min(name_w, 32)  # long ActivityNet names are cut, the table stays readable

        def row(name: str, values: Sequence[float]) -> str:
            return f"{name[:name_w]:<{name_w}} " + " ".join(f"{v:6.2f}" for v in values)

        ignored = self.num_predictions - self.num_evaluated
        lines = [
            f"protocol {self.protocol}, subset {self.subset!r}: {self.num_videos} videos, "
            f"{self.num_ground_truth} ground truth instances, {len(self.class_names)} classes",
            f"predictions {self.num_predictions}: {self.num_evaluated} evaluated, {ignored} "
            f"ignored ({self.ignored_unknown_video} unknown video, {self.ignored_unknown_label} "
            f"unknown label, {self.ignored_ambiguous} ambiguous)",
            f"{'tIoU':<{name_w}} " + " ".join(f"{t:6.2f}" for t in self.tious) + "    avg",
            row("mAP", [*self.map_per_tiou, self.average]),
        ]
        if self.averages:
            lines.append(
                "average mAP: " + ", ".join(f"{k} {v:.2f}" for k, v in self.averages.items())
            )
        if self.classes_without_predictions:
            lines.append(
                f"{len(self.classes_without_predictions)} classes without predictions (AP 0): "
                + ", ".join(self.classes_without_predictions)
            )
        if per_class:
            lines.append("")
            for name, ap in zip(self.class_names, self.ap_per_class, strict=True):
                lines.append(row(name, [*ap, ap.mean()]))
        return "\n".join(lines)


def _tiou_key(t: float) -> str:
    return f"{t:.2f}" if abs(round(t, 2) - t) < _THRESHOLD_ATOL else repr(float(t))


def named_averages(tious: tuple[float, ...], map_per_tiou: np.ndarray) -> dict[str, float]:
    """Name -> mean mAP over each range of :data:`REPORTED_AVERAGES` whose two ends are
    among ``tious`` ((T,) thresholds, ``map_per_tiou`` (T,) their mAP)."""
    t = np.asarray(tious)
    averages = {}
    for name, (low, high) in REPORTED_AVERAGES.items():
        has_ends = (
            np.isclose(t, low, atol=_THRESHOLD_ATOL).any()
            and np.isclose(t, high, atol=_THRESHOLD_ATOL).any()
        )
        inside = (t >= low - _THRESHOLD_ATOL) & (t <= high + _THRESHOLD_ATOL)
        if has_ends:
            averages[name] = float(map_per_tiou[inside].mean())
    return averages


def classification_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Video-level classification mAP (W-TALC ``getClassificationMAP``), percent.

    Per class: rank the videos by descending score (stable: earlier video first on ties)
    and take the non-interpolated AP, the mean precision at the ranks of the positives.

    Args:
        scores: (N, C) float video-level class scores.
        labels: (N, C) multi-hot ground truth (> 0 is positive).

    Returns:
        Mean AP over the classes with at least one positive video, in percent (the
        reference divides by zero for a class without positives; we leave it out).

    Raises:
        ValueError: shapes differ, or no class has a positive video.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be (N, C)")
    num_positives = labels.sum(axis=0)  # (C,)
    if not num_positives.any():
        raise ValueError("no class has a positive video")
    order = np.argsort(-scores, axis=0, kind="stable")  # (N, C)
    hits = np.take_along_axis(labels, order, axis=0)  # (N, C) in ranking order
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(scores) + 1)[:, None]
    present = num_positives > 0
    ap = (precision * hits).sum(axis=0)[present] / num_positives[present]
    return float(100.0 * ap.mean())
