"""Training and inference loops: ``train_one_epoch``, ``predict``, ``detect``, ``fit``.

Read ``fit`` from top to bottom: it is the whole method (paper.md §1.8). The base stage
(RSKP) trains with the video-level losses; from the first regeneration epoch on, pseudo
labels come from :func:`detect` on the training videos, the same path that produces the
test detections, and are turned into snippet targets by the LP of :mod:`wtal.pseudo`.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import pickle
import pickletools
import signal
import time
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wtal import __version__, distributed
from wtal.config import Config, DetectConfig, config_from_dict, config_to_dict, save_config
from wtal.data import Batch, FeatureDataset, Problem, collate, split_batch
from wtal.data.split import validation_split
from wtal.diagnostics import negative_share, parameter_change, parameter_snapshot
from wtal.distributed import Shard, ShardedLoader
from wtal.evaluation import TIOU_PRESETS, classification_map, evaluate_detections
from wtal.fusion import detect as detect_segments
from wtal.io import InputError, atomic_path, os_error, read_json, write_json
from wtal.losses import base_losses, pseudo_label_loss
from wtal.model import ModelOutput, WTALModel
from wtal.pseudo import (
    pseudo_label_quality,
    pseudo_target,
    solve_pseudo_labels_batch,
    summarize_quality,
    update_history,
)
from wtal.runlock import RunLock
from wtal.segments import seconds_to_snippets, snippets_to_seconds

log = logging.getLogger("wtal")

CHECKPOINT_VERSION = 1

FAULT_ENV = "WTAL_FAULT"
"""Testing hook: ``WTAL_FAULT=<point>:<epoch>`` makes :func:`fault_point` kill the process."""
RESUME_KEYS = ("config", "model", "optimizer", "epoch", "pseudo_epochs", "pseudo", "rng")
"""Checkpoint entries that ``fit(..., resume=True)`` needs."""


def fault_point(point: str, epoch: int) -> None:
    """Testing hook for crash safety: SIGKILL this process at a named point of an epoch.

    With ``WTAL_FAULT=<point>:<epoch>`` in the environment the process kills itself, without
    any cleanup, when it reaches ``point`` in 0-based ``epoch``. Points: ``epoch`` (after the
    first batch of the epoch), ``pseudo`` (pseudo labels computed, not yet used),
    ``checkpoint`` (``last.pt`` fully written to its temporary file, not yet renamed). Unset,
    this is a no-op; tests use it to check that ``--resume`` recovers from a crash anywhere.
    """
    if os.environ.get(FAULT_ENV) == f"{point}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


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


# ----------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Prediction:
    """What the model says about one video (unpadded, numpy).

    Attributes:
        video_id: the video.
        video_scores: (C+1,) video-level class probabilities, background last.
        cas: (T, C+1) class activation sequence, attention-weighted probabilities.
        attention: (T,) class-agnostic attention in [0, 1].
        labels: (C,) multi-hot ground-truth video labels (zeros when unknown).
        fps: frame rate of the video's snippets.
        snippet_frames: frames per CAS row (after any resampling).
        duration_s: video duration in seconds (NaN when unknown).
    """

    video_id: str
    video_scores: np.ndarray
    cas: np.ndarray
    attention: np.ndarray
    labels: np.ndarray
    fps: float
    snippet_frames: float
    duration_s: float


@torch.no_grad()
def predict(
    model: WTALModel,
    dataset: FeatureDataset,
    device: torch.device,
    *,
    video_mix: float,
    cas_mix: float,
    batch_size: int = 10,
    max_padding: float = 0.0,
    dropout: bool = False,
    progress: bool = False,
) -> list[Prediction]:
    """Video scores and CAS of every video of ``dataset`` (paper.md §1.4).

    ``video_scores = video_mix * p_o + (1 - video_mix) * p_m`` and
    ``cas = (cas_mix * softmax(S_o) + (1 - cas_mix) * softmax(S_m)) * a_o``.
    ``dropout=True`` runs the network in train mode, as the reference's pseudo-label teacher
    does; nothing is learned or stored either way. ``batch_size`` videos are loaded at a time
    and split into passes of similar length by ``max_padding`` (:func:`~wtal.data.split_batch`);
    without dropout each video's outputs do not depend on its pass.
    """
    was_training = model.training
    model.train(dropout)
    preds: list[Prediction] = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="predict", leave=False, disable=not progress):
        videos = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        found: dict[int, Prediction] = {}
        for index, part in split_batch(collate(videos), max_padding):
            out = model(part.features.to(device), part.mask.to(device))
            video_scores = video_mix * out.o.video_ca + (1 - video_mix) * out.m.video_ca
            probs = cas_mix * out.o.logits.softmax(-1) + (1 - cas_mix) * out.m.logits.softmax(-1)
            cas = probs * out.o.attention.unsqueeze(-1)  # (b, T, C+1)
            for i, j in enumerate(index.tolist()):
                n, video = int(part.lengths[i]), videos[j]
                found[j] = Prediction(
                    video_id=video.video_id,
                    video_scores=video_scores[i].double().cpu().numpy(),
                    cas=cas[i, :n].double().cpu().numpy(),
                    attention=out.o.attention[i, :n].double().cpu().numpy(),
                    labels=video.labels,
                    fps=video.fps,
                    snippet_frames=video.snippet_frames,
                    duration_s=video.duration_s,
                )
        preds.extend(found[j] for j in range(len(videos)))
    model.train(was_training)
    return preds


def detect(
    pred: Prediction,
    dcfg: DetectConfig,
    *,
    temperature: float | None = None,
    background: bool = False,
):
    """CAS -> proposals -> fusion for one video, in snippet units (the one detection path).

    Test-time detections and pseudo labels both call this; they differ only in the
    arguments (pseudo labels keep the background column and use their own temperature).

    Returns:
        :class:`wtal.proposals.Segments` with ``segments`` (N, 2) in snippets.
    """
    columns = pred.cas.shape[1] if background else pred.cas.shape[1] - 1
    return detect_segments(
        torch.from_numpy(pred.cas[:, :columns]),
        torch.from_numpy(pred.video_scores[:columns]),
        class_threshold=dcfg.class_threshold,
        thresholds=np.arange(*dcfg.thresholds),
        min_length=dcfg.min_length,
        outer_scale=dcfg.outer_scale,
        outer_power=dcfg.outer_power,
        inclusive_end=dcfg.inclusive_end,
        method=dcfg.fusion,
        temperature=dcfg.temperature if temperature is None else temperature,
        overlap_threshold=dcfg.overlap_threshold,
        overlap=dcfg.overlap,
        sigma=dcfg.soft_nms_sigma,
        float32_means=dcfg.float32_means,
    )


def detections_to_results(
    preds: list[Prediction], dataset: FeatureDataset, dcfg: DetectConfig
) -> dict[str, Any]:
    """Detections of every video in the ActivityNet results format (seconds)."""
    return results_from_predictions(preds, dataset.class_names, dcfg)


def results_from_predictions(
    preds: list[Prediction], class_names: Sequence[str], dcfg: DetectConfig
) -> dict[str, Any]:
    """Detections of every video in the ActivityNet results format (seconds).

    Args:
        preds: per-video predictions (from :func:`predict` or :func:`load_predictions`).
        class_names: (C,) names of the CAS columns, background excluded.
        dcfg: proposal and fusion parameters.
    """
    results: dict[str, list[dict[str, Any]]] = {}
    for pred in preds:
        found = detect(pred, dcfg)
        seconds = snippets_to_seconds(found.segments.cpu().numpy(), pred.fps, pred.snippet_frames)
        if pred.duration_s > 0:  # False for NaN (unknown duration)
            seconds = np.clip(seconds, 0.0, pred.duration_s)
        results[pred.video_id] = [
            {
                "label": class_names[int(c)],
                "score": float(s),
                "segment": [float(a), float(b)],
            }
            for (a, b), s, c in zip(
                seconds, found.scores.tolist(), found.labels.tolist(), strict=True
            )
        ]
    return {"version": f"wtal {__version__}", "results": results, "external_data": {}}


# ----------------------------------------------------------------------------- CAS cache

CAS_CACHE_FORMAT = "wtal-cas"
"""Value of the ``format`` entry that marks a CAS cache."""
CAS_CACHE_VERSION = 1
"""Layout version of the CAS cache; readers refuse newer ones."""


class CasCache(NamedTuple):
    """The contents of a ``cas.npz`` cache (see :func:`save_predictions`).

    Attributes:
        predictions: one :class:`Prediction` per video, in the order written.
        class_names: (C,) class names of the CAS columns (background excluded).
        config: the config the predictions were made with (its ``detect`` and ``eval``
            sections give the post-processing defaults), or None if none was stored.
        split: the dataset subset the videos came from ("" when not a dataset split).
    """

    predictions: list[Prediction]
    class_names: list[str]
    config: Config | None
    split: str


def save_predictions(
    path: str | Path,
    preds: Sequence[Prediction],
    class_names: Sequence[str],
    cfg: Config | None = None,
    split: str = "",
) -> None:
    """Write predictions to a ``.npz`` cache atomically (``np.savez``, no pickled objects).

    Videos are concatenated along time: with N videos of T_i snippets and C classes the
    file holds ``cas`` (sum T_i, C+1) float64, ``attention`` (sum T_i,) float64,
    ``lengths`` (N,) int64, ``video_ids`` (N,) str, ``video_scores`` (N, C+1) float64,
    ``labels`` (N, C) float32, ``fps``/``snippet_frames``/``duration_s`` (N,) float64,
    ``class_names`` (C,) str, the resolved ``config`` as a JSON string ("" for none),
    ``split`` and the ``format``/``version`` marks. Values are stored at full precision,
    so post-processing the cache reproduces the detections made from the model.
    """
    num_columns = len(class_names) + 1
    for pred in preds:
        if pred.cas.ndim != 2 or pred.cas.shape[1] != num_columns:
            raise ValueError(
                f"video {pred.video_id!r}: cas {pred.cas.shape} does not fit "
                f"{len(class_names)} classes + background"
            )
    arrays = {
        "format": np.array(CAS_CACHE_FORMAT),
        "version": np.array(CAS_CACHE_VERSION, dtype=np.int64),
        "class_names": np.array(list(class_names), dtype=str).reshape(-1),
        "video_ids": np.array([p.video_id for p in preds], dtype=str).reshape(-1),
        "lengths": np.array([p.cas.shape[0] for p in preds], dtype=np.int64),
        "cas": np.concatenate([np.zeros((0, num_columns))] + [p.cas for p in preds]).astype(
            np.float64
        ),
        "attention": np.concatenate([np.zeros(0)] + [p.attention for p in preds]).astype(
            np.float64
        ),
        "video_scores": np.array([p.video_scores for p in preds], dtype=np.float64).reshape(
            -1, num_columns
        ),
        "labels": np.array([p.labels for p in preds], dtype=np.float32).reshape(
            -1, num_columns - 1
        ),
        "fps": np.array([p.fps for p in preds], dtype=np.float64),
        "snippet_frames": np.array([p.snippet_frames for p in preds], dtype=np.float64),
        "duration_s": np.array([p.duration_s for p in preds], dtype=np.float64),
        "config": np.array("" if cfg is None else json.dumps(config_to_dict(cfg))),
        "split": np.array(split),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: no ".npz" appended
        np.savez(f, **arrays)


_CACHE_SHAPES = {
    # entry: (rank, dtype kind); sizes are checked against each other in load_predictions
    "class_names": (1, "U"),
    "video_ids": (1, "U"),
    "lengths": (1, "i"),
    "cas": (2, "f"),
    "attention": (1, "f"),
    "video_scores": (2, "f"),
    "labels": (2, "f"),
    "fps": (1, "f"),
    "snippet_frames": (1, "f"),
    "duration_s": (1, "f"),
    "config": (0, "U"),
    "split": (0, "U"),
}


def _read_cache_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the cache, loaded without unpickling, with kinds and ranks checked."""
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:  # a folder, no permission
        raise os_error(exc, "cannot read", path) from None
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:  # unknown bytes, a cut archive
        raise InputError(path, f"not a readable .npz file ({exc.__class__.__name__})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(path, "not a CAS cache: a single array, expected an .npz archive")
    arrays = {}
    with npz:
        for name in ("format", "version", *_CACHE_SHAPES):
            if name not in npz.files:
                raise InputError(path, f"not a wtal CAS cache (no {name!r} entry)")
            try:
                arrays[name] = npz[name]
            except ValueError:  # an object array: refused without unpickling
                raise InputError(path, f"entry {name!r} holds pickled objects") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                what = f"entry {name!r} is unreadable ({exc.__class__.__name__})"
                raise InputError(path, what) from None
    if str(arrays["format"]) != CAS_CACHE_FORMAT:
        raise InputError(path, f"format {str(arrays['format'])!r}: expected {CAS_CACHE_FORMAT!r}")
    version = arrays["version"]
    if version.ndim != 0 or version.dtype.kind not in "iu":
        what = f"entry 'version': expected one integer, got {version.dtype}{version.shape}"
        raise InputError(path, what)
    if int(version) > CAS_CACHE_VERSION:
        raise InputError(
            path, f"cache version {int(arrays['version'])} is newer than {CAS_CACHE_VERSION}"
        )
    for name, (ndim, kind) in _CACHE_SHAPES.items():
        a = arrays[name]
        if a.ndim != ndim or a.dtype.kind != kind:
            raise InputError(
                path, f"entry {name!r}: expected a {ndim}-d {kind!r} array, got {a.dtype}{a.shape}"
            )
    return arrays


def load_predictions(path: str | Path) -> CasCache:
    """Read a cache written by :func:`save_predictions` (never unpickles).

    Raises:
        InputError: missing or unreadable file, missing entries, inconsistent shapes,
            non-finite values or a stored config that does not load; the message names the
            file and, where it applies, the entry.
    """
    path = Path(path).expanduser()
    a = _read_cache_arrays(path)
    num_videos = len(a["video_ids"])
    num_columns = len(a["class_names"]) + 1
    lengths = a["lengths"]
    expected = {
        "lengths": (num_videos,),
        "cas": (int(lengths.sum()), num_columns),
        "attention": (int(lengths.sum()),),
        "video_scores": (num_videos, num_columns),
        "labels": (num_videos, num_columns - 1),
        "fps": (num_videos,),
        "snippet_frames": (num_videos,),
        "duration_s": (num_videos,),
    }
    if (lengths < 0).any():
        raise InputError(path, "entry 'lengths': negative video length")
    for name, shape in expected.items():
        if a[name].shape != shape:
            raise InputError(path, f"entry {name!r}: shape {a[name].shape}, expected {shape}")
    for name in ("cas", "attention", "video_scores", "fps", "snippet_frames"):
        if not np.isfinite(a[name]).all():
            raise InputError(path, f"entry {name!r}: non-finite values")
    ids, counts = np.unique(a["video_ids"], return_counts=True)
    if (counts > 1).any():  # one video's rows would be read as another's
        raise InputError(path, f"entry 'video_ids': {str(ids[counts > 1][0])!r} is stored twice")
    if not ((a["fps"] > 0).all() and (a["snippet_frames"] > 0).all()):
        raise InputError(path, "entries 'fps'/'snippet_frames': expected positive numbers")
    cfg = None
    if str(a["config"]):
        try:
            cfg = config_from_dict(json.loads(str(a["config"])), source=str(path))
        except json.JSONDecodeError as exc:
            raise InputError(path, f"entry 'config': malformed JSON ({exc.msg})") from None
    bounds = np.cumsum(lengths)[:-1]
    cas, attention = np.split(a["cas"], bounds), np.split(a["attention"], bounds)
    preds = [
        Prediction(
            video_id=str(a["video_ids"][i]),
            video_scores=a["video_scores"][i],
            cas=cas[i],
            attention=attention[i],
            labels=a["labels"][i],
            fps=float(a["fps"][i]),
            snippet_frames=float(a["snippet_frames"][i]),
            duration_s=float(a["duration_s"][i]),
        )
        for i in range(num_videos)
    ]
    return CasCache(preds, [str(c) for c in a["class_names"]], cfg, str(a["split"]))


# ----------------------------------------------------------------------------- pseudo labels


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


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash never leaves a partial file under ``path``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: a full disk is an OSError, not torch's own
            torch.save(state, f)
        if path.name == "last.pt":  # the state after 0-based epoch e stores epoch = e + 1
            fault_point("checkpoint", int(state["epoch"]) - 1)


TORCH_GLOBALS = ("torch.", "collections.OrderedDict")
"""Globals every wtal checkpoint references (tensor rebuilds, state dicts): anything else in a
file that ``weights_only`` refused is named as the code it would have run."""


def pickled_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a checkpoint's pickles reference, read without unpickling.

    Opcodes are only parsed (:func:`pickletools.genops`), never executed. A zip checkpoint
    holds its pickle in ``*/data.pkl``; a legacy one is several pickles in a row. Unparsable
    bytes end the scan.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    stream, found, strings = io.BytesIO(data), [], []
    try:
        while stream.tell() < len(data):
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - any parse error: what was read so far is the answer
        pass
    return found


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code is ever executed)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we refuse below
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch words this differently from version to version (and by what was refused),
        # so the file itself says whether it is a refused object or garbage bytes
        code = [name for name in pickled_globals(path) if not name.startswith(TORCH_GLOBALS)]
        if not code:
            raise InputError(path, "not a readable wtal checkpoint (UnpicklingError)") from None
        what = f"refused: it would run pickled code ({code[0]}); checkpoints load weights_only"
        raise InputError(path, what) from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise InputError(
            path, f"not a readable wtal checkpoint ({exc.__class__.__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "wtal" or "model" not in state:
        raise InputError(path, "not a wtal checkpoint (no 'format: wtal' entry)")
    return state


def checkpoint_config(
    state: dict[str, Any], path: str | Path, overrides: list[str] | None = None
) -> Config:
    """The config stored in a checkpoint, after checking the metadata commands rely on.

    Raises:
        InputError: a missing ``config``, ``feat_dim`` or ``class_names`` entry, one of the
            wrong type (``feat_dim`` an integer >= 1, ``class_names`` a non-empty list of
            strings), or a stored config that does not load.
    """
    for key in ("config", "feat_dim", "class_names"):
        if key not in state:
            raise InputError(path, f"checkpoint has no {key!r} entry")
    feat_dim, names = state["feat_dim"], state["class_names"]
    if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
        raise InputError(path, f"entry 'feat_dim' = {feat_dim!r}: expected an integer >= 1")
    if not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
        raise InputError(path, "entry 'class_names': expected a non-empty list of strings")
    if not isinstance(state["config"], dict):
        raise InputError(path, "entry 'config': expected a mapping of config sections")
    return config_from_dict(state["config"], overrides, source=str(path))


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


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key whose values differ between two nested dicts (None if equal)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None if a == b else (prefix.rstrip("."), a, b)
    for key in sorted(set(a) | set(b), key=str):
        found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
        if found is not None:
            return found
    return None


def _check_state(path: Path, state: dict[str, Any], train_set: FeatureDataset, verb: str) -> None:
    """What resuming and branching both need: every entry, and the data's features and classes."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise InputError(path, f"cannot {verb} from it: no {', '.join(missing)} entries")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InputError(path, f"'epoch' = {epoch!r}: expected an integer >= 0")
    for key, kind in (("config", dict), ("pseudo", list), ("pseudo_epochs", list)):
        if not isinstance(state[key], kind):
            what = f"'{key}' is a {type(state[key]).__name__}, expected a {kind.__name__}"
            raise InputError(path, f"cannot {verb} from it: {what}")
    if state.get("feat_dim") != train_set.feat_dim:
        dims = f"{state.get('feat_dim')}-d features; the data has {train_set.feat_dim}-d"
        raise InputError(path, f"trained on {dims}")
    if state.get("class_names") != list(train_set.class_names):
        raise InputError(path, f"trained on other classes than {train_set.source.root} now has")


def _resume_state(run_dir: Path, cfg: Config, train_set: FeatureDataset) -> dict[str, Any] | None:
    """``run_dir/last.pt``, checked against the config and the data; None when the run
    stopped before its first checkpoint (it then starts again from epoch 0, or from its
    ``init_from.json`` checkpoint).

    Leftover temporary files of writes cut by a crash (``.<name>.*.tmp``) are removed.
    """
    for stale in run_dir.glob(".*.tmp"):
        if stale.is_file():
            stale.unlink()
    path = run_dir / "last.pt"
    if path.is_dir():  # load_checkpoint would read it as a run folder: last.pt/last.pt
        raise InputError(path, "is a folder; expected the run's checkpoint file")
    if not path.exists():
        periodic = sorted(run_dir.glob("epoch_*.pt"))
        if periodic:  # a checkpoint went missing: do not silently start over
            raise InputError(path, f"not found; copy {periodic[-1].name} to last.pt to resume")
        log.info("no checkpoint in %s yet: starting from the beginning", run_dir)
        return None
    state = load_checkpoint(path)
    _check_state(path, state, train_set, "resume")
    # the stored config through the loader: fields added since the run started take their
    # defaults there as they did in config.yaml, so they are no difference
    stored = config_to_dict(config_from_dict(state["config"], source=str(path)))
    diff = _first_difference(config_to_dict(cfg), stored)
    if diff is not None:
        key, here, there = diff
        what = f"differs from the checkpoint's config ({key}: {here!r} here, {there!r} in last.pt)"
        raise InputError(run_dir / "config.yaml", what)
    video_ids = set(train_set.video_ids)
    for labels in state["pseudo"]:
        if set(labels) != video_ids:
            raise InputError(path, "pseudo labels for other training videos than the data's")
    return state


INIT_FROM_FILE = "init_from.json"
"""File of a branched run folder naming the checkpoint it started from (path, sha256, epoch)."""
TRAINING_SET_KEYS = ("path", "train_subset", "val_fraction", "val_seed")
"""``data`` fields that decide which videos a run trains on."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _branch_state(
    path: Path, cfg: Config, train_set: FeatureDataset, sha256: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint to start a new run from (``--init-from``), checked against ``cfg`` and
    the data, and the ``{"path", "sha256", "epoch"}`` record of where the run came from.

    Unlike a resume, the config may differ; the model must still fit it (checked when the
    weights are loaded), the epoch must leave something to train, and the pseudo-label
    history must hold every training video and the regenerations the schedule still reads.
    A checkpoint trained on other videos (``data`` path, subset or validation split) is
    allowed with a warning.
    """
    path = Path(path).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    state = load_checkpoint(path)
    _check_state(path, state, train_set, "branch")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise InputError(path, f"changed since this run branched from it (sha256 {sha256[:12]})")
    epoch = int(state["epoch"])
    if epoch >= cfg.train.epochs:
        what = f"is at epoch {epoch}; train.epochs = {cfg.train.epochs} leaves nothing to train"
        raise InputError(path, what)
    data_then = state["config"].get("data", {})
    data_now = config_to_dict(cfg)["data"]
    changed = [k for k in TRAINING_SET_KEYS if data_then.get(k, data_now[k]) != data_now[k]]
    if changed:
        warnings.warn(
            f"{path}: trained on another training set (data.{', data.'.join(changed)} differ)",
            stacklevel=3,
        )
    video_ids = set(train_set.video_ids)
    if cfg.pseudo.enabled and state["pseudo"]:
        missing = video_ids - set(state["pseudo"][-1])
        if missing:
            what = f"has no pseudo labels of training video {sorted(missing)[0]!r}"
            raise InputError(path, f"cannot branch from it: it {what}")
        done = [r for r in cfg.pseudo.regen_epochs if r < epoch][-2:]
        absent = [r for r in done if r not in state["pseudo_epochs"]]
        if absent:
            what = f"no pseudo labels of regeneration epoch {absent[-1]} (pseudo.regen_epochs)"
            raise InputError(path, f"cannot branch from it: {what}")
    return state, {"path": str(path.resolve()), "sha256": digest, "epoch": epoch}


def _restore(
    state: dict[str, Any],
    path: Path,
    model: WTALModel,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    train_ids: Sequence[str],
) -> tuple[list[tuple[int, dict[str, Tensor]]], list[tuple[int, dict[str, Any]]], int]:
    """Load a checkpoint's weights (memory included), optimizer state, pseudo-label history
    and random state; returns ``(history, fused, start_epoch)``.

    The optimizer keeps its moments, but takes its hyper-parameters from ``cfg`` (Adam's
    ``load_state_dict`` would restore the stored ones), so a branch may change them. Pseudo
    labels of videos that are not training videos here are dropped.
    """
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        what = f"does not fit this config's model ({str(exc).strip().splitlines()[0]})"
        raise InputError(path, what) from None
    for group in optimizer.param_groups:
        group["betas"], group["weight_decay"] = cfg.train.betas, cfg.train.weight_decay
    keep = set(train_ids)

    def only(per_video: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in per_video.items() if k in keep}

    history = [
        (int(e), only(labels))
        for e, labels in zip(state["pseudo_epochs"], state["pseudo"], strict=True)
    ]
    fused = [
        (int(e), {"segments": only(x["segments"]), "timing": only(x["timing"])})
        for e, x in zip(
            state.get("pseudo_segment_epochs", []), state.get("pseudo_segments", []), strict=True
        )
    ]
    world = distributed.world_size()
    rng_ranks = state.get("rng_ranks", [])
    if world == 1:
        _set_rng_state(state["rng"])
    elif len(rng_ranks) == world:
        _set_rng_state(rng_ranks[distributed.rank()])
    elif distributed.is_main():
        saved = len(rng_ranks) or 1
        log.warning("checkpoint of %d process(es), run of %d: new dropout seeds", saved, world)
    return history, fused, int(state["epoch"])


def _summary_writer(log_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``log_dir``, or None when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # an optional extra: log.jsonl alone
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _scalars(record: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """The numeric leaves of a nested log record as ``("loss/fore", value)`` pairs."""
    out = []
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _scalars(value, tag + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch":
            out.append((tag, float(value)))
    return out


class JsonlLog:
    """``log.jsonl``: one JSON object per epoch. On resume, entries of epochs that are about
    to be re-run are dropped, so the log matches an uninterrupted run. With
    ``tensorboard_dir`` (and tensorboard installed) every numeric entry also goes to
    TensorBoard, at step = epoch."""

    def __init__(self, path: Path, start_epoch: int, tensorboard_dir: Path | None = None):
        self.path = path
        self.tensorboard = _summary_writer(tensorboard_dir) if tensorboard_dir else None
        kept = []
        if path.exists():
            try:
                text = path.read_text()
            except UnicodeDecodeError:  # the log is ASCII JSON: a crash cannot cause this
                raise InputError(path, "cannot read: not UTF-8 text") from None
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if not isinstance(rec, dict):
                    continue  # not a record of ours
                if rec.get("epoch", -1) < start_epoch:
                    kept.append(line)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk: the error has no filename, so name the log
            raise os_error(exc, "cannot write", self.path) from None
        if self.tensorboard is not None:
            for tag, value in _scalars(record):
                self.tensorboard.add_scalar(tag, value, record["epoch"])
            self.tensorboard.flush()


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
        state = _resume_state(run_dir, cfg, train_set)
        source = run_dir / "last.pt"
        if state is not None:
            branch = state.get("init_from")
        elif (run_dir / INIT_FROM_FILE).is_file():  # a branch that crashed before epoch 1
            saved = read_json(run_dir / INIT_FROM_FILE)
            init_from, expected_sha = saved["path"], saved["sha256"]
    if init_from is not None:
        source = Path(init_from).expanduser()
        state, branch = _branch_state(source, cfg, train_set, expected_sha)
    if state is not None:
        history, fused, start = _restore(state, source, model, optimizer, cfg, train_set.video_ids)
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
            "rng": _rng_state(),
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
