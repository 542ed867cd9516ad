"""Training and inference loops: ``train_one_epoch``, ``predict``, ``detect``, ``fit``.

Read ``fit`` from top to bottom: it is the whole method (paper.md §1.8). The base stage
(RSKP) trains with the video-level losses; from the first regeneration epoch on, pseudo
labels come from :func:`detect` on the training videos, the same path that produces the
test detections, and are turned into snippet targets by the LP of :mod:`wtal.pseudo`.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wtal import __version__
from wtal.config import Config, DetectConfig, config_to_dict, save_config
from wtal.data import Batch, FeatureDataset, collate
from wtal.evaluation import TIOU_PRESETS, classification_map, evaluate_detections
from wtal.fusion import detect as detect_segments
from wtal.io import InputError, atomic_path, write_json
from wtal.losses import base_losses, pseudo_label_loss
from wtal.model import ModelOutput, WTALModel
from wtal.pseudo import (
    pseudo_label_quality,
    pseudo_target,
    solve_pseudo_labels_batch,
    summarize_quality,
    update_history,
)
from wtal.segments import seconds_to_snippets, snippets_to_seconds

log = logging.getLogger("wtal")

CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def build_model(cfg: Config, feat_dim: int, num_classes: int) -> WTALModel:
    """The network with the config's ``model`` section as keyword arguments."""
    return WTALModel(feat_dim, num_classes, **vars(cfg.model))


def open_datasets(cfg: Config) -> tuple[FeatureDataset, FeatureDataset, FeatureDataset]:
    """The training split as trained on (random-perturbed sampling when resampling), the
    training split read deterministically (for pseudo labels and memory initialisation), and
    the test split."""
    dc = cfg.data
    kwargs = dict(
        layout=dc.layout,
        fps=dc.fps,
        snippet_frames=dc.snippet_frames,
        num_segments=dc.num_segments or None,
        seed=cfg.train.seed,
    )
    resampled = dc.num_segments > 0
    train = FeatureDataset(
        dc.path, dc.train_subset, sampling="random" if resampled else "uniform", **kwargs
    )
    train_fixed = FeatureDataset(dc.path, dc.train_subset, **kwargs) if resampled else train
    test = FeatureDataset(dc.path, dc.test_subset, class_names=train.class_names, **kwargs)
    return train, train_fixed, test


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


def train_one_epoch(
    model: WTALModel,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    epoch: int,
    device: torch.device,
    pseudo_targets: dict[str, Tensor] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over the training videos; returns the mean of each loss term per video.

    Losses are summed (not averaged) over ``cfg.train.videos_per_step`` videos before each
    optimizer step, like the reference's accumulation over 10 single-video passes. A
    remainder at the end of the epoch makes one last, smaller step.
    """
    model.train()
    use_memory = epoch > cfg.train.warmup_epoch
    sums: dict[str, float] = {}
    n_videos = 0
    since_step = 0
    optimizer.zero_grad(set_to_none=True)
    for batch in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress):
        features = batch.features.to(device)
        mask = batch.mask.to(device)
        labels = batch.labels.to(device)
        out = model(features, mask, labels, use_memory=use_memory)
        pseudo = None if pseudo_targets is None else _pad_pseudo(pseudo_targets, batch, device)
        terms = compute_losses(out, labels, mask, pseudo, cfg, epoch)
        loss = terms["total"].sum()
        if not torch.isfinite(loss):
            bad = {k: v.detach().tolist() for k, v in terms.items()}
            raise FloatingPointError(f"non-finite loss at epoch {epoch}: {bad} ({batch.video_ids})")
        loss.backward()
        if use_memory:
            model.memory.update(out.bases.detach(), out.basis_scores.detach(), labels)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach().sum())
        n_videos += len(batch.video_ids)
        since_step += len(batch.video_ids)
        if since_step >= cfg.train.videos_per_step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            since_step = 0
    if since_step:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v / max(n_videos, 1) for k, v in sums.items()}


@torch.no_grad()
def init_memory(
    model: WTALModel, loader: torch.utils.data.DataLoader, device: torch.device
) -> None:
    """Fill the inter-video memory from a dropout-free pass over the training videos
    (after the warm-up epoch, method.py:330-334)."""
    was_training = model.training
    model.eval()
    model.memory.reset()
    for batch in loader:
        labels = batch.labels.to(device)
        out = model(batch.features.to(device), batch.mask.to(device), labels)
        model.memory.update(out.bases, out.basis_scores, labels)
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
    dropout: bool = False,
    progress: bool = False,
) -> list[Prediction]:
    """Video scores and CAS of every video of ``dataset`` (paper.md §1.4).

    ``video_scores = video_mix * p_o + (1 - video_mix) * p_m`` and
    ``cas = (cas_mix * softmax(S_o) + (1 - cas_mix) * softmax(S_m)) * a_o``.
    ``dropout=True`` runs the network in train mode, as the reference's pseudo-label teacher
    does; nothing is learned or stored either way.
    """
    was_training = model.training
    model.train(dropout)
    preds: list[Prediction] = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="predict", leave=False, disable=not progress):
        videos = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(videos)
        out = model(batch.features.to(device), batch.mask.to(device))
        video_scores = video_mix * out.o.video_ca + (1 - video_mix) * out.m.video_ca  # (B, C+1)
        probs = cas_mix * out.o.logits.softmax(-1) + (1 - cas_mix) * out.m.logits.softmax(-1)
        cas = probs * out.o.attention.unsqueeze(-1)  # (B, T, C+1)
        for i, video in enumerate(videos):
            n = int(batch.lengths[i])
            preds.append(
                Prediction(
                    video_id=video.video_id,
                    video_scores=video_scores[i].double().cpu().numpy(),
                    cas=cas[i, :n].double().cpu().numpy(),
                    attention=out.o.attention[i, :n].double().cpu().numpy(),
                    labels=video.labels,
                    fps=video.fps,
                    snippet_frames=video.snippet_frames,
                    duration_s=video.duration_s,
                )
            )
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
    results: dict[str, list[dict[str, Any]]] = {}
    for pred in preds:
        found = detect(pred, dcfg)
        seconds = snippets_to_seconds(found.segments.cpu().numpy(), pred.fps, pred.snippet_frames)
        if pred.duration_s > 0:  # False for NaN (unknown duration)
            seconds = np.clip(seconds, 0.0, pred.duration_s)
        results[pred.video_id] = [
            {
                "label": dataset.class_names[int(c)],
                "score": float(s),
                "segment": [float(a), float(b)],
            }
            for (a, b), s, c in zip(
                seconds, found.scores.tolist(), found.labels.tolist(), strict=True
            )
        ]
    return {"version": f"wtal {__version__}", "results": results, "external_data": {}}


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
        dataset,
        device,
        video_mix=cfg.detect.video_mix,
        cas_mix=cfg.pseudo.cas_mix,
        batch_size=cfg.train.batch_size,
        dropout=cfg.pseudo.teacher_dropout,
    )
    found_all = []
    for pred in preds:
        found = detect(pred, cfg.detect, temperature=temperature, background=True)
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
    quality = _pseudo_quality(dataset, preds, ys, found_all)
    if quality is not None:
        stats["quality"] = quality
    return labels, stats, {"segments": segments, "timing": timing}


def _pseudo_quality(dataset: FeatureDataset, preds, ys, found_all) -> dict[str, float] | None:
    """Pseudo labels against the training videos' ground truth (None when there is none)."""
    database = dataset.ground_truth()["database"]
    index = {name: i for i, name in enumerate(dataset.class_names)}
    per_video = []
    for pred, y, found in zip(preds, ys, found_all, strict=True):
        annotations = database[pred.video_id]["annotations"]
        if not annotations:
            continue
        gt_s = np.array([a["segment"] for a in annotations], np.float64).reshape(-1, 2)
        gt = seconds_to_snippets(gt_s, pred.fps, pred.snippet_frames)
        per_video.append(
            pseudo_label_quality(
                y,
                gt,
                np.array([index[a["label"]] for a in annotations], np.int64),
                pseudo_segments=found.segments.numpy(),
                pseudo_segment_labels=found.labels.numpy(),
            )
        )
    return summarize_quality(per_video) if per_video else None


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
    gt = dataset.ground_truth()
    tious = TIOU_PRESETS[cfg.eval.preset]
    metrics: dict[str, Any] = {}
    for protocol in ("official", "wtalc"):
        m = evaluate_detections(
            gt,
            results,
            tious,
            subset=dataset.subset,
            protocol=protocol,
            fps=cfg.data.fps,
            snippet_frames=cfg.data.snippet_frames,
            ambiguous_filter=cfg.eval.ambiguous_filter and protocol == "wtalc",
        )
        metrics[protocol] = m.as_dict()
    scores = np.stack([p.video_scores[:-1] for p in preds])
    labels = np.stack([p.labels for p in preds])
    metrics["classification_map"] = classification_map(scores, labels)
    metrics["headline"] = metrics[cfg.eval.protocol]["average_mAP"]
    return results, metrics


def evaluate_model(
    model: WTALModel, dataset: FeatureDataset, cfg: Config, device: torch.device
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`predict` (test-time mixing, dropout off) then :func:`evaluate_predictions`."""
    preds = predict(
        model,
        dataset,
        device,
        video_mix=cfg.detect.video_mix,
        cas_mix=cfg.detect.cas_mix,
        batch_size=cfg.train.batch_size,
    )
    return evaluate_predictions(preds, dataset, cfg)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash never leaves a partial file under ``path``)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code is ever executed)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise InputError(
            path, f"not a readable wtal checkpoint ({exc.__class__.__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "wtal" or "model" not in state:
        raise InputError(path, "not a wtal checkpoint (no 'format: wtal' entry)")
    return state


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class JsonlLog:
    """``log.jsonl``: one JSON object per epoch. On resume, entries of epochs that are about
    to be re-run are dropped, so the log matches an uninterrupted run."""

    def __init__(self, path: Path, start_epoch: int):
        self.path = path
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if rec.get("epoch", -1) < start_epoch:
                    kept.append(line)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- fit


def fit(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Train the whole method and evaluate the final model on the test subset.

    Writes into ``run_dir``: ``config.yaml``, ``log.jsonl``, ``last.pt`` (every epoch) and
    ``epoch_XXX.pt`` (every ``train.checkpoint_every`` epochs), and at the end
    ``detections_test.json``, ``cas_test.npz`` and ``metrics.json``.

    Args:
        cfg: the resolved config.
        run_dir: the run folder (created).
        resume: continue from ``run_dir/last.pt`` exactly where it stopped.
        progress: show tqdm progress bars.

    Returns:
        The final metrics (see :func:`evaluate_predictions`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    train_set, train_fixed, test_set = open_datasets(cfg)
    model = build_model(cfg, train_set.feat_dim, train_set.num_classes).to(device)
    tc = cfg.train
    optimizer = torch.optim.Adam(
        model.parameters(), lr=tc.lr_values[0], betas=tc.betas, weight_decay=tc.weight_decay
    )
    history: list[tuple[int, dict[str, Tensor]]] = []  # (regeneration epoch, labels per video)
    fused: list[tuple[int, dict[str, Any]]] = []  # every regeneration's LP input (small)
    start = 0
    if resume:
        state = load_checkpoint(run_dir / "last.pt")
        if state["config"] != config_to_dict(cfg):
            raise InputError(run_dir / "config.yaml", "differs from the checkpoint's config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [
            (int(e), labels)
            for e, labels in zip(state["pseudo_epochs"], state["pseudo"], strict=True)
        ]
        fused = list(
            zip(
                state.get("pseudo_segment_epochs", []),
                state.get("pseudo_segments", []),
                strict=True,
            )
        )
        _set_rng_state(state["rng"])
        start = int(state["epoch"])
        log.info("resuming %s at epoch %d", run_dir, start)
    else:
        save_config(cfg, run_dir / "config.yaml")
    logbook = JsonlLog(run_dir / "log.jsonl", start)
    ordered = torch.utils.data.DataLoader(train_fixed, batch_size=tc.batch_size, collate_fn=collate)

    for epoch in range(start, tc.epochs):
        t0 = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch}
        pc = cfg.pseudo
        if pc.enabled and epoch == pc.regen_epochs[0]:  # the base stage's result, for reference
            base = evaluate_model(model, test_set, cfg, device)[1]
            write_json(run_dir / "metrics_base.json", base)
            record["eval_base"] = {"average_mAP": base["headline"]}
        if pc.enabled and epoch in pc.regen_epochs:  # before the epoch's first batch (§1.8)
            if pc.reset_memory:
                model.memory.reset()
            temperature = pc.temperatures[pc.regen_epochs.index(epoch)]
            labels, stats, inputs = generate_pseudo_labels(
                model, train_fixed, cfg, temperature, device
            )
            history = update_history(history, epoch, labels, history_length=pc.history_length)
            fused.append((epoch, inputs))
            record["pseudo"] = {"temperature": temperature, **stats}
        targets = select_pseudo_target(epoch, history, cfg) if pc.enabled else None

        lr = piecewise(epoch, tc.lr_milestones, tc.lr_values)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_set.set_epoch(epoch)
        shuffle = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=tc.batch_size, shuffle=True, generator=shuffle, collate_fn=collate
        )
        record["loss"] = train_one_epoch(
            model, loader, optimizer, cfg, epoch, device, targets, progress=progress
        )
        if epoch == tc.warmup_epoch:
            init_memory(model, ordered, device)
        record["lr"] = lr
        record["time_s"] = time.perf_counter() - t0
        if tc.eval_every and (epoch + 1) % tc.eval_every == 0 and epoch + 1 < tc.epochs:
            record["eval"] = {
                "average_mAP": evaluate_model(model, test_set, cfg, device)[1]["headline"]
            }

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
        save_checkpoint(run_dir / "last.pt", state)
        if tc.checkpoint_every and (epoch + 1) % tc.checkpoint_every == 0:
            save_checkpoint(run_dir / f"epoch_{epoch + 1:03d}.pt", state)
        logbook.write(record)

    results, metrics = evaluate_model(model, test_set, cfg, device)
    write_json(run_dir / "detections_test.json", results)
    write_json(run_dir / "metrics.json", metrics)
    return metrics
