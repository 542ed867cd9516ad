"""Shared pytest fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from wtal.synth import THUMOS, write_synthetic

REPO = Path(__file__).resolve().parents[1]
TINY_SPEC = dict(
    train_videos=6,
    test_videos=4,
    feat_dim=8,
    num_classes=3,
    min_snippets=20,
    median_snippets=30,
    max_snippets=40,
)
"""The synthetic spec of :func:`tiny_run` (``SynthSpec`` fields over the ``thumos`` preset)."""
TINY_CONFIG: dict[str, object] = {
    "model.embed_dim": 16,
    "train.epochs": 2,
    "train.warmup_epoch": 0,
    "train.lr_milestones": [1],
    "train.lr_values": [5.0e-4, 1.0e-4],
    "train.batch_size": 3,
    "train.videos_per_step": 6,
    "train.checkpoint_every": 1,
    "train.device": "cpu",
    "loss.spl_milestones": [1, 2],
    "pseudo.regen_epochs": [1],
    "pseudo.temperatures": [0.02],
    "pseudo.delta_start": 2,
    "pseudo.delta_switch": 3,
}
"""The tiny training config of the tests, as ``section.field: value``: seconds on CPU, both
stages (base epoch 0, pseudo labels regenerated before epoch 1), a checkpoint every epoch.
Tests state the fields they need different through :func:`tiny_config` /
:func:`tiny_overrides`."""


BASE_ONLY: dict[str, object] = {
    "train.epochs": 1,
    "train.lr_milestones": [],
    "train.checkpoint_every": 0,
    "pseudo.enabled": False,
}
"""The changes to :data:`TINY_CONFIG` of a run that only needs a trained model: one epoch of
the base stage, no pseudo labels, no periodic checkpoints."""


def _tiny_items(changes: dict[str, object]) -> dict[str, object]:
    unknown = [key for key in changes if key.count(".") != 1]
    assert not unknown, f"not a `section.field` key: {unknown}"
    return {**TINY_CONFIG, **changes}


def tiny_config(**changes: object) -> dict[str, dict[str, object]]:
    """:data:`TINY_CONFIG` with ``changes`` (``tiny_config(**{"train.epochs": 3})``), nested by
    section as a config file holds it (``json.dumps`` of it is a YAML config file)."""
    nested: dict[str, dict[str, object]] = {}
    for key, value in _tiny_items(changes).items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    return nested


def tiny_overrides(**changes: object) -> list[str]:
    """:data:`TINY_CONFIG` with ``changes`` as ``--set`` items (``"train.epochs=3"``)."""
    return [f"{key}={value!r}" for key, value in _tiny_items(changes).items()]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (override with ``WTAL_SHARED_DATA``).

    Tests that read the real annotation files or the evaluation fixtures skip when it is
    absent: users do not have it, and the package never needs it.
    """
    path = Path(os.environ.get("WTAL_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path} (set WTAL_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tiny_run() -> Callable[..., tuple[Path, Path, Path]]:
    """``make(root, config, run="run", **spec) -> (data, config_path, run_dir)``: a tiny
    synthetic dataset in ``root/data`` (:data:`TINY_SPEC`, fields overridden by ``spec``),
    ``config`` (a dict) written to ``root/tiny.yaml``, and a finished training run of it."""
    from wtal.configfile import load_config
    from wtal.engine import fit

    def make(root: Path, config: dict, run: str = "run", **spec) -> tuple[Path, Path, Path]:
        write_synthetic(root / "data", replace(THUMOS, **{**TINY_SPEC, **spec}), seed=0)
        path = root / "tiny.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        overrides = [f"data.path={str(root / 'data')!r}"]
        fit(load_config(path, overrides), root / run, progress=False)
        return root / "data", path, root / run

    return make


def run_wtal(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    """``python -m wtal ARGS --quiet`` in a child process, killed at ``fault``
    (``<point>:<epoch>``, :func:`wtal.checkpoint.fault_point`) when given."""
    from wtal.checkpoint import FAULT_ENV

    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "wtal", *args, "--quiet"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
