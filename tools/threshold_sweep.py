"""Validation mAP of trained checkpoints under scaled proposal thresholds (``detect.thresholds``).

The proposal thresholds are absolute CAS levels, and the level that fits depends on the data
(docs/results.md, "The detection thresholds": a quarter of THUMOS14's levels doubles one
ActivityNet-shaped benchmark's base stage and twice them lifts another's by 12 points). This
scores the validation split of each checkpoint's training videos (``data.val_fraction``) with
the thresholds and fusion temperature its run was configured with (``detect.thresholds``,
``detect.temperature``, not what a run with ``detect.threshold_scales`` chose), the thresholds
multiplied by each scale, predicting once per checkpoint::

    python -m tools.threshold_sweep RUN/epoch_060.pt [MORE.pt ...] --scales 0.25,0.5,1,2 \
        [--temperature-scales 0.1,0.25,1]

Every temperature multiple is scored at every threshold scale. Nothing is retrained and nothing
is written; pick the range on validation, then train or detect with ``--set
"detect.thresholds=[START,STOP,STEP]"`` (and ``--set detect.temperature=T``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace

import numpy as np
import torch

from wtal.calibration import detection_scores
from wtal.configfile import config_from_dict
from wtal.data.split import open_validation
from wtal.inference import load_trained_model
from wtal.io import InputError


def sweep(
    checkpoint: str, scales: list[float], overrides: list[str], temperature_scales: list[float]
) -> tuple[tuple[float, float, float], float, np.ndarray]:
    """Validation headline mAP (%) of one checkpoint at each scale of its thresholds and of its
    fusion temperature.

    Returns:
        ``(thresholds, temperature, maps)``: the checkpoint's configured (start, stop, step)
        and temperature, and (len(scales), len(temperature_scales)) mAP.

    Raises:
        InputError: unreadable checkpoint, or no validation split (``data.val_fraction`` 0).
    """
    model, cfg, state = load_trained_model(checkpoint, overrides)
    if "thresholds" in state:  # a run that chose its own: scale the levels it was configured with
        configured = config_from_dict(state["config"], source=checkpoint).detect
        detect = replace(
            cfg.detect, thresholds=configured.thresholds, temperature=configured.temperature
        )
        cfg = replace(cfg, detect=detect)
    val = open_validation(cfg)
    if val is None:
        raise InputError(checkpoint, "has no validation split: give --val-fraction > 0")
    maps = detection_scores(model, val, cfg, torch.device("cpu"), scales, temperature_scales)
    return cfg.detect.thresholds, cfg.detect.temperature, maps


def _scales(text: str) -> list[float]:
    try:
        scales = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        what = f"expected numbers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(what) from None
    if not scales or not all(math.isfinite(x) and x > 0 for x in scales):
        raise argparse.ArgumentTypeError(f"expected positive finite scales, got {text!r}")
    return scales


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.threshold_sweep",
        description="Validation mAP of checkpoints under scaled detect.thresholds and temperature.",
    )
    parser.add_argument("checkpoints", nargs="+", help="wtal checkpoints (.pt or run folders)")
    parser.add_argument("--scales", type=_scales, default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument(
        "--temperature-scales",
        type=_scales,
        default=[1.0],
        help="multiples of detect.temperature, every one at every threshold scale (default 1)",
    )
    parser.add_argument("--data", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--val-fraction", type=float, help="default: the checkpoint's")
    args = parser.parse_args(argv)
    overrides = [f"data.path={args.data!r}"] if args.data else []
    if args.val_fraction is not None:
        overrides.append(f"data.val_fraction={args.val_fraction!r}")
    columns, base = [], None
    try:
        for checkpoint in args.checkpoints:
            levels, temperature, maps = sweep(
                checkpoint, args.scales, overrides, args.temperature_scales
            )
            if base is not None and (levels, temperature) != base:
                what = f"thresholds {levels} and temperature {temperature:g} differ from "
                raise InputError(checkpoint, what + f"{base[0]} and {base[1]:g}")
            base = (levels, temperature)
            columns.append(maps.reshape(-1))  # scale-major: (scale, temperature) pairs
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = np.array(columns).T  # (pairs, checkpoints)
    names = " | ".join(f"ckpt {i}" for i in range(len(columns)))
    print(f"| scale | thresholds (start, stop, step) | temperature | {names} | mean |")
    print("|---" * (len(columns) + 4) + "|")
    pairs = [(s, t) for s in args.scales for t in args.temperature_scales]
    for (scale, tscale), row in zip(pairs, table, strict=True):
        levels = ", ".join(f"{float(x) * scale:.6g}" for x in base[0])
        cells = " | ".join(f"{m:.2f}" for m in row)
        temperature = f"{base[1] * tscale:.6g}"
        print(f"| {scale:g} | ({levels}) | {temperature} | {cells} | {row.mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
