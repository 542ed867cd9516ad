"""Proposal thresholds chosen on the validation split (``detect.threshold_scales``).

The proposal thresholds (``detect.thresholds``) are absolute CAS levels, and the CAS level a
model reaches depends on the data and grows as it trains: on two ActivityNet-shaped synthetic
benchmarks the best multiple of THUMOS14's levels goes from 1/16 to 1/4 (one) and from 1 to 2
(the other) between epochs 20 and 60 of the same base stage, and the validation mAP at the
best multiple is 1.1 to 12 times the mAP at the fixed levels along the way (docs/results.md,
"Thresholds chosen on validation"). So a run can re-choose them on its validation split
(``data.val_fraction``) each time it detects: before each pseudo-label regeneration, at each
evaluation, kept checkpoint and the last epoch, the multiple of the configured levels with the
best validation mAP is used, and the last choice is stored in the checkpoints
(``thresholds``), where :func:`wtal.checkpoint.checkpoint_config` puts it back into the config
of every command that loads one.

The validation split is the one the choice is made on, so the validation mAP a calibrated run
logs is optimistic (a maximum over the scales); the test split is untouched by the choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from wtal import distributed
from wtal.config import Config, DetectConfig
from wtal.data import FeatureDataset
from wtal.inference import detections_to_results, predict_as_configured
from wtal.model import WTALModel
from wtal.scoring import score_results

log = logging.getLogger("wtal")


def scaled_thresholds(dcfg: DetectConfig, scale: float) -> DetectConfig:
    """``dcfg`` with its thresholds (start, stop, step) multiplied by ``scale`` (> 0): the
    levels in the same proportions (``np.arange`` may round one level more or less when
    ``(stop - start) / step`` is a whole number)."""
    return replace(dcfg, thresholds=tuple(float(x) * scale for x in dcfg.thresholds))


def with_thresholds(cfg: Config, thresholds: Sequence[float]) -> Config:
    """``cfg`` with ``detect.thresholds`` replaced by a choice already made (scales emptied)."""
    detect = replace(cfg.detect, thresholds=tuple(float(x) for x in thresholds))
    return replace(cfg, detect=replace(detect, threshold_scales=()))


def threshold_scores(
    model: WTALModel,
    dataset: FeatureDataset,
    cfg: Config,
    device: torch.device,
    scales: Sequence[float],
) -> list[float]:
    """Headline mAP (%) of ``model`` on an annotated ``dataset`` at each multiple of
    ``cfg.detect.thresholds``.

    The model predicts once (test-time mixing, dropout off); only the proposals and the
    scoring are repeated per scale, the ground truth is read once, and only the headline
    protocol is scored.
    """
    preds = predict_as_configured(model, dataset, cfg, device)
    ground_truth, grids = dataset.ground_truth(), dataset.grids()
    maps = []
    for scale in scales:
        results = detections_to_results(preds, dataset, scaled_thresholds(cfg.detect, scale))
        metrics = score_results(
            results, ground_truth, dataset.subset, cfg, grid_by_video=grids, headline_only=True
        )
        maps.append(float(metrics["headline"]))
    return maps


def calibrate(
    model: WTALModel,
    val_set: FeatureDataset | None,
    cfg: Config,
    device: torch.device,
    *,
    warn: bool = False,
) -> tuple[Config, dict[str, Any] | None]:
    """``cfg`` with the proposal thresholds that score best on the validation split; with
    ``warn``, a best score at either end of the scales is logged as a warning (for a trained
    model: early in training the smallest scale often wins, as the CAS is still low).

    The choice is made on the test-time scores (``detect.cas_mix``, dropout off); pseudo labels
    use the chosen levels on the teacher's CAS, as they use ``detect.thresholds`` otherwise.
    Under DDP rank 0 chooses and every rank gets its choice.

    Returns:
        ``(config, record)``: with ``detect.threshold_scales`` empty (or no validation split),
        ``cfg`` itself and None; otherwise ``cfg`` with ``detect.thresholds`` multiplied by
        the scale of the highest validation headline mAP (the first of equal ones) and the
        scales emptied (the choice is made), and ``{"scale", "thresholds", "val"}`` with
        ``val`` the mAP of every scale, for the log.
    """
    scales = cfg.detect.threshold_scales
    if not scales or val_set is None:
        return cfg, None
    if distributed.world_size() > 1:  # one choice on every rank, whatever the float noise
        mine = _choose(model, val_set, cfg, device, warn) if distributed.is_main() else None
        return distributed.broadcast_object(mine)
    return _choose(model, val_set, cfg, device, warn)


def _choose(
    model: WTALModel, val_set: FeatureDataset, cfg: Config, device: torch.device, warn: bool
) -> tuple[Config, dict[str, Any]]:
    scales = cfg.detect.threshold_scales
    maps = threshold_scores(model, val_set, cfg, device, scales)
    best = max(range(len(scales)), key=lambda i: (maps[i], -i))
    at_end = scales[best] in (min(scales), max(scales))
    if warn and len(scales) > 1 and at_end and maps[best] > 0:
        log.warning(
            "detect.threshold_scales: the best validation mAP (%.2f) is at the end of the "
            "scales (%g); the levels that fit may lie beyond, extend the scales",
            maps[best],
            scales[best],
        )
    chosen = with_thresholds(cfg, scaled_thresholds(cfg.detect, scales[best]).thresholds)
    record = {
        "scale": scales[best],
        "thresholds": list(chosen.detect.thresholds),
        "val": {f"{s:g}": round(m, 4) for s, m in zip(scales, maps, strict=True)},
    }
    return chosen, record
