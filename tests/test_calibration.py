"""Proposal thresholds and the fusion temperature chosen on the validation split
(``detect.threshold_scales``, ``detect.temperature_scales``)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_wtal, tiny_config

from tools.threshold_sweep import main as sweep_main
from wtal.calibration import calibrate, detection_scores, scaled_thresholds
from wtal.checkpoint import load_checkpoint
from wtal.config import with_choice
from wtal.configcheck import ConfigError
from wtal.configfile import load_config
from wtal.data.split import open_validation
from wtal.inference import load_trained_model
from wtal.io import InputError
from wtal.scoring import evaluate_model

SCALES = [0.25, 1.0, 4.0, 16.0]
TEMPERATURE_SCALES = [0.05, 1.0, 5.0]
CHANGES = {
    "model.embed_dim": 32,
    "train.epochs": 4,
    "train.lr_milestones": [3],
    "train.checkpoint_every": 0,
    "train.eval_every": 2,
    "train.tensorboard": False,
    "pseudo.regen_epochs": [3],
    "pseudo.temperatures": [0.02],
    "data.val_fraction": 0.3,
    "detect.class_threshold": 0.0,  # a barely trained model: keep every class
    "detect.threshold_scales": SCALES,
}


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    spec = dict(train_videos=12, test_videos=3, feat_dim=16, median_snippets=40, max_snippets=50)
    return tiny_run(root, tiny_config(**CHANGES), **spec)[2]


def _reference_choice(model, cfg) -> tuple[int, list[float]]:
    """A full evaluation per scale (both protocols, floors), the best by a plain loop."""
    val = open_validation(cfg)
    maps = []
    for scale in SCALES:
        scaled = replace(cfg, detect=scaled_thresholds(cfg.detect, scale))
        maps.append(evaluate_model(model, val, scaled, torch.device("cpu"))[1]["headline"])
    best = 0
    for i, m in enumerate(maps):
        if m > maps[best]:
            best = i
    return best, maps


def test_the_chosen_scale_is_the_best_full_evaluation(run):
    model, cfg, state = load_trained_model(run, ["detect.thresholds=[0.001,0.04,0.002]"])
    cfg = replace(cfg, detect=replace(cfg.detect, threshold_scales=tuple(SCALES)))
    best, maps = _reference_choice(model, cfg)
    val = open_validation(cfg)
    fast = detection_scores(model, val, cfg, torch.device("cpu"), SCALES, [1.0])[:, 0].tolist()
    assert fast == pytest.approx(maps, abs=1e-9)
    assert len(set(round(m, 6) for m in maps)) > 1  # the levels matter on this data
    chosen, record = calibrate(model, val, cfg, torch.device("cpu"))
    assert record["scale"] == SCALES[best]
    assert chosen.detect.thresholds == pytest.approx(
        [x * SCALES[best] for x in (0.001, 0.04, 0.002)]
    )
    assert record["val"][f"{SCALES[best]:g}"] == pytest.approx(max(maps), abs=1e-4)
    # the run's last choice is the one stored, and the loaded config carries it
    assert state["thresholds"] == pytest.approx(list(chosen.detect.thresholds))


def _reference_pair(model, cfg) -> tuple[tuple[int, int], list[list[float]]]:
    """A full evaluation per (threshold scale, temperature scale), the best by a plain loop
    (the first of equal ones, thresholds outer)."""
    val = open_validation(cfg)
    maps = []
    for scale in SCALES:
        row = []
        for tscale in TEMPERATURE_SCALES:
            detect = scaled_thresholds(cfg.detect, scale)
            detect = replace(detect, temperature=cfg.detect.temperature * tscale)
            scaled = replace(cfg, detect=detect)
            row.append(evaluate_model(model, val, scaled, torch.device("cpu"))[1]["headline"])
        maps.append(row)
    best = (0, 0)
    for i, row in enumerate(maps):
        for j, m in enumerate(row):
            if m > maps[best[0]][best[1]]:
                best = (i, j)
    return best, maps


def test_the_chosen_pair_is_the_best_full_evaluation(run):
    model, cfg, _ = load_trained_model(
        run, ["detect.thresholds=[0.001,0.04,0.002]", "detect.temperature=0.2"]
    )
    detect = replace(
        cfg.detect,
        threshold_scales=tuple(SCALES),
        temperature_scales=tuple(TEMPERATURE_SCALES),
    )
    cfg = replace(cfg, detect=detect)
    (i, j), maps = _reference_pair(model, cfg)
    val = open_validation(cfg)
    fast = detection_scores(model, val, cfg, torch.device("cpu"), SCALES, TEMPERATURE_SCALES)
    assert fast == pytest.approx(np.array(maps), abs=1e-9)
    by_temperature = [[row[k] for row in maps] for k in range(len(TEMPERATURE_SCALES))]
    assert len({tuple(round(m, 6) for m in col) for col in by_temperature}) > 1  # T matters
    chosen, record = calibrate(model, val, cfg, torch.device("cpu"))
    assert (record["scale"], record["temperature_scale"]) == (SCALES[i], TEMPERATURE_SCALES[j])
    assert chosen.detect.temperature == pytest.approx(0.2 * TEMPERATURE_SCALES[j])
    assert chosen.detect.thresholds == pytest.approx([x * SCALES[i] for x in (0.001, 0.04, 0.002)])
    assert chosen.detect.threshold_scales == chosen.detect.temperature_scales == ()
    assert record["val"][f"{SCALES[i]:g}"] == pytest.approx(maps[i][j], abs=1e-4)
    logged = record["val_by_temperature"]
    assert set(logged) == {f"{0.2 * t:g}" for t in TEMPERATURE_SCALES}
    assert logged[f"{0.2 * TEMPERATURE_SCALES[j]:g}"] == record["val"]
    # temperatures alone: the configured thresholds, the best temperature
    only_t = replace(cfg, detect=replace(cfg.detect, threshold_scales=()))
    chosen_t, record_t = calibrate(model, val, only_t, torch.device("cpu"))
    k = SCALES.index(1.0)
    assert chosen_t.detect.thresholds == pytest.approx((0.001, 0.04, 0.002))
    assert record_t["temperature"] == pytest.approx(
        0.2 * TEMPERATURE_SCALES[max(range(3), key=lambda t: (maps[k][t], -t))]
    )


def test_the_run_logs_its_choices_and_scores_with_them(run):
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    chosen = {r["epoch"]: r["calibration"] for r in records if "calibration" in r}
    assert sorted(chosen) == [1, 3]  # an evaluation, the end
    start = {r["epoch"]: r["calibration_start"] for r in records if "calibration_start" in r}
    assert sorted(start) == [3]  # the regeneration
    for c in [*chosen.values(), *start.values()]:
        assert set(c["val"]) == {f"{s:g}" for s in SCALES}
        assert c["val"][f"{c['scale']:g}"] == max(c["val"].values())
    evaluated = next(r for r in records if r["epoch"] == 1)
    assert evaluated["eval"]["val"] == pytest.approx(max(chosen[1]["val"].values()), abs=1e-3)
    base = next(r for r in records if r["epoch"] == 3)["eval_base"]
    assert base["val"] == pytest.approx(max(start[3]["val"].values()), abs=1e-3)
    final = json.loads((run / "metrics_val.json").read_text())["headline"]
    state = load_checkpoint(run / "last.pt")
    model, cfg, _ = load_trained_model(run)
    assert cfg.detect.thresholds == pytest.approx(state["thresholds"])
    assert cfg.detect.threshold_scales == ()  # the choice is made; loading does not re-choose
    val = open_validation(cfg)
    again = detection_scores(model, val, cfg, torch.device("cpu"), [1.0], [1.0])[0, 0]
    assert again == pytest.approx(final, abs=1e-6)


def test_an_override_beats_the_stored_choice(run, tmp_path):
    _, cfg, _ = load_trained_model(run, ["detect.thresholds=[0.5,0.6,0.05]"])
    assert cfg.detect.thresholds == (0.5, 0.6, 0.05)
    state = load_checkpoint(run / "last.pt")
    state["temperature"] = 0.05  # as if the run had chosen a temperature
    torch.save(state, tmp_path / "chose.pt")
    assert load_trained_model(tmp_path / "chose.pt")[1].detect.temperature == 0.05
    _, cfg, _ = load_trained_model(tmp_path / "chose.pt", ["detect.temperature=0.3"])
    assert cfg.detect.temperature == 0.3 and cfg.detect.thresholds == tuple(state["thresholds"])


def test_without_scales_nothing_is_chosen(run):
    model, cfg, _ = load_trained_model(run)
    assert cfg.detect.threshold_scales == ()
    same, record = calibrate(model, open_validation(cfg), cfg, torch.device("cpu"))
    assert same is cfg and record is None


def test_scales_need_a_validation_split():
    with pytest.raises(ConfigError, match="detect.threshold_scales"):
        load_config(None, ["detect.threshold_scales=[0.5,1]"])
    with pytest.raises(ConfigError, match="detect.temperature_scales"):
        load_config(None, ["detect.temperature_scales=[0.5,1]"])
    with pytest.raises(ConfigError, match="detect.temperature_scales"):
        load_config(None, ["data.val_fraction=0.2", "detect.temperature_scales=[-1]"])
    with pytest.raises(ConfigError, match="detect.threshold_scales"):
        load_config(None, ["data.val_fraction=0.2", "detect.threshold_scales=[0,1]"])


def test_a_choice_at_the_end_of_the_scales_is_flagged(run, caplog):
    model, cfg, _ = load_trained_model(run, ["detect.thresholds=[0.001,0.04,0.002]"])
    cfg = replace(cfg, detect=replace(cfg.detect, threshold_scales=(1.0, 4.0)))
    logger = logging.getLogger("wtal")  # the CLI may have stopped it propagating: listen here
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="wtal"):
            calibrate(model, open_validation(cfg), cfg, torch.device("cpu"))
            assert "extend the scales" not in caplog.text  # only when asked
            _, record = calibrate(model, open_validation(cfg), cfg, torch.device("cpu"), warn=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert max(record["val"].values()) > 0  # something was found, at one of the two ends
    assert "extend the scales" in caplog.text


def test_a_resumed_run_keeps_the_choice_made_before_it_stopped(run, tmp_path):
    """Killed after epoch 1's choice, resumed: the last.pt of epoch 2 (no choice of its own)
    holds epoch 1's choice, as in the run that never stopped."""
    data = Path(load_config(run / "config.yaml", []).data.path)
    config = tmp_path / "calibrated.yaml"
    scales = {"detect.threshold_scales": [0.25, 4.0], "detect.temperature_scales": [0.05, 5.0]}
    config.write_text(json.dumps(tiny_config(**{**CHANGES, **scales})))
    train = ["train", str(config), "--data", str(data), "--run-dir"]

    def wtal(args: list[str], fault: str) -> None:
        done = run_wtal(args, fault)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    wtal([*train, str(tmp_path / "straight")], "epoch:3")  # last.pt: after epoch 2
    wtal([*train, str(tmp_path / "stopped")], "epoch:2")  # last.pt: after epoch 1
    wtal(["train", "--resume", str(tmp_path / "stopped")], "epoch:3")
    straight, resumed = (load_checkpoint(tmp_path / n / "last.pt") for n in ("straight", "stopped"))
    assert straight["epoch"] == resumed["epoch"] == 3
    # a multiple of 0.25 or 4, never the configured levels themselves
    assert straight["thresholds"] != pytest.approx([0.001, 0.04, 0.002])
    assert resumed["thresholds"] == straight["thresholds"]
    assert straight["temperature"] in (pytest.approx(0.01), pytest.approx(1.0))
    assert resumed["temperature"] == straight["temperature"]
    _, cfg, _ = load_trained_model(tmp_path / "stopped")
    assert cfg.detect.temperature == resumed["temperature"]  # what detect and infer use
    assert cfg.detect.temperature_scales == ()


def test_the_sweep_scales_the_configured_levels_not_the_choice(run, tmp_path, capsys):
    state = load_checkpoint(run / "last.pt")
    state["thresholds"] = [0.016, 0.64, 0.032]  # as if the run had chosen 16
    state["temperature"] = 0.001  # and a temperature
    torch.save(state, tmp_path / "chose16.pt")
    assert sweep_main([str(run / "last.pt"), str(tmp_path / "chose16.pt"), "--scales", "1,4"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[1].strip() for r in rows] == ["(0.001, 0.04, 0.002)", "(0.004, 0.16, 0.008)"]
    assert [r[2].strip() for r in rows] == ["0.2", "0.2"]  # not the forged 0.001
    for row in rows:  # the same weights, the same levels: the same scores
        assert row[3] == row[4]


def test_a_branch_stores_no_choice_before_its_own(run, tmp_path):
    """Branched from a run that chose, killed before its first choice: its last.pt holds no
    choice (commands then use the configured levels), not the parent's."""
    assert "thresholds" in load_checkpoint(run / "last.pt")
    data = Path(load_config(run / "config.yaml", []).data.path)
    config = tmp_path / "longer.yaml"
    longer = {**CHANGES, "train.epochs": 6, "train.eval_every": 0}
    config.write_text(json.dumps(tiny_config(**longer)))
    branch = tmp_path / "branch"
    args = ["train", str(config), "--data", str(data), "--run-dir", str(branch)]
    # killed after epoch 4 (no choice: no regeneration, evaluation or kept checkpoint)
    done = run_wtal([*args, "--init-from", str(run / "last.pt")], "epoch:5")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    state = load_checkpoint(branch / "last.pt")
    assert state["epoch"] == 5 and "thresholds" not in state


@pytest.mark.parametrize(
    "entry, value, message",
    [
        ("thresholds", "0.1,0.2", "entry 'thresholds' = '0.1,0.2': expected \\[start, stop"),
        ("thresholds", [0.1, "x", 0.2], "entry 'thresholds' = \\[0.1, 'x', 0.2\\]: expected"),
        ("temperature", 0.0, "entry 'temperature' = 0.0: expected a number > 0"),
        ("temperature", True, "entry 'temperature' = True: expected a number > 0"),
        ("temperature", float("inf"), "entry 'temperature' = inf: expected a number > 0"),
        ("thresholds", [0.1, 0.05, 0.01], "entry 'thresholds' = \\[0.1, 0.05, 0.01\\]"),
        ("thresholds", [0.1, 0.5, 0], "entry 'thresholds' = \\[0.1, 0.5, 0\\]"),
        ("thresholds", [-0.1, 0.5, 0.1], "entry 'thresholds' = \\[-0.1, 0.5, 0.1\\]"),
        ("thresholds", [0.1, 10**400, 0.1], "entry 'thresholds' = "),
    ],
)
def test_a_malformed_stored_choice_is_one_clear_error(run, tmp_path, entry, value, message):
    state = load_checkpoint(run / "last.pt")
    state[entry] = value
    torch.save(state, tmp_path / "forged.pt")
    with pytest.raises(InputError, match=message):
        load_trained_model(tmp_path / "forged.pt")
    data = load_config(run / "config.yaml", []).data.path
    out = str(tmp_path / "d.json")
    done = run_wtal(["detect", str(tmp_path / "forged.pt"), "--data", data, "--out", out])
    assert done.returncode == 2 and re.search(message, done.stderr), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d.json").exists()


def test_levels_that_detect_nothing_score_zero_without_a_warning(run):
    model, cfg, _ = load_trained_model(run, ["detect.thresholds=[0.001,0.04,0.002]"])
    val = open_validation(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        maps = detection_scores(model, val, cfg, torch.device("cpu"), [1.0, 1e6], [1.0])[:, 0]
    assert maps[1] == 0.0 and maps[0] > 0.0
    with pytest.warns(RuntimeWarning, match="no prediction matches"):  # scoring still warns
        evaluate_model(model, val, with_choice(cfg, [1e3, 4e4, 2e3]), torch.device("cpu"))


def test_a_resume_refuses_a_malformed_stored_choice_before_writing(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("wtal.lock"))
    state = load_checkpoint(copy / "last.pt")
    state["temperature"] = "hot"
    torch.save(state, copy / "last.pt")
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    done = run_wtal(["train", "--resume", str(copy)])
    assert done.returncode == 2, done.stderr[-2000:]
    assert "entry 'temperature' = 'hot'" in done.stderr and "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
