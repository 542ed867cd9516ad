"""Headless figures: a detection timeline per video (also written for the videos of a CAS
cache, :func:`write_timelines`), mAP-vs-tIoU curves, and the evolution of pseudo labels over
regenerations.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``: no display, no global figure state, safe in worker processes and tests. PNGs are
written atomically. Times on every axis are seconds, converted from snippets by
:func:`wtal.segments.snippets_to_seconds`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from wtal.cascache import load_predictions
from wtal.config import Config
from wtal.evaluation import load_ground_truth, load_results
from wtal.inference import Prediction, detect, results_from_predictions
from wtal.io import InputError, atomic_path
from wtal.segments import snippets_to_seconds

TOP_PREDICTED = 3
"""Classes with the highest video scores shown besides the ground-truth classes."""
MAX_CLASSES = 8
"""At most this many classes per timeline; more lines would not be told apart."""
MAX_DETECTIONS_PER_CLASS = 10
"""Highest-scoring fused detections drawn per class (the rest are faint clutter)."""
DPI = 110
"""Resolution of written PNGs: a 12-inch-wide figure is 1320 pixels."""
MIN_ALPHA = 0.25
"""Opacity of the lowest-scoring detection drawn; the highest is opaque."""
PROPOSAL_ALPHA = 0.08
"""Opacity of one proposal: stacked proposals darken where many thresholds agree."""


PSEUDO_MAX_CLASSES = 6
"""Class columns drawn per pseudo-label figure: GT classes first, then those with the most
label mass over all regenerations."""
PSEUDO_DPI = 100
"""Resolution of the pseudo-label PNGs (a 12-inch-wide figure is 1200 pixels)."""
GT_ALPHA = 0.18
"""Opacity of the ground-truth spans behind the label curves."""


SAFE_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
"""Characters kept in a file name made from a video id; anything else becomes ``_``."""
MAX_NAME_CHARS = 120
"""Longest name part kept from an id (file systems allow 255 bytes per name)."""


def safe_file_names(
    folder: str | os.PathLike, ids: Sequence[str], prefix: str = "", suffix: str = ".png"
) -> dict[str, Path]:
    """One file path inside ``folder`` per id (video ids, class names: data, not trusted).

    Separators, ``..``, leading dots and other characters outside :data:`SAFE_NAME_CHARS` are
    replaced, so ``../../x`` or ``/etc/x`` cannot name a file outside ``folder``. An id that had
    to be changed (or that clashes with another, e.g. ``a/b`` and ``a_b``) gets a short hash of
    itself appended, so distinct ids always get distinct files.

    Returns:
        ``{id: folder / (prefix + name + suffix)}`` in the order of ``ids``.

    Raises:
        InputError: if a path would still resolve outside ``folder`` (never, by construction;
            the check guards the rule above).
    """
    folder = Path(folder)
    names: dict[str, str] = {}
    taken: set[str] = set()
    for vid in dict.fromkeys(ids):
        name = "".join(c if c in SAFE_NAME_CHARS else "_" for c in vid)[:MAX_NAME_CHARS]
        name = name.lstrip(".") or "_"  # no hidden files, no "." or ".."
        if name != vid or name.lower() in taken:  # case-insensitive file systems clash too
            name = f"{name}-{hashlib.sha1(vid.encode()).hexdigest()[:8]}"
        taken.add(name.lower())
        names[vid] = f"{prefix}{name}{suffix}"
    root = folder.resolve()
    paths = {vid: folder / name for vid, name in names.items()}
    for vid, path in paths.items():
        if path.resolve().parent != root:
            raise InputError(folder, f"file name from id {vid!r} leaves the folder", None)
    return paths


def _color(index: int) -> tuple[float, float, float, float]:
    """A fixed colour per class index (tab10, cycling), the same in every figure."""
    return colormaps["tab10"](index % 10)


def relevant_classes(
    video_scores: np.ndarray,
    gt_classes: Sequence[int],
    top_predicted: int = TOP_PREDICTED,
    max_classes: int = MAX_CLASSES,
) -> list[int]:
    """The classes a timeline shows: ground-truth classes, then the best other predictions.

    Args:
        video_scores: (C,) or (C+1,) video-level scores; a background column is ignored by
            passing only the first C.
        gt_classes: class indices present in the ground truth (any order, repeats allowed).
        top_predicted: how many of the highest-scoring non-GT classes to add.
        max_classes: cap on the total; ground-truth classes are kept first.

    Returns:
        Class indices, ground-truth classes first, each group by descending video score.
    """
    scores = np.asarray(video_scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # (C,) best first
    gt = set(int(c) for c in gt_classes)
    first = [int(c) for c in order if int(c) in gt]
    others = [int(c) for c in order if int(c) not in gt][:top_predicted]
    return (first + others)[:max_classes]


def plot_video(
    path: str | os.PathLike,
    pred: Prediction,
    class_names: Sequence[str],
    *,
    detections: Sequence[Mapping[str, Any]] = (),
    ground_truth: Sequence[Mapping[str, Any]] | None = None,
    proposals: tuple[np.ndarray, np.ndarray] | None = None,
    top_predicted: int = TOP_PREDICTED,
    max_detections_per_class: int = MAX_DETECTIONS_PER_CLASS,
) -> list[int]:
    """Write a PNG timeline of one video: attention, CAS, and segment lanes per class.

    Top: the class-agnostic attention. Middle: the CAS of the relevant classes
    (:func:`relevant_classes`; ground-truth classes are marked "GT" in the legend, with
    their video score). Bottom: one row per class with three lanes, ground truth (top),
    fused detections (middle, opacity by score, best ``max_detections_per_class``) and
    proposals (bottom, faint and stacked).

    Args:
        path: output PNG.
        pred: the video's prediction (CAS (T, C+1), attention (T,), video scores (C+1,)).
        class_names: (C,) names of the CAS columns.
        detections: ActivityNet results entries ``{"label", "score", "segment": [s, e]}``
            in seconds.
        ground_truth: annotation entries ``{"label", "segment": [s, e]}`` in seconds; None
            when unknown (then the video's multi-hot labels pick the GT classes, if any).
        proposals: ``(segments (N, 2) seconds, labels (N,) class index)`` before fusion.
        top_predicted: see :func:`relevant_classes`.
        max_detections_per_class: detections drawn per class.

    Returns:
        The class indices shown.
    """
    index = {name: i for i, name in enumerate(class_names)}
    num_classes = len(class_names)
    if ground_truth is not None:
        gt_classes = [index[a["label"]] for a in ground_truth if a["label"] in index]
    else:
        gt_classes = np.flatnonzero(np.asarray(pred.labels) > 0).tolist()
    shown = relevant_classes(pred.video_scores[:num_classes], gt_classes, top_predicted)
    num_snippets = pred.cas.shape[0]
    edges = snippets_to_seconds(np.arange(num_snippets + 1), pred.fps, pred.snippet_frames)
    end_s = float(edges[-1])
    if pred.duration_s > 0:  # False for NaN
        end_s = max(end_s, pred.duration_s)

    lane_height = 0.55 * max(len(shown), 1)
    fig = Figure(figsize=(12, 3.6 + lane_height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[0.8, 2.2, max(lane_height, 0.8)])
    ax_att, ax_cas, ax_seg = axes

    ax_att.stairs(pred.attention, edges, fill=True, color="0.55")
    ax_att.set_ylim(0, 1.02)
    ax_att.set_ylabel("attention")
    ax_att.set_title(f"{pred.video_id}  ({num_snippets} snippets, {end_s:.1f} s)", loc="left")

    for c in shown:
        gt_mark = " GT" if c in gt_classes else ""
        label = f"{class_names[c]}{gt_mark} ({pred.video_scores[c]:.2f})"
        ax_cas.stairs(pred.cas[:, c], edges, color=_color(c), linewidth=1.4, label=label)
    ax_cas.set_ylabel("CAS")
    ax_cas.set_ylim(bottom=0)
    if shown:
        ax_cas.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)

    rows = {c: len(shown) - 1 - k for k, c in enumerate(shown)}  # first class on top
    lanes = {"ground truth": 0.68, "detections": 0.38, "proposals": 0.08}
    height = 0.26
    if proposals is not None:
        segments, labels = proposals
        for c, row in rows.items():
            sel = np.asarray(labels) == c
            spans = [(s, e - s) for s, e in np.asarray(segments)[sel]]
            y = row + lanes["proposals"]
            ax_seg.broken_barh(
                spans, (y, height), facecolor=_color(c), alpha=PROPOSAL_ALPHA, linewidth=0
            )
    by_class: dict[int, list[tuple[float, float, float]]] = {c: [] for c in shown}
    for det in detections:
        c = index.get(det["label"])
        if c in by_class:
            by_class[c].append((float(det["score"]), *map(float, det["segment"])))
    all_scores = [s for dets in by_class.values() for s, _, _ in dets]
    low, high = (min(all_scores), max(all_scores)) if all_scores else (0.0, 1.0)
    for c, dets in by_class.items():
        for score, start, end in sorted(dets, reverse=True)[:max_detections_per_class]:
            rel = (score - low) / (high - low) if high > low else 1.0
            alpha = MIN_ALPHA + (1.0 - MIN_ALPHA) * rel
            y = rows[c] + lanes["detections"]
            ax_seg.broken_barh(  # white edges keep overlapping detections apart
                [(start, end - start)],
                (y, height),
                facecolor=(*_color(c)[:3], alpha),
                edgecolor="white",
                linewidth=0.8,
            )
    if ground_truth is not None:
        for ann in ground_truth:
            c = index.get(ann["label"])
            if c in rows:
                start, end = map(float, ann["segment"])
                ax_seg.broken_barh(
                    [(start, end - start)],
                    (rows[c] + lanes["ground truth"], height),
                    facecolor=_color(c),
                    edgecolor="black",
                    linewidth=0.6,
                )
    ax_seg.set_ylim(0, max(len(shown), 1))
    ax_seg.set_yticks([rows[c] + 0.5 for c in shown], [class_names[c] for c in shown])
    ax_seg.tick_params(axis="y", labelsize=8)
    for row in range(1, len(shown)):
        ax_seg.axhline(row, color="0.85", linewidth=0.6)
    keys = [
        Patch(facecolor="0.5", edgecolor="black", linewidth=0.6, label="ground truth"),
        Patch(facecolor="0.5", label="detections (opacity: score)"),
        Patch(facecolor="0.5", alpha=3 * PROPOSAL_ALPHA, label="proposals (stacked)"),
    ]
    if ground_truth is None:
        keys = keys[1:]
    ax_seg.legend(
        handles=keys,
        title="lanes, top to bottom",
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )
    ax_seg.set_xlabel("time (s)")
    ax_seg.set_xlim(0, end_s)
    _save(fig, path)
    return shown


def write_timelines(
    cache_path: str | Path,
    out: str | Path,
    *,
    videos: Sequence[str] | None = None,
    num: int = 5,
    results_path: str | Path | None = None,
    gt_path: str | Path | None = None,
) -> list[Path]:
    """One timeline PNG per video of a CAS cache (``OUT/<video_id>.png``, the id made a safe
    file name by :func:`safe_file_names`); returns the paths.

    ``videos`` picks the videos (default: the first ``num``); detections come from
    ``results_path`` or are re-run from the cache; ground truth from ``gt_path`` if given.
    """
    cache = load_predictions(cache_path)
    cfg = cache.config or Config()
    by_id = {p.video_id: p for p in cache.predictions}
    if videos:
        ids = list(videos)
        unknown = [v for v in ids if v not in by_id]
        if unknown:
            raise InputError(cache_path, f"no video {unknown[0]!r} in the cache")
    else:
        if num < 1:
            raise InputError(None, f"--num: expected a number >= 1, got {num}")
        ids = list(by_id)[:num]
    if results_path:
        results = load_results(results_path)["results"]
    else:
        chosen = [by_id[v] for v in ids]
        results = results_from_predictions(chosen, cache.class_names, cfg.detect)["results"]
    database = load_ground_truth(gt_path)["database"] if gt_path else {}
    files = safe_file_names(out, ids)  # ids come from the cache: never trusted as paths
    paths = []
    for vid in ids:
        pred = by_id[vid]
        found = detect(pred, replace(cfg.detect, fusion="none"))  # the proposals, unfused
        segments = snippets_to_seconds(found.segments.numpy(), pred.fps, pred.snippet_frames)
        paths.append(files[vid])
        plot_video(
            paths[-1],
            pred,
            cache.class_names,
            detections=results.get(vid, []),
            ground_truth=database[vid]["annotations"] if vid in database else None,
            proposals=(segments, found.labels.numpy()),
        )
    return paths


def plot_map_vs_tiou(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "mAP vs tIoU",
) -> None:
    """Write a PNG of detection mAP against the tIoU threshold, one line per model.

    Args:
        curves: ``{name: (tious, maps)}``: thresholds in (0, 1] and mAP in percent, the
            same length; e.g. ``{"base": ..., "full": ...}``.
        path: output PNG.
        title: the figure's title.
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for k, (name, (tious, maps)) in enumerate(curves.items()):
        if len(tious) != len(maps):
            raise ValueError(f"curve {name!r}: {len(tious)} tIoUs but {len(maps)} mAP values")
        ax.plot(tious, maps, marker="o", color=_color(k), label=name)
        mean = float(np.mean(maps)) if len(maps) else float("nan")
        ax.axhline(mean, color=_color(k), linestyle=":", linewidth=1)
    ax.set_xlabel("tIoU threshold")
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if curves:
        ax.legend(title="dotted: average", fontsize=9, title_fontsize=8)
    _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """Render ``fig`` to a PNG at ``path`` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def plot_pseudo_evolution(
    path: str | os.PathLike,
    video_id: str,
    epochs: Sequence[int],
    labels: Sequence[np.ndarray],
    *,
    fps: float,
    snippet_frames: float,
    class_names: Sequence[str],
    gt_segments_s: np.ndarray | None = None,
    gt_labels: np.ndarray | None = None,
    max_classes: int = PSEUDO_MAX_CLASSES,
) -> list[int]:
    """How one video's pseudo labels change over the regenerations, against its GT.

    One row per regeneration epoch; x is time in seconds; one curve per class column (its
    pseudo-label mass per snippet, drawn as steps), the background column dashed grey, and
    the GT segments as shaded spans in their class colour on every row.

    Args:
        path: the PNG to write (atomically).
        video_id: the video, for the title.
        epochs: the regeneration epochs, one per row.
        labels: per row, (T, C+1) pseudo labels (background last).
        fps: frame rate of the snippets.
        snippet_frames: frames per snippet.
        class_names: the C class names.
        gt_segments_s: (M, 2) GT ``[start, end]`` in seconds, or None (no overlay).
        gt_labels: (M,) GT class indices.
        max_classes: most class columns drawn (GT classes first, then by total mass).

    Returns:
        The class columns drawn.
    """
    if len(epochs) != len(labels) or not len(labels):
        raise ValueError("need one (T, C+1) label array per epoch, at least one")
    num_classes = len(class_names)
    gt = np.zeros((0, 2)) if gt_segments_s is None else np.asarray(gt_segments_s, float)
    gt = gt.reshape(-1, 2)
    gt_cls = np.zeros(0, int) if gt_labels is None else np.asarray(gt_labels, int).reshape(-1)
    mass = sum(np.asarray(y, float)[:, :num_classes].sum(0) for y in labels)  # (C,)
    by_mass = [int(c) for c in np.argsort(-mass, kind="stable") if mass[c] > 0]
    shown = list(dict.fromkeys([*gt_cls.tolist(), *by_mass]))[:max_classes]

    fig = Figure(figsize=(12, 1.0 + 1.6 * len(labels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(labels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, epoch, y in zip(axes, epochs, labels, strict=True):
        y = np.asarray(y, float)
        T = y.shape[0]
        edges = snippets_to_seconds(np.arange(T + 1), fps, snippet_frames)  # (T+1,) seconds
        for (a, b), c in zip(gt, gt_cls, strict=True):
            ax.axvspan(a, b, color=_color(int(c)), alpha=GT_ALPHA, lw=0)
        for c in shown:
            ax.stairs(y[:, c], edges, color=_color(c), lw=1.2, label=class_names[c])
        if y.shape[1] > num_classes:
            ax.stairs(y[:, num_classes], edges, color="0.4", ls="--", lw=0.8, label="background")
        ax.set_ylabel(f"epoch {epoch}")
        ax.set_xlim(0, edges[-1])
        ax.set_ylim(bottom=0)
    axes[0].set_title(f"{video_id}: pseudo labels per regeneration (shaded: ground truth)")
    axes[0].legend(loc="upper right", fontsize="small", ncol=min(4, len(shown) + 1))
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PSEUDO_DPI)
    return shown
