"""Training: setup, ``train_one_epoch``, pseudo-label regeneration, evaluation and ``fit``.

Read ``fit`` from top to bottom: it is the whole method (paper.md §1.8). The base stage
(RSKP) trains with the video-level losses; from the first regeneration epoch on, pseudo
labels come from :func:`wtal.inference.detect` on the training videos, the same path that
produces the test detections, and are turned into snippet targets by the LP of
:mod:`wtal.pseudo`.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wtal import distributed
from wtal.annotations import Problem
from wtal.cascache import save_predictions
from wtal.checkpoint import (
    CHECKPOINT_VERSION,
    INIT_FROM_FILE,
    branch_state,
    checkpoint_config,
    fault_point,
    load_checkpoint,
    restore,
    resume_state,
    rng_state,
    save_checkpoint,
)
from wtal.config import Config, config_to_dict
from wtal.configfile import save_config
from wtal.data import Batch, FeatureDataset, collate, split_batch
from wtal.data.split import validation_split
from wtal.diagnostics import negative_share, parameter_change, parameter_snapshot
from wtal.distributed import Shard, ShardedLoader
from wtal.evaluation import TIOU_PRESETS, evaluate_detections
from wtal.inference import Prediction, detect, detections_to_results, predict
from wtal.io import InputError, read_json, write_json
from wtal.losses import base_losses, pseudo_label_loss
from wtal.lp import solve_pseudo_labels_batch
from wtal.metrics import classification_map
from wtal.model import ModelOutput, WTALModel
from wtal.pseudo import pseudo_label_quality, pseudo_target, summarize_quality, update_history
from wtal.runlock import RunLock
from wtal.runlog import JsonlLog
from wtal.segments import seconds_to_snippets

log = logging.getLogger("wtal")


# ----------------------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def build_model(cfg: Config, feat_dim: int, num_classes: int) -> WTALModel:
    """The network with the config's ``model`` section as keyword arguments.

    Raises:
        InputError: the weights do not fit in memory (a huge ``model.embed_dim``, say); torch
            reports that as a RuntimeError, which would otherwise end in a traceback.
    """
    try:
        return WTALModel(feat_dim, num_classes, **vars(cfg.model))
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "alloc" not in str(exc):
            raise
        mc = cfg.model
        sizes = f"model.embed_dim = {mc.embed_dim}, num_bases = {mc.num_bases}"
        what = f"{sizes}, queue_len = {mc.queue_len}: the model does not fit in memory"
        raise InputError(None, f"{what} (features {feat_dim}-d)") from None


def load_trained_model(
    checkpoint: str | Path, overrides: list[str] | None = None
) -> tuple[WTALModel, Config, dict[str, Any]]:
    """The network of a checkpoint, in eval mode on the CPU, built from its stored config.

    Args:
        checkpoint: a ``.pt`` file or a run folder (its ``last.pt``).
        overrides: ``section.key=value`` changes to the stored config (e.g. ``detect.*``).

    Returns:
        ``(model, config, state)``; ``state["class_names"]`` and ``state["feat_dim"]`` say
        what the model was trained on.

    Raises:
        InputError: missing or foreign checkpoint, or weights that do not fit the config.
    """
    path = Path(checkpoint).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    state = load_checkpoint(path)
    cfg = checkpoint_config(state, path, overrides)
    model = build_model(cfg, state["feat_dim"], len(state["class_names"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(path, f"weights do not fit the model config ({first})") from None
    model.eval()
    return model, cfg, state


def open_split(
    cfg: Config,
    subset: str,
    *,
    path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    sampling: str = "uniform",
) -> FeatureDataset:
    """One subset of the dataset at ``path`` (default ``cfg.data.path``), read as ``cfg.data``
    says (layout, fps, snippet length, fixed-length resampling)."""
    dc = cfg.data
    return FeatureDataset(
        dc.path if path is None else path,
        subset,
        layout=dc.layout,
        fps=dc.fps,
        snippet_frames=dc.snippet_frames,
        num_segments=dc.num_segments or None,
        sampling=sampling,
        seed=cfg.train.seed,
        class_names=class_names,
        max_abs_feature=dc.max_abs_feature,
    )


def split_training_videos(cfg: Config, dataset: FeatureDataset) -> tuple[list[str], list[str]]:
    """``(train_ids, val_ids)`` of the training subset under ``data.val_fraction`` and
    ``data.val_seed`` (:func:`wtal.data.split.validation_split`; no validation videos at 0).

    Raises:
        InputError: the fraction leaves no training video, or none of some class.
    """
    dc = cfg.data
    labels = {r.video_id: list(r.labels) for r in dataset.records}
    train_ids, val_ids = validation_split(labels, dc.val_fraction, dc.val_seed)
    where = f"data.val_fraction = {dc.val_fraction}"
    if not train_ids:
        what = f"leaves no training video of the {len(labels)} in subset {dc.train_subset!r}"
        raise InputError(None, f"{where} {what}; lower it")
    kept = {name for v in train_ids for name in labels[v]}
    lost = sorted({name for names in labels.values() for name in names} - kept)
    if lost:
        what = f"leaves no training video of class {lost[0]!r}"
        raise InputError(None, f"{where} {what} (subset {dc.train_subset!r}); lower it")
    return train_ids, val_ids


def _only_videos(dataset: FeatureDataset, video_ids: Sequence[str]) -> FeatureDataset:
    """A view of ``dataset`` that serves only ``video_ids`` (in the dataset's order)."""
    keep = set(video_ids)
    view = copy.copy(dataset)  # shares the open source; only the record list differs
    view.records = [r for r in dataset.records if r.video_id in keep]
    return view


def report_warnings(*datasets: FeatureDataset) -> None:
    """Log the loader warnings of ``datasets`` (each once: splits of one folder share the
    annotation file's) on the ``wtal`` logger, which the CLI prints as ``warning: ...``."""
    for problem in dict.fromkeys(p for d in datasets for p in d.warnings):
        log.warning("%s", InputError(problem.path, problem.what, problem.video))


def check_splits(train_set: FeatureDataset, test_set: FeatureDataset) -> None:
    """Refuse a test split that could not be scored; warn about untrainable test classes.

    Without any ground-truth segment in the test split, every mAP of the run would be
    meaningless (and evaluation fails at the end of training). A class with ground truth in
    the test split but on no training video can never be detected: its AP is 0.
    """
    if not any(len(r.segments_s) for r in test_set.records):
        what = (
            f"subset {test_set.subset!r} has no ground-truth segments, so nothing could be "
            "scored; set data.test_subset to a subset with ground truth (wtal detect writes "
            "detections for videos without)"
        )
        raise InputError(test_set.source.ann_path, what)
    trained = {name for r in train_set.records for name in r.labels}
    untrainable = sorted({n for r in test_set.records for n in r.segment_labels} - trained)
    if untrainable:
        what = (
            f"{len(untrainable)} class(es) have ground truth in subset {test_set.subset!r} "
            f"but no training video, so they cannot be learned (AP 0): {untrainable[:5]}"
        )
        test_set.warnings.append(Problem("warning", str(test_set.source.ann_path), what))


def open_datasets(cfg: Config) -> tuple[FeatureDataset, FeatureDataset, FeatureDataset]:
    """The training split as trained on (random-perturbed sampling when resampling), the
    training split read deterministically (for pseudo labels and memory initialisation), and
    the test split. Validation videos (``data.val_fraction``) are in neither training view:
    :func:`open_validation` serves them."""
    dc = cfg.data
    resampled = dc.num_segments > 0
    train = open_split(cfg, dc.train_subset, sampling="random" if resampled else "uniform")
    train_fixed = open_split(cfg, dc.train_subset) if resampled else train
    test = open_split(cfg, dc.test_subset, class_names=train.class_names)
    if dc.val_fraction > 0:
        train_ids, _ = split_training_videos(cfg, train)
        train = _only_videos(train, train_ids)
        train_fixed = _only_videos(train_fixed, train_ids) if resampled else train
    return train, train_fixed, test


def open_validation(cfg: Config) -> FeatureDataset | None:
    """The validation videos of the training subset, read deterministically like the test
    split; None when ``data.val_fraction`` is 0."""
    if cfg.data.val_fraction <= 0:
        return None
    train = open_split(cfg, cfg.data.train_subset)
    return _only_videos(train, split_training_videos(cfg, train)[1])


def piecewise(epoch: int, milestones: tuple[int, ...], values: tuple[Any, ...]) -> Any:
    """``values[i]`` where ``i`` counts the milestones that ``epoch`` (0-based) has reached."""
    return values[bisect.bisect_right(milestones, epoch)]


def dist_weight(epoch: int, cfg: Config) -> float:
    """λ_dist(e) = min(w0 * growth ** (e - first regeneration), cap) (paper.md §1.8)."""
    p = cfg.pseudo
    return min(p.dist_weight * p.dist_growth ** (epoch - p.regen_epochs[0]), p.dist_max)


# ----------------------------------------------------------------------------- training


def compute_losses(
    out: ModelOutput,
    labels: Tensor,
    mask: Tensor,
    pseudo: Tensor | None,
    cfg: Config,
    epoch: int,
) -> dict[str, Tensor]:
    """Per-video loss terms (each (B,)) and their weighted sum ``total`` (paper.md §1.3, §1.8).

    Args:
        out: the model output of a training forward pass.
        labels: (B, C) multi-hot video labels.
        mask: (B, T) bool, True on real snippets.
        pseudo: (B, T, C+1) pseudo-label targets (may be negative for delta labels) or None.
        cfg: the run's config.
        epoch: 0-based epoch, selects the scheduled weights.
    """
    lc = cfg.loss
    terms = base_losses(
        out,
        labels,
        mask,
        memory_weight=lc.memory_branch_weight,
        memory_target_weight=lc.spl_memory_mix,
        spl_temperature=lc.spl_temperature,
        topk_divisor=lc.att_topk_divisor,
    )
    total = (
        lc.fore_weight * terms["fore"]
        + lc.back_weight * terms["back"]
        + lc.att_weight * terms["att"]
        + piecewise(epoch, lc.spl_milestones, lc.spl_weights) * terms["spl"]
    )
    if pseudo is not None:
        terms["dist"] = pseudo_label_loss(
            out.o.logits, out.m.logits, pseudo, mask, o_weight=cfg.pseudo.cas_mix
        )
        total = total + dist_weight(epoch, cfg) * terms["dist"]
    terms["total"] = total
    return terms


def _pad_pseudo(targets: dict[str, Tensor], batch: Batch, device: torch.device) -> Tensor:
    """Stack per-video pseudo labels (T_i, C+1) into (B, T_max, C+1), zero on padding."""
    b, t = batch.mask.shape
    first = next(iter(targets.values()))
    out = torch.zeros(b, t, first.shape[1], device=device)
    for i, vid in enumerate(batch.video_ids):
        y = targets[vid]
        out[i, : y.shape[0]] = y.to(device)
    return out


def _unsplit(rows: list[tuple[np.ndarray, Tensor, Tensor]]) -> tuple[Tensor, ...]:
    """Per-pass ``(index, tensor, ...)`` rows of :func:`~wtal.data.split_batch` back in the
    batch's order: each tensor (b, ...) of a pass lands at rows ``index`` of a (B, ...) one."""
    index = torch.from_numpy(np.concatenate([r[0] for r in rows]))
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(len(index))
    columns = zip(*(r[1:] for r in rows), strict=True)
    return tuple(torch.cat(parts)[inverse.to(parts[0].device)] for parts in columns)


def train_one_epoch(
    model: WTALModel,
    loader: Iterable[Batch] | ShardedLoader,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    epoch: int,
    device: torch.device,
    pseudo_targets: dict[str, Tensor] | None = None,
    progress: bool = True,
    ddp: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One pass over the training videos; returns the mean of each loss term per video.

    Losses are summed (not averaged) over ``cfg.train.videos_per_step`` videos before each
    optimizer step, like the reference's accumulation over 10 single-video passes. A
    remainder at the end of the epoch makes one last, smaller step.

    Under DDP ``loader`` is a :class:`~wtal.distributed.ShardedLoader` and ``ddp`` the
    :func:`~wtal.distributed.wrap_model` wrapper of ``model``: each rank runs its slice of
    every global batch, gradients are summed over ranks, the memory is updated from the
    gathered global batch, and videos are counted per global batch, so the step is the
    single-process step.
    """
    net = model if ddp is None else ddp
    net.train()
    use_memory = epoch > cfg.train.warmup_epoch
    sums: dict[str, float] = {}
    n_videos = 0
    since_step = 0
    optimizer.zero_grad(set_to_none=True)
    for item in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress):
        batch, global_size, empty = (
            (item.batch, item.global_size, item.empty)
            if isinstance(item, Shard)
            else (item, len(item.video_ids), False)
        )
        # Videos of similar length share a forward pass; every pass reads the memory as it
        # was before the batch, and the batch updates it once, in its own order, afterwards.
        passes = split_batch(batch, cfg.train.max_padding)
        rows: list[tuple[np.ndarray, Tensor, Tensor]] = []
        for i, (index, part) in enumerate(passes):
            features = part.features.to(device)
            mask = part.mask.to(device)
            labels = part.labels.to(device)
            # Under DDP only the batch's last backward all-reduces (the earlier ones add up
            # locally), so every rank joins one all-reduce per batch however it splits.
            last = i == len(passes) - 1
            with contextlib.nullcontext() if ddp is None or last else ddp.no_sync():
                out = net(features, mask, labels, use_memory=use_memory)
                pseudo = (
                    None if pseudo_targets is None else _pad_pseudo(pseudo_targets, part, device)
                )
                terms = compute_losses(out, labels, mask, pseudo, cfg, epoch)
                loss = terms["total"].sum()
                if not torch.isfinite(loss):
                    bad = {k: v.detach().tolist() for k, v in terms.items()}
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}: {bad} ({part.video_ids})"
                    )
                if empty:  # a stand-in video: exact zero gradients keep the all-reduce in step
                    loss = torch.stack([p.sum() for p in model.parameters()]).sum() * 0.0
                loss.backward()
            rows.append((index, out.bases.detach(), out.basis_scores.detach()))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + (0.0 if empty else float(v.detach().sum()))
        if use_memory:
            bases, scores = _unsplit(rows)
            model.memory.update(
                *distributed.gather_rows(item, bases, scores, batch.labels.to(device))
            )
        fault_point("epoch", epoch)
        n_videos += 0 if empty else len(batch.video_ids)
        since_step += global_size
        if since_step >= cfg.train.videos_per_step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            since_step = 0
    if since_step:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if isinstance(loader, ShardedLoader):
        totals = distributed.sum_over_ranks({**sums, "": float(n_videos)})
        n_videos = int(totals.pop(""))
        sums = totals
    return {k: v / max(n_videos, 1) for k, v in sums.items()}


@torch.no_grad()
def init_memory(
    model: WTALModel,
    loader: Iterable[Batch] | ShardedLoader,
    device: torch.device,
    max_padding: float = 0.0,
) -> None:
    """Fill the inter-video memory from a dropout-free pass over the training videos
    (after the warm-up epoch, method.py:330-334).

    ``max_padding`` splits each batch into passes of similar length
    (:func:`~wtal.data.split_batch`); the memory is updated batch by batch in the loader's
    order either way. With a :class:`~wtal.distributed.ShardedLoader` each rank runs its
    slices and every rank updates from the gathered rows in global order, so all memories
    are the same.
    """
    was_training = model.training
    model.eval()
    model.memory.reset()
    for item in loader:
        batch = item.batch if isinstance(item, Shard) else item
        rows = []
        for index, part in split_batch(batch, max_padding):
            out = model(part.features.to(device), part.mask.to(device))
            rows.append((index, out.bases, out.basis_scores))
        bases, scores = _unsplit(rows)
        model.memory.update(*distributed.gather_rows(item, bases, scores, batch.labels.to(device)))
    model.train(was_training)


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
    preds = predict(
        model,
        distributed.shard_dataset(dataset),
        device,
        video_mix=cfg.detect.video_mix,
        cas_mix=cfg.pseudo.cas_mix,
        batch_size=cfg.train.batch_size,
        max_padding=cfg.train.max_padding,
        dropout=cfg.pseudo.teacher_dropout,
    )
    # pseudo.fusion may swap the fusion method; everything else is the test-time detection.
    dcfg = cfg.detect
    if cfg.pseudo.fusion is not None:
        dcfg = replace(dcfg, fusion=cfg.pseudo.fusion)
    found_all = []
    for pred in preds:
        found = detect(pred, dcfg, temperature=temperature, background=True)
        if cfg.pseudo.gt_classes_only:
            allowed = np.append(pred.labels > 0, True)
            keep = torch.from_numpy(allowed)[found.labels]
            found = type(found)(*(x[keep] for x in found))
        found_all.append(found)
    ys, solved = solve_pseudo_labels_batch(
        [f.segments.numpy() for f in found_all],
        [f.scores.numpy() for f in found_all],
        [f.labels.numpy() for f in found_all],
        [p.cas.shape[0] for p in preds],
        preds[0].cas.shape[1] if preds else dataset.num_classes + 1,
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
    per_video = _pseudo_quality(dataset, preds, ys, found_all)
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


def _pseudo_quality(dataset: FeatureDataset, preds, ys, found_all) -> list[dict[str, Any]]:
    """Pseudo labels against the ground truth of each training video that has some."""
    truth = dataset.segments_by_video()
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


def select_pseudo_target(
    epoch: int, history: list[tuple[int, dict[str, Tensor]]], cfg: Config
) -> dict[str, Tensor] | None:
    """The pseudo-label target of every training video at ``epoch`` (the §1.8 table): None
    (zero target), the latest labels, or delta labels alpha * (latest - previous)."""
    if not history:
        return None
    p = cfg.pseudo
    schedule = dict(
        regen_epochs=p.regen_epochs,
        zero_target_until=p.regen_epochs[0],
        delta_start=p.delta_start if p.delta else cfg.train.epochs,
        delta_coefficients=(
            (p.delta_start, p.delta_coefficients[0]),
            (p.delta_switch, p.delta_coefficients[1]),
        ),
        clamp_min=p.delta_clamp_min,
    )
    targets = {}
    for vid in history[-1][1]:
        target = pseudo_target(epoch, [(e, labels[vid]) for e, labels in history], **schedule)
        if target is None:
            return None
        targets[vid] = target
    return targets


def is_delta_target(epoch: int, cfg: Config) -> bool:
    """Whether :func:`select_pseudo_target` gives Δ labels at ``epoch`` (the rule of
    :func:`wtal.pseudo.pseudo_target`)."""
    p = cfg.pseudo
    done = [r for r in p.regen_epochs if r <= epoch]
    return p.delta and epoch > p.regen_epochs[0] and epoch >= p.delta_start and len(done) >= 2


# ----------------------------------------------------------------------------- evaluation


def evaluate_predictions(
    preds: list[Prediction], dataset: FeatureDataset, cfg: Config
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Detect on every video and score against the dataset's ground truth (both protocols).

    Returns:
        ``(results, metrics)``: detections in the ActivityNet results format, and a JSON-ready
        dict with the official and legacy metrics and the video classification mAP.
    """
    results = detections_to_results(preds, dataset, cfg.detect)
    metrics = score_results(
        results, dataset.ground_truth(), dataset.subset, cfg, grid_by_video=dataset.grids()
    )
    scores = np.stack([p.video_scores[:-1] for p in preds])
    labels = np.stack([p.labels for p in preds])
    metrics["classification_map"] = classification_map(scores, labels)
    return results, metrics


def score_results(
    results: dict[str, Any],
    ground_truth: dict[str, Any],
    subset: str | None,
    cfg: Config,
    *,
    grid_by_video: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Detection mAP of ``results`` under both protocols (``official`` and ``wtalc``).

    The ``wtalc`` snippet grid is ``cfg.data``'s, or ``grid_by_video[video]`` =
    ``(fps, snippet_frames)`` for videos with their own.

    Returns:
        ``{"official": ..., "wtalc": ..., "headline": average mAP of cfg.eval.protocol}``,
        each protocol as :meth:`wtal.evaluation.DetectionMetrics.as_dict`.
    """
    tious = TIOU_PRESETS[cfg.eval.preset]
    metrics: dict[str, Any] = {}
    for protocol in ("official", "wtalc"):
        m = evaluate_detections(
            ground_truth,
            results,
            tious,
            subset=subset,
            protocol=protocol,
            fps=cfg.data.fps,
            snippet_frames=cfg.data.snippet_frames,
            grid_by_video=grid_by_video,
            ambiguous_filter=cfg.eval.ambiguous_filter and protocol == "wtalc",
        )
        metrics[protocol] = m.as_dict()
    metrics["headline"] = metrics[cfg.eval.protocol]["average_mAP"]
    return metrics


def evaluate_model(
    model: WTALModel,
    dataset: FeatureDataset,
    cfg: Config,
    device: torch.device,
    *,
    cache: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`predict` (test-time mixing, dropout off) then :func:`evaluate_predictions`.

    Under DDP each rank predicts its slice of the videos, rank 0 gathers and evaluates, and
    every rank gets the metrics; the detections are returned on rank 0 only (empty elsewhere).
    With ``cache``, the gathered predictions are also written there (:func:`save_predictions`).
    """
    preds = predict(
        model,
        distributed.shard_dataset(dataset),
        device,
        video_mix=cfg.detect.video_mix,
        cas_mix=cfg.detect.cas_mix,
        batch_size=cfg.train.batch_size,
        max_padding=cfg.train.max_padding,
    )
    world = distributed.world_size()
    if world > 1:
        parts = distributed.gather_objects(preds)
        if parts is None:  # not rank 0: wait for rank 0's metrics
            return {}, distributed.broadcast_object(None)
        preds = [p for part in parts for p in part]
    if cache is not None:
        save_predictions(cache, preds, dataset.class_names, cfg, dataset.subset)
    results, metrics = evaluate_predictions(preds, dataset, cfg)
    if world > 1:
        metrics = distributed.broadcast_object(metrics)
    return results, metrics


# ----------------------------------------------------------------------------- fit


def fit(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train the whole method and evaluate the final model on the test subset.

    Writes into ``run_dir``: ``config.yaml``, ``log.jsonl``, ``last.pt`` (every epoch) and
    ``epoch_XXX.pt`` (every ``train.checkpoint_every`` epochs), ``metrics_base.json`` right
    before the first regeneration, and at the end ``detections_test.json``, ``cas_test.npz``
    and ``metrics.json``. With a validation split (``data.val_fraction``) also
    ``metrics_val_base.json`` and ``metrics_val.json``.

    Args:
        cfg: the resolved config.
        run_dir: the run folder, created once the data has been checked (bad input leaves
            nothing behind).
        resume: continue from ``run_dir/last.pt`` exactly where it stopped (from epoch 0,
            or from the run's ``init_from.json`` checkpoint, when the run stopped before its
            first checkpoint).
        init_from: start a new run from this checkpoint (a ``.pt`` file or a run folder):
            its epoch, weights, memory, optimizer state, pseudo-label history and random
            state, under ``cfg`` (which may differ, e.g. in ``pseudo.*`` or ``loss.*``).
            With the checkpoint's own config the run continues bit for bit as the run that
            wrote it (CPU). The source's path, sha256 and epoch go to ``init_from.json``, the
            checkpoints and the first ``log.jsonl`` record.
        progress: show tqdm progress bars.

    Under DDP (a process group is initialised, see :mod:`wtal.distributed`) every rank calls
    this with the same arguments; rank 0 writes the files, and every rank returns the metrics.

    The run folder is locked (:class:`wtal.runlock.RunLock`) for the whole run: a second
    process training into it gets an :class:`InputError` naming this one's pid.

    Returns:
        The final metrics on the test subset (see :func:`evaluate_predictions`).
    """
    if resume and init_from is not None:
        raise InputError(run_dir, "--resume continues a run; --init-from starts a new one")
    with RunLock(run_dir, active=distributed.is_main()) as lock:
        return _fit(cfg, Path(run_dir), resume, progress, lock, init_from)


def _fit(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    progress: bool,
    lock: RunLock,
    init_from: str | Path | None,
) -> dict:
    """The body of :func:`fit`, inside the run folder's lock."""
    world, main = distributed.world_size(), distributed.is_main()
    device = distributed.rank_device(resolve_device(cfg.train.device))
    torch.manual_seed(cfg.train.seed)
    train_set, train_fixed, test_set = open_datasets(cfg)
    val_set = open_validation(cfg)
    for dataset in (train_set, test_set, val_set):  # fail now, not mid-run
        if dataset is not None:
            dataset.check_features(train_set.feat_dim)
    check_splits(train_set, test_set)
    if main:
        report_warnings(*(d for d in (train_set, test_set, val_set) if d is not None))
    model = build_model(cfg, train_set.feat_dim, train_set.num_classes).to(device)
    if world > 1:  # same initial weights everywhere, then each rank its own dropout stream
        torch.manual_seed(distributed.rank_seed(cfg.train.seed, distributed.rank()))
    tc = cfg.train
    optimizer = torch.optim.Adam(
        model.parameters(), lr=tc.lr_values[0], betas=tc.betas, weight_decay=tc.weight_decay
    )
    history: list[tuple[int, dict[str, Tensor]]] = []  # (regeneration epoch, labels per video)
    fused: list[tuple[int, dict[str, Any]]] = []  # every regeneration's LP input (small)
    start = 0
    state, source, branch = None, None, None  # source: path of the checkpoint loaded
    expected_sha = None
    if resume:
        state = resume_state(run_dir, cfg, train_set)
        source = run_dir / "last.pt"
        if state is not None:
            branch = state.get("init_from")
        elif (run_dir / INIT_FROM_FILE).is_file():  # a branch that crashed before epoch 1
            saved = read_json(run_dir / INIT_FROM_FILE)
            init_from, expected_sha = saved["path"], saved["sha256"]
    if init_from is not None:
        source = Path(init_from).expanduser()
        state, branch = branch_state(source, cfg, train_set, expected_sha)
    if state is not None:
        history, fused, start = restore(state, source, model, optimizer, cfg, train_set.video_ids)
        log.info("%s %s at epoch %d", "resuming" if resume else "branching", run_dir, start)
    if main and not (resume and (run_dir / "config.yaml").is_file()):  # a new run folder
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # before the first file: a second writer is refused now
        save_config(cfg, run_dir / "config.yaml")
        if branch is not None:
            write_json(run_dir / INIT_FROM_FILE, branch)
    tensorboard = run_dir / "tensorboard" if tc.tensorboard else None
    logbook = JsonlLog(run_dir / "log.jsonl", start, tensorboard) if main else None
    if world > 1:
        ddp = distributed.wrap_model(model, device)
        ordered = ShardedLoader(train_fixed, tc.batch_size)
    else:
        ddp = None
        ordered = torch.utils.data.DataLoader(
            train_fixed, batch_size=tc.batch_size, collate_fn=collate
        )

    for epoch in range(start, tc.epochs):
        t0 = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch}
        if branch is not None and epoch == branch["epoch"]:
            record["init_from"] = branch
        pc = cfg.pseudo
        if pc.enabled and epoch == pc.regen_epochs[0]:  # the base stage's result, for reference
            base = evaluate_model(model, test_set, cfg, device)[1]
            if main:
                write_json(run_dir / "metrics_base.json", base)
            record["eval_base"] = {"average_mAP": base["headline"]}
            if val_set is not None:
                base_val = evaluate_model(model, val_set, cfg, device)[1]
                if main:
                    write_json(run_dir / "metrics_val_base.json", base_val)
                record["eval_base"]["val"] = base_val["headline"]
        if pc.enabled and epoch in pc.regen_epochs:  # before the epoch's first batch (§1.8)
            if pc.reset_memory:
                model.memory.reset()
            temperature = pc.temperatures[pc.regen_epochs.index(epoch)]
            labels, stats, inputs = generate_pseudo_labels(
                model, train_fixed, cfg, temperature, device
            )
            fault_point("pseudo", epoch)
            history = update_history(history, epoch, labels, history_length=pc.history_length)
            fused.append((epoch, inputs))
            record["pseudo"] = {"temperature": temperature, **stats}
        targets = select_pseudo_target(epoch, history, cfg) if pc.enabled else None
        # Diagnostics of the pseudo-label stage: how far one epoch moves the weights.
        watch = pc.enabled and epoch >= pc.regen_epochs[0]
        before = parameter_snapshot(model) if watch else None

        lr = piecewise(epoch, tc.lr_milestones, tc.lr_values)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_set.set_epoch(epoch)
        # modulo 2**64: any valid seed (< 2**64) gives a seed the generator accepts
        shuffle = torch.Generator().manual_seed((tc.seed * 1_000_003 + epoch) % 2**64)
        if world > 1:  # every rank draws the same order and takes its slice of each batch
            loader = ShardedLoader(train_set, tc.batch_size, generator=shuffle)
        else:
            loader = torch.utils.data.DataLoader(
                train_set,
                batch_size=tc.batch_size,
                shuffle=True,
                generator=shuffle,
                collate_fn=collate,
            )
        record["loss"] = train_one_epoch(
            model, loader, optimizer, cfg, epoch, device, targets, progress and main, ddp
        )
        if before is not None:
            record["diag"] = {
                "dist_weight": dist_weight(epoch, cfg),
                **parameter_change(before, model),
            }
            if targets is not None and is_delta_target(epoch, cfg):
                record["diag"].update(negative_share(targets))
        if epoch == tc.warmup_epoch:
            init_memory(model, ordered, device, tc.max_padding)
        record["lr"] = lr
        record["time_s"] = time.perf_counter() - t0
        if tc.eval_every and (epoch + 1) % tc.eval_every == 0 and epoch + 1 < tc.epochs:
            record["eval"] = {}
            if val_set is not None:
                record["eval"]["val"] = evaluate_model(model, val_set, cfg, device)[1]["headline"]
            if val_set is None or tc.eval_test:
                test_map = evaluate_model(model, test_set, cfg, device)[1]["headline"]
                record["eval"]["average_mAP"] = test_map

        state = {
            "format": "wtal",
            "version": CHECKPOINT_VERSION,
            "config": config_to_dict(cfg),
            "epoch": epoch + 1,
            "feat_dim": train_set.feat_dim,
            "class_names": list(train_set.class_names),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "pseudo_epochs": [e for e, _ in history],
            "pseudo": [labels for _, labels in history],
            "pseudo_segment_epochs": [e for e, _ in fused],
            "pseudo_segments": [inputs for _, inputs in fused],
            "rng": rng_state(),
        }
        if branch is not None:
            state["init_from"] = branch
        if world > 1:  # every rank's dropout stream, for an exact resume
            state["rng_ranks"] = distributed.gather_objects(state["rng"])
        if main:
            # last.pt goes last: it commits the epoch. A crash before its rename re-runs the
            # epoch on resume (dropping its log record), so nothing is missing or duplicated.
            logbook.write(record)
            if tc.checkpoint_every and (epoch + 1) % tc.checkpoint_every == 0:
                save_checkpoint(run_dir / f"epoch_{epoch + 1:03d}.pt", state)
            save_checkpoint(run_dir / "last.pt", state)

    cache = run_dir / "cas_test.npz" if main else None
    results, metrics = evaluate_model(model, test_set, cfg, device, cache=cache)
    if main:
        write_json(run_dir / "detections_test.json", results)
        write_json(run_dir / "metrics.json", metrics)
    if val_set is not None:
        metrics_val = evaluate_model(model, val_set, cfg, device)[1]
        if main:
            write_json(run_dir / "metrics_val.json", metrics_val)
    return metrics
