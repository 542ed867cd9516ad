"""ActivityNet ground truth and results files to score, parsed and validated in one place.

Numpy only (``wtal score`` stays torch-free). Ground truth is the ActivityNet ``database``
format (:mod:`wtal.annotations` reads the same schema more strictly for a dataset to train
on); results are ``{"results": {video_id: [{"label": str, "score": number, "segment":
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

from wtal.io import InputError

_NUMBER = (int, float)  # JSON numbers; ``type(x) in _NUMBER`` rejects bool on purpose


def _short(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    """``obj[key]``, which must be a JSON object (top-level ``database`` / ``results``)."""
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(source, f"missing top-level field {key!r}")
    if not isinstance(obj[key], dict):
        raise InputError(source, f"field {key!r}: expected an object, got {_short(obj[key])}")
    return obj[key]


def _segment(seg: Any) -> tuple[float, float] | None:
    """``[start, end]`` of two JSON numbers, else None (range and finiteness checked later)."""
    if isinstance(seg, list | tuple) and len(seg) == 2:
        start, end = seg
        if type(start) in _NUMBER and type(end) in _NUMBER:
            return start, end
    return None


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


def _read_items(
    items: list,
    video_id: str,
    source: str | os.PathLike,
    labels: list,
    starts: list,
    ends: list,
    scores: list | None = None,
) -> None:
    """Append the label, start and end (and, given ``scores``, the score: predictions) of
    each item of one video; raise for the first malformed item, naming it."""
    scored = scores is not None
    for k, item in enumerate(items):
        # fast path: a few lookups per item; the message is built only on failure
        try:
            label, score = item["label"], item["score"] if scored else 0.0
            start, end = item["segment"]
        except (KeyError, TypeError, ValueError):
            label = score = start = end = None
        ok = type(label) is str and type(score) in _NUMBER
        if not ok or type(start) not in _NUMBER or type(end) not in _NUMBER:
            noun, extra = ("prediction", "'score': number, ") if scored else ("annotation", "")
            what = f"{noun} {k}: expected {{'label': str, {extra}'segment': [start, end]}}"
            raise InputError(source, f"{what}, got {_short(item)}", video=video_id)
        labels.append(label)
        starts.append(start)
        ends.append(end)
        if scores is not None:
            scores.append(score)


def parse_ground_truth(data: Any, source: str | os.PathLike) -> GroundTruth:
    """Validate and flatten ActivityNet ground truth (``{"database": ...}``, parsed JSON);
    a :class:`GroundTruth` (a dataset's, parsed already) is returned as it is.

    Raises:
        InputError: the first malformed field, non-finite number or ``end < start``, naming
            ``source``, the video and the field.
    """
    if isinstance(data, GroundTruth):
        return data
    database = _require_object(data, "database", source)
    video_ids, subsets, counts, labels, starts, ends = [], [], [], [], [], []
    amb_video, amb_starts, amb_ends, amb_item = [], [], [], []

    def add_ambiguous(v: int, video_id: str, intervals: Any) -> None:
        if not isinstance(intervals, list):
            raise InputError(source, "field 'ambiguous': expected a list", video=video_id)
        for k, interval in enumerate(intervals):
            seg = _segment(interval)
            if seg is None:
                what = f"ambiguous {k}: expected [start, end] numbers, got {_short(interval)}"
                raise InputError(source, what, video=video_id)
            amb_video.append(v)
            amb_starts.append(seg[0])
            amb_ends.append(seg[1])
            amb_item.append((video_id, f"ambiguous {k}"))

    for v, (video_id, video) in enumerate(database.items()):
        if not isinstance(video, dict):
            raise InputError(source, f"expected an object, got {_short(video)}", video=video_id)
        subset, annotations = video.get("subset"), video.get("annotations")
        if not isinstance(subset, str):
            what = f"field 'subset': expected a string, got {_short(subset)}"
            raise InputError(source, what, video=video_id)
        if not isinstance(annotations, list):
            what = f"field 'annotations': expected a list, got {_short(annotations)}"
            raise InputError(source, what, video=video_id)
        _read_items(annotations, video_id, source, labels, starts, ends)
        video_ids.append(video_id)
        subsets.append(subset)
        counts.append(len(annotations))
        if "ambiguous" in video:
            add_ambiguous(v, video_id, video["ambiguous"])

    # Top-level {"ambiguous": {video_id: [[s, e], ...]}} (the fixture layout); intervals of
    # videos absent from the database cannot affect any prediction and are skipped.
    top_ambiguous = data.get("ambiguous", {})
    if not isinstance(top_ambiguous, dict):
        raise InputError(source, "field 'ambiguous': expected an object {video_id: [[s, e]]}")
    index = {video_id: v for v, video_id in enumerate(video_ids)}
    for video_id, intervals in top_ambiguous.items():
        if video_id in index:
            add_ambiguous(index[video_id], video_id, intervals)

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
            what = f"expected a list of predictions, got {_short(predictions)}"
            raise InputError(source, what, video=video_id)
        _read_items(predictions, video_id, source, labels, starts, ends, scores)
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
    database = _require_object(ground_truth, "database", source)
    return sorted({v.get("subset") for v in database.values() if isinstance(v, dict)}, key=str)
