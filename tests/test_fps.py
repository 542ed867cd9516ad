"""A video's own ``"fps"`` / ``"snippet_frames"`` in the annotations decide its seconds.

One test video of a tiny dataset is declared at 30 fps (its ground truth and duration
rescaled to match); the config says 25. Everything that turns snippets into seconds for that
video must use 30: the dataset, the detections, the CAS cache, the legacy-protocol grid, and
the user is told about the mismatch.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.cascache import load_predictions
from wtal.cli import main
from wtal.config import config_to_dict
from wtal.configfile import load_config
from wtal.data import FeatureDataset
from wtal.evaluation import evaluate_detections
from wtal.inference import build_model, detect
from wtal.segments import snippets_to_seconds
from wtal.synth import THUMOS, write_synthetic

SPEC = replace(
    THUMOS,
    train_videos=3,
    test_videos=3,
    feat_dim=8,
    num_classes=2,
    min_snippets=20,
    median_snippets=25,
    max_snippets=30,
)
OWN_FPS = 30.0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, str]:
    """The tiny dataset, with its first test video re-declared at 30 fps."""
    root = tmp_path_factory.mktemp("fps") / "data"
    write_synthetic(root, SPEC, seed=0)
    path = root / "annotations.json"
    doc = json.loads(path.read_text())
    vid = next(v for v, e in doc["database"].items() if e["subset"] == "test")
    entry = doc["database"][vid]
    scale = SPEC.fps / OWN_FPS  # the same snippets now span fewer seconds
    entry["fps"] = OWN_FPS
    entry["duration"] *= scale
    for ann in entry["annotations"]:
        ann["segment"] = [x * scale for x in ann["segment"]]
    path.write_text(json.dumps(doc))
    return root, vid


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    """An untrained model saved as a wtal checkpoint: detections need not be good here."""
    root, _ = data
    cfg = load_config(None, [f"data.path={str(root)!r}", "model.embed_dim=16"])
    dataset = FeatureDataset(root, "test")
    torch.manual_seed(0)
    model = build_model(cfg, dataset.feat_dim, dataset.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    state = {
        "format": "wtal",
        "config": config_to_dict(cfg),
        "feat_dim": dataset.feat_dim,
        "class_names": list(dataset.class_names),
        "model": model.state_dict(),
    }
    torch.save(state, path)
    return path


def test_dataset_uses_the_videos_own_fps_and_warns(data):
    root, vid = data
    dataset = FeatureDataset(root, "test", fps=25.0, snippet_frames=16.0)
    by_id = {dataset[i].video_id: dataset[i] for i in range(len(dataset))}
    assert by_id[vid].fps == OWN_FPS
    assert all(v.fps == 25.0 for k, v in by_id.items() if k != vid)
    assert dataset.grids()[vid] == (OWN_FPS, 16.0)
    (warning,) = dataset.warnings
    assert warning.video == vid and '"fps" 30 differs from data.fps 25' in warning.what
    # the features end where the (rescaled) video ends: the seconds line up at 30 fps
    end_s = snippets_to_seconds(len(by_id[vid].features), by_id[vid].fps, 16.0)
    assert end_s == pytest.approx(by_id[vid].duration_s, abs=16.0 / OWN_FPS)


def test_own_snippet_frames_win_and_resampling_keeps_them(data, tmp_path):
    root, vid = data
    copy = tmp_path / "data"
    write_synthetic(copy, SPEC, seed=0)
    doc = json.loads((copy / "annotations.json").read_text())
    doc["database"][vid]["snippet_frames"] = 8.0
    (copy / "annotations.json").write_text(json.dumps(doc))
    dataset = FeatureDataset(copy, "test", fps=25.0, snippet_frames=16.0, num_segments=10)
    video = next(dataset[i] for i in range(len(dataset)) if dataset[i].video_id == vid)
    num_snippets = np.load(copy / "features" / f"{vid}.npy").shape[0]
    assert video.snippet_frames == pytest.approx(8.0 * num_snippets / 10)
    assert any(w.video == vid and '"snippet_frames" 8' in w.what for w in dataset.warnings)


def test_detect_writes_the_videos_seconds(data, checkpoint, tmp_path, capsys):
    root, vid = data
    out = tmp_path / "results.json"
    argv = ["detect", str(checkpoint), "--data", str(root), "--out", str(out), "--quiet"]
    rc = main([*argv, "--set", "detect.class_threshold=0.0"])  # an untrained model's scores
    _, err = capsys.readouterr()
    assert rc == 0, err
    warnings = [
        line for line in err.splitlines() if line.startswith("warning: ") and '"fps"' in line
    ]
    assert (
        len(warnings) == 1 and repr(vid) in warnings[0] and "differs from data.fps" in warnings[0]
    )
    cache = load_predictions(tmp_path / "results.cas.npz")
    pred = next(p for p in cache.predictions if p.video_id == vid)
    assert pred.fps == OWN_FPS
    others = [p for p in cache.predictions if p.video_id != vid]
    assert others and all(p.fps == 25.0 for p in others)
    results = json.loads(out.read_text())["results"]
    assert results[vid], "every class gets proposals at class_threshold 0"
    # the detector's snippets, turned into seconds at 30 fps (and clipped to the video)
    found = detect(pred, cache.config.detect).segments.numpy()
    expected = np.clip(found * 16.0 / OWN_FPS, 0.0, pred.duration_s)
    assert np.allclose(np.array([d["segment"] for d in results[vid]]), expected)
    assert not np.allclose(expected, np.clip(found * 16.0 / 25.0, 0.0, pred.duration_s))


def test_legacy_protocol_uses_each_videos_grid():
    """GT [0, 10 snippets at 30 fps] and a prediction ending at 4.9 s: on the video's grid the
    prediction covers 9 of 10 snippets (tIoU 0.9); on the 25 fps grid both round to 8."""
    gt = {
        "database": {
            "v": {
                "subset": "test",
                "annotations": [{"segment": [0.0, 10 * 16 / 30], "label": "a"}],
            }
        }
    }
    results = {"results": {"v": [{"segment": [0.0, 4.9], "label": "a", "score": 1.0}]}}
    args = dict(tious=[0.95], protocol="wtalc", fps=25.0, snippet_frames=16.0)
    assert evaluate_detections(gt, results, **args).map_per_tiou[0] == pytest.approx(100.0)
    own = evaluate_detections(gt, results, **args, grid_by_video={"v": (30.0, 16.0)})
    assert own.map_per_tiou[0] == 0.0
