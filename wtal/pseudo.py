"""Δ pseudo labels (paper.md §1.7), the pseudo-label target schedule (§1.8), which fused
segments become pseudo labels, the quality of pseudo labels against ground truth, and their
export as an annotation file.

The pseudo labels themselves (fused segments -> snippet labels, the LP of §1.6) come from
:mod:`wtal.lp`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wtal.io import InputError
from wtal.segments import pairwise_tiou, snippets_to_seconds, to_numpy

# --------------------------------------------------------------------------------------------
# Δ pseudo labels and the target schedule (paper.md §1.7, §1.8; method.py:172-262). The
# schedule's numbers are ``pseudo.*`` config fields: callers pass them
# (:func:`wtal.schedule.target_schedule`).


def delta_pseudo_labels(
    latest: Any, previous: Any, coefficient: float, *, clamp_min=None, anchor: bool = False
) -> Any:
    """Δ pseudo labels ``coefficient * (latest - previous)`` (paper.md §1.7).

    Entries can be negative: a class whose label fell between two regenerations is pushed
    down by the cross-entropy (the "self-correction"; unbounded ascent, §7 Q6).

    Args:
        latest: (T, C+1) pseudo labels of the latest regeneration (numpy or torch).
        previous: (T, C+1) pseudo labels of the regeneration before it.
        coefficient: alpha (2.0, then 2.15 in the reference schedule).
        clamp_min: if given, entries below it are raised to it (e.g. 0 forbids unlearning);
            None (default) reproduces the reference.
        anchor: add ``latest`` to the (clamped) Δ labels, ``latest + coefficient * (latest -
            previous)``: the change between regenerations extrapolates the latest labels
            instead of replacing them. False (default) reproduces the reference.

    Returns:
        Same type and shape as ``latest``.
    """
    if tuple(latest.shape) != tuple(previous.shape):
        raise ValueError(f"shape mismatch: {tuple(latest.shape)} vs {tuple(previous.shape)}")
    delta = coefficient * (latest - previous)
    if clamp_min is not None:
        torch_like = hasattr(delta, "clamp")
        delta = delta.clamp(min=clamp_min) if torch_like else np.maximum(delta, clamp_min)
    return latest + delta if anchor else delta


def update_history(
    history: Sequence[tuple[int, Any]],
    epoch: int,
    labels: Any,
    history_length: int,
) -> list[tuple[int, Any]]:
    """Append one regeneration ``(epoch, labels)`` and keep the last ``history_length``."""
    return (list(history) + [(epoch, labels)])[-history_length:]


def pseudo_target(
    epoch: int,
    history: Mapping[int, Any] | Sequence[tuple[int, Any]],
    *,
    regen_epochs: Sequence[int],
    zero_target_until: int,
    delta_start: int,
    delta_coefficients: Sequence[tuple[int, float]],
    clamp_min: float | None,
    anchor: bool = False,
) -> Any | None:
    """Pseudo-label target of the distillation loss at ``epoch`` (the §1.8 table).

    ``epoch <= zero_target_until``: None (zero target). Then the latest regeneration ``Y(r)``
    with ``r <= epoch`` until ``delta_start``; from ``delta_start`` on
    ``alpha * (Y(latest) - Y(previous))``, alpha from ``delta_coefficients``.

    Args:
        epoch: 0-based epoch; regenerations at ``epoch`` happen before its first batch.
        history: regenerations so far, ``{regen_epoch: labels}`` or ``[(regen_epoch, labels)]``.
        regen_epochs: epochs that regenerate; the latest one ``<= epoch`` is used.
        zero_target_until: last epoch with a zero target.
        delta_start: first epoch with Δ pseudo labels.
        delta_coefficients: ``(first epoch, alpha)`` pairs, sorted by epoch.
        clamp_min, anchor: passed to :func:`delta_pseudo_labels`.

    Returns:
        The target labels (type of the stored labels), or None for a zero target.

    Raises:
        KeyError: a regeneration the schedule needs is missing from ``history``.
    """
    if epoch <= zero_target_until:
        return None
    store = dict(history)
    done = [r for r in sorted(regen_epochs) if r <= epoch]
    if not done:
        return None
    use_delta = epoch >= delta_start and len(done) >= 2
    needed = done[-2:] if use_delta else done[-1:]
    missing = [r for r in needed if r not in store]
    if missing:
        raise KeyError(f"epoch {epoch}: pseudo labels of regeneration(s) {missing} missing")
    if not use_delta:
        return store[done[-1]]
    alpha = [a for first, a in delta_coefficients if first <= epoch][-1]
    return delta_pseudo_labels(
        store[done[-1]], store[done[-2]], alpha, clamp_min=clamp_min, anchor=anchor
    )


def confident(scores: Tensor, labels: Tensor, ratio: float) -> Tensor:
    """Which fused segments of one video are kept as pseudo labels (``pseudo.min_score_ratio``).

    Args:
        scores: (N,) fused scores phi.
        labels: (N,) int64 CAS columns.
        ratio: a segment is kept when its score is at least ``ratio`` times the best score of
            its column in this video; the best segment of each column is always kept, and
            ``ratio = 0`` keeps every segment (negative scores included).

    Returns:
        (N,) bool mask.
    """
    if not len(scores) or ratio == 0:
        return torch.ones(len(scores), dtype=torch.bool)
    size = int(labels.max()) + 1
    best = torch.full((size,), -torch.inf, dtype=scores.dtype)
    best = best.scatter_reduce(0, labels, scores, reduce="amax")[labels]
    return (scores >= ratio * best) | (scores == best)


def background_gaps(segments: Tensor, scores: Tensor, num_snippets: int) -> tuple[Tensor, Tensor]:
    """Background pseudo segments: the gaps between one video's fused class segments
    (``pseudo.background_gaps``).

    Each gap gets the mean score of the class segments, so the background column asks for as
    much label mass per segment as the classes do. A gap the LP would see without an inner
    snippet (``floor(end) <= floor(start)``, as :func:`wtal.lp.lp_regions` rounds) is dropped.
    A video without class segments, or whose mean class score is not positive, gets none: it
    has an action somewhere (its video label says so) and nothing says where.

    Args:
        segments: (N, 2) float64 class segments, snippets, ``[start, end)``.
        scores: (N,) float64 their fused scores phi.
        num_snippets: T, the video's length in snippets.

    Returns:
        ``(gaps, gap_scores)``: (G, 2) float64 snippets, sorted by start, and (G,) float64.
    """
    empty = (torch.zeros((0, 2), dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    if not len(scores) or float(scores.mean()) <= 0:
        return empty
    seg = segments.to(torch.float64).clamp(0, num_snippets)
    seg = seg[torch.argsort(seg[:, 0], stable=True)]
    reach = torch.cummax(seg[:, 1], 0).values  # covered from 0 up to here, segments 0..i
    starts = torch.cat([seg.new_zeros(1), reach])
    ends = torch.cat([seg[:, 0], seg.new_full((1,), float(num_snippets))])
    keep = torch.floor(ends) > torch.floor(starts)
    gaps = torch.stack([starts, ends], 1)[keep]
    return gaps, torch.full((len(gaps),), float(scores.mean()), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Quality of pseudo labels against ground truth


def pseudo_label_quality(
    pseudo: np.ndarray,
    gt_segments: np.ndarray,
    gt_labels: np.ndarray,
    *,
    pseudo_segments: np.ndarray | None = None,
    pseudo_segment_labels: np.ndarray | None = None,
    tiou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Where the pseudo-label mass of one video lies, and how good its pseudo segments are.

    A snippet ``t`` is inside the GT of class c when its centre ``t + 0.5`` lies in a GT
    segment of class c. The right place for the mass of class column c is inside the GT of
    c; for the background column (the last one) it is outside every GT segment. Segment
    precision / recall are best-match rates (not one-to-one) over the action columns: a
    pseudo segment is a hit when its best same-class GT tIoU is >= ``tiou_threshold``, and a
    GT segment is found when its best same-class pseudo segment tIoU is. Background pseudo
    segments have no GT and are left out. Counts and sums are returned so that videos can be
    pooled with :func:`summarize_quality`.

    Args:
        pseudo: (T, C+1) pseudo labels.
        gt_segments: (M, 2) float, GT ``[start, end)`` in snippets.
        gt_labels: (M,) int GT classes in ``[0, C)``.
        pseudo_segments: (N, 2) float fused segments in snippets (optional).
        pseudo_segment_labels: (N,) int their columns in ``[0, C]`` (C = background).
        tiou_threshold: tIoU of a hit.

    Returns:
        ``mass_inside`` / ``mass_outside``: (C+1,) label mass in the right / wrong place per
        column (see above); ``inside_fraction``: right-place mass of the class columns over
        their total (nan without mass); ``background_outside_fraction``: the same for the
        background column. With segments also ``precision``, ``recall``, ``mean_best_tiou``
        (mean over action pseudo segments of the best same-class GT tIoU) and
        ``mean_gt_best_tiou``, plus the counts ``n_pseudo``, ``n_hits``, ``n_gt``,
        ``n_found`` and the sums ``sum_best_tiou``, ``sum_gt_best_tiou``.
    """
    pseudo = to_numpy(pseudo, np.float64)
    T, ncol = pseudo.shape
    gts = to_numpy(gt_segments, np.float64).reshape(-1, 2)
    gtl = to_numpy(gt_labels, np.int64).reshape(-1)
    centre = np.arange(T) + 0.5
    in_gt = (centre[None, :] >= gts[:, :1]) & (centre[None, :] < gts[:, 1:])  # (M, T)
    right = np.zeros((ncol, T), bool)
    np.logical_or.at(right, gtl, in_gt)
    right[ncol - 1] = ~in_gt.any(0)  # background belongs outside every action
    mass_in = (pseudo.T * right).sum(1)  # (C+1,)
    mass_out = (pseudo.T * ~right).sum(1)
    out: dict[str, Any] = {
        "mass_inside": mass_in,
        "mass_outside": mass_out,
        "inside_fraction": _ratio(mass_in[:-1].sum(), mass_in[:-1].sum() + mass_out[:-1].sum()),
        "background_outside_fraction": _ratio(mass_in[-1], mass_in[-1] + mass_out[-1]),
    }
    if pseudo_segments is not None:
        ps = to_numpy(pseudo_segments, np.float64).reshape(-1, 2)
        pl = to_numpy(pseudo_segment_labels, np.int64).reshape(-1)
        action = pl < ncol - 1
        ps, pl = ps[action], pl[action]
        tiou = pairwise_tiou(ps, gts) * (pl[:, None] == gtl[None, :])  # (N, M) same class only
        best_p = tiou.max(1) if tiou.shape[1] else np.zeros(len(ps))
        best_g = tiou.max(0) if tiou.shape[0] else np.zeros(len(gts))
        counts = {
            "n_pseudo": len(ps),
            "n_hits": int((best_p >= tiou_threshold).sum()),
            "n_gt": len(gts),
            "n_found": int((best_g >= tiou_threshold).sum()),
            "sum_best_tiou": float(best_p.sum()),
            "sum_gt_best_tiou": float(best_g.sum()),
        }
        out |= counts | _rates(counts)
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _rates(c: Mapping[str, float]) -> dict[str, float]:
    return {
        "precision": _ratio(c["n_hits"], c["n_pseudo"]),
        "recall": _ratio(c["n_found"], c["n_gt"]),
        "mean_best_tiou": _ratio(c["sum_best_tiou"], c["n_pseudo"]),
        "mean_gt_best_tiou": _ratio(c["sum_gt_best_tiou"], c["n_gt"]),
    }


def summarize_quality(per_video: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Pool :func:`pseudo_label_quality` results of many videos (micro averages: every
    pseudo segment, GT segment and unit of mass counts once).

    Returns:
        JSON-ready floats ``precision``, ``recall``, ``mean_best_tiou``,
        ``mean_gt_best_tiou``, ``inside_fraction``, ``background_outside_fraction`` and the
        counts ``videos``, ``n_pseudo``, ``n_gt`` (None where undefined, e.g. no mass).
    """
    keys = ("n_pseudo", "n_hits", "n_gt", "n_found", "sum_best_tiou", "sum_gt_best_tiou")
    with_segments = [q for q in per_video if "n_pseudo" in q]
    totals = {k: sum(q[k] for q in with_segments) for k in keys}
    m_in = sum((np.asarray(q["mass_inside"]) for q in per_video), np.zeros(1))
    m_out = sum((np.asarray(q["mass_outside"]) for q in per_video), np.zeros(1))
    out = {"videos": len(per_video)}
    if with_segments:
        out |= {"n_pseudo": totals["n_pseudo"], "n_gt": totals["n_gt"]} | _rates(totals)
    if per_video:
        out["inside_fraction"] = _ratio(m_in[:-1].sum(), m_in[:-1].sum() + m_out[:-1].sum())
        out["background_outside_fraction"] = _ratio(m_in[-1], m_in[-1] + m_out[-1])
    return {k: None if v != v else v for k, v in out.items()}  # NaN is not JSON: None


# --------------------------------------------------------------------------------------------
# Export of pseudo segments as an annotation file


def pseudo_annotations(
    segments: Mapping[str, Any],
    timing: Mapping[str, Any],
    class_names: Sequence[str],
    subset: str,
    *,
    version: str = "wtal pseudo labels",
) -> dict[str, Any]:
    """Pseudo segments of training videos as an ActionFormer/ActivityNet annotation file.

    The format of ActionFormer's ``thumos14.json``: ``{"version", "database": {video_id:
    {"subset", "duration", "fps", "annotations": [{"label", "segment", "segment(frames)",
    "label_id", "score"}]}}}`` with seconds in ``segment``; ``score`` (the fused score phi)
    is extra and ignored by loaders that do not know it. Background segments are left out.
    Videos keep their order; annotations go by start time.

    Args:
        segments: per video, (N, 4) rows ``[start, end, score, column]`` in snippets (numpy or
            torch), columns in ``[0, C]`` with C = background.
        timing: per video, ``[num_snippets, fps, snippet_frames, duration_s]`` (duration NaN
            when unknown: the end of the last snippet is used).
        class_names: the C class names; ``label_id`` is the index in this list.
        subset: the subset name written for every video (e.g. ``validation``).
        version: the file's ``version`` string.

    Returns:
        The JSON-ready dict.

    Raises:
        InputError: a video without timing, or malformed segment rows.
    """
    num_classes = len(class_names)
    database: dict[str, Any] = {}
    for video_id, rows in segments.items():
        if video_id not in timing:
            raise InputError(None, "no timing stored for this video", video=video_id)
        rows = to_numpy(rows, np.float64)
        if rows.ndim != 2 or rows.shape[1] != 4 or not np.isfinite(rows).all():
            raise InputError(
                None, f"expected finite (N, 4) segment rows, got {rows.shape}", video_id
            )
        T, fps, snippet_frames, duration = (float(x) for x in to_numpy(timing[video_id], float))
        if not duration > 0:  # unknown (NaN): the features' extent
            duration = float(snippets_to_seconds(T, fps, snippet_frames))
        rows = rows[rows[:, 3] < num_classes]  # background column: no action
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        seconds = np.clip(snippets_to_seconds(rows[:, :2], fps, snippet_frames), 0.0, duration)
        database[video_id] = {
            "subset": subset,
            "duration": duration,
            "fps": fps,
            "annotations": [
                {
                    "label": class_names[int(c)],
                    "segment": [float(a), float(b)],
                    "segment(frames)": [float(a * fps), float(b * fps)],
                    "label_id": int(c),
                    "score": float(s),
                }
                for (a, b), s, c in zip(seconds, rows[:, 2], rows[:, 3], strict=True)
            ],
        }
    return {"version": version, "database": database}
