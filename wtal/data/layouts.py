"""Reading and writing the two dataset layouts (see :mod:`wtal.data`); the annotation
JSON of the per-video layout is parsed by :mod:`wtal.annotations`.

The W-TALC bundle is pickled: its reader is the only place in the package that passes
``allow_pickle=True``, and it runs code stored in those files, so only open bundles from a
source you trust.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wtal.annotations import (
    Problem,
    Reporter,
    VideoAnnotation,
    as_segments,
    read_pervideo_annotations,
    valid_segments,
    video_id_problem,
)
from wtal.io import InputError, write_json

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Largest float32: float64 features beyond it overflow to inf when cast for training."""
ANNOTATION_FILE = "annotations.json"
FEATURES_DIR = "features"
WTALC_FEATURES_SUFFIX = "-I3D-JOINTFeatures.npy"
WTALC_AMBIGUOUS_FILE = "Ambiguous_test.txt"


# ----------------------------------------------------------------------------- W-TALC


def _decode(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def find_wtalc_features(root: str | os.PathLike) -> Path | None:
    """The bundle's ``<Name>-I3D-JOINTFeatures.npy`` (None if absent)."""
    found = sorted(Path(root).glob(f"*{WTALC_FEATURES_SUFFIX}"))
    if len(found) > 1:
        raise InputError(root, f"several *{WTALC_FEATURES_SUFFIX} files; keep one")
    return found[0] if found else None


def _load_pickled(path: Path, encoding: str = "ASCII") -> np.ndarray:
    """Load a W-TALC array. ``allow_pickle=True`` runs code stored in the file: trusted only."""
    try:
        return np.load(path, allow_pickle=True, encoding=encoding)
    except FileNotFoundError:
        raise InputError(path, "file not found (part of the W-TALC bundle)") from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise InputError(path, f"not a readable .npy file ({exc})") from None


def read_wtalc_annotations(
    root: str | os.PathLike, rep: Reporter | None = None
) -> tuple[list[VideoAnnotation], list[str]]:
    """Read the annotation arrays of a W-TALC bundle (pickled: trusted input only).

    Video-level labels come from ``labels_all.npy`` (as W-TALC trains on them; they differ
    from the segment labels for 28 THUMOS14 videos); ambiguous segments from
    ``Ambiguous_test.txt`` when present.

    Returns:
        The annotations in ``videoname.npy`` order and the ``classlist.npy`` names.
    """
    root, rep = Path(root), rep or Reporter(strict=True)
    arrays = {}
    for name in ("videoname", "subset", "classlist", "segments", "labels", "labels_all"):
        arrays[name] = _load_pickled(root / f"{name}.npy").reshape(-1)
    arrays["duration"] = _load_pickled(root / "duration.npy").reshape(-1)
    num_videos = len(arrays["videoname"])
    for name, arr in arrays.items():
        if name != "classlist" and len(arr) != num_videos:
            what = f"has {len(arr)} entries but videoname.npy has {num_videos}"
            raise InputError(root / f"{name}.npy", what)
    class_names = [_decode(c) for c in arrays["classlist"]]
    video_ids = [_decode(v) for v in arrays["videoname"]]
    for vid, n in Counter(video_ids).items():
        if n > 1:
            rep.error(root / "videoname.npy", f"duplicate video id ({n} times)", vid)
    ambiguous = _read_wtalc_ambiguous(root / WTALC_AMBIGUOUS_FILE, set(video_ids), rep)
    records = []
    for i, vid in enumerate(video_ids):
        if problem := video_id_problem(vid):
            rep.error(root / "videoname.npy", problem, vid)
            continue
        duration_s = float(arrays["duration"][i])
        segments = as_segments(arrays["segments"][i])
        names = [_decode(x) for x in arrays["labels"][i]]
        if segments is None or len(segments) != len(names):
            what = f"entry {i}: expected one [start, end] pair per label of labels.npy"
            rep.error(root / "segments.npy", what, vid)
            continue
        keep = valid_segments(rep, root / "segments.npy", vid, "segments", segments, duration_s)
        amb = ambiguous.get(vid, np.zeros((0, 2)))
        amb_keep = valid_segments(
            rep, root / WTALC_AMBIGUOUS_FILE, vid, "ambiguous", amb, duration_s
        )
        records.append(
            VideoAnnotation(
                video_id=vid,
                subset=_decode(arrays["subset"][i]),
                duration_s=duration_s,
                segments_s=segments[keep],
                segment_labels=[n for n, k in zip(names, keep, strict=True) if k],
                labels=[_decode(x) for x in arrays["labels_all"][i]],
                ambiguous_s=amb[amb_keep],
            )
        )
    return records, class_names


def _read_wtalc_ambiguous(path: Path, video_ids: set[str], rep: Reporter) -> dict[str, np.ndarray]:
    """Parse ``video_id  start end`` lines (seconds) into {video_id: (M, 2)}."""
    if not path.exists():
        return {}
    rows: dict[str, list[list[float]]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            vid, start, end = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            vid = None
        if vid is None or len(parts) != 3:
            rep.error(path, f"line {lineno}: expected 'video_id start end', got {line!r}")
            continue
        if vid not in video_ids:
            rep.warning(path, f"line {lineno}: video not in the bundle; ignored", vid)
            continue
        rows.setdefault(vid, []).append([start, end])
    return {vid: np.asarray(r, dtype=np.float64) for vid, r in rows.items()}


# ----------------------------------------------------------------------------- features


def detect_layout(root: str | os.PathLike, annotation_file: str = ANNOTATION_FILE) -> str:
    """``"pervideo"`` if ``root`` holds the annotation JSON, else ``"wtalc"`` if it holds
    ``videoname.npy``.

    The JSON wins: a per-video folder that also holds a leftover ``videoname.npy`` (from a
    conversion) must never be unpickled, since that runs code stored in the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a dataset folder (missing or not a directory)")
    # lexists: a dangling or looping link named like the JSON still claims the folder, so
    # the read names it instead of falling back to unpickling a stray videoname.npy
    if os.path.lexists(root / annotation_file):
        return "pervideo"
    if (root / "videoname.npy").exists():
        return "wtalc"
    what = f"neither a W-TALC bundle (videoname.npy) nor a per-video dataset ({annotation_file})"
    raise InputError(root, what)


def feature_problem(features: np.ndarray, feat_dim: int | None, scan: bool = True) -> str | None:
    """What is wrong with one video's feature array (None if nothing)."""
    if features.ndim != 2:
        return f"features: expected a (T, D) array, got shape {features.shape}"
    if features.dtype.kind not in "fiu":
        return f"features: expected a numeric array, got dtype {features.dtype}"
    if features.shape[0] == 0:
        return "features: empty video (0 snippets)"
    if feat_dim is not None and features.shape[1] != feat_dim:
        return f"features: dim {features.shape[1]}, expected {feat_dim} like the other videos"
    if scan and not np.isfinite(features).all():
        return "features: contains NaN or Inf"
    if scan and features.dtype.kind == "f" and features.dtype.itemsize > 4:
        peak = max(abs(float(features.max())), abs(float(features.min())))
        if peak > FLOAT32_MAX:  # training casts to float32: these become inf, then NaN
            return f"features: values up to {peak:.3g} overflow float32 (max {FLOAT32_MAX:.3g})"
    return None


def feature_warnings(features: np.ndarray, max_abs: float) -> list[tuple[str, str]]:
    """What trains but probably into garbage, in one video's (T, D) features.

    Returns:
        ``(kind, what)`` pairs: ``"dtype"`` for integer features (quantized or mis-saved;
        they are cast to float32 unscaled), ``"magnitude"`` for values beyond ``max_abs``
        (0 turns that check off).
    """
    found = []
    if features.dtype.kind in "iu":
        what = f"features: integer dtype {features.dtype}, expected float (cast unscaled)"
        found.append(("dtype", what))
    if max_abs > 0 and features.size:
        peak = max(abs(float(features.max())), abs(float(features.min())))
        if peak > max_abs:
            what = f"features: values up to {peak:.3g}, beyond data.max_abs_feature {max_abs:g}"
            found.append(("magnitude", what))
    return found


class FeatureWarnings:
    """:func:`feature_warnings` of many videos, as one :class:`Problem` per kind that names
    the first video and counts the others (not one line per video of a large dataset)."""

    def __init__(self, max_abs: float) -> None:
        self.max_abs = max_abs
        self.found: dict[str, list[tuple[str, str, str]]] = {}

    def add(self, features: np.ndarray, path: os.PathLike, video: str) -> None:
        for kind, what in feature_warnings(features, self.max_abs):
            self.found.setdefault(kind, []).append((str(path), what, video))

    def problems(self) -> list[Problem]:
        result = []
        for rows in self.found.values():
            path, what, video = rows[0]
            more = f" (and {len(rows) - 1} other videos)" if len(rows) > 1 else ""
            result.append(Problem("warning", path, what + more, video))
        return result


class DatasetSource:
    """Annotations and feature access of one dataset folder, in either layout."""

    def __init__(
        self, root: str | os.PathLike, layout: str, rep: Reporter, annotation_file: str
    ) -> None:
        self.root = Path(root).expanduser()  # `~` only: no environment variables, no globbing
        self.layout = detect_layout(self.root, annotation_file) if layout == "auto" else layout
        if self.layout == "wtalc":
            self.records, classes = read_wtalc_annotations(self.root, rep)
            self.file_classes: list[str] | None = classes
            self.ann_path = self.root / "labels.npy"
            self.features_file = find_wtalc_features(self.root)
            self._wtalc: dict[str, np.ndarray] | None = None
        elif self.layout == "pervideo":
            self.ann_path = self.root / annotation_file
            self.records, self.file_classes = read_pervideo_annotations(self.ann_path, rep)
            self.features_dir = self.root / FEATURES_DIR
        else:
            raise ValueError(f"layout must be 'auto', 'wtalc' or 'pervideo', got {layout!r}")

    def feature_path(self, video_id: str) -> Path:
        if self.layout == "wtalc":
            return self.features_file or self.root / f"<Name>{WTALC_FEATURES_SUFFIX}"
        return self.features_dir / f"{video_id}.npy"

    def feature_ids(self) -> set[str]:
        """Ids of the videos that have features (W-TALC: loads the whole pickle)."""
        if self.layout == "wtalc":
            return set(self._wtalc_features())
        if not self.features_dir.is_dir():
            raise InputError(self.features_dir, "features folder not found")
        return {p.name[:-4] for p in os.scandir(self.features_dir) if p.name.endswith(".npy")}

    def _wtalc_features(self) -> dict[str, np.ndarray]:
        if self._wtalc is None:
            if self.features_file is None:
                raise InputError(self.root, f"no <Name>{WTALC_FEATURES_SUFFIX} features file")
            arrays = _load_pickled(self.features_file, encoding="bytes").reshape(-1)
            ids = [_decode(v) for v in _load_pickled(self.root / "videoname.npy").reshape(-1)]
            if len(arrays) != len(ids):
                what = f"has {len(arrays)} videos but videoname.npy has {len(ids)}"
                raise InputError(self.features_file, what)
            self._wtalc = dict(zip(ids, (np.asarray(a) for a in arrays), strict=True))
        return self._wtalc

    def load(self, video_id: str) -> np.ndarray:
        """The video's raw (T, D) features; memory-mapped in the per-video layout."""
        if self.layout == "wtalc":
            return self._wtalc_features()[video_id]
        path = self.feature_path(video_id)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise InputError(path, "feature file missing", video_id) from None
        except (OSError, ValueError) as exc:
            what = f"not a numeric .npy array ({exc})"
            raise InputError(path, what, video_id) from None


def check_labels(rep: Reporter, source: DatasetSource, class_names: list[str]) -> None:
    known = set(class_names)
    for rec in source.records:
        for label in sorted(set(rec.segment_labels) | set(rec.labels)):
            if label not in known:
                rep.error(
                    source.ann_path, f"label {label!r} is not in the class list", rec.video_id
                )


def resolve_class_names(source: DatasetSource, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        return list(class_names)
    if source.file_classes is not None:
        return list(source.file_classes)
    return sorted({n for r in source.records for n in (*r.segment_labels, *r.labels)})


# ----------------------------------------------------------------------------- writing


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; rename it onto ``path`` on success.

    ``path`` must not exist. On an exception the temporary folder is removed, so a failed
    run leaves nothing behind, never a half-written dataset.
    """
    path = Path(path)
    if path.exists():
        raise InputError(path, "already exists; choose a new output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_pervideo(
    out: str | os.PathLike,
    records: Sequence[VideoAnnotation],
    features: Sequence[np.ndarray],
    class_names: Sequence[str],
    version: str = "",
) -> None:
    """Write the per-video layout (``annotations.json`` + ``features/<id>.npy``) into ``out``.

    Args:
        out: folder (created; existing files with the same names are replaced).
        records: annotations, one per video.
        features: (T_i, D) array per record, same order.
        class_names: written as ``"classes"`` (fixes the class order on reading).
        version: free text stored as ``"version"``.
    """
    out = Path(out)
    (out / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    database = {}
    for rec, feats in zip(records, features, strict=True):
        np.save(out / FEATURES_DIR / f"{rec.video_id}.npy", np.asarray(feats), allow_pickle=False)
        entry: dict[str, Any] = {
            "subset": rec.subset,
            "duration": None if np.isnan(rec.duration_s) else rec.duration_s,
        }
        if rec.fps is not None:
            entry["fps"] = rec.fps
        if rec.snippet_frames is not None:
            entry["snippet_frames"] = rec.snippet_frames
        entry["labels"] = list(rec.labels)
        entry["annotations"] = [
            {"segment": seg, "label": name}
            for seg, name in zip(rec.segments_s.tolist(), rec.segment_labels, strict=True)
        ]
        entry["ambiguous"] = rec.ambiguous_s.tolist()
        database[rec.video_id] = entry
    doc = {"version": version, "classes": list(class_names), "database": database}
    write_json(out / ANNOTATION_FILE, doc)


def _object_array(items: Sequence[Any]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):  # element-wise: numpy would otherwise stack equal shapes
        arr[i] = item
    return arr


def write_wtalc(
    out: str | os.PathLike,
    name: str,
    records: Sequence[VideoAnnotation],
    features: Sequence[np.ndarray],
    class_names: Sequence[str],
) -> None:
    """Write a W-TALC bundle into ``out`` (pickled object arrays, as W-TALC expects).

    Files: ``<name>-I3D-JOINTFeatures.npy``, ``videoname/subset/classlist.npy`` (byte
    strings), ``segments/labels/labels_all.npy`` (object arrays of lists),
    ``duration.npy`` (N, 1) float64 and ``Ambiguous_test.txt`` (double-space separated).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "videoname": np.array([r.video_id.encode() for r in records], dtype=bytes),
        "subset": np.array([r.subset.encode() for r in records], dtype=bytes),
        "classlist": np.array([c.encode() for c in class_names], dtype=bytes),
        "segments": _object_array([r.segments_s.tolist() for r in records]),
        "labels": _object_array([list(r.segment_labels) for r in records]),
        "labels_all": _object_array([list(r.labels) for r in records]),
        "duration": np.array([[r.duration_s] for r in records], dtype=np.float64),
    }
    arrays[name + WTALC_FEATURES_SUFFIX[:-4]] = _object_array([np.asarray(f) for f in features])
    for stem, arr in arrays.items():
        np.save(out / f"{stem}.npy", arr, allow_pickle=arr.dtype == object)
    lines = [f"{r.video_id}  {s!r} {e!r}" for r in records for s, e in r.ambiguous_s.tolist()]
    (out / WTALC_AMBIGUOUS_FILE).write_text("".join(line + "\n" for line in lines))
