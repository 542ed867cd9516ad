"""Data that would train into garbage is refused, or the user is told, in one line each.

Refusals go through the real CLI and must be one ``error:`` line, exit status 2 and nothing
written; warnings must reach stderr as ``warning:`` lines that name the file or video.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BASE_ONLY, tiny_config

from wtal.cascache import save_predictions
from wtal.cli import main
from wtal.config import config_to_dict
from wtal.configfile import load_config
from wtal.data import FeatureDataset
from wtal.inference import Prediction, build_model
from wtal.synth import THUMOS, write_synthetic

SPEC = replace(
    THUMOS,
    train_videos=3,
    test_videos=2,
    feat_dim=8,
    num_classes=2,
    min_snippets=20,
    median_snippets=25,
    max_snippets=30,
)
TINY = tiny_config(
    **BASE_ONLY,
    **{
        "model.embed_dim": 8,
        "train.lr_values": [1e-4],
        "train.videos_per_step": 3,
    },
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suspicious") / "data"
    write_synthetic(root, SPEC, seed=0)
    return root


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    """A fresh copy of the tiny dataset (per-video layout only), free to corrupt."""
    root = tmp_path / "data"
    (root / "features").mkdir(parents=True)
    (root / "annotations.json").write_bytes((pristine / "annotations.json").read_bytes())
    for path in (pristine / "features").iterdir():
        (root / "features" / path.name).write_bytes(path.read_bytes())
    return root


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


def _ids(data: Path, subset: str) -> list[str]:
    database = json.loads((data / "annotations.json").read_text())["database"]
    return [v for v, e in database.items() if e["subset"] == subset]


def _edit(data: Path, edit) -> None:
    path = data / "annotations.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _drop_test_ground_truth(doc: dict) -> None:
    for entry in doc["database"].values():
        if entry["subset"] == "test":
            entry["annotations"] = []


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _train(data: Path, config: Path, run: Path) -> list[str]:
    return ["train", str(config), "--data", str(data), "--run-dir", str(run), "--quiet"]


# ----------------------------------------------------------------------------- features


def test_float64_features_that_overflow_float32_are_refused(data, config, tmp_path, capsys):
    vid = _ids(data, "test")[0]
    path = data / "features" / f"{vid}.npy"
    features = np.load(path).astype(np.float64)
    features[3, 1] = 1e39  # finite in float64, inf once cast for training
    np.save(path, features)
    run = tmp_path / "run"
    line = _one_error(*_run(capsys, *_train(data, config, run))[::2])
    assert path.name in line and repr(vid) in line and "overflow float32" in line
    assert not run.exists()


def test_integer_and_huge_features_train_with_warnings(data, config, tmp_path, capsys):
    """Integer dtypes and values beyond data.max_abs_feature train, and stderr says so; a
    class with test ground truth but no training video is named too."""
    train_ids, test_ids = _ids(data, "validation"), _ids(data, "test")
    for vid in train_ids[:2]:  # two integer files: one line that counts the second
        path = data / "features" / f"{vid}.npy"
        np.save(path, (np.load(path) * 10).astype(np.int16))
    path = data / "features" / f"{test_ids[0]}.npy"
    np.save(path, np.load(path) * 1e6)

    def test_only_class(doc: dict) -> None:
        doc["classes"].append("unseen")
        entry = doc["database"][test_ids[1]]
        entry["annotations"].append({"segment": [0.5, 1.5], "label": "unseen"})
        entry.pop("labels", None)

    _edit(data, test_only_class)
    run = tmp_path / "run"
    rc, _, err = _run(capsys, *_train(data, config, run))
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    integer = [w for w in warnings if "integer dtype int16" in w]
    assert len(integer) == 1 and f"{train_ids[0]}.npy" in integer[0]
    assert "(and 1 other videos)" in integer[0]
    huge = [w for w in warnings if "beyond data.max_abs_feature" in w]
    assert len(huge) == 1 and repr(test_ids[0]) in huge[0]
    unseen = [w for w in warnings if "cannot be learned" in w]
    assert len(unseen) == 1 and "'unseen'" in unseen[0]
    assert (run / "metrics.json").is_file()


def test_data_check_reports_the_same_warnings(data, capsys):
    vid = _ids(data, "validation")[0]
    path = data / "features" / f"{vid}.npy"
    np.save(path, np.load(path).astype(np.uint8))
    rc, out, err = _run(capsys, "data", "check", data)
    assert rc == 0 and "0 errors, 1 warnings" in out
    assert f"{vid}.npy" in err and "integer dtype uint8" in err
    dataset = FeatureDataset(data, "validation", max_abs_feature=0.5)
    dataset.check_features()
    kinds = sorted(w.what for w in dataset.warnings)
    assert len(kinds) == 2 and kinds[0].startswith("features: integer dtype uint8"), kinds
    assert kinds[1].startswith("features: values up to") and "max_abs_feature 0.5" in kinds[1]


# ----------------------------------------------------------------------------- splits


def test_test_split_without_ground_truth_is_refused_up_front(data, config, tmp_path, capsys):
    _edit(data, _drop_test_ground_truth)
    run = tmp_path / "run"
    line = _one_error(*_run(capsys, *_train(data, config, run))[::2])
    assert "annotations.json" in line and "subset 'test' has no ground-truth" in line
    assert "nothing could be scored" in line
    assert not run.exists()


def test_detect_on_a_split_without_ground_truth_says_nothing_was_scored(data, tmp_path, capsys):
    cfg = load_config(None, [f"data.path={str(data)!r}", "model.embed_dim=8"])
    dataset = FeatureDataset(data, "test")
    state = {
        "format": "wtal",
        "config": config_to_dict(cfg),
        "feat_dim": dataset.feat_dim,
        "class_names": list(dataset.class_names),
        "model": build_model(cfg, dataset.feat_dim, dataset.num_classes).state_dict(),
    }
    torch.save(state, tmp_path / "model.pt")
    _edit(data, _drop_test_ground_truth)
    out = tmp_path / "results.json"
    rc, stdout, err = _run(capsys, "detect", tmp_path / "model.pt", "--data", data, "--out", out)
    assert rc == 0, err
    assert "split 'test' has no ground-truth segments: nothing was scored" in stdout
    assert out.is_file() and not (tmp_path / "results.metrics.json").exists()


# ----------------------------------------------------------------------------- convert


@pytest.mark.parametrize("fps", ["0", "nan", "-25", "inf"])
def test_convert_refuses_a_meaningless_fps(pristine, tmp_path, capsys, fps):
    out = tmp_path / "converted"
    rc, _, err = _run(capsys, "data", "convert", pristine / "wtalc", out, "--fps", fps)
    line = _one_error(rc, err)
    assert "--fps" in line and "expected a frame rate > 0" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- score


def _gt_and_results(tmp_path: Path, annotations: list[dict]) -> tuple[Path, Path]:
    gt = {"database": {"v1": {"subset": "test", "annotations": annotations}}}
    results = {"results": {"v1": [{"label": "a", "score": 0.9, "segment": [1.0, 2.0]}]}}
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            [{"label": "a", "segment": [1.0, 2.0]}, {"label": "a", "segment": [3.0, 3.0]}],
            "1 zero-length ground-truth segment(s), e.g. [3.0, 3.0]",
        ),
        (
            [{"label": "a", "segment": [1.0, 2.0]}, {"label": "a", "segment": [1.0, 2.0]}],
            "1 duplicate ground-truth instance(s) (same label and segment), e.g. 'a' [1.0, 2.0]",
        ),
    ],
)
def test_score_warns_about_misleading_ground_truth(tmp_path, capsys, annotations, message):
    gt, res = _gt_and_results(tmp_path, annotations)
    rc, out, err = _run(capsys, "score", gt, res)
    assert rc == 0 and "mAP" in out
    (line,) = [x for x in err.splitlines() if message in x]
    assert line.startswith(f"warning: {gt}: video 'v1': ")
    line = _one_error(*_run(capsys, "score", gt, res, "--strict")[::2])
    assert str(gt) in line and message in line and "--strict" in line


def test_score_is_quiet_about_clean_ground_truth(tmp_path, capsys):
    annotations = [{"label": "a", "segment": [1.0, 2.0]}, {"label": "a", "segment": [1.0, 2.5]}]
    gt, res = _gt_and_results(tmp_path, annotations)
    rc, _, err = _run(capsys, "score", gt, res, "--strict")
    assert rc == 0 and err == ""


# ----------------------------------------------------------------------------- CAS cache


def _prediction(video_id: str, num_snippets: int) -> Prediction:
    cas = np.full((num_snippets, 3), 0.3)
    return Prediction(
        video_id=video_id,
        video_scores=np.array([0.5, 0.4, 0.1]),
        cas=cas,
        attention=cas[:, 0],
        labels=np.array([1, 0], dtype=np.float32),
        fps=25.0,
        snippet_frames=16.0,
        duration_s=num_snippets * 16 / 25,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(lengths=np.array([10, 5])), "entry 'cas': shape (10, 3), expected (15, 3)"),
        (dict(lengths=np.array([11, -1])), "entry 'lengths': negative video length"),
        (dict(video_ids=np.array(["a", "a"])), "entry 'video_ids': 'a' is stored twice"),
    ],
)
def test_cache_whose_lengths_do_not_fit_is_refused(tmp_path, capsys, changes, message):
    cache = tmp_path / "c.npz"
    save_predictions(cache, [_prediction("a", 6), _prediction("b", 4)], ["x", "y"])
    with np.load(cache) as npz:
        arrays = dict(npz)
    arrays.update(changes)
    np.savez(cache, **arrays)
    out = tmp_path / "plots"
    line = _one_error(*_run(capsys, "plot", cache, "--out", out)[::2])
    assert str(cache) in line and message in line
    assert not out.exists()
