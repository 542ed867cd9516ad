"""``wtal data check`` and ``wtal data convert``: validate a dataset, convert W-TALC."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wtal.annotations import Problem, Reporter, is_positive_finite
from wtal.config import DataConfig
from wtal.data.layouts import (
    ANNOTATION_FILE,
    DatasetSource,
    FeatureWarnings,
    atomic_dir,
    check_labels,
    feature_problem,
    resolve_class_names,
    write_pervideo,
)
from wtal.io import InputError
from wtal.segments import DEFAULT_FPS

# ----------------------------------------------------------------------------- check


def check_dataset(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    class_names: Sequence[str] | None = None,
    annotation_file: str = ANNOTATION_FILE,
    max_abs_feature: float = DataConfig.max_abs_feature,
) -> tuple[list[Problem], dict[str, Any]]:
    """Validate a dataset folder and summarize it.

    Reports (naming file, video and field): missing or extra feature files, inconsistent
    feature dims, NaN/Inf, empty videos, labels not in the class list, segments with
    ``end <= start`` or a negative start, duplicate video ids (errors) and segments that
    end after the video, integer feature dtypes and features beyond ``max_abs_feature``
    (warnings, one line per kind). Reads every feature file once.

    Returns:
        The problems in discovery order and a summary dict: ``layout``, ``classes``,
        ``feat_dim`` and per subset ``videos``, ``instances``, ``ambiguous``,
        ``multi_label`` and snippet-length stats (``min``, ``median``, ``mean``, ``max``).

    Raises:
        InputError: when the annotations cannot be read at all.
    """
    rep = Reporter(strict=False)
    source = DatasetSource(root, layout, rep, annotation_file)
    names = resolve_class_names(source, class_names)
    check_labels(rep, source, names)
    lengths: dict[str, int] = {}
    dims: dict[str, int] = {}
    suspicious = FeatureWarnings(max_abs_feature)
    try:
        have = source.feature_ids()
    except InputError as exc:
        rep.error(exc.path, exc.what, exc.video)
        have = None
    if have is not None:
        ids = [r.video_id for r in source.records]
        for vid in ids:
            path = source.feature_path(vid)
            if vid not in have:
                rep.error(path, "feature file missing", vid)
                continue
            try:
                features = source.load(vid)
            except InputError as exc:
                rep.error(exc.path, exc.what, exc.video)
                continue
            problem = feature_problem(features, None)
            if problem:
                rep.error(path, problem, vid)
                continue
            suspicious.add(features, path, vid)
            lengths[vid], dims[vid] = features.shape
        for vid in sorted(have - set(ids)):
            rep.error(source.feature_path(vid), "feature file without an annotation entry", vid)
    rep.problems += suspicious.problems()
    feat_dim = Counter(dims.values()).most_common(1)[0][0] if dims else None
    for vid, dim in dims.items():
        if dim != feat_dim:
            what = f"features: dim {dim}, expected {feat_dim} like most videos"
            rep.error(source.feature_path(vid), what, vid)
    subsets: dict[str, Any] = {}
    for name in dict.fromkeys(r.subset for r in source.records):  # file order
        recs = [r for r in source.records if r.subset == name]
        lens = np.array([lengths[r.video_id] for r in recs if r.video_id in lengths])
        stats = {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
        if lens.size:
            stats = {"min": int(lens.min()), "median": float(np.median(lens))}
            stats |= {"mean": float(lens.mean()), "max": int(lens.max())}
        subsets[name] = {
            "videos": len(recs),
            "instances": sum(len(r.segment_labels) for r in recs),
            "ambiguous": sum(len(r.ambiguous_s) for r in recs),
            "multi_label": sum(len(set(r.labels)) > 1 for r in recs),
            "snippets": stats,
        }
    summary = {"layout": source.layout, "classes": len(names), "feat_dim": feat_dim}
    return rep.problems, summary | {"subsets": subsets}


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for the summary of :func:`check_dataset`."""
    lines = [
        f"layout: {summary['layout']}",
        f"classes: {summary['classes']}",
        f"feature dim: {summary['feat_dim']}",
    ]
    for name, s in summary["subsets"].items():
        n = s["snippets"]
        lines.append(
            f"subset {name}: {s['videos']} videos, {s['instances']} instances, "
            f"{s['ambiguous']} ambiguous, {s['multi_label']} multi-label; snippets "
            f"min {n['min']} median {n['median']:g} mean {n['mean']:.1f} max {n['max']}"
        )
    return "\n".join(lines)


def convert_wtalc(
    src: str | os.PathLike, out: str | os.PathLike, *, fps: float = DEFAULT_FPS
) -> int:
    """Convert a W-TALC bundle into the per-video layout, atomically.

    Every video is validated first (the first problem raises); the output is built in a
    temporary folder and renamed onto ``out`` at the end. Feature dtypes are kept.

    Args:
        src: W-TALC bundle folder (pickled: trusted input only).
        out: new folder for the per-video layout; must not exist.
        fps: frame rate recorded for every video (W-TALC does not store it).

    Returns:
        Number of videos written.
    """
    if not is_positive_finite(fps):
        raise InputError(None, f"fps: expected a frame rate > 0, got {fps}")
    rep = Reporter(strict=True)
    source = DatasetSource(src, "wtalc", rep, ANNOTATION_FILE)
    check_labels(rep, source, resolve_class_names(source, None))
    features, feat_dim = [], None
    for rec in source.records:
        feats = source.load(rec.video_id)
        problem = feature_problem(feats, feat_dim)
        if problem:
            raise InputError(source.feature_path(rec.video_id), problem, rec.video_id)
        features.append(feats)
        feat_dim = feats.shape[1]
    records = [replace(r, fps=float(fps)) for r in source.records]
    with atomic_dir(out) as tmp:
        version = f"converted from the W-TALC bundle {Path(src).name}"
        write_pervideo(tmp, records, features, source.file_classes or [], version)
    return len(records)
