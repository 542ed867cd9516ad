"""The annotation schema of a dataset: its annotation JSON, read and validated.

Numpy only. This module owns the ActivityNet ``database`` schema: :func:`walk_database` is
the one walk over ``database -> video -> annotations`` that checks the fields every reader
shares (entry, subset, annotation items, ambiguous intervals), reporting to a
:class:`Reporter`. Two readers use it: :func:`wtal.activitynet.parse_ground_truth` (files to
*score*: a strict reporter, the first problem raises) and :func:`read_pervideo_annotations`
(a dataset to train on, with the optional fields of our per-video layout, :mod:`wtal.data`),
which adds its own checks and reads :class:`VideoAnnotation` records: video ids must name
files, names carry no control characters, segments start at >= 0 with end > start. Each
problem goes to the reporter (``wtal data check`` lists them all, the loaders stop at the
first).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtal.io import InputError, read_json_with_duplicates


def is_positive_finite(value: Any) -> bool:
    """A finite number > 0, the check of every frame rate, snippet length and duration (an
    infinite frame rate would put every segment at 0 s); ``bool`` is not a number here."""
    number = _number(value)
    return number is not None and 0 < number < math.inf


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


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


_NUMBER = (int, float)  # JSON numbers; ``type(x) in _NUMBER`` rejects bool on purpose

DATASET_WORDS = {
    "no_database": 'expected an object with a "database" object of videos',
    "database": 'expected an object with a "database" object of videos',
    "entry": "entry is not an object",
    "subset": '"subset" must be a string',
    "annotations": '"annotations" must be a list',
    "annotation": 'annotations[{k}]: expected {{"segment": [s, e], "label": str}}',
    "ambiguous": '"ambiguous" must be a list of [start, end] pairs',
    "ambiguous_item": '"ambiguous" must be a list of [start, end] pairs',
    "ambiguous_top": '"ambiguous" must be an object {{video_id: [[s, e], ...]}}',
}
"""How :func:`walk_database` words each problem for a dataset (``wtal data check``, the
loaders); :mod:`wtal.activitynet` words the same problems its own way for ``wtal score``.
Placeholders: ``k`` (item index), ``value`` (what was found, shortened)."""


def short_repr(x: Any, limit: int = 60) -> str:
    """``repr(x)`` cut to ``limit`` characters, to quote a bad value in a one-line message."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_items(
    items: list, labels: list, starts: list, ends: list, scores: list | None = None
) -> list[int]:
    """Append the label, start and end (and, given ``scores``, the score: predictions) of
    each item ``{"label": str, ["score": number,] "segment": [start, end]}`` of one video.

    Returns:
        The indices of malformed items (not JSON numbers where numbers belong, a missing
        field, ...); each got the placeholder ``"", 0, 1 (, 0)`` so the lists stay aligned.
        Range and finiteness are the caller's to check: scoring and training differ there.
    """
    scored, malformed = scores is not None, []
    for k, item in enumerate(items):
        # fast path: a few lookups per item; the message is built only on failure
        try:
            label, score = item["label"], item["score"] if scored else 0.0
            start, end = item["segment"]
        except (KeyError, TypeError, ValueError):
            label = score = start = end = None
        ok = type(label) is str and type(score) in _NUMBER
        if not ok or type(start) not in _NUMBER or type(end) not in _NUMBER:
            malformed.append(k)
            label, score, start, end = "", 0.0, 0.0, 1.0
        labels.append(label)
        starts.append(start)
        ends.append(end)
        if scored:
            scores.append(score)
    return malformed


@dataclass(eq=False)
class VideoEntry:
    """One video of a ``database`` whose shared fields passed :func:`walk_database`; values
    as written (JSON numbers, seconds), annotations in file order."""

    video_id: str
    entry: dict[str, Any]  # the video's object, for the fields only a dataset reads
    subset: str
    labels: list[str]  # (N,) label of each annotation
    starts: list[float]  # (N,) start of each annotation
    ends: list[float]  # (N,) end of each annotation
    malformed: list[int]  # annotations reported malformed (placeholders in the lists above)
    ambiguous: list[tuple[int, float, float]]  # (index in its list, start, end) of each interval


def database_of(data: Any, path: Any, words: Mapping[str, str]) -> dict[str, Any]:
    """The ``"database"`` object of parsed annotation JSON; raise :class:`InputError` (worded
    by ``words``) when it is missing or not an object: there is nothing to walk then."""
    if not isinstance(data, dict) or "database" not in data:
        raise InputError(path, words["no_database"].format(value=short_repr(data)))
    if not isinstance(data["database"], dict):
        raise InputError(path, words["database"].format(value=short_repr(data["database"])))
    return data["database"]


def walk_database(
    data: Any, path: Any, rep: Reporter, words: Mapping[str, str]
) -> Iterator[VideoEntry]:
    """Walk ``database -> video -> annotations`` of parsed annotation JSON once, checking the
    fields both readers share: each entry an object, ``"subset"`` a string, ``"annotations"``
    a list of ``{"label": str, "segment": [start, end]}`` (JSON numbers), ``"ambiguous"`` a
    list of number pairs, in the entry and/or top-level ``{"ambiguous": {video_id: [[s, e],
    ...]}}`` as the THUMOS evaluation fixtures keep it (the intervals of both count).

    Each problem goes to ``rep`` (a strict one raises on the first) worded by ``words``. A
    video whose entry, subset or annotation list is malformed is not yielded; a malformed
    annotation is (see :attr:`VideoEntry.malformed`); a malformed ambiguous list is dropped.
    The top-level checks run on the call, the videos' as they are iterated.

    Raises:
        InputError: a missing or malformed ``"database"`` (whatever ``rep`` does).
    """
    database = database_of(data, path, words)
    top_ambiguous = data.get("ambiguous", {})
    if not isinstance(top_ambiguous, dict):
        rep.error(path, words["ambiguous_top"].format(value=short_repr(top_ambiguous)))
        top_ambiguous = {}
    return _walk_videos(database, top_ambiguous, path, rep, words)


def _walk_videos(
    database: dict, top_ambiguous: dict, path: Any, rep: Reporter, words: Mapping[str, str]
) -> Iterator[VideoEntry]:
    for vid, entry in database.items():
        if not isinstance(entry, dict):
            rep.error(path, words["entry"].format(value=short_repr(entry)), vid)
            continue
        subset, annotations = entry.get("subset"), entry.get("annotations")
        if not isinstance(subset, str):
            rep.error(path, words["subset"].format(value=short_repr(subset)), vid)
            continue
        if not isinstance(annotations, list):
            rep.error(path, words["annotations"].format(value=short_repr(annotations)), vid)
            continue
        labels, starts, ends = [], [], []
        malformed = read_items(annotations, labels, starts, ends)
        for k in malformed:
            what = words["annotation"].format(k=k, value=short_repr(annotations[k]))
            rep.error(path, what, vid)
        written = [entry["ambiguous"]] if "ambiguous" in entry else []
        written += [top_ambiguous[vid]] if vid in top_ambiguous else []
        ambiguous = [x for xs in written for x in _read_intervals(xs, vid, path, rep, words)]
        yield VideoEntry(vid, entry, subset, labels, starts, ends, malformed, ambiguous)


def _read_intervals(
    intervals: Any, vid: str, path: Any, rep: Reporter, words: Mapping[str, str]
) -> list[tuple[int, float, float]]:
    """``[[s, e], ...]`` of JSON numbers -> [(k, s, e)]; empty after reporting a problem."""
    if not isinstance(intervals, list):
        rep.error(path, words["ambiguous"].format(value=short_repr(intervals)), vid)
        return []
    out = []
    for k, interval in enumerate(intervals):
        pair = isinstance(interval, list | tuple) and len(interval) == 2
        if not pair or type(interval[0]) not in _NUMBER or type(interval[1]) not in _NUMBER:
            what = words["ambiguous_item"].format(k=k, value=short_repr(interval))
            rep.error(path, what, vid)
            return []
        out.append((k, interval[0], interval[1]))
    return out


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


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    return None


def read_pervideo_annotations(
    path: str | os.PathLike, rep: Reporter | None = None
) -> tuple[list[VideoAnnotation], list[str] | None]:
    """Read a dataset's annotation JSON (the schema of the module docstring): the shared
    fields by :func:`walk_database`, then the ones only a dataset has.

    Returns:
        The annotations in file order and the file's ``"classes"`` list (None if absent).

    Raises:
        InputError: naming the file, video and field of the first error (unless ``rep``
            collects them).
    """
    path = Path(path)
    rep = rep or Reporter(strict=True)
    data, duplicates = read_json_with_duplicates(path)
    videos = walk_database(data, path, rep, DATASET_WORDS)
    database = data["database"]
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
    records = [record for video in videos if (record := _dataset_record(video, path, rep))]
    return records, classes


def _dataset_record(video: VideoEntry, path: Path, rep: Reporter) -> VideoAnnotation | None:
    """The dataset-only checks of one walked video (id, duration, fps, snippet_frames, label
    names, segment ranges, ``"labels"``) and its record (None if the id is unusable)."""
    vid, entry = video.video_id, video.entry
    if problem := video_id_problem(vid):
        rep.error(path, problem, vid)
        return None
    duration, fps = entry.get("duration"), entry.get("fps")
    duration_s = np.nan if duration is None else _number(duration)
    if duration is not None and not is_positive_finite(duration):
        rep.error(path, f'"duration" must be a positive number of seconds, got {duration!r}', vid)
        duration_s = np.nan
    if fps is not None and not is_positive_finite(fps):
        rep.error(path, f'"fps" must be a positive number, got {fps!r}', vid)
        fps = None
    snippet_frames = entry.get("snippet_frames")
    if snippet_frames is not None and not is_positive_finite(snippet_frames):
        what = f'"snippet_frames" must be a positive number, got {snippet_frames!r}'
        rep.error(path, what, vid)
        snippet_frames = None
    wellformed = np.ones(len(video.labels), dtype=bool)
    wellformed[video.malformed] = False
    for i, label in enumerate(video.labels):
        if wellformed[i] and _has_control(label):
            what = f"annotations[{i}]: label {label!r} contains a control character"
            rep.error(path, what, vid)
            wellformed[i] = False
    segments = np.asarray([video.starts, video.ends], dtype=np.float64).T  # (N, 2)
    keep = valid_segments(rep, path, vid, "annotations", segments, duration_s) & wellformed
    ambiguous = np.asarray([(s, e) for _, s, e in video.ambiguous], dtype=np.float64)
    ambiguous = ambiguous.reshape(-1, 2)  # (M, 2)
    amb_keep = valid_segments(rep, path, vid, "ambiguous", ambiguous, duration_s)
    labels = entry.get("labels")
    if labels is not None and _str_list(labels) is None:
        rep.error(path, '"labels" must be a list of class-name strings', vid)
        labels = None
    names = [n for n, k in zip(video.labels, keep, strict=True) if k]
    return VideoAnnotation(
        video_id=vid,
        subset=video.subset,
        duration_s=float(duration_s),
        segments_s=segments[keep],
        segment_labels=names,
        labels=sorted(set(names)) if labels is None else list(labels),
        ambiguous_s=ambiguous[amb_keep],
        fps=None if fps is None else float(fps),
        snippet_frames=None if snippet_frames is None else float(snippet_frames),
    )
