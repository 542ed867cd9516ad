"""Inference: the trained network (:func:`build_model`, :func:`load_trained_model`), its
per-video outputs (:class:`Prediction`, :func:`predict`), and the one detection path from a
CAS to segments (:func:`detect_segments`, :func:`detect`) and to ActivityNet results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wtal import __version__
from wtal.checkpoint import checkpoint_config, load_checkpoint
from wtal.config import Config, DetectConfig
from wtal.data import FeatureDataset, Video, collate, split_batch
from wtal.fusion import gaussian_fuse, nms, soft_nms, sort_segments
from wtal.io import InputError
from wtal.model import WTALModel
from wtal.proposals import Segments, generate_proposals
from wtal.segments import snippets_to_seconds


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
    batch_size: int,
    max_padding: float,
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


def predict_as_configured(
    model: WTALModel,
    videos: FeatureDataset | Sequence[Video],
    cfg: Config,
    device: torch.device,
    *,
    teacher: bool = False,
    progress: bool = False,
) -> list[Prediction]:
    """:func:`predict` with the run's settings: the test-time mixing of ``cfg.detect``, or
    with ``teacher`` the pseudo-label teacher's (``pseudo.cas_mix``, dropout as
    ``pseudo.teacher_dropout``); batches of ``train.batch_size`` videos split by
    ``train.max_padding``."""
    return predict(
        model,
        videos,
        device,
        video_mix=cfg.detect.video_mix,
        cas_mix=cfg.pseudo.cas_mix if teacher else cfg.detect.cas_mix,
        batch_size=cfg.train.batch_size,
        max_padding=cfg.train.max_padding,
        dropout=teacher and cfg.pseudo.teacher_dropout,
        progress=progress,
    )


def detect_segments(
    cas: Tensor | np.ndarray,
    video_scores: Tensor | np.ndarray,
    dcfg: DetectConfig,
    *,
    temperature: float | None = None,
) -> Segments:
    """CAS -> proposals -> fusion for one video: the one detection path of wtal.

    Test-time detection and pseudo-label generation both call this, so they cannot drift
    apart; every setting comes from ``dcfg`` (its fields are the only place their values are
    declared), and ``temperature`` replaces ``dcfg.temperature`` for pseudo labels.

    Args:
        cas: (T, C) class activation sequence (C may include the background column).
        video_scores: (C,) video-level class scores for the class filter.
        dcfg: proposal and fusion settings; ``dcfg.fusion`` picks :func:`gaussian_fuse`
            (the method), :func:`nms`, :func:`soft_nms` or ``none`` (the raw proposals).
        temperature: Gaussian fusion temperature; None uses ``dcfg.temperature``.

    Returns:
        :class:`Segments` in snippet units ``[start, end)``, classes ascending, scores
        descending within a class.
    """
    proposals = generate_proposals(
        cas,
        video_scores,
        class_threshold=dcfg.class_threshold,
        thresholds=np.arange(*dcfg.thresholds),
        min_length=dcfg.min_length,
        outer_scale=dcfg.outer_scale,
        outer_power=dcfg.outer_power,
        inclusive_end=dcfg.inclusive_end,
        float32_means=dcfg.float32_means,
    )
    overlap = dcfg.overlap
    if dcfg.fusion == "gaussian":
        return gaussian_fuse(
            proposals,
            temperature=dcfg.temperature if temperature is None else temperature,
            overlap_threshold=dcfg.overlap_threshold,
            overlap=overlap,
        )
    if dcfg.fusion == "nms":
        return nms(proposals, overlap_threshold=dcfg.overlap_threshold, overlap=overlap)
    if dcfg.fusion == "soft-nms":
        return soft_nms(proposals, sigma=dcfg.soft_nms_sigma, overlap=overlap)
    return sort_segments(proposals)  # "none" (DetectConfig admits no other value)


def detect(
    pred: Prediction,
    dcfg: DetectConfig,
    *,
    temperature: float | None = None,
    background: bool = False,
    keep_background: bool = False,
) -> Segments:
    """:func:`detect_segments` on one video's prediction.

    Test-time detections and pseudo labels differ only in the arguments: pseudo labels keep
    the background column and use their own temperature. ``keep_background`` lets the
    background column past the class filter whatever its video score (only with
    ``background``).
    """
    columns = pred.cas.shape[1] if background else pred.cas.shape[1] - 1
    scores = torch.from_numpy(pred.video_scores[:columns])
    if background and keep_background:
        # The filter reads the score only (wtal.proposals), so passing it is all it takes.
        scores = scores.clone()
        scores[-1] = 1.0
    return detect_segments(
        torch.from_numpy(pred.cas[:, :columns]),
        scores,
        dcfg,
        temperature=temperature,
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
        preds: per-video predictions (from :func:`predict` or
            :func:`wtal.cascache.load_predictions`).
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
