"""Crash safety: ``wtal train`` killed with SIGKILL anywhere resumes to a bit-identical run.

The ``WTAL_FAULT=<point>:<epoch>`` hook of :func:`wtal.checkpoint.fault_point` kills the training
process at a named point; ``wtal train --resume RUN_DIR`` then continues it. One run is
killed three times in a row (mid-epoch before the first checkpoint, during pseudo-label
regeneration, while ``last.pt`` is being written) and must end with the same weights, log,
metrics and detections as an uninterrupted run, with no partial or temporary file left.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_wtal, tiny_config

from wtal.checkpoint import load_checkpoint
from wtal.configfile import load_config
from wtal.engine import fit
from wtal.runlog import JsonlLog

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_config(
    **{
        "train.epochs": 3,
        "train.lr_milestones": [2],
        "train.checkpoint_every": 2,
        "pseudo.regen_epochs": [1, 2],
        "pseudo.temperatures": [0.02, 0.002],
    }
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_run) -> tuple[Path, Path, Path]:
    """(dataset, config, uninterrupted reference run)."""
    return tiny_run(tmp_path_factory.mktemp("crash"), TINY, run="ref")


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]


def _killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def test_killed_three_times_resumes_bit_identical(setup, tmp_path):
    data, config, ref = setup
    run = tmp_path / "run"

    # 1. killed mid-epoch 0, before any checkpoint: resume starts over
    proc = run_wtal(["train", str(config), "--data", str(data), "--run-dir", str(run)], "epoch:0")
    assert _killed(proc), proc.stderr
    assert (run / "config.yaml").is_file() and not (run / "last.pt").exists()
    assert _epochs(run) == []

    # 2. killed during the pseudo-label regeneration of epoch 1
    proc = run_wtal(["train", "--resume", str(run)], "pseudo:1")
    assert _killed(proc), proc.stderr
    assert load_checkpoint(run)["epoch"] == 1 and _epochs(run) == [0]

    # 3. killed while last.pt of epoch 2 is written: the old last.pt stays whole and a
    #    stale temporary file is left, like a power cut would leave it
    proc = run_wtal(["train", "--resume", str(run)], "checkpoint:2")
    assert _killed(proc), proc.stderr
    assert load_checkpoint(run)["epoch"] == 2
    assert len(list(run.glob(".last.pt.*.tmp"))) == 1
    assert _epochs(run) == [0, 1, 2]  # epoch 2 logged but not committed: re-run, not doubled
    assert (run / "epoch_002.pt").is_file()

    # 4. resumed to the end
    proc = run_wtal(["train", "--resume", str(run)], None)
    assert proc.returncode == 0, proc.stderr

    a, b = load_checkpoint(ref)["model"], load_checkpoint(run)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name in ("last.pt", "epoch_002.pt"):
        assert torch.equal(
            load_checkpoint(ref / name)["optimizer"]["state"][0]["exp_avg"],
            load_checkpoint(run / name)["optimizer"]["state"][0]["exp_avg"],
        )

    def records(folder: Path) -> list[dict]:  # without the wall-clock timings
        recs = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]
        for rec in recs:
            del rec["time_s"]
            rec.get("pseudo", {}).pop("solve_s", None)
        return recs

    assert records(run) == records(ref)  # same losses, each epoch once
    for name in ("metrics.json", "metrics_base.json", "detections_test.json"):
        assert json.loads((run / name).read_text()) == json.loads((ref / name).read_text())
    assert not list(run.glob(".*.tmp")), "stale temporary files left behind"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())


def test_resume_of_a_finished_run_changes_nothing(setup, tmp_path):
    """Killed after the last checkpoint, before the final files: resume only evaluates."""
    _, _, ref = setup
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "log.jsonl", "last.pt"):
        (run / name).write_bytes((ref / name).read_bytes())
    fit(load_config(run / "config.yaml"), run, resume=True, progress=False)
    assert (run / "last.pt").read_bytes() == (ref / "last.pt").read_bytes()
    assert json.loads((run / "metrics.json").read_text()) == json.loads(
        (ref / "metrics.json").read_text()
    )
    assert _epochs(run) == [0, 1, 2]


def test_log_drops_cut_lines_and_epochs_to_be_rerun(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n{"epo')  # last line cut
    log = JsonlLog(path, start_epoch=2)
    log.write({"epoch": 2, "again": True})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2, "again": True}]
