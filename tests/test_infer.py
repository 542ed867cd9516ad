"""``wtal infer`` and what runs remember of their features (``wtal.infer``, ``wtal.featmeta``)."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BASE_ONLY, tiny_overrides

from wtal.checkpoint import load_checkpoint
from wtal.cli import main
from wtal.configfile import load_config
from wtal.engine import fit
from wtal.featmeta import EXTRACTOR_KEYS, FEATURES_META_FILE
from wtal.feature_file import feature_video
from wtal.infer import (
    extract_features,
    load_run,
    predict_videos,
    recorded_weights,
)
from wtal.inference import predict
from wtal.io import InputError
from wtal.synth import THUMOS, write_synthetic

TINY = tiny_overrides(
    **BASE_ONLY,
    **{
        "model.embed_dim": 32,
        "train.lr_values": [5e-4],
        "train.batch_size": 5,
        "train.videos_per_step": 10,
    },
)
FEAT_DIM = 8
META = {
    "format": 1,
    "extractor": "i3d-rgb",
    "feat_dim": FEAT_DIM,
    "streams": [{"name": "rgb", "dim": FEAT_DIM, "sha256": "random"}],
    "fps": 25.0,
    "snippet_frames": 16,
    "stride": 16,
    "preprocess": {"resize_short": 256, "crop": 224},
    "flow": None,
    "weights_files": {"rgb": "none"},
    "videos": {},
}
"""A features_meta.json for the synthetic data, as ``wtal features`` lays it out (its
features are 8-d, on the 25 fps / 16-frame grid of the config defaults)."""
RECORD = {
    "name": "i3d-rgb",
    "dim": FEAT_DIM,
    "weights_sha256": {"rgb": "random"},
    "fps": 25.0,
    "snippet_frames": 16,
    "stride": 16,
    "weights_files": {"rgb": "none"},
    "preprocess": {"resize_short": 256, "crop": 224, "flow_clip": None},
}
"""What checkpoints record of :data:`META`."""


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
    data = _data(root / "data", META)
    return data, _train(data, root / "run")


# ----------------------------------------------------------------------------- run records


def test_run_folder_and_checkpoint_record_the_extractor(described):
    data, run = described
    assert (run / FEATURES_META_FILE).read_bytes() == (data / FEATURES_META_FILE).read_bytes()
    state = load_checkpoint(run)
    assert state["extractor"] == RECORD and set(RECORD) == set(EXTRACTOR_KEYS)
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
    data = _data(tmp_path / "data", {**META, "fps": "25"})
    run = _train(data, tmp_path / "run")
    assert "does not record its feature extractor" in warnings_log.text
    assert not (run / FEATURES_META_FILE).exists()
    assert load_checkpoint(run)["extractor"] is None


def test_recorded_weights(described, tmp_path):
    trained = load_run(described[1])
    assert recorded_weights(trained) == "none"  # random weights: rebuilt as such
    weights = tmp_path / "rgb_imagenet.pt"
    sha = {"weights_sha256": {"rgb": "ab" * 32}, "weights_files": {"rgb": str(weights)}}
    found = replace(trained, extractor={**trained.extractor, **sha})
    with pytest.raises(InputError, match=f"its weights file {weights} is gone; pass --weights"):
        recorded_weights(found)
    weights.write_bytes(b"")
    assert recorded_weights(found) == str(weights)
    two = {"rgb": str(weights), "flow": str(tmp_path / "flow_imagenet.pt")}
    (tmp_path / "flow_imagenet.pt").write_bytes(b"")
    both = replace(trained, extractor={**trained.extractor, **sha, "weights_files": two})
    assert recorded_weights(both) == str(tmp_path)  # two streams: their folder


# ----------------------------------------------------------------------------- --features


def _copy_features(data: Path, dest: Path, vid: str | None = None) -> Path:
    source = sorted((data / "features").glob("*.npy"))[0] if vid is None else None
    source = source or data / "features" / f"{vid}.npy"
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, dest / source.name))


def test_infer_features_matches_detect(external, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # feature files never need PyAV
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
    meta = {**META, "fps": 30.0}
    (extracted / FEATURES_META_FILE).write_text(json.dumps(meta))
    out = tmp_path / "out"
    argv = ["infer", "--features", str(features), "--run", str(run), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(features) in err and str(run) in err
    assert "at 30 fps" in err and "expects 25 fps" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["dim", "missing", "same id", "no input", "max snippets"])
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
    if case == "max snippets":
        inputs.append("--max-snippets=0")
    out = tmp_path / "out"
    assert main(["infer", *inputs, "--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    expected = {
        "dim": f"features are {FEAT_DIM + 1}-d; the run {run / 'last.pt'} was trained on 8-d",
        "missing": f"{other}: file not found",
        "same id": f"same video id 'v' as {good}",
        "no input": "needs VIDEO files or --features",
        "max snippets": "--max-snippets: expected a number >= 1, got 0",
    }[case]
    assert expected in err
    assert not out.exists()


# ----------------------------------------------------------------------------- long videos


def test_long_videos_run_in_chunks_only_beyond_the_limit(external, warnings_log):
    _, run = external
    trained = load_run(run)
    rng = np.random.default_rng(0)
    features = rng.random((50, FEAT_DIM), dtype=np.float32)
    grid = trained.grid
    video = feature_video(
        "long", features, trained.cfg.data, 3, fps=grid.fps, snippet_frames=grid.snippet_frames
    )
    device = torch.device("cpu")
    whole = predict_videos(trained.model, [video], device, trained.cfg, max_snippets=50)[0]
    cfg = trained.cfg.detect
    reference = predict(trained.model, [video], device, video_mix=cfg.video_mix,
                        cas_mix=cfg.cas_mix, batch_size=1, max_padding=0.0)[0]  # fmt: skip
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


# ----------------------------------------------------------------------------- videos


SMALL_FRAMES = dict(resize_short=48, crop=48)
"""Frame size for the video tests: I3D takes any size, and 224 x 224 clips cost ~2 s each
on one CPU thread. The metadata records it, and ``wtal infer`` extracts the same way."""


def _write_video(path: Path, frames: int, brightness: int) -> Path:
    av = pytest.importorskip("av", reason="writing test videos needs PyAV (the video extra)")
    rng = np.random.default_rng(brightness)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 40, 32, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 40, (32, 40, 3), dtype=np.uint8) + brightness
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """Six tiny videos -> ``wtal features`` -> labels -> ``wtal data check`` -> 2-epoch run."""
    pytest.importorskip("av", reason="decoding videos needs PyAV (the video extra)")
    from wtal import video

    root = tmp_path_factory.mktemp("videos")
    (root / "videos").mkdir()
    classes = ["dark", "bright"]
    for i in range(6):  # 20 frames at 25 fps: 2 snippets of 16 (the second padded)
        _write_video(root / "videos" / f"clip{i}.mp4", 20, 40 + 150 * (i % 2))
    data, run = root / "data", root / "run"
    patch = pytest.MonkeyPatch()
    spec = video.FeatureSpec
    patch.setattr(video, "FeatureSpec", lambda **kw: spec(**{**SMALL_FRAMES, **kw}))
    argv = ["features", str(root / "videos"), str(data), "--weights", "none", "--quiet"]
    try:
        assert main([*argv, "--extractor", "i3d-rgb", "--subset", "validation"]) == 0
    finally:
        patch.undo()
    annotations = json.loads((data / "annotations.json").read_text())
    for i, (_, entry) in enumerate(sorted(annotations["database"].items())):
        entry["subset"] = "validation" if i < 4 else "test"
        entry["labels"] = [classes[i % 2]]
        entry["annotations"] = [{"label": classes[i % 2], "segment": [0.0, 0.6]}]
    (data / "annotations.json").write_text(json.dumps(annotations))
    assert main(["data", "check", str(data)]) == 0
    config = root / "tiny.yaml"
    config.write_text(json.dumps({"model": {"embed_dim": 32}, "train": {"epochs": 2}}))
    overrides = [f"--set={o}" for o in TINY if not o.startswith(("model.", "train.epochs"))]
    assert main(["train", str(config), "--data", str(data), "--run-dir", str(run), "--quiet",
                 *overrides]) == 0  # fmt: skip
    return root, data, run


def test_videos_features_train_infer_score(video_run, tmp_path, capsys):
    root, data, run = video_run
    assert (run / FEATURES_META_FILE).read_bytes() == (data / FEATURES_META_FILE).read_bytes()
    record = load_checkpoint(run)["extractor"]
    assert record["name"] == "i3d-rgb" and record["dim"] == 1024
    assert record["weights_sha256"] == {"rgb": "random"}
    assert record["fps"] == 25.0 and record["stride"] == 16
    assert record["preprocess"]["crop"] == SMALL_FRAMES["crop"]
    videos = [root / "videos" / "clip4.mp4", root / "videos" / "clip5.mp4"]
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["infer", *map(str, videos), "--run", str(run), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"clip{i}.{ext}" for i in (4, 5) for ext in ("csv", "json", "png"))
    # the extraction is the dataset's: same detections as from the extracted features
    same = tmp_path / "same"
    features = data / "features" / "clip4.npy"
    assert main(["infer", "--features", str(features), "--run", str(run), "--out", str(same)]) == 0
    by_video = json.loads((out / "clip4.json").read_text())["results"]["clip4"]
    by_file = json.loads((same / "clip4.json").read_text())["results"]["clip4"]
    # equal up to float32 rounding: I3D's threaded convolutions may sum in another order
    assert [(d["label"], d["segment"]) for d in by_video] == [
        (d["label"], d["segment"]) for d in by_file
    ]
    assert [d["score"] for d in by_video] == pytest.approx([d["score"] for d in by_file], rel=1e-5)
    truth = [{"label": "dark", "segment": [0.0, 0.6]}]
    gt = {"database": {"clip4": {"subset": "test", "duration": 0.8, "annotations": truth}}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    capsys.readouterr()
    assert main(["score", str(tmp_path / "gt.json"), str(out / "clip4.json"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics  # scored: the results file is a valid ActivityNet results file
    with open(out / "clip5.csv", newline="") as f:
        assert next(csv.reader(f)) == ["start", "end", "label", "score"]
    assert (out / "clip5.png").stat().st_size > 1000


def test_video_with_other_feature_dim_is_refused(external, tmp_path, capsys):
    _, run = external  # trained on 8-d external features
    video = _write_video(tmp_path / "v.mp4", 16, 100)
    out = tmp_path / "out"
    argv = ["infer", str(video), "--run", str(run), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {run / 'last.pt'}: records no extractor (trained on external "
                   f"features): pass --extractor NAME to extract {video}\n")  # fmt: skip
    assert main([*argv, "--extractor", "i3d-rgb", "--weights", "none"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (f"error: {video}: extractor i3d-rgb's features are 1024-d; the run "
                    f"{run / 'last.pt'} was trained on 8-d")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing", "broken", "empty"])
def test_missing_or_broken_video_is_one_line(video_run, tmp_path, capsys, case):
    root, _, run = video_run
    bad = tmp_path / "bad.mp4"
    if case == "broken":
        bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    elif case == "empty":
        bad.write_bytes(b"")
    good = root / "videos" / "clip4.mp4"
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["infer", str(good), str(bad), "--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1, err
    assert not out.exists()


# ----------------------------------------------------------------------------- CUDA

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_predictions_match_cpu(external, tmp_path):
    data, run = external
    trained = load_run(run)
    features = np.load(sorted((data / "features").glob("*.npy"))[0])
    grid = trained.grid
    video = feature_video(
        "v", features, trained.cfg.data, 3, fps=grid.fps, snippet_frames=grid.snippet_frames
    )
    on = {d: predict_videos(trained.model, [video], torch.device(d), trained.cfg, 16)[0]
          for d in ("cpu", "cuda")}  # fmt: skip
    assert np.allclose(on["cpu"].cas, on["cuda"].cas, atol=1e-5)
    assert np.allclose(on["cpu"].video_scores, on["cuda"].video_scores, atol=1e-5)
    out = tmp_path / "out"
    path = _copy_features(data, tmp_path / "in")
    argv = ["infer", "--features", str(path), "--run", str(run), "--out", str(out)]
    assert main([*argv, "--device", "cuda"]) == 0
    assert (out / f"{path.stem}.json").is_file()


@pytest.mark.gpu
@needs_cuda
def test_cuda_extraction_matches_cpu(video_run, tmp_path):
    root, _, run = video_run
    trained = load_run(run)
    videos = {"clip4": root / "videos" / "clip4.mp4"}
    on = {d: extract_features(videos, trained, None, None, torch.device(d))[0].features
          for d in ("cpu", "cuda")}  # fmt: skip
    assert np.allclose(on["cpu"], on["cuda"], atol=1e-3, rtol=1e-3)
