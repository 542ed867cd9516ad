"""Scoring a split: detections of a model's predictions against the split's ground truth.

:func:`evaluate_model` predicts and scores a model (what training reports), and
:func:`score_results` scores any results file under both protocols of
:mod:`wtal.evaluation` (``official`` and ``wtalc``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wtal import distributed
from wtal.cascache import save_predictions
from wtal.config import PROTOCOLS, Config
from wtal.data import FeatureDataset
from wtal.evaluation import TIOU_PRESETS, evaluate_detections
from wtal.floors import FLOORS, floor_results, localization_signal
from wtal.inference import Prediction, detections_to_results, predict_as_configured
from wtal.metrics import classification_map
from wtal.model import WTALModel


def evaluate_predictions(
    preds: list[Prediction], dataset: FeatureDataset, cfg: Config
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Detect on every video and score against the dataset's ground truth (both protocols).

    Returns:
        ``(results, metrics)``: detections in the ActivityNet results format, and a JSON-ready
        dict with the official and legacy metrics, the video classification mAP and the
        headline mAP of each floor of :mod:`wtal.floors` (``metrics["floors"]``) and the
        model's :func:`~wtal.floors.localization_signal` (``metrics["signal"]``).
    """
    results = detections_to_results(preds, dataset, cfg.detect)
    ground_truth, grids = dataset.ground_truth(), dataset.grids()
    metrics = score_results(results, ground_truth, dataset.subset, cfg, grid_by_video=grids)
    scores = np.stack([p.video_scores[:-1] for p in preds])
    labels = np.stack([p.labels for p in preds])
    # None when no video of the split has a label (segments with "labels": [] say so)
    metrics["classification_map"] = classification_map(scores, labels) if labels.any() else None
    metrics["floors"] = {
        floor: score_results(
            floor_results(preds, dataset.class_names, floor), ground_truth, dataset.subset, cfg,
            grid_by_video=grids, headline_only=True,
        )["headline"]
        for floor in FLOORS
    }  # fmt: skip
    metrics["signal"] = localization_signal(preds)
    return results, metrics


def score_results(
    results: dict[str, Any],
    ground_truth: dict[str, Any],
    subset: str | None,
    cfg: Config,
    *,
    grid_by_video: dict[str, tuple[float, float]] | None = None,
    headline_only: bool = False,
) -> dict[str, Any]:
    """Detection mAP of ``results`` under both protocols (``official`` and ``wtalc``), or
    with ``headline_only`` under ``cfg.eval.protocol`` alone.

    The ``wtalc`` snippet grid is ``cfg.data``'s, or ``grid_by_video[video]`` =
    ``(fps, snippet_frames)`` for videos with their own.

    Returns:
        ``{"official": ..., "wtalc": ..., "headline": average mAP of cfg.eval.protocol}``,
        each protocol as :meth:`wtal.evaluation.DetectionMetrics.as_dict`.
    """
    tious = TIOU_PRESETS[cfg.eval.preset]
    metrics: dict[str, Any] = {}
    for protocol in (cfg.eval.protocol,) if headline_only else PROTOCOLS:
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
    """:func:`~wtal.inference.predict_as_configured` (test-time mixing, dropout off) then
    :func:`evaluate_predictions`.

    Under DDP each rank predicts its slice of the videos, rank 0 gathers and evaluates, and
    every rank gets the metrics; the detections are returned on rank 0 only (empty elsewhere).
    With ``cache``, the gathered predictions are also written there
    (:func:`wtal.cascache.save_predictions`).
    """
    preds = predict_as_configured(model, distributed.shard_dataset(dataset), cfg, device)
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
