"""One pseudo-label regeneration (paper.md §1.6): detect on the training videos with the
test-time path (:func:`wtal.inference.detect`), solve the LP of :mod:`wtal.pseudo` for
snippet targets, and measure their quality against the training ground truth.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wtal import distributed
from wtal.config import Config
from wtal.data import FeatureDataset
from wtal.inference import Prediction, detect, predict_as_configured
from wtal.lp import solve_pseudo_labels_batch
from wtal.model import WTALModel
from wtal.proposals import Segments
from wtal.pseudo import background_gaps, confident, pseudo_label_quality, summarize_quality
from wtal.segments import seconds_to_snippets


def generate_pseudo_labels(
    model: WTALModel,
    dataset: FeatureDataset,
    cfg: Config,
    temperature: float,
    device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Tensor]]:
    """Snippet pseudo labels (T, C+1) of every training video (paper.md §1.6).

    The teacher is the current model itself: the reference copies the weights into a
    teacher right before this pass and uses the copy for nothing else. The LPs of all
    videos are solved in one batch.

    Under DDP each rank labels its slice of the videos (:func:`wtal.distributed.shard_dataset`)
    and every rank returns the gathered labels of all videos and the summed statistics.

    Returns:
        ``(labels, stats, fused)``: labels per video; JSON-ready statistics, with a
        ``quality`` entry (:func:`wtal.pseudo.summarize_quality`) when the training videos
        carry ground truth; and ``fused = {"segments": {video: (N, 4)}, "timing": {video:
        (4,)}}``, the segments fed to the LP as float64 rows ``[start, end, score, column]``
        in snippets and each video's ``[T, fps, snippet_frames, duration_s]`` (enough to
        recompute the labels and to convert to seconds).
    """
    preds = predict_as_configured(
        model, distributed.shard_dataset(dataset), cfg, device, teacher=True
    )
    # pseudo.fusion may swap the fusion method; everything else is the test-time detection.
    dcfg = cfg.detect
    if cfg.pseudo.fusion is not None:
        dcfg = replace(dcfg, fusion=cfg.pseudo.fusion)
    found_all = []
    for pred in preds:
        found = detect(
            pred,
            dcfg,
            temperature=temperature,
            background=True,
            keep_background=cfg.pseudo.keep_background,
        )
        keep = confident(found.scores, found.labels, cfg.pseudo.min_score_ratio)
        if cfg.pseudo.gt_classes_only:  # the GT classes and the background column
            keep &= torch.from_numpy(np.append(pred.labels > 0, True))[found.labels]
        found = type(found)(*(x[keep] for x in found))
        found_all.append(found)
    truth, background = dataset.segments_by_video(), dataset.num_classes  # the last column
    if cfg.pseudo.oracle:
        found_all = _oracle_segments(truth, preds, found_all, background)
    if cfg.pseudo.background_gaps:
        found_all = [
            _with_background_gaps(f, p.cas.shape[0], background)
            for f, p in zip(found_all, preds, strict=True)
        ]
    ys, solved = solve_pseudo_labels_batch(
        [f.segments.numpy() for f in found_all],
        [f.scores.numpy() for f in found_all],
        [f.labels.numpy() for f in found_all],
        [p.cas.shape[0] for p in preds],
        background + 1,  # the C classes and the background
        outer_scale=dcfg.outer_scale,  # the proposals' outer band (one formula, one setting)
        outer_power=dcfg.outer_power,
        video_ids=[p.video_id for p in preds],
    )
    labels = {
        p.video_id: torch.from_numpy(np.asarray(y, dtype=np.float32))
        for p, y in zip(preds, ys, strict=True)
    }
    segments = {
        p.video_id: torch.cat(
            [f.segments, f.scores[:, None], f.labels[:, None].to(torch.float64)], 1
        ).to(torch.float64)
        for p, f in zip(preds, found_all, strict=True)
    }
    timing = {
        p.video_id: torch.tensor(
            [p.cas.shape[0], p.fps, p.snippet_frames, p.duration_s], dtype=torch.float64
        )
        for p in preds
    }
    stats: dict[str, Any] = {
        "segments": sum(len(f.scores) for f in found_all),
        "lps": solved.n_lps,
        "infeasible": solved.n_infeasible,
        "fallback": solved.n_fallback,
        "solve_s": solved.solve_time_s,
    }
    per_video = _pseudo_quality(truth, preds, ys, found_all)
    if distributed.world_size() > 1:
        parts = distributed.all_gather_objects((labels, segments, timing, stats, per_video))
        labels = {k: v for part in parts for k, v in part[0].items()}
        segments = {k: v for part in parts for k, v in part[1].items()}
        timing = {k: v for part in parts for k, v in part[2].items()}
        stats = {k: sum(part[3][k] for part in parts) for k in stats}
        per_video = [q for part in parts for q in part[4]]
    if per_video:
        stats["quality"] = summarize_quality(per_video)
    return labels, stats, {"segments": segments, "timing": timing}


def _with_background_gaps(found: Segments, num_snippets: int, background: int) -> Segments:
    """``found``'s class segments and, as the background column's, the gaps between them
    (:func:`wtal.pseudo.background_gaps`); ``inner`` of a gap is its score (no CAS is read)."""
    cls = found.labels != background
    gaps, scores = background_gaps(found.segments[cls], found.scores[cls], num_snippets)
    return Segments(
        torch.cat([found.segments[cls], gaps]),
        torch.cat([found.scores[cls], scores]),
        torch.cat([found.inner[cls], scores]),
        torch.cat([found.labels[cls], torch.full((len(gaps),), background)]),
    )


def _oracle_segments(
    truth: dict[str, tuple[np.ndarray, np.ndarray]],
    preds: list[Prediction],
    found_all: list[Segments],
    background: int,
) -> list[Segments]:
    """The training ground truth as the LP's input (``pseudo.oracle``): each instance in
    snippets, in its class column, and no background column (``pseudo.background_gaps`` adds
    the gaps between them). Every instance gets one score, the mean positive score of the class
    segments detected in this regeneration over all videos (all ranks under DDP; 1 if there
    is none), so that the labels have the detected ones' scale and the ground truth's places
    (to the LP's whole snippets, :func:`wtal.lp.lp_regions`)."""
    positive = [f.scores[(f.labels != background) & (f.scores > 0)] for f in found_all]
    total, count = float(sum(x.sum() for x in positive)), sum(len(x) for x in positive)
    if distributed.world_size() > 1:  # one score for every rank's videos
        parts = distributed.all_gather_objects((total, count))
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    score = total / count if count else 1.0
    oracle = []
    for pred in preds:
        gt_s, gt_labels = truth[pred.video_id]
        segments = torch.from_numpy(seconds_to_snippets(gt_s, pred.fps, pred.snippet_frames))
        scores = torch.full((len(gt_labels),), score, dtype=torch.float64)
        oracle.append(Segments(segments, scores, scores, torch.from_numpy(gt_labels)))
    return oracle


def _pseudo_quality(
    truth: dict[str, tuple[np.ndarray, np.ndarray]],
    preds: list[Prediction],
    ys: list[np.ndarray],
    found_all: list[Segments],
) -> list[dict[str, Any]]:
    """Pseudo labels ``ys`` (T, C+1) and the segments ``found_all`` they were solved from,
    against the ground truth (``FeatureDataset.segments_by_video``) of each training video
    that has some."""
    per_video = []
    for pred, y, found in zip(preds, ys, found_all, strict=True):
        gt_s, gt_labels = truth[pred.video_id]
        if not len(gt_labels):
            continue
        per_video.append(
            pseudo_label_quality(
                y,
                seconds_to_snippets(gt_s, pred.fps, pred.snippet_frames),
                gt_labels,
                pseudo_segments=found.segments.numpy(),
                pseudo_segment_labels=found.labels.numpy(),
            )
        )
    return per_video
