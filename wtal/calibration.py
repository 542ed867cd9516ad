"""Proposal thresholds and the fusion temperature chosen on the validation split
(``detect.threshold_scales``, ``detect.temperature_scales``).

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

The fusion temperature compares CAS levels as well (weights ``exp(inner / T)``): with
``detect.temperature_scales`` every pair of a threshold multiple and a temperature multiple is
scored and the best pair is used and stored (``temperature``). The pseudo labels keep their own
temperatures (``pseudo.temperatures``); they use the chosen thresholds.

The validation split is the one the choice is made on, so the validation mAP a calibrated run
logs is optimistic (a maximum over the scales); the test split is untouched by the choice.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from wtal import distributed
from wtal.config import Config, DetectConfig, with_choice
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


def detection_scores(
    model: WTALModel,
    dataset: FeatureDataset,
    cfg: Config,
    device: torch.device,
    scales: Sequence[float],
    temperature_scales: Sequence[float],
) -> np.ndarray:
    """Headline mAP (%) of ``model`` on an annotated ``dataset`` at each multiple of
    ``cfg.detect.thresholds`` and of ``cfg.detect.temperature``.

    The model predicts once (test-time mixing, dropout off); only the proposals, the fusion
    and the scoring are repeated per pair, the ground truth is read once, and only the
    headline protocol is scored.

    Returns:
        (len(scales), len(temperature_scales)) float64 mAP.
    """
    preds = predict_as_configured(model, dataset, cfg, device)
    ground_truth, grids = dataset.ground_truth(), dataset.grids()
    maps = np.zeros((len(scales), len(temperature_scales)))
    for i, scale in enumerate(scales):
        scaled = scaled_thresholds(cfg.detect, scale)
        for j, tscale in enumerate(temperature_scales):
            dcfg = replace(scaled, temperature=cfg.detect.temperature * tscale)
            results = detections_to_results(preds, dataset, dcfg)
            with warnings.catch_warnings():
                # levels above every CAS value detect nothing: mAP 0 is their score, not news
                warnings.filterwarnings("ignore", "no prediction matches", RuntimeWarning)
                metrics = score_results(
                    results, ground_truth, dataset.subset, cfg, grid_by_video=grids,
                    headline_only=True,
                )  # fmt: skip
            maps[i, j] = float(metrics["headline"])
    return maps


def stored_choice(cfg: Config, chosen: Config) -> dict[str, Any]:
    """The checkpoint entries of the choice ``chosen`` made from a run's ``cfg``
    (``thresholds``, and ``temperature`` when temperatures are chosen); none while ``chosen``
    is ``cfg`` itself (no choice made yet)."""
    if chosen is cfg:
        return {}
    entries: dict[str, Any] = {"thresholds": list(chosen.detect.thresholds)}
    if cfg.detect.temperature_scales:
        entries["temperature"] = chosen.detect.temperature
    return entries


def calibrate(
    model: WTALModel,
    val_set: FeatureDataset | None,
    cfg: Config,
    device: torch.device,
    *,
    warn: bool = False,
) -> tuple[Config, dict[str, Any] | None]:
    """``cfg`` with the proposal thresholds (and, with ``detect.temperature_scales``, the
    fusion temperature) that score best on the validation split; with ``warn``, a best score
    at either end of the scales is logged as a warning (for a trained model: early in training
    the smallest scale often wins, as the CAS is still low).

    The choice is made on the test-time scores (``detect.cas_mix``, dropout off); pseudo labels
    use the chosen levels on the teacher's CAS, as they use ``detect.thresholds`` otherwise.
    Under DDP rank 0 chooses and every rank gets its choice.

    Returns:
        ``(config, record)``: with both lists of scales empty (or no validation split),
        ``cfg`` itself and None; otherwise ``cfg`` with ``detect.thresholds`` (and
        ``detect.temperature``) multiplied by the pair of scales of the highest validation
        headline mAP (the first of equal ones, thresholds outer), the scales emptied (the
        choice is made), and ``{"scale", "thresholds", "val"}`` with ``val`` the mAP of every
        threshold scale at the chosen temperature, plus ``{"temperature_scale",
        "temperature", "val_by_temperature"}`` when temperatures are chosen, for the log.
    """
    if not (cfg.detect.threshold_scales or cfg.detect.temperature_scales) or val_set is None:
        return cfg, None
    if distributed.world_size() > 1:  # one choice on every rank, whatever the float noise
        mine = _choose(model, val_set, cfg, device, warn) if distributed.is_main() else None
        return distributed.broadcast_object(mine)
    return _choose(model, val_set, cfg, device, warn)


def _choose(
    model: WTALModel, val_set: FeatureDataset, cfg: Config, device: torch.device, warn: bool
) -> tuple[Config, dict[str, Any]]:
    scales = cfg.detect.threshold_scales or (1.0,)
    tscales = cfg.detect.temperature_scales or (1.0,)
    maps = detection_scores(model, val_set, cfg, device, scales, tscales)
    # the first of equal ones, in the order the lists give (thresholds outer)
    best, tbest = np.unravel_index(int(np.argmax(maps)), maps.shape)
    for name, grid, k in (
        ("threshold_scales", scales, best),
        ("temperature_scales", tscales, tbest),
    ):
        at_end = grid[k] in (min(grid), max(grid))
        if warn and len(grid) > 1 and at_end and maps[best, tbest] > 0:
            log.warning(
                "detect.%s: the best validation mAP (%.2f) is at the end of the scales (%g); "
                "the value that fits may lie beyond, extend the scales",
                name,
                maps[best, tbest],
                grid[k],
            )
    chosen_detect = scaled_thresholds(cfg.detect, scales[best])
    temperature = None
    if cfg.detect.temperature_scales:
        # 12 digits: 0.2 * 0.1 is 0.020000000000000004 in binary, and the value is printed
        temperature = float(f"{cfg.detect.temperature * tscales[tbest]:.12g}")
    chosen = with_choice(cfg, chosen_detect.thresholds, temperature)
    record: dict[str, Any] = {
        "scale": scales[best],
        "thresholds": list(chosen.detect.thresholds),
        "val": {f"{s:g}": round(float(m), 4) for s, m in zip(scales, maps[:, tbest], strict=True)},
    }
    if temperature is not None:
        record["temperature_scale"] = tscales[tbest]
        record["temperature"] = temperature
        record["val_by_temperature"] = {
            f"{cfg.detect.temperature * t:g}": {
                f"{s:g}": round(float(m), 4) for s, m in zip(scales, maps[:, j], strict=True)
            }
            for j, t in enumerate(tscales)
        }
    return chosen, record
