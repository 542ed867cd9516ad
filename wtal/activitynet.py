"""ActivityNet ground truth and results files to score, parsed and validated in one place.

Numpy only (``wtal score`` stays torch-free). Ground truth is the ActivityNet ``database``
format, walked by :func:`wtal.annotations.walk_database` (the dataset reader walks it too,
then checks more); results are ``{"results": {video_id: [{"label": str, "score": number, "segment":
[start_s, end_s]}]}}``. :func:`parse_ground_truth` / :func:`parse_results` flatten any such
file into a :class:`GroundTruth` / :class:`Results`; a zero-length instance is allowed (it
scores; ``wtal score`` warns); the first problem raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wtal.annotations import Reporter, database_of, read_items, short_repr, walk_database
from wtal.io import InputError

_GT_WORDS = {
    "no_database": "missing top-level field 'database'",
    "database": "field 'database': expected an object, got {value}",
    "entry": "expected an object, got {value}",
    "subset": "field 'subset': expected a string, got {value}",
    "annotations": "field 'annotations': expected a list, got {value}",
    "annotation": "annotation {k}: expected {{'label': str, 'segment': [start, end]}}, got {value}",
    "ambiguous": "field 'ambiguous': expected a list",
    "ambiguous_item": "ambiguous {k}: expected [start, end] numbers, got {value}",
    "ambiguous_top": "field 'ambiguous': expected an object {{video_id: [[s, e]]}}",
}
"""How :func:`wtal.annotations.walk_database` words each problem of ground truth to score."""


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth to score against, flattened. Segments in seconds, file order kept."""

    video_ids: list[str]  # (V,)
    subsets: list[str]  # (V,) subset of each video
    ann_video: np.ndarray  # (A,) int index into video_ids
    ann_labels: list[str]  # (A,)
    ann_segments: np.ndarray  # (A, 2) float64 [start, end]
    amb_video: np.ndarray  # (B,) int index into video_ids
    amb_segments: np.ndarray  # (B, 2) float64 ambiguous (not GT) intervals


@dataclass(frozen=True)
class Results:
    """Flattened ActivityNet-format results, file order kept."""

    video_ids: list[str]  # (R,) videos of the results file
    counts: np.ndarray  # (R,) predictions of each video
    labels: list[str]  # (P,)
    scores: np.ndarray  # (P,) float64
    segments: np.ndarray  # (P, 2) float64 seconds


def _require_object(obj: Any, key: str, source: str | os.PathLike) -> dict:
    """``obj[key]``, which must be a JSON object (the top-level ``results``)."""
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(source, f"missing top-level field {key!r}")
    if not isinstance(obj[key], dict):
        raise InputError(source, f"field {key!r}: expected an object, got {short_repr(obj[key])}")
    return obj[key]


def _locator(
    video_ids: list[str], counts: list[int], noun: str
) -> Callable[[int], tuple[str, str]]:
    """Flat item index -> (video, "noun k"), for error messages only."""

    def where(i: int) -> tuple[str, str]:
        ends = np.cumsum(counts)
        v = int(np.searchsorted(ends, i, side="right"))
        return video_ids[v], f"{noun} {i - int(ends[v] - counts[v])}"

    return where


def _check_segments(
    starts: list, ends: list, where: Callable[[int], tuple[str, str]], source: str | os.PathLike
) -> np.ndarray:
    """(N, 2) float64 segments; raise for the first non-finite or reversed one."""
    segments = np.stack([np.asarray(starts, np.float64), np.asarray(ends, np.float64)], axis=1)
    bad = ~np.isfinite(segments).all(axis=1) | (segments[:, 1] < segments[:, 0])
    if bad.any():
        i = int(np.argmax(bad))
        video, item = where(i)
        what = f"{item}: field 'segment': expected finite [start, end] with end >= start, "
        raise InputError(source, what + f"got [{starts[i]!r}, {ends[i]!r}]", video=video)
    return segments


def parse_ground_truth(data: Any, source: str | os.PathLike) -> GroundTruth:
    """Validate and flatten ActivityNet ground truth (``{"database": ...}``, parsed JSON);
    a :class:`GroundTruth` (a dataset's, parsed already) is returned as it is.

    Raises:
        InputError: the first malformed field, non-finite number or ``end < start``, naming
            ``source``, the video and the field.
    """
    if isinstance(data, GroundTruth):
        return data
    video_ids, subsets, counts, labels, starts, ends = [], [], [], [], [], []
    amb_video, amb_starts, amb_ends, amb_item = [], [], [], []
    for v, video in enumerate(walk_database(data, source, Reporter(strict=True), _GT_WORDS)):
        video_ids.append(video.video_id)
        subsets.append(video.subset)
        counts.append(len(video.labels))
        labels += video.labels
        starts += video.starts
        ends += video.ends
        for k, start, end in video.ambiguous:
            amb_video.append(v)
            amb_starts.append(start)
            amb_ends.append(end)
            amb_item.append((video.video_id, f"ambiguous {k}"))
    return GroundTruth(
        video_ids=video_ids,
        subsets=subsets,
        ann_video=np.repeat(np.arange(len(video_ids)), counts),
        ann_labels=labels,
        ann_segments=_check_segments(
            starts, ends, _locator(video_ids, counts, "annotation"), source
        ),
        amb_video=np.asarray(amb_video, dtype=np.int64),
        amb_segments=_check_segments(amb_starts, amb_ends, amb_item.__getitem__, source),
    )


def parse_results(data: Any, source: str | os.PathLike) -> Results:
    """Validate and flatten ActivityNet results (``{"results": ...}``, parsed JSON).

    Raises:
        InputError: as :func:`parse_ground_truth`, also for a non-finite score.
    """
    results = _require_object(data, "results", source)
    counts, labels, scores, starts, ends = [], [], [], [], []
    for video_id, predictions in results.items():
        if not isinstance(predictions, list):
            what = f"expected a list of predictions, got {short_repr(predictions)}"
            raise InputError(source, what, video=video_id)
        if malformed := read_items(predictions, labels, starts, ends, scores):
            item = f"prediction {malformed[0]}"
            what = f"{item}: expected {{'label': str, 'score': number, 'segment': [start, end]}}"
            got = short_repr(predictions[malformed[0]])
            raise InputError(source, f"{what}, got {got}", video=video_id)
        counts.append(len(predictions))
    video_ids = list(results)
    where = _locator(video_ids, counts, "prediction")
    score_array = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(score_array)
    if not finite.all():
        i = int(np.argmin(finite))
        video, item = where(i)
        what = f"{item}: field 'score': expected a finite number, got {scores[i]!r}"
        raise InputError(source, what, video=video)
    return Results(
        video_ids=video_ids,
        counts=np.asarray(counts, dtype=np.int64),
        labels=labels,
        scores=score_array,
        segments=_check_segments(starts, ends, where, source),
    )


def subsets_of(ground_truth: GroundTruth | Mapping[str, Any], source: Any) -> list[Any]:
    """The subsets present in ground truth (parsed, or the JSON object), sorted."""
    if isinstance(ground_truth, GroundTruth):
        return sorted(set(ground_truth.subsets), key=str)
    database = database_of(ground_truth, source, _GT_WORDS)
    return sorted({v.get("subset") for v in database.values() if isinstance(v, dict)}, key=str)
