"""The annotation schema: ground truth and results files, parsed and validated in one place.

Numpy only (``wtal score`` stays torch-free). Ground truth is the ActivityNet ``database``
format with the optional fields of our per-video layout (:mod:`wtal.data`); results are
``{"results": {video_id: [{"label": str, "score": number, "segment": [start_s, end_s]}]}}``.
One schema, read at two strictness levels:

* :func:`read_pervideo_annotations`: a dataset to train on, as :class:`VideoAnnotation`
  records. Video ids must name files, names carry no control characters, segments start at
  >= 0 with end > start. Each problem goes to a :class:`Reporter` (``wtal data check`` lists
  them all, the loaders stop at the first).
* :func:`parse_ground_truth` / :func:`parse_results`: any ActivityNet file to score, into a
  flat :class:`GroundTruth` / :class:`Results`; a zero-length instance is allowed (it scores;
  ``wtal score`` warns); the first problem raises.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtal.io import InputError

_NUMBER = (int, float)  # JSON numbers; ``type(x) in _NUMBER`` rejects bool on purpose


def is_positive_finite(value: Any) -> bool:
    """A finite number > 0, the check of every frame rate, snippet length and duration (an
    infinite frame rate would put every segment at 0 s); ``bool`` is not a number here."""
    number = _number(value)
    return number is not None and 0 < number < math.inf


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _short(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- records


@dataclass(eq=False)
class VideoAnnotation:
    """Layout-independent annotation of one video (class names, seconds)."""

    video_id: str
    subset: str
    duration_s: float
    segments_s: np.ndarray  # (N, 2) float64
    segment_labels: list[str]
    labels: list[str]  # video-level label names
    ambiguous_s: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (M, 2)
    fps: float | None = None  # the video's own frame rate, when the annotation gives one
    snippet_frames: float | None = None  # the video's own frames per snippet, likewise


@dataclass(frozen=True)
class Problem:
    """One finding of a dataset check (or a warning of the loader)."""

    level: str  # "error" or "warning"
    path: str
    what: str
    video: str | None = None

    def __str__(self) -> str:
        return f"{self.level}: {InputError(self.path, self.what, self.video)}"


class Reporter:
    """Collects problems; with ``strict`` the first error raises :class:`InputError`."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.problems: list[Problem] = []

    def error(self, path: Any, what: str, video: str | None = None) -> None:
        if self.strict:
            raise InputError(path, what, video)
        self.problems.append(Problem("error", str(path), what, video))

    def warning(self, path: Any, what: str, video: str | None = None) -> None:
        self.problems.append(Problem("warning", str(path), what, video))


def as_segments(value: Any) -> np.ndarray | None:
    """``[[s, e], ...]`` -> (N, 2) float64, or None when it is not a list of number pairs."""
    if not isinstance(value, list | tuple | np.ndarray):
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.size == 0:
        return np.zeros((0, 2))
    return arr if arr.ndim == 2 and arr.shape[1] == 2 else None


def valid_segments(
    rep: Reporter, path: Any, video: str, name: str, segments: np.ndarray, duration_s: float
) -> np.ndarray:
    """Report bad segments of a dataset; return the (N,) bool mask of the ones to keep.

    ``end <= start``, a negative start or a non-finite value is an error; an end after the
    video's duration is a warning (real THUMOS14 annotations have such segments).
    """
    start, end = segments[:, 0], segments[:, 1]
    finite = np.isfinite(segments).all(axis=1)
    checks = [
        (~finite, "error", "is not a pair of finite numbers"),
        (finite & (start < 0), "error", "starts before 0"),
        (finite & (end <= start), "error", "has end <= start"),
        (finite & (end > start) & (end > duration_s), "warning", "ends after the video"),
    ]
    for bad, level, what in checks:
        for i in np.flatnonzero(bad):
            msg = f"{name}[{i}] {segments[i].tolist()} s {what}"
            if level == "warning":
                rep.warning(path, f"{msg} (duration {duration_s} s)", video)
            else:
                rep.error(path, msg, video)
    return finite & (start >= 0) & (end > start)


def video_id_problem(video_id: str) -> str | None:
    """Why a video id cannot name its feature file ``features/<id>.npy`` (None if it can).

    Ids come from the data, so one like ``../../x`` or ``/tmp/x`` would read (or, converting,
    write) a file outside the dataset folder.
    """
    if not video_id or video_id in (".", "..") or any(c in video_id for c in "/\\\0"):
        return "video id must be a plain file name (no '/', '\\', NUL, '.' or '..')"
    if _has_control(video_id):
        return "video id must not contain control characters (newline, tab, ...)"
    return None


def _has_control(name: str) -> bool:
    """A newline, tab or other control character: names of videos and classes go into
    one-line messages, logs and file names, where one would split or hide text."""
    return any(ord(c) < 32 or ord(c) == 127 for c in name)


def _read_annotation_json(path: Path) -> tuple[Any, list[str]]:
    """Parse JSON and list duplicated object keys (``json`` would silently keep the last)."""
    duplicates: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        counts = Counter(key for key, _ in pairs)
        duplicates.extend(key for key, n in counts.items() if n > 1)
        return dict(pairs)

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc.__class__.__name__})") from None
    try:
        return json.loads(text, object_pairs_hook=pairs_hook), duplicates
    except json.JSONDecodeError as exc:
        what = f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise InputError(path, what) from None


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    return None


def read_pervideo_annotations(
    path: str | os.PathLike, rep: Reporter | None = None
) -> tuple[list[VideoAnnotation], list[str] | None]:
    """Read a dataset's annotation JSON (the schema of the module docstring).

    Returns:
        The annotations in file order and the file's ``"classes"`` list (None if absent).

    Raises:
        InputError: naming the file, video and field of the first error (unless ``rep``
            collects them).
    """
    path = Path(path)
    rep = rep or Reporter(strict=True)
    data, duplicates = _read_annotation_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise InputError(path, 'expected an object with a "database" object of videos')
    for key in duplicates:
        what = "duplicate video id" if key in database else f"duplicate key {key!r}"
        rep.error(path, what, key if key in database else None)
    classes = data.get("classes")
    if classes is not None and _str_list(classes) is None:
        raise InputError(path, '"classes" must be a list of class-name strings')
    if classes is not None and len(set(classes)) < len(classes):  # which index would a label get?
        twice = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise InputError(path, f'"classes": {twice!r} is listed twice')
    if classes is not None and any(_has_control(c) for c in classes):
        bad = next(c for c in classes if _has_control(c))
        raise InputError(path, f'"classes": {bad!r} contains a control character')
    extra_ambiguous = data.get("ambiguous", {})  # the THUMOS evaluation fixtures keep it here
    extra_ambiguous = extra_ambiguous if isinstance(extra_ambiguous, dict) else {}
    records = []
    for vid, entry in database.items():
        if not isinstance(entry, dict):
            rep.error(path, "entry is not an object", vid)
            continue
        if problem := video_id_problem(vid):
            rep.error(path, problem, vid)
            continue
        subset, duration, fps = entry.get("subset"), entry.get("duration"), entry.get("fps")
        if not isinstance(subset, str):
            rep.error(path, '"subset" must be a string', vid)
            continue
        duration_s = np.nan if duration is None else _number(duration)
        if duration is not None and not is_positive_finite(duration):
            what = f'"duration" must be a positive number of seconds, got {duration!r}'
            rep.error(path, what, vid)
            duration_s = np.nan
        if fps is not None and not is_positive_finite(fps):
            rep.error(path, f'"fps" must be a positive number, got {fps!r}', vid)
            fps = None
        snippet_frames = entry.get("snippet_frames")
        if snippet_frames is not None and not is_positive_finite(snippet_frames):
            what = f'"snippet_frames" must be a positive number, got {snippet_frames!r}'
            rep.error(path, what, vid)
            snippet_frames = None
        anns = entry.get("annotations")
        if not isinstance(anns, list):
            rep.error(path, '"annotations" must be a list', vid)
            continue
        segments, names = np.zeros((len(anns), 2)), []
        wellformed = np.ones(len(anns), dtype=bool)
        for i, ann in enumerate(anns):
            seg = as_segments([ann.get("segment")]) if isinstance(ann, dict) else None
            label = ann.get("label") if isinstance(ann, dict) else None
            if seg is None or not isinstance(label, str):
                what = f'annotations[{i}]: expected {{"segment": [s, e], "label": str}}'
                rep.error(path, what, vid)
                wellformed[i], seg, label = False, np.array([[0.0, 1.0]]), ""  # placeholder
            elif _has_control(label):
                what = f"annotations[{i}]: label {label!r} contains a control character"
                rep.error(path, what, vid)
                wellformed[i] = False
            segments[i] = seg[0]
            names.append(label)
        keep = valid_segments(rep, path, vid, "annotations", segments, duration_s) & wellformed
        ambiguous = as_segments(entry.get("ambiguous", extra_ambiguous.get(vid, [])))
        if ambiguous is None:
            rep.error(path, '"ambiguous" must be a list of [start, end] pairs', vid)
            ambiguous = np.zeros((0, 2))
        amb_keep = valid_segments(rep, path, vid, "ambiguous", ambiguous, duration_s)
        labels = entry.get("labels")
        if labels is not None and _str_list(labels) is None:
            rep.error(path, '"labels" must be a list of class-name strings', vid)
            labels = None
        names = [n for n, k in zip(names, keep, strict=True) if k]
        records.append(
            VideoAnnotation(
                video_id=vid,
                subset=subset,
                duration_s=float(duration_s),
                segments_s=segments[keep],
                segment_labels=names,
                labels=sorted(set(names)) if labels is None else list(labels),
                ambiguous_s=ambiguous[amb_keep],
                fps=None if fps is None else float(fps),
                snippet_frames=None if snippet_frames is None else float(snippet_frames),
            )
        )
    return records, classes


# ----------------------------------------------------------------------------- scoring


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
        for k, ann in enumerate(annotations):
            # fast path: a few lookups per instance; the message is built only on failure
            try:
                label = ann["label"]
                start, end = ann["segment"]
            except (KeyError, TypeError, ValueError):
                label = start = end = None
            if type(label) is not str or type(start) not in _NUMBER or type(end) not in _NUMBER:
                what = (
                    f"annotation {k}: expected {{'label': str, 'segment': [start, end]}}, "
                    f"got {_short(ann)}"
                )
                raise InputError(source, what, video=video_id)
            labels.append(label)
            starts.append(start)
            ends.append(end)
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
        for k, pred in enumerate(predictions):
            # fast path: a few lookups per prediction; the message is built only on failure
            try:
                label, score = pred["label"], pred["score"]
                start, end = pred["segment"]
            except (KeyError, TypeError, ValueError):
                label = score = start = end = None
            ok = type(label) is str and type(score) in _NUMBER
            if not ok or type(start) not in _NUMBER or type(end) not in _NUMBER:
                what = (
                    f"prediction {k}: expected {{'label': str, 'score': number, "
                    f"'segment': [start, end]}}, got {_short(pred)}"
                )
                raise InputError(source, what, video=video_id)
            labels.append(label)
            scores.append(score)
            starts.append(start)
            ends.append(end)
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
