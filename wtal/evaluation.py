"""Temporal action detection mAP over tIoU thresholds, with ActivityNet or W-TALC matching.

Numpy only (no torch anywhere in the import chain, so ``wtal score`` starts fast). Two
matching protocols share one vectorized kernel:

``"official"``
    The ActivityNet evaluator (``Evaluation/eval_detection.py``, ``ANETdetection``), on
    continuous seconds. Per class, predictions are ranked by the order of
    ``scores.argsort()[::-1]`` with a *stable* sort, i.e. descending score and, on ties, the
    prediction that comes later in the results file first. Each prediction takes, per tIoU
    threshold, the unmatched ground truth (GT) of its video with the highest tIoU >= the
    threshold; among equal tIoUs the later GT of the class comes first (again the reversed
    stable argsort). Locks are per threshold. AP is VOC all-point interpolated. mAP is the mean
    over the classes present in the GT of the subset; a class without predictions scores 0.
    A zero-length prediction against a zero-length GT of the same video gives tIoU 0/0 = NaN
    there, which its matching loop accepts at every threshold, ahead of any finite tIoU; we
    reproduce that (``zero_union_matches=True``).

``"wtalc"``
    The W-TALC / RSKP / GauFuse ``getLocMAP`` protocol on the snippet grid: seconds become
    snippet indices with round-half-to-even, an empty prediction range is widened to one
    snippet, tIoU is the IoU of the index sets, predictions are ranked by descending score
    (file order on ties) and take the highest-IoU unmatched GT (the first one on ties). Only
    videos of the subset with at least one GT instance are evaluated. Unlike the reference, a
    class without predictions scores AP 0 for that class only; ``compat=True`` restores the
    reference rule that zeroes every mAP then.

Both protocols ignore (and count) predictions for videos outside the evaluated subset and
for labels absent from its GT; the official evaluator would count the former as false
positives (``unknown_videos_are_false_positives=True``) and crash on the latter. Ambiguous
intervals (THUMOS14) are never GT; ``ambiguous_filter=True`` drops the predictions that
overlap one, as the W-TALC code does.

Numbers are percentages; :mod:`wtal.metrics` holds the report and the averages it quotes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wtal.activitynet import GroundTruth, parse_ground_truth, parse_results, subsets_of
from wtal.config import PROTOCOLS
from wtal.io import InputError, read_json
from wtal.metrics import DetectionMetrics, named_averages
from wtal.segments import DEFAULT_FPS, DEFAULT_SNIPPET_FRAMES, seconds_to_snippets, segment_tiou

TIOU_PRESETS: dict[str, tuple[float, ...]] = {
    # Decimal literals, not np.arange/linspace: a tIoU that is a ratio of small integers (the
    # snippet grid) can sit exactly on a threshold, and 0.1 * 3 != 0.3 in floating point.
    "thumos": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "anet": (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
}
"""Standard tIoU threshold sets: THUMOS14 0.1:0.1:0.7 and ActivityNet 0.5:0.05:0.95."""

# ----------------------------------------------------------------------------- input


def load_ground_truth(path: str | os.PathLike) -> dict:
    """Read a ground-truth JSON file, validated by :func:`wtal.activitynet.parse_ground_truth`
    (an error names the file, the video and the field); returns the parsed JSON object."""
    data = read_json(path)
    parse_ground_truth(data, path)
    return data


def ground_truth_problems(
    ground_truth: GroundTruth | Mapping[str, Any], subset: str
) -> list[tuple[str, str]]:
    """Ground truth that scores but misleads: zero-length and duplicate instances.

    A zero-length instance can only be matched by a zero-length prediction; a duplicate
    (same video, label and segment) can be matched only once, so it caps recall below 1.

    Returns:
        ``(video_id, what)`` per kind found in ``subset``, naming its first video.
    """
    gt = parse_ground_truth(ground_truth, "ground truth")
    in_subset = np.array([s == subset for s in gt.subsets], dtype=bool)[gt.ann_video]
    idx = np.flatnonzero(in_subset)  # (N,) instances of the subset
    problems = []
    zero = idx[gt.ann_segments[idx, 1] == gt.ann_segments[idx, 0]]
    if len(zero):
        example = gt.ann_segments[zero[0]].tolist()
        what = f"{len(zero)} zero-length ground-truth segment(s), e.g. {example}"
        problems.append((gt.video_ids[gt.ann_video[zero[0]]], what))
    labels = np.unique(np.array(gt.ann_labels, dtype=object)[idx].astype(str), return_inverse=True)
    keys = np.column_stack(
        [gt.ann_video[idx], labels[1].reshape(-1), gt.ann_segments[idx].view(np.int64)]
    )  # exact float bits: only identical segments are duplicates
    _, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        extra = int((counts - 1).sum())
        one = idx[first[np.argmax(counts > 1)]]
        what = (
            f"{extra} duplicate ground-truth instance(s) (same label and segment), e.g. "
            f"{gt.ann_labels[one]!r} {gt.ann_segments[one].tolist()}"
        )
        problems.append((gt.video_ids[gt.ann_video[one]], what))
    return problems


def load_results(path: str | os.PathLike) -> dict:
    """Read a results JSON file, validated by :func:`wtal.activitynet.parse_results`
    (``version`` / ``external_data`` are not required); returns the parsed JSON object."""
    data = read_json(path)
    parse_results(data, path)
    return data


def resolve_subset(
    ground_truth: GroundTruth | Mapping[str, Any],
    subset: str | None = None,
    source: str | os.PathLike = "ground truth",
) -> str:
    """The GT subset to evaluate.

    ``None`` picks automatically: the only subset if there is one, else the subset named
    ``test`` (any case), else ``validation`` (any case); anything else is ambiguous.

    Raises:
        InputError: the subset is absent, or the automatic choice is ambiguous.
    """
    present = subsets_of(ground_truth, source)
    if subset is not None:
        if subset not in present:
            raise InputError(source, f"subset {subset!r} not found (present: {present})")
        return subset
    if len(present) == 1:
        return present[0]
    for preferred in ("test", "validation"):
        for name in present:
            if isinstance(name, str) and name.lower() == preferred:
                return name
    raise InputError(source, f"cannot choose a subset among {present}: pass one explicitly")


# ----------------------------------------------------------------------------- kernels


def _pairs_by_key(key_a: np.ndarray, key_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` with ``key_a[i] == key_b[j]``, without a Python loop.

    Returns:
        pair_a, pair_b: (K,) int; ``i`` ascending, and for one ``i`` the ``j`` ascending.
    """
    order_b = np.argsort(key_b, kind="stable")
    sorted_b = key_b[order_b]
    lo = np.searchsorted(sorted_b, key_a, side="left")
    counts = np.searchsorted(sorted_b, key_a, side="right") - lo  # (N_a,)
    pair_a = np.repeat(np.arange(len(key_a)), counts)
    # pair k of row i sits at sorted position lo[i] + (k - first pair of row i)
    shift = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    pair_b = order_b[np.arange(len(pair_a)) + shift]
    return pair_a, pair_b


def _match(
    pred_group: np.ndarray,
    pred_segments: np.ndarray,
    gt_group: np.ndarray,
    gt_segments: np.ndarray,
    tious: np.ndarray,
    *,
    later_gt_first: bool,
    zero_union: float,
) -> np.ndarray:
    """Greedy one-to-one matching at every threshold at once.

    Predictions must already be in ranking order. Only a prediction and a GT of the same
    group (video, class) can match, so the groups are independent: round ``r`` handles the
    ``r``-th ranked prediction of every group together, and the loop runs over ranks (the
    largest group size), never over predictions.

    Args:
        pred_group: (P,) int group of each prediction, in ranking order.
        pred_segments: (P, 2) float.
        gt_group: (G,) int.
        gt_segments: (G, 2) float.
        tious: (T,) thresholds.
        later_gt_first: among equal tIoUs prefer the later GT (official) or the first (wtalc).
        zero_union: tIoU of a pair of zero-length segments (``inf`` = matches first, always).

    Returns:
        (T, P) bool, True where the prediction is a true positive at that threshold.
    """
    num_pred = len(pred_group)
    tp = np.zeros((len(tious), num_pred), dtype=bool)
    pair_p, pair_g = _pairs_by_key(pred_group, gt_group)
    if len(pair_p) == 0:
        return tp
    # rank of each prediction inside its group (the stable sort keeps the ranking order)
    by_group = np.argsort(pred_group, kind="stable")
    sorted_group = pred_group[by_group]
    is_first = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    first = np.maximum.accumulate(np.where(is_first, np.arange(num_pred), 0))
    rank = np.empty(num_pred, dtype=np.int64)
    rank[by_group] = np.arange(num_pred) - first

    a, b = pred_segments[pair_p], gt_segments[pair_g]  # (K, 2) each
    pair_tiou = segment_tiou(a[:, 0], a[:, 1], b[:, 0], b[:, 1], zero_union)
    useful = pair_tiou >= tious.min()  # a pair below every threshold never matches
    pair_p, pair_g, pair_tiou = pair_p[useful], pair_g[useful], pair_tiou[useful]
    if len(pair_p) == 0:
        return tp
    gt_tie = -pair_g if later_gt_first else pair_g
    # rounds by rank; inside a round by prediction; inside a prediction by preference
    perm = np.lexsort((gt_tie, -pair_tiou, pair_p, rank[pair_p]))
    pair_p, pair_g, pair_tiou = pair_p[perm], pair_g[perm], pair_tiou[perm]
    pair_rank = rank[pair_p]
    bounds = np.searchsorted(pair_rank, np.arange(pair_rank[-1] + 2))

    run_start = np.flatnonzero(np.r_[True, pair_p[1:] != pair_p[:-1]])  # a run per prediction
    run_bounds = np.searchsorted(run_start, bounds)
    num_pairs = len(pair_p)
    position = np.arange(num_pairs)
    locked = np.zeros((len(tious), len(gt_group)), dtype=bool)  # (T, G) per-threshold locks
    above = pair_tiou[None, :] >= tious[:, None]  # (T, K)
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        starts = run_start[run_bounds[r] : run_bounds[r + 1]]
        if lo == hi:
            continue
        free = above[:, lo:hi] & ~locked[:, pair_g[lo:hi]]  # (T, n)
        candidate = np.where(free, position[lo:hi], num_pairs)  # (T, n)
        chosen = np.minimum.reduceat(candidate, starts - lo, axis=1)  # (T, runs) best free pair
        hit_t, hit_run = np.nonzero(chosen < num_pairs)
        tp[hit_t, pair_p[starts[hit_run]]] = True
        locked[hit_t, pair_g[chosen[hit_t, hit_run]]] = True
    return tp


def _interpolated_ap(tp: np.ndarray, num_positives: int) -> np.ndarray:
    """VOC all-point interpolated AP of ranked hits ``tp`` ((T, N) bool, ranking order) of a
    class with ``num_positives`` > 0 GT instances: (T,) in [0, 1], the sum over hits of
    ``1 / num_positives`` times the best precision at that rank or below (the area under the
    monotone precision envelope)."""
    if tp.shape[1] == 0:
        return np.zeros(tp.shape[0])
    precision = np.cumsum(tp, axis=1) / np.arange(1, tp.shape[1] + 1)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    return (envelope * tp).sum(axis=1) / num_positives


# ----------------------------------------------------------------------------- evaluation


def _resolve_tious(tious: Sequence[float] | str) -> tuple[float, ...]:
    if isinstance(tious, str):
        if tious not in TIOU_PRESETS:
            raise ValueError(f"unknown tIoU preset {tious!r}; choose from {list(TIOU_PRESETS)}")
        return TIOU_PRESETS[tious]
    values = tuple(float(t) for t in np.atleast_1d(np.asarray(tious, dtype=np.float64)))
    if not values or not all(0.0 < t <= 1.0 for t in values):
        raise ValueError(f"tIoU thresholds must be a non-empty list in (0, 1], got {values}")
    return values


def evaluate_detections(
    ground_truth: GroundTruth | Mapping[str, Any],
    results: Mapping[str, Any],
    tious: Sequence[float] | str = "anet",
    *,
    subset: str | None = None,
    protocol: str = "official",
    fps: float = DEFAULT_FPS,
    snippet_frames: float = DEFAULT_SNIPPET_FRAMES,
    grid_by_video: Mapping[str, tuple[float, float]] | None = None,
    ambiguous_filter: bool = False,
    compat: bool = False,
    unknown_videos_are_false_positives: bool = False,
    zero_union_matches: bool = True,
) -> DetectionMetrics:
    """Detection AP per class and tIoU, mAP and reported averages.

    Args:
        ground_truth: ActivityNet GT ``{"database": {video_id: {"subset", "annotations":
            [{"segment": [start_s, end_s], "label"}], optional "ambiguous": [[s, e]]}}}``
            (see :func:`load_ground_truth`), or a :class:`wtal.activitynet.GroundTruth`
            parsed already (a dataset's). A per-video ``fps`` field is not used: the snippet
            grid of ``"wtalc"`` is the feature grid, given by ``fps`` and ``grid_by_video``.
        results: ActivityNet results ``{"results": {video_id: [{"label", "score",
            "segment": [start_s, end_s]}]}}``.
        tious: thresholds in (0, 1], or a :data:`TIOU_PRESETS` name.
        subset: GT subset; ``None`` chooses as :func:`resolve_subset`.
        protocol: ``"official"`` (ActivityNet, seconds) or ``"wtalc"`` (snippet grid).
        fps: feature frame rate, for ``"wtalc"`` (THUMOS14 I3D: 25).
        snippet_frames: frames per feature snippet, for ``"wtalc"`` (THUMOS14 I3D: 16).
        grid_by_video: ``{video_id: (fps, snippet_frames)}`` of videos whose features were
            cut on another grid than ``fps``/``snippet_frames`` (``"wtalc"`` only).
        ambiguous_filter: drop predictions that overlap (intersection > 0, on the grid for
            ``"wtalc"``) an ambiguous interval of their video. They count neither as true nor
            as false positives.
        compat: reproduce the reference W-TALC rule: if any class has no prediction, every
            mAP is 0 (per-class APs are still reported).
        unknown_videos_are_false_positives: predictions for videos outside the subset count
            as false positives, as in the official evaluator, instead of being ignored.
        zero_union_matches: a zero-length prediction and a zero-length GT of one video match
            at every threshold (the official evaluator's 0/0 = NaN behaviour); False gives them
            tIoU 0.

    Returns:
        :class:`DetectionMetrics`, percentages.

    Raises:
        InputError: malformed GT or results, or an absent subset.
        ValueError: unknown protocol or invalid thresholds / grid.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    if not (fps > 0 and snippet_frames > 0):
        raise ValueError(f"fps and snippet_frames must be > 0, got {fps}, {snippet_frames}")
    thresholds = _resolve_tious(tious)
    gt = parse_ground_truth(ground_truth, "ground truth")
    res = parse_results(results, "results")
    subset = resolve_subset(gt, subset)
    wtalc = protocol == "wtalc"

    # Evaluated videos: the subset (wtalc: only videos with at least one GT instance).
    in_subset = np.array([s == subset for s in gt.subsets], dtype=bool)
    if wtalc:
        in_subset &= np.bincount(gt.ann_video, minlength=len(gt.video_ids)) > 0
    video_index = np.full(len(gt.video_ids), -1, dtype=np.int64)
    video_index[in_subset] = np.arange(int(in_subset.sum()))
    num_videos = int(in_subset.sum())

    # Classes: those of the subset's GT, in order of first appearance (official order).
    keep_gt = in_subset[gt.ann_video]
    gt_labels = [lab for lab, k in zip(gt.ann_labels, keep_gt, strict=True) if k]
    class_index = {name: c for c, name in enumerate(dict.fromkeys(gt_labels))}
    class_names = tuple(class_index)
    gt_video = video_index[gt.ann_video[keep_gt]]
    gt_class = np.array([class_index[lab] for lab in gt_labels], dtype=np.int64)
    gt_segments = gt.ann_segments[keep_gt]

    # Predictions -> (video, class); unknown ones are ignored and counted.
    gt_video_pos = {v: i for i, v in enumerate(gt.video_ids)}
    per_video = np.array([gt_video_pos.get(v, -1) for v in res.video_ids], dtype=np.int64)
    per_video = np.where(per_video >= 0, video_index[per_video], -1)
    if unknown_videos_are_false_positives:  # a fresh video id with no GT: always false
        unknown = per_video < 0
        per_video[unknown] = num_videos + np.arange(int(unknown.sum()))
    pred_video = np.repeat(per_video, res.counts)
    pred_class = np.array([class_index.get(lab, -1) for lab in res.labels], dtype=np.int64)
    known_video = pred_video >= 0
    known = known_video & (pred_class >= 0)
    ignored_video = int((~known_video).sum())
    ignored_label = int((known_video & (pred_class < 0)).sum())
    file_order = np.flatnonzero(known)
    pred_video, pred_class = pred_video[known], pred_class[known]
    pred_scores, pred_segments = res.scores[known], res.segments[known]

    amb_keep = video_index[gt.amb_video] >= 0 if len(gt.amb_video) else np.zeros(0, bool)
    amb_video = video_index[gt.amb_video[amb_keep]]
    amb_segments = gt.amb_segments[amb_keep]
    if wtalc:
        # each evaluated video's grid (index = video_index; unknown videos: the default)
        grid = np.tile([float(fps), float(snippet_frames)], (num_videos + len(res.video_ids), 1))
        for vid, (v_fps, v_frames) in (grid_by_video or {}).items():
            pos = gt_video_pos.get(vid, -1)
            if pos >= 0 and video_index[pos] >= 0:
                grid[video_index[pos]] = (v_fps, v_frames)

        def to_grid(segments: np.ndarray, video: np.ndarray) -> np.ndarray:
            # seconds -> snippet indices with Python's round (half to even), ends exclusive
            return np.rint(seconds_to_snippets(segments, grid[video, :1], grid[video, 1:]))

        gt_segments = to_grid(gt_segments, gt_video)
        amb_segments = to_grid(amb_segments, amb_video)
        pred_segments = to_grid(pred_segments, pred_video)
        # an empty prediction range would never match: the reference widens it to one snippet
        pred_segments[:, 1] = np.maximum(pred_segments[:, 1], pred_segments[:, 0] + 1)

    ignored_ambiguous = 0
    if ambiguous_filter and len(amb_video) and len(pred_video):
        pair_p, pair_a = _pairs_by_key(pred_video, amb_video)
        a, b = pred_segments[pair_p], amb_segments[pair_a]
        overlap = np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]) > 0
        drop = np.zeros(len(pred_video), dtype=bool)
        drop[pair_p[overlap]] = True
        ignored_ambiguous = int(drop.sum())
        keep = ~drop
        pred_video, pred_class = pred_video[keep], pred_class[keep]
        pred_scores, pred_segments = pred_scores[keep], pred_segments[keep]
        file_order = file_order[keep]

    # Ranking per class. Official: the reversed stable argsort of the scores (later wins
    # ties). wtalc: stable descending sort (earlier wins ties).
    tie = -file_order if not wtalc else file_order
    order = np.lexsort((tie, -pred_scores, pred_class))
    pred_video, pred_class = pred_video[order], pred_class[order]
    pred_segments = pred_segments[order]

    num_classes = len(class_names)
    group_stride = max(num_videos, int(pred_video.max(initial=-1)) + 1)
    tp = _match(
        pred_class * group_stride + pred_video,
        pred_segments,
        gt_class * group_stride + gt_video,
        gt_segments,
        np.asarray(thresholds),
        later_gt_first=not wtalc,
        zero_union=np.inf if zero_union_matches and not wtalc else 0.0,
    )

    num_positives = np.bincount(gt_class, minlength=num_classes)
    class_bounds = np.searchsorted(pred_class, np.arange(num_classes + 1))
    ap = np.zeros((num_classes, len(thresholds)))
    for c in range(num_classes):  # per-class envelopes; classes are few
        lo, hi = class_bounds[c], class_bounds[c + 1]
        ap[c] = _interpolated_ap(tp[:, lo:hi], int(num_positives[c]))
    ap *= 100.0
    empty = np.diff(class_bounds) == 0
    map_per_tiou = ap.mean(axis=0) if num_classes else np.zeros(len(thresholds))
    if compat and empty.any():
        map_per_tiou = np.zeros(len(thresholds))
    if len(pred_video) == 0:
        warnings.warn(
            f"no prediction matches a video and label of subset {subset!r}: mAP is 0",
            RuntimeWarning,
            stacklevel=2,
        )

    return DetectionMetrics(
        protocol=protocol,
        subset=subset,
        tious=thresholds,
        class_names=class_names,
        ap_per_class=ap,
        map_per_tiou=map_per_tiou,
        average=float(map_per_tiou.mean()),
        averages=named_averages(thresholds, map_per_tiou),
        num_videos=num_videos,
        num_ground_truth=len(gt_class),
        num_predictions=len(res.labels),
        num_evaluated=len(pred_video),
        ignored_unknown_video=ignored_video,
        ignored_unknown_label=ignored_label,
        ignored_ambiguous=ignored_ambiguous,
        classes_without_predictions=tuple(np.asarray(class_names, dtype=object)[empty]),
    )
