"""``wtal detect`` / ``postprocess`` and the CAS cache on a tiny trained run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BASE_ONLY, tiny_config

from wtal.cascache import load_predictions
from wtal.cascache import save_predictions as save_cache
from wtal.cli import build_parser, main
from wtal.configfile import load_config
from wtal.inference import Prediction, results_from_predictions

TINY = tiny_config(
    **BASE_ONLY,
    **{
        "model.embed_dim": 32,
        "train.lr_values": [5e-4],
        "train.batch_size": 5,
        "train.videos_per_step": 10,
    },
)
FEAT_DIM = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_run) -> tuple[Path, Path]:
    """(dataset folder, run folder): 1 epoch on 5 + 4 synthetic videos of 4 classes."""
    spec = dict(
        train_videos=5,
        feat_dim=FEAT_DIM,
        num_classes=4,
        min_snippets=30,
        median_snippets=50,
        max_snippets=80,
    )
    data, _, run = tiny_run(tmp_path_factory.mktemp("synth"), TINY, **spec)
    return data, run


@pytest.fixture(scope="module")
def data(trained) -> Path:
    return trained[0]


@pytest.fixture(scope="module")
def run(trained) -> Path:
    return trained[1]


@pytest.fixture(scope="module")
def detected(run, data, tmp_path_factory) -> Path:
    """``wtal detect RUN --data DATA`` on the test split; returns the results path."""
    out = tmp_path_factory.mktemp("detect") / "results.json"
    assert main(["detect", str(run), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    return out


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def results_of(path: Path) -> dict:
    return json.loads(path.read_text())["results"]


# ----------------------------------------------------------------------------- the cache


def test_fit_writes_a_cas_cache_that_reproduces_its_detections(run):
    cache = load_predictions(run / "cas_test.npz")
    assert cache.class_names == [f"action_{c:03d}" for c in range(4)]
    assert cache.split == "test" and len(cache.predictions) == 4
    assert cache.config == load_config(run / "config.yaml")
    pred = cache.predictions[0]
    assert pred.cas.shape[1] == 5 and pred.attention.shape == pred.cas.shape[:1]
    assert pred.duration_s == pytest.approx(pred.cas.shape[0] * 16 / 25)
    results = results_from_predictions(cache.predictions, cache.class_names, cache.config.detect)
    assert results["results"] == results_of(run / "detections_test.json")
    assert sum(len(v) for v in results["results"].values()) > 0


def _prediction(video_id: str, num_snippets: int, seed: int) -> Prediction:
    rng = np.random.default_rng(seed)
    return Prediction(
        video_id=video_id,
        video_scores=rng.random(3),
        cas=rng.random((num_snippets, 3)),
        attention=rng.random(num_snippets),
        labels=np.array([1, 0], dtype=np.float32),
        fps=30.0,
        snippet_frames=8.0,
        duration_s=float("nan"),
    )


def test_cache_round_trip_is_exact_and_needs_no_pickle(tmp_path):
    preds = [_prediction("a", 7, 0), _prediction("b", 0, 1), _prediction("c", 3, 2)]
    path = tmp_path / "cas.npz"
    save_cache(path, preds, ["x", "y"])
    with np.load(path, allow_pickle=False) as npz:  # every entry loads without pickle
        assert npz["cas"].shape == (10, 3) and npz["video_ids"].dtype.kind == "U"
    cache = load_predictions(path)
    assert cache.config is None and cache.split == "" and cache.class_names == ["x", "y"]
    for a, b in zip(preds, cache.predictions, strict=True):
        assert a.video_id == b.video_id and (a.fps, a.snippet_frames) == (b.fps, b.snippet_frames)
        for name in ("cas", "attention", "video_scores", "labels"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.isnan(b.duration_s)
    assert [p.name for p in tmp_path.iterdir()] == ["cas.npz"]  # no temporary left behind


def test_cache_refuses_predictions_of_another_class_count(tmp_path):
    with pytest.raises(ValueError, match="does not fit 3 classes"):
        save_cache(tmp_path / "c.npz", [_prediction("a", 4, 0)], ["x", "y", "z"])
    assert not (tmp_path / "c.npz").exists()


def _corrupt(tmp_path: Path, **changes) -> Path:
    """A valid cache with some entries replaced (None: removed)."""
    good = tmp_path / "good.npz"
    save_cache(good, [_prediction("a", 4, 0), _prediction("b", 5, 1)], ["x", "y"])
    with np.load(good) as npz:
        arrays = dict(npz)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    return bad


BAD_CACHES = [
    (dict(cas=None), "not a wtal CAS cache (no 'cas' entry)"),
    (dict(format=np.array("other")), "format 'other'"),
    (dict(version=np.array(99)), "cache version 99 is newer"),
    (dict(lengths=np.array([4, 4])), "entry 'cas': shape (9, 3), expected (8, 3)"),
    (dict(cas=np.full((9, 3), np.nan)), "entry 'cas': non-finite values"),
    (dict(video_ids=np.array([1, 2])), "entry 'video_ids': expected a 1-d 'U' array"),
    (dict(video_ids=np.array(["a", {}], dtype=object)), "entry 'video_ids' holds pickled"),
    (dict(config=np.array("{bad")), "entry 'config': malformed JSON"),
    (dict(config=np.array('{"train": {"epochs": "x"}}')), "train.epochs = 'x': expected int"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_CACHES)
def test_bad_cache_is_one_error_line(tmp_path, capsys, changes, message):
    bad = _corrupt(tmp_path, **changes)
    status, out, err = call(["postprocess", str(bad)], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1
    assert message in err


def test_unreadable_caches(tmp_path, capsys):
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    for path, message in [
        (tmp_path / "missing.npz", "file not found"),
        (text, "not a readable .npz file"),
        (single, "a single array"),
    ]:
        status, _, err = call(["postprocess", str(path)], capsys)
        assert status == 2 and err.startswith(f"error: {path}: ") and message in err, err


# ----------------------------------------------------------------------------- detect


def test_help_lists_the_commands():
    text = build_parser().format_help()
    for command in ("detect", "postprocess", "plot"):
        assert command in text


def test_detect_matches_training_and_round_trips_through_score(detected, run, data, capsys):
    folder = detected.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "results.cas.npz",
        "results.json",
        "results.metrics.json",
    ]
    # The same model on the same split: the detections and metrics fit wrote at the end.
    assert results_of(detected) == results_of(run / "detections_test.json")
    metrics = json.loads((folder / "results.metrics.json").read_text())
    assert metrics == json.loads((run / "metrics.json").read_text())
    gt = str(data / "annotations.json")
    status, out, _ = call(["score", gt, str(detected), "--preset", "thumos", "--json"], capsys)
    assert status == 0
    assert json.loads(out)["average_mAP"] == metrics["official"]["average_mAP"]


def test_detect_prints_both_protocols(run, data, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["detect", str(run / "last.pt"), "--data", str(data), "--out", str(out), "--quiet"]
    status, text, err = call(argv + ["--set", "detect.fusion='nms'"], capsys)
    assert status == 0 and err == ""
    assert "official" in text and "legacy wtalc" in text and "average mAP (headline)" in text
    cache = load_predictions(tmp_path / "r.cas.npz")
    assert cache.config.detect.fusion == "nms" and cache.config.data.path == str(data)


def test_postprocess_with_defaults_reproduces_detect(detected, capsys):
    out = detected.parent / "again.json"
    cache = detected.parent / "results.cas.npz"
    status, text, _ = call(["postprocess", str(cache), "--out", str(out)], capsys)
    assert status == 0 and "fusion gaussian" in text
    assert json.loads(out.read_text()) == json.loads(detected.read_text())


def test_postprocess_sweeps_and_evaluates(detected, data, capsys):
    cache = detected.parent / "results.cas.npz"
    gaussian = results_of(detected)
    status, text, _ = call(["postprocess", str(cache), "--fusion", "nms"], capsys)
    nms_path = detected.parent / "results.nms.json"  # default name: beside the cache
    assert status == 0 and str(nms_path) in text
    nms = results_of(nms_path)
    assert nms.keys() == gaussian.keys() and nms != gaussian
    hot = detected.parent / "hot.json"
    argv = ["postprocess", str(cache), "--temperature", "5.0", "--out", str(hot)]
    assert call(argv, capsys)[0] == 0
    assert results_of(hot) != gaussian  # a different fusion temperature moves fused segments
    scored = detected.parent / "scored.json"
    argv = ["postprocess", str(cache), "--out", str(scored), "--gt", str(data / "annotations.json")]
    status, text, _ = call(argv, capsys)
    assert status == 0 and "subset 'test'" in text
    metrics = json.loads((detected.parent / "scored.metrics.json").read_text())
    reference = json.loads((detected.parent / "results.metrics.json").read_text())
    assert metrics["official"] == reference["official"]
    assert metrics["wtalc"] == reference["wtalc"]


def test_detect_on_one_video_features(detected, run, data, tmp_path, capsys):
    vid = "video_test_0000002"
    features = tmp_path / f"{vid}.npy"
    shutil.copy(data / "features" / f"{vid}.npy", features)
    out = tmp_path / "one.json"
    argv = ["detect", str(run), "--features", str(features), "--out", str(out), "--quiet"]
    status, text, _ = call(argv, capsys)
    assert status == 0 and "1 videos" in text and "mAP" not in text  # no ground truth
    single = results_of(out)
    assert list(single) == [vid]
    batched = results_of(detected)[vid]  # the same video inside a padded batch
    assert len(single[vid]) == len(batched) > 0
    for a, b in zip(single[vid], batched, strict=True):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert a["segment"] == pytest.approx(b["segment"], abs=1e-6)
    cache = load_predictions(tmp_path / "one.cas.npz")
    assert cache.split == "" and not cache.predictions[0].labels.any()


def _dataset_copy(data: Path, tmp_path: Path, rename: str | None = None, dim: int | None = None):
    copy = tmp_path / "data_copy"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("wtalc"))
    if rename:
        path = copy / "annotations.json"
        path.write_text(path.read_text().replace("action_003", rename))
    if dim:
        for f in (copy / "features").iterdir():
            np.save(f, np.load(f)[:, :dim])
    return copy


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing checkpoint", "checkpoint not found"),
        ("no source", "needs either --data PATH or --features VIDEO.npy"),
        ("renamed class", "classes differ from the checkpoint's (missing ['action_003'], "),
        ("dataset dim", "features are 8-d; the checkpoint expects 16-d"),
        ("features dim", "features are 7-d; the checkpoint expects 16-d"),
        ("features nan", "features: contains NaN or Inf"),
        ("features missing", "file not found"),
        ("features 1-d", "features: expected a (T, D) array"),
        ("unknown key", "unknown config key 'detect.temprature'"),
        ("unknown split", "no videos in subset 'train'"),
    ],
)
def test_detect_errors_are_one_line(run, data, tmp_path, capsys, case, message):
    out = ["--out", str(tmp_path / "r.json"), "--quiet"]
    features = tmp_path / "v.npy"
    if case == "renamed class":
        data = _dataset_copy(data, tmp_path, rename="z")
    if case == "dataset dim":
        data = _dataset_copy(data, tmp_path, dim=8)
    argv = {
        "missing checkpoint": ["detect", str(tmp_path / "nope"), "--data", str(data)],
        "no source": ["detect", str(run)],
        "renamed class": ["detect", str(run), "--data", str(data)],
        "dataset dim": ["detect", str(run), "--data", str(data)],
        "features dim": ["detect", str(run), "--features", str(features)],
        "features nan": ["detect", str(run), "--features", str(features)],
        "features missing": ["detect", str(run), "--features", str(tmp_path / "none.npy")],
        "features 1-d": ["detect", str(run), "--features", str(features)],
        "unknown key": ["detect", str(run), "--data", str(data), "--set", "detect.temprature=1"],
        "unknown split": ["detect", str(run), "--data", str(data), "--split", "train"],
    }[case]
    shape = {"features dim": (10, 7), "features 1-d": (10,)}.get(case, (10, FEAT_DIM))
    values = np.full(shape, np.nan if case == "features nan" else 1.0, dtype=np.float32)
    np.save(features, values)
    status, text, err = call(argv + out, capsys)
    assert status == 2 and text == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.cas.npz").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_detect_on_cuda_without_one_is_an_input_error(run, data, tmp_path, capsys):
    argv = ["detect", str(run), "--data", str(data), "--device", "cuda"]
    status, _, err = call(argv + ["--out", str(tmp_path / "r.json")], capsys)
    assert status == 2 and err == "error: --device cuda: no CUDA device is available\n"
