"""Data is not code, and data does not choose where files go.

A crafted pickle (unpickling it creates a marker file) is placed where a careless loader
would unpickle it: as a leftover ``videoname.npy`` in a per-video dataset, inside a CAS cache
and inside a checkpoint. None of them may run. Video ids that are paths (``../../x``) must
not place files outside the output folder, and ``wtal demo`` must not delete what it did not
create.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import wtal.engine
from wtal.cascache import save_predictions
from wtal.checkpoint import load_checkpoint
from wtal.cli import main
from wtal.data import FeatureDataset, detect_layout
from wtal.demo import fresh_folder
from wtal.inference import Prediction
from wtal.io import InputError
from wtal.plots import safe_file_names
from wtal.synth import THUMOS, write_synthetic

TINY_SPEC = replace(
    THUMOS,
    train_videos=3,
    test_videos=3,
    feat_dim=8,
    num_classes=2,
    min_snippets=20,
    median_snippets=25,
    max_snippets=30,
)


class _Payload:
    """Unpickling this creates ``marker``: what a malicious file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety") / "data"
    write_synthetic(root, TINY_SPEC, seed=0)
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- pickles


def test_leftover_videoname_pickle_is_not_loaded(data, tmp_path, capsys):
    """A per-video folder with a stray pickled ``videoname.npy`` is read as per-video."""
    marker = tmp_path / "pwned"
    with open(data / "videoname.npy", "wb") as f:
        pickle.dump(_Payload(marker), f)
    try:
        assert detect_layout(data) == "pervideo"
        rc, out, err = _run(capsys, "data", "check", data)
        assert rc == 0, err
        assert "layout: pervideo" in out
        assert len(FeatureDataset(data, "test")) == 3
    finally:
        (data / "videoname.npy").unlink()
    assert not marker.exists()


def test_pickled_cas_cache_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cache = tmp_path / "evil.npz"
    save_predictions(cache, [_prediction("v1")], ["run", "jump"])
    arrays = dict(np.load(cache, allow_pickle=False))
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    arrays["video_ids"] = payload
    np.savez(cache, **arrays)
    rc, _, err = _run(capsys, "plot", cache, "--out", tmp_path / "plots")
    line = _one_error(rc, err)
    assert "evil.npz" in line and "'video_ids' holds pickled objects" in line
    assert not marker.exists() and not (tmp_path / "plots").exists()


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": "wtal", "model": {}, "payload": _Payload(marker)}, path)
    return path


def test_pickled_checkpoint_is_refused_without_running_it(data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = _evil_checkpoint(tmp_path / "evil.pt", marker)
    out = tmp_path / "results.json"
    rc, _, err = _run(capsys, "detect", ckpt, "--data", data, "--out", out, "--quiet")
    line = _one_error(rc, err)
    assert "evil.pt" in line and "refused: it would run pickled code" in line
    assert "getattr" in line  # Path.touch pickles as getattr(PosixPath, "touch")
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    "wording",
    [
        "Weights only load failed. Unsupported global: GLOBAL builtins.getattr was not allowed",
        "Weights only load failed. Trying to load unsupported GLOBAL posix.system whose module "
        "posix is blocked.",
        "Weights only load failed. Unsupported class builtins.getattr",
        "something else entirely",
    ],
)
def test_refusal_is_named_whatever_torch_says(tmp_path, monkeypatch, wording):
    """The message comes from the file's own opcodes, not from parsing torch's text."""
    ckpt = _evil_checkpoint(tmp_path / "evil.pt", tmp_path / "pwned")

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(wording)

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(InputError, match=r"refused: it would run pickled code \(.*getattr"):
        load_checkpoint(ckpt)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02\xff garbage")
    with pytest.raises(InputError, match="not a readable wtal checkpoint"):
        load_checkpoint(garbage)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- file names


def test_safe_file_names_stay_inside_and_are_unique(tmp_path):
    ids = ["v1", "../../x", "/etc/passwd", "..", ".hidden", "a/b", "a_b", "A_B", "", "é"]
    paths = safe_file_names(tmp_path / "out", ids, prefix="p_")
    assert list(paths) == ids
    names = [p.name for p in paths.values()]
    assert len({n.lower() for n in names}) == len(ids)  # distinct even case-insensitively
    for path in paths.values():
        assert path.parent == tmp_path / "out"
        assert path.name.startswith("p_") and path.name.endswith(".png")
        assert "/" not in path.name and not path.name.removeprefix("p_").startswith(".")
    assert paths["v1"].name == "p_v1.png"  # plain ids are kept as they are
    assert safe_file_names(tmp_path, ids) == safe_file_names(tmp_path, ids)  # deterministic
    assert not any(p.name.startswith(".") for p in safe_file_names(tmp_path, ids).values())


def _prediction(video_id: str, num_snippets: int = 40, fps: float = 25.0) -> Prediction:
    t = np.arange(num_snippets)
    cas = np.full((num_snippets, 3), 0.01)
    cas[:, 1] += 0.8 * ((t >= 10) & (t < 20))
    return Prediction(
        video_id=video_id,
        video_scores=np.array([0.9, 0.2, 0.1]),
        cas=cas,
        attention=cas[:, 1],
        labels=np.array([1, 0], dtype=np.float32),
        fps=fps,
        snippet_frames=16.0,
        duration_s=num_snippets * 16 / fps,
    )


def test_plot_names_files_inside_the_output_folder(tmp_path, capsys):
    ids = ["../../escaped", str(tmp_path / "absolute"), "plain"]
    cache = tmp_path / "work" / "cache.npz"
    save_predictions(cache, [_prediction(v) for v in ids], ["run", "jump"])
    out = tmp_path / "work" / "plots"
    rc, _, err = _run(capsys, "plot", cache, "--out", out, "--num", 3)
    assert rc == 0, err
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert len(written) == 3 and all(p.parent == Path("work/plots") for p in written), written
    assert (out / "plain.png").is_file()
    assert not (tmp_path / "absolute.png").exists() and not (tmp_path / "escaped.png").exists()


@pytest.mark.parametrize("bad_id", ["../escaped", "sub/dir", ".."])
def test_path_like_video_ids_in_annotations_are_refused(data, tmp_path, capsys, bad_id):
    """A per-video id names ``features/<id>.npy``: a path there would read outside the data."""
    copy = tmp_path / "data"
    write_synthetic(copy, TINY_SPEC, seed=0)
    ann = copy / "annotations.json"
    doc = json.loads(ann.read_text())
    first = next(iter(doc["database"]))
    doc["database"] = {bad_id if k == first else k: v for k, v in doc["database"].items()}
    ann.write_text(json.dumps(doc))
    rc, _, err = _run(capsys, "data", "check", copy)
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert rc == 2 and any(repr(bad_id) in x and "plain file name" in x for x in lines), err


# ----------------------------------------------------------------------------- demo


def test_fresh_folder_skips_anything_non_empty(tmp_path):
    base = tmp_path / "run-seed0"
    assert fresh_folder(base) == base
    base.mkdir()
    assert fresh_folder(base) == base  # empty: nothing to lose
    (base / "notes.txt").write_text("mine")
    assert fresh_folder(base) == tmp_path / "run-seed0-2"
    (tmp_path / "run-seed0-2").write_text("a file, not a folder")
    assert fresh_folder(base) == tmp_path / "run-seed0-3"


def test_demo_keeps_an_existing_run_folder(tmp_path, monkeypatch, capsys):
    """``wtal demo --out DIR`` with a user's ``DIR/run-seed0``: it stays byte for byte."""
    out = tmp_path / "demo"
    write_synthetic(out / "synth-thumos-seed0", TINY_SPEC, seed=0)  # the cached benchmark
    kept = out / "run-seed0" / "notes.txt"
    kept.parent.mkdir()
    kept.write_text("my notes")
    used = []

    def stop(cfg, run_dir, **kwargs):  # the training itself is not what is tested here
        used.append(Path(run_dir))
        raise InputError(run_dir, "stopped before training")

    monkeypatch.setattr(wtal.engine, "fit", stop)
    rc, _, err = _run(capsys, "demo", "--out", out, "--quiet")
    assert rc == 2 and "stopped before training" in err
    assert used == [out / "run-seed0-2"]
    assert kept.read_text() == "my notes" and sorted(kept.parent.iterdir()) == [kept]
