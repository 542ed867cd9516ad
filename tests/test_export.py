"""Pseudo-label products of a run: quality in log.jsonl, the stored LP inputs,
``wtal export-pseudo`` (ActionFormer-style annotations) and ``wtal plot-pseudo``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from wtal.checkpoint import load_checkpoint
from wtal.cli import main
from wtal.lp import solve_pseudo_labels
from wtal.pseudo import pseudo_annotations

TINY = tiny_config(
    **{
        "train.epochs": 3,
        "train.lr_milestones": [2],
        "train.lr_values": [1e-3, 1e-4],
        "train.batch_size": 5,
        "train.videos_per_step": 5,
        "train.checkpoint_every": 0,
        "pseudo.regen_epochs": [1, 2],
        "pseudo.temperatures": [0.02, 0.002],
    }
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_run) -> Path:
    spec = dict(test_videos=3, min_snippets=30, median_snippets=40, max_snippets=60)
    return tiny_run(tmp_path_factory.mktemp("pl"), TINY, **spec)[2]


def test_quality_logged_at_every_regeneration(run):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    pseudo = [r["pseudo"] for r in records if "pseudo" in r]
    assert len(pseudo) == 2
    for p in pseudo:
        q = p["quality"]
        assert q["videos"] == 6 and q["n_gt"] > 0
        for key in ("precision", "recall", "mean_best_tiou", "inside_fraction"):
            assert key in q
        for key in ("precision", "recall", "mean_best_tiou", "inside_fraction"):
            assert q[key] is None or 0.0 <= q[key] <= 1.0, key
        assert q["recall"] is not None and q["inside_fraction"] is not None


def test_stored_inputs_reproduce_the_stored_labels(run):
    """The LP inputs kept in last.pt give back exactly the labels trained on."""
    state = load_checkpoint(run)
    assert state["pseudo_segment_epochs"] == [1, 2] == state["pseudo_epochs"][-2:]
    inputs = state["pseudo_segments"][-1]
    ncol = len(state["class_names"]) + 1
    assert set(inputs["segments"]) == set(inputs["timing"]) == set(state["pseudo"][-1])
    for vid, rows in inputs["segments"].items():
        assert rows.dtype == torch.float64 and rows.shape[1] == 4
        T = int(inputs["timing"][vid][0])
        y, _ = solve_pseudo_labels(rows[:, :2], rows[:, 2], rows[:, 3].long(), T, ncol)
        stored = state["pseudo"][-1][vid].numpy()
        np.testing.assert_array_equal(y.astype(np.float32), stored)


def test_export_pseudo_actionformer_format(run, tmp_path, capsys):
    out = tmp_path / "sub" / "annotations.json"
    assert main(["export-pseudo", str(run), "--format", "actionformer", "--out", str(out)]) == 0
    assert "pseudo segments" in capsys.readouterr().out
    data = json.loads(out.read_text())
    state = load_checkpoint(run)
    inputs = state["pseudo_segments"][-1]
    names = state["class_names"]
    assert set(data["database"]) == set(inputs["segments"])
    total = 0
    for vid, entry in data["database"].items():
        assert entry["subset"] == "validation" and entry["fps"] > 0 and entry["duration"] > 0
        rows = inputs["segments"][vid].numpy()
        rows = rows[rows[:, 3] < len(names)]  # background segments are not exported
        assert len(entry["annotations"]) == len(rows)
        total += len(rows)
        T, fps, frames, _ = inputs["timing"][vid].tolist()
        starts = [a["segment"][0] for a in entry["annotations"]]
        assert starts == sorted(starts)
        for a in entry["annotations"]:
            s, e = a["segment"]
            assert 0 <= s <= e <= entry["duration"] + 1e-9
            assert a["label"] == names[a["label_id"]]
            assert a["segment(frames)"] == pytest.approx([s * fps, e * fps])
        # seconds are the snippet positions times snippet_frames / fps
        want = np.sort(np.clip(rows[:, 0] * frames / fps, 0, entry["duration"]))
        np.testing.assert_allclose(starts, want)
    assert total > 0
    # an earlier regeneration by --epoch, and a clear error for one that is not stored
    assert (
        main(["export-pseudo", str(run), "--out", str(tmp_path / "e1.json"), "--epoch", "1"]) == 0
    )
    assert "epoch 1" in json.loads((tmp_path / "e1.json").read_text())["version"]
    assert main(["export-pseudo", str(run), "--out", str(tmp_path / "x.json"), "--epoch", "7"]) == 2
    assert "no regeneration at epoch 7" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_export_pseudo_errors(tmp_path, capsys):
    assert main(["export-pseudo", str(tmp_path), "--out", str(tmp_path / "a.json")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --out is required
        main(["export-pseudo", str(tmp_path)])


def test_pseudo_annotations_hand_case():
    rows = np.array(
        [[10.0, 20.0, 0.3, 1], [2.0, 5.0, 0.5, 0], [0.0, 30.0, 0.9, 2]]  # last: background
    )
    timing = {"v": np.array([40, 25.0, 16.0, np.nan])}  # unknown duration: 40 snippets
    out = pseudo_annotations({"v": rows}, timing, ["a", "b"], "validation")
    entry = out["database"]["v"]
    assert entry["duration"] == pytest.approx(40 * 16 / 25)
    assert [a["label"] for a in entry["annotations"]] == ["a", "b"]
    assert entry["annotations"][0]["segment"] == pytest.approx([2 * 0.64, 5 * 0.64])
    assert entry["annotations"][1]["score"] == pytest.approx(0.3)
    from wtal.io import InputError

    with pytest.raises(InputError, match="no timing"):
        pseudo_annotations({"w": rows}, timing, ["a", "b"], "validation")
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        pseudo_annotations({"v": rows[:, :3]}, timing, ["a", "b"], "validation")


def test_plot_pseudo(run, tmp_path, capsys):
    state = load_checkpoint(run)
    vid = next(iter(state["pseudo_segments"][-1]["segments"]))
    assert main(["plot-pseudo", str(run), "--out", str(tmp_path), "--videos", vid]) == 0
    png = tmp_path / f"pseudo_{vid}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot-pseudo", str(run), "--out", str(tmp_path), "--videos", "nope"]) == 2
    assert "not training videos" in capsys.readouterr().err
