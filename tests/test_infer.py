"""``wtal infer`` and what runs remember of their features (``wtal.infer``, ``wtal.featmeta``)."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.checkpoint import load_checkpoint
from wtal.cli import main
from wtal.config import load_config
from wtal.engine import fit
from wtal.featmeta import EXTRACTOR_KEYS, FEATURES_META_FILE
from wtal.infer import load_run, predict_videos, video_record
from wtal.inference import predict
from wtal.synth import THUMOS, write_synthetic

TINY = [
    "model.embed_dim=32",
    "train.epochs=1",
    "train.warmup_epoch=0",
    "train.lr_milestones=[]",
    "train.lr_values=[5e-4]",
    "train.batch_size=5",
    "train.checkpoint_every=0",
    "train.device='cpu'",
    "loss.spl_milestones=[1, 2]",
    "pseudo.enabled=False",
]
FEAT_DIM = 8
EXTRACTOR = {
    "name": "i3d-rgb",
    "dim": FEAT_DIM,
    "weights_sha256": None,
    "fps": 25.0,
    "snippet_frames": 16,
    "stride": 16,
}
"""A features_meta.json extractor entry for the synthetic data (its features are 8-d, on the
25 fps / 16-frame grid of the config defaults)."""


@pytest.fixture
def warnings_log(caplog):
    """The package's log warnings (``wtal.cli.main`` stops them propagating to pytest's root
    handler, so caplog's handler goes on the ``wtal`` logger itself)."""
    logger = logging.getLogger("wtal")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="wtal"):
        yield caplog
    logger.removeHandler(caplog.handler)


def _data(root: Path, meta: dict | None) -> Path:
    spec = dict(train_videos=5, test_videos=3, feat_dim=FEAT_DIM, num_classes=3)
    spec.update(min_snippets=20, median_snippets=30, max_snippets=40)
    write_synthetic(root, replace(THUMOS, **spec), seed=0)
    if meta is not None:
        (root / FEATURES_META_FILE).write_text(json.dumps(meta))
    return root


def _train(data: Path, run_dir: Path) -> Path:
    fit(load_config(None, [*TINY, f"data.path={str(data)!r}"]), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> tuple[Path, Path]:
    """A dataset of features made elsewhere (no features_meta.json) and a run trained on it."""
    root = tmp_path_factory.mktemp("external")
    data = _data(root / "data", None)
    return data, _train(data, root / "run")


@pytest.fixture(scope="module")
def described(tmp_path_factory) -> tuple[Path, Path]:
    """A dataset with a features_meta.json and a run trained on it."""
    root = tmp_path_factory.mktemp("described")
    data = _data(root / "data", {"extractor": EXTRACTOR, "videos": {}})
    return data, _train(data, root / "run")


# ----------------------------------------------------------------------------- run records


def test_run_folder_and_checkpoint_record_the_extractor(described):
    data, run = described
    assert (run / FEATURES_META_FILE).read_bytes() == (data / FEATURES_META_FILE).read_bytes()
    state = load_checkpoint(run)
    assert state["extractor"] == {k: EXTRACTOR[k] for k in EXTRACTOR_KEYS}
    assert load_run(run).extractor == state["extractor"]


def test_external_features_record_no_extractor_and_old_checkpoints_load(external, tmp_path):
    _, run = external
    assert not (run / FEATURES_META_FILE).exists()
    state = load_checkpoint(run)
    assert state["extractor"] is None
    del state["extractor"]  # a checkpoint written before the entry existed
    old = tmp_path / "old.pt"
    torch.save(state, old)
    loaded = load_run(old)
    assert loaded.extractor is None and loaded.feat_dim == FEAT_DIM


def test_broken_features_meta_is_not_copied(tmp_path, warnings_log):
    data = _data(tmp_path / "data", {"extractor": {"name": "i3d-rgb"}})
    run = _train(data, tmp_path / "run")
    assert "does not record its feature extractor" in warnings_log.text
    assert not (run / FEATURES_META_FILE).exists()
    assert load_checkpoint(run)["extractor"] is None


# ----------------------------------------------------------------------------- --features


def _copy_features(data: Path, dest: Path, vid: str | None = None) -> Path:
    source = sorted((data / "features").glob("*.npy"))[0] if vid is None else None
    source = source or data / "features" / f"{vid}.npy"
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, dest / source.name))


def test_infer_features_matches_detect(external, tmp_path, capsys):
    data, run = external
    features = _copy_features(data, tmp_path / "in")
    vid = features.stem
    detect_out = tmp_path / "detect.json"
    assert main(["detect", str(run), "--features", str(features), "--out", str(detect_out)]) == 0
    out = tmp_path / "out"
    argv = ["infer", "--features", str(features), "--run", str(run), "--out", str(out)]
    assert main(argv) == 0
    assert f"{vid}: " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"{vid}.csv", f"{vid}.json", f"{vid}.png"]
    results = json.loads((out / f"{vid}.json").read_text())
    expected = json.loads(detect_out.read_text())
    assert list(results["results"]) == [vid]
    assert results["results"][vid] == expected["results"][vid]  # the one detection path
    with open(out / f"{vid}.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["start", "end", "label", "score"]
    assert len(rows) - 1 == len(results["results"][vid]) > 0
    for row, det in zip(rows[1:], results["results"][vid], strict=True):
        assert row[2] == det["label"]
        assert np.allclose([float(x) for x in (row[0], row[1], row[3])],
                           [*det["segment"], det["score"]], atol=1e-3)  # fmt: skip
    assert (out / f"{vid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_features_on_another_grid_are_refused(described, tmp_path, capsys):
    data, run = described
    extracted = tmp_path / "extracted"  # as `wtal features` lays it out, but at 30 fps
    features = _copy_features(data, extracted / "features")
    meta = {"extractor": {**EXTRACTOR, "fps": 30.0}, "videos": {}}
    (extracted / FEATURES_META_FILE).write_text(json.dumps(meta))
    out = tmp_path / "out"
    argv = ["infer", "--features", str(features), "--run", str(run), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(features) in err and str(run) in err
    assert "at 30 fps" in err and "expects 25 fps" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["dim", "missing", "same id", "no input"])
def test_bad_features_input_is_one_line_and_writes_nothing(external, tmp_path, capsys, case):
    _, run = external
    good = tmp_path / "a" / "v.npy"
    good.parent.mkdir()
    np.save(good, np.ones((12, FEAT_DIM), dtype=np.float32))
    other = tmp_path / "b" / ("v.npy" if case == "same id" else "w.npy")
    other.parent.mkdir()
    np.save(other, np.ones((12, FEAT_DIM + (case == "dim")), dtype=np.float32))
    if case == "missing":
        other.unlink()
    inputs = [] if case == "no input" else ["--features", str(good), str(other)]
    out = tmp_path / "out"
    assert main(["infer", *inputs, "--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    expected = {
        "dim": f"features are {FEAT_DIM + 1}-d; the run {run / 'last.pt'} was trained on 8-d",
        "missing": f"{other}: file not found",
        "same id": f"same video id 'v' as {good}",
        "no input": "needs VIDEO files or --features",
    }[case]
    assert expected in err
    assert not out.exists()


# ----------------------------------------------------------------------------- long videos


def test_long_videos_run_in_chunks_only_beyond_the_limit(external, warnings_log):
    _, run = external
    trained = load_run(run)
    rng = np.random.default_rng(0)
    features = rng.random((50, FEAT_DIM), dtype=np.float32)
    video = video_record("long", features, trained.grid, trained.cfg, 3)
    device = torch.device("cpu")
    whole = predict_videos(trained.model, [video], device, trained.cfg, max_snippets=50)[0]
    reference = predict(trained.model, [video], device, video_mix=trained.cfg.detect.video_mix,
                        cas_mix=trained.cfg.detect.cas_mix)[0]  # fmt: skip
    assert np.array_equal(whole.cas, reference.cas)
    assert warnings_log.text == ""
    chunked = predict_videos(trained.model, [video], device, trained.cfg, max_snippets=20)[0]
    assert "50 snippets > 20, run in 3 chunks" in warnings_log.text
    assert chunked.video_id == "long" and chunked.cas.shape == whole.cas.shape
    parts = [replace(video, features=f) for f in np.array_split(features, 3)]  # 17, 17, 16
    alone = predict_videos(trained.model, parts, device, trained.cfg)
    assert np.allclose(chunked.cas, np.concatenate([p.cas for p in alone]))
    weights = np.array([17, 17, 16])[:, None] / 50
    assert np.allclose(chunked.video_scores, (weights * [p.video_scores for p in alone]).sum(0))
    assert not np.allclose(chunked.cas, whole.cas)  # the model is not causal: chunks differ
