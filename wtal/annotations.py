"""The annotation schema of a dataset: its annotation JSON, read and validated.

Numpy only. The ActivityNet ``database`` format with the optional fields of our per-video
layout (:mod:`wtal.data`), read by :func:`read_pervideo_annotations` into
:class:`VideoAnnotation` records for a dataset to train on: video ids must name files, names
carry no control characters, segments start at >= 0 with end > start. Each problem goes to a
:class:`Reporter` (``wtal data check`` lists them all, the loaders stop at the first). Any
ActivityNet file to *score* is read by :mod:`wtal.activitynet`, less strictly.
"""

from __future__ import annotations

import math
import os
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
    """Read a dataset's annotation JSON (the schema of the module docstring).

    Returns:
        The annotations in file order and the file's ``"classes"`` list (None if absent).

    Raises:
        InputError: naming the file, video and field of the first error (unless ``rep``
            collects them).
    """
    path = Path(path)
    rep = rep or Reporter(strict=True)
    data, duplicates = read_json_with_duplicates(path)
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
