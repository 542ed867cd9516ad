"""End-to-end training on a tiny synthetic dataset: run folder, determinism, exact resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from wtal.checkpoint import load_checkpoint
from wtal.configfile import load_config
from wtal.data import FeatureDataset
from wtal.engine import fit
from wtal.inference import load_trained_model, predict
from wtal.io import InputError
from wtal.scoring import score_results
from wtal.synth import THUMOS, write_synthetic

TINY = tiny_overrides(
    **{
        "model.embed_dim": 32,
        "train.epochs": 4,
        "train.lr_milestones": [3],
        "train.batch_size": 5,
        "train.videos_per_step": 10,
        "train.checkpoint_every": 2,
        "pseudo.regen_epochs": [2, 3],
        "pseudo.temperatures": [0.02, 0.002],
        "pseudo.delta_start": 3,
        "pseudo.delta_switch": 4,
    }
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    spec = replace(
        THUMOS,
        train_videos=10,
        test_videos=6,
        feat_dim=16,
        num_classes=4,
        min_snippets=30,
        median_snippets=50,
        max_snippets=80,
    )
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, spec, seed=0)
    return out


def _cfg(data: Path, *extra: str):
    return load_config(None, [*TINY, f"data.path={str(data)!r}", *extra])


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "straight"
    fit(_cfg(tiny_data), run, progress=False)
    return run


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / name)["model"]


def test_run_folder_is_self_describing(straight_run, tiny_data):
    for name in (
        "config.yaml",
        "log.jsonl",
        "last.pt",
        "epoch_002.pt",
        "epoch_004.pt",
        "metrics.json",
        "detections_test.json",
    ):
        assert (straight_run / name).is_file(), name
    log = [json.loads(line) for line in (straight_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert "pseudo" in log[2] and "pseudo" in log[3] and "pseudo" not in log[1]
    assert "dist" in log[3]["loss"] and "dist" not in log[2]["loss"]  # zero target at e=2
    assert [r["lr"] for r in log] == [5e-4, 5e-4, 5e-4, 1e-4]
    metrics = json.loads((straight_run / "metrics.json").read_text())
    assert set(metrics) >= {"official", "wtalc", "classification_map", "headline"}
    detections = json.loads((straight_run / "detections_test.json").read_text())
    assert len(detections["results"]) == 6
    # The metrics are those of the detections written beside them, on the test subset.
    cfg = load_config(straight_run / "config.yaml")
    ground_truth = json.loads((tiny_data / "annotations.json").read_text())
    scored = score_results(detections, ground_truth, "test", cfg)
    for key in ("official", "wtalc", "headline"):
        assert metrics[key] == scored[key], key
    assert metrics["official"]["average_mAP"] > 0  # the 4 epochs detect something
    state = torch.load(straight_run / "last.pt", weights_only=True)
    assert state["epoch"] == 4 and state["pseudo_epochs"] == [2, 3]


def test_same_seed_gives_identical_weights(straight_run, tiny_data, tmp_path):
    fit(_cfg(tiny_data), tmp_path / "again", progress=False)
    a, b = _weights(straight_run), _weights(tmp_path / "again")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_other_seed_gives_other_weights(straight_run, tiny_data, tmp_path):
    """The straight run's first 2 epochs again with seed 3 instead of 2: the base stage alone
    (its pseudo labels start at epoch 2), which with seed 2 gives epoch_002.pt bit for bit."""
    seed3 = _cfg(tiny_data, "train.seed=3", "train.epochs=2", "pseudo.enabled=False")
    fit(seed3, tmp_path / "seed3", progress=False)
    first = load_checkpoint(straight_run / "epoch_002.pt")["model"]
    other = _weights(tmp_path / "seed3")
    assert not torch.equal(first["embedding.weight"], other["embedding.weight"])


def test_passes_by_length_compute_the_one_pass_training(tiny_data, tmp_path):
    """Splitting each batch into passes of similar length changes only the execution: without
    dropout, 4 epochs (memory from epoch 1, pseudo labels at epochs 2 and 3) give the weights,
    memory and pseudo labels of one padded pass per batch, and the same predictions."""
    runs = {}
    for max_padding in (0, 1.0):
        run = tmp_path / f"pad{max_padding}"
        fit(
            _cfg(tiny_data, "model.dropout=0.0", f"train.max_padding={max_padding}"),
            run,
            progress=False,
        )
        runs[max_padding] = load_checkpoint(run / "last.pt")
    a, b = runs[0], runs[1.0]
    assert int(a["model"]["memory.num_filled"].sum()) > 0
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-5, msg=key)
    for labels_a, labels_b in zip(a["pseudo"], b["pseudo"], strict=True):
        assert labels_a.keys() == labels_b.keys()
        for video, value in labels_a.items():
            torch.testing.assert_close(labels_b[video], value, rtol=0, atol=1e-5, msg=video)

    model = load_trained_model(tmp_path / "pad0")[0]
    dataset = FeatureDataset(tiny_data, "test")
    one, split = (
        predict(model, dataset, torch.device("cpu"), video_mix=0.6, cas_mix=0.85, batch_size=6,
                max_padding=max_padding)
        for max_padding in (0, 1.0)
    )  # fmt: skip
    assert [p.video_id for p in split] == dataset.video_ids
    for p, q in zip(one, split, strict=True):
        np.testing.assert_allclose(q.cas, p.cas, rtol=0, atol=1e-6)
        np.testing.assert_allclose(q.video_scores, p.video_scores, rtol=0, atol=1e-6)


def test_resume_in_a_fresh_process_is_bit_identical(straight_run, tmp_path):
    """2 epochs + a new process resuming for 2 more == 4 epochs straight (CPU, bit for bit)."""
    run = tmp_path / "interrupted"
    run.mkdir()
    shutil.copy(straight_run / "config.yaml", run / "config.yaml")
    shutil.copy(straight_run / "epoch_002.pt", run / "last.pt")
    lines = (straight_run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join(lines[:3]) + "\n")  # one epoch too many: dropped
    subprocess.run(
        [sys.executable, "-m", "wtal", "train", "--resume", str(run), "--quiet"],
        check=True,
        capture_output=True,
    )
    a, b = _weights(straight_run), _weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    resumed_log = [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert resumed_log == [0, 1, 2, 3]


def test_resume_refuses_a_changed_config(straight_run, tmp_path):
    run = tmp_path / "changed"
    shutil.copytree(straight_run, run)
    text = (run / "config.yaml").read_text().replace("seed: 2", "seed: 5")
    (run / "config.yaml").write_text(text)
    with pytest.raises(InputError, match="differs from the checkpoint"):
        fit(load_config(run / "config.yaml"), run, resume=True, progress=False)


def test_log_goes_to_tensorboard_when_installed(tmp_path, monkeypatch):
    from wtal import runlog

    seen = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            seen.append((tag, value, step))

        def flush(self):
            pass

    monkeypatch.setattr(runlog, "_summary_writer", lambda log_dir: Writer(log_dir))
    log = runlog.JsonlLog(tmp_path / "log.jsonl", 0, tmp_path / "tensorboard")
    log.write({"epoch": 3, "loss": {"fore": 1.5, "total": 2.0}, "lr": 1e-4, "pseudo": {"ok": True}})
    assert seen == [("loss/fore", 1.5, 3), ("loss/total", 2.0, 3), ("lr", 1e-4, 3)]
    assert json.loads((tmp_path / "log.jsonl").read_text())["epoch"] == 3
    # Without tensorboard installed the log is the JSONL file alone.
    monkeypatch.setattr(runlog, "_summary_writer", lambda log_dir: None)
    assert runlog.JsonlLog(tmp_path / "other.jsonl", 0, tmp_path / "tb").tensorboard is None


def test_demo_runs_end_to_end_and_writes_its_report(tmp_path, monkeypatch, capsys):
    from wtal import cli, synth

    tiny = replace(
        THUMOS, train_videos=10, test_videos=6, feat_dim=16, num_classes=4,
        min_snippets=30, median_snippets=50, max_snippets=80,
    )  # fmt: skip
    monkeypatch.setitem(synth.PRESETS, "thumos", tiny)
    overrides = [x for item in TINY for x in ("--set", item)]
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet", "--plots", "1", *overrides]) == 0
    run = tmp_path / "run-seed0"
    printed = capsys.readouterr().out
    table = (run / "metrics_table.txt").read_text()
    assert "base stage" in table and "full method" in table and table.strip() in printed
    for name in ("metrics.json", "metrics_base.json", "detections_test.json", "cas_test.npz"):
        assert (run / name).is_file(), name
    pngs = sorted(p.relative_to(run).as_posix() for p in run.rglob("*.png"))
    assert pngs[0] == "plots/map_vs_tiou.png" and len(pngs) == 3, pngs
    assert all((run / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
