"""``python -m tools.threshold_sweep``: validation mAP of a checkpoint under scaled thresholds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_overrides

from tools.threshold_sweep import main
from wtal.configfile import load_config
from wtal.engine import fit
from wtal.synth import THUMOS, write_synthetic

TINY = tiny_overrides(
    **{
        "model.embed_dim": 32,
        "train.epochs": 3,
        "train.lr_milestones": [2],
        "train.checkpoint_every": 0,
        "train.tensorboard": False,
        "pseudo.enabled": False,
        "data.val_fraction": 0.3,
        "detect.class_threshold": 0.0,  # a barely trained model: keep every class
    }
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    spec = replace(
        THUMOS, train_videos=10, test_videos=3, feat_dim=16, num_classes=3,
        min_snippets=30, median_snippets=40, max_snippets=50,
    )  # fmt: skip
    data = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(data, spec, seed=1)
    out = tmp_path_factory.mktemp("runs") / "run"
    fit(load_config(None, [*TINY, f"data.path={str(data)!r}"]), out, progress=False)
    return out


def _table(capsys) -> list[list[str]]:
    lines = capsys.readouterr().out.strip().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_scale_one_is_the_runs_own_validation_score(run, capsys):
    assert main([str(run), "--scales", "1,4"]) == 0
    rows = _table(capsys)
    assert [r[0] for r in rows] == ["1", "4"]
    assert rows[0][1] == "(0.001, 0.04, 0.002)" and rows[1][1] == "(0.004, 0.16, 0.008)"
    assert rows[0][2] == rows[1][2] == "0.2"  # the configured temperature
    logged = json.loads((run / "metrics_val.json").read_text())["headline"]
    assert float(rows[0][3]) == pytest.approx(logged, abs=0.005)
    assert rows[0][3] != rows[1][3]  # other levels, other proposals


def test_two_checkpoints_and_their_mean(run, capsys):
    assert main([str(run), str(run / "last.pt"), "--scales", "2"]) == 0
    (row,) = _table(capsys)
    assert row[3] == row[4] == row[5]  # the same weights twice: their mean is their value


def test_every_temperature_at_every_scale(run, capsys):
    assert main([str(run), "--scales", "1,4", "--temperature-scales", "0.05,1"]) == 0
    rows = _table(capsys)
    assert [(r[0], r[2]) for r in rows] == [
        ("1", "0.01"),
        ("1", "0.2"),
        ("4", "0.01"),
        ("4", "0.2"),
    ]
    assert rows[0][3] != rows[1][3]  # the temperature reaches the fusion
    assert main([str(run), "--scales", "1,4"]) == 0
    at_02 = _table(capsys)
    assert [r[3] for r in at_02] == [rows[1][3], rows[3][3]]  # the same pairs, the same scores
    logged = json.loads((run / "metrics_val.json").read_text())["headline"]
    assert float(rows[1][3]) == pytest.approx(logged, abs=0.005)


def test_bad_input_is_one_line(run, tmp_path, capsys):
    assert main([str(run), "--val-fraction", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no validation split" in err[0]
    assert main([str(tmp_path / "missing.pt")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main([str(run), "--scales", "0,1"])
    for bad in ("nan", "inf,1"):
        with pytest.raises(SystemExit):
            main([str(run), "--temperature-scales", bad])
