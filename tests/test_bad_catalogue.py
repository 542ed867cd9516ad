"""Adversarial inputs to every subcommand, grouped by kind: one ``error:`` line, exit 2, nothing
written.

Each case builds its broken input in its own folder, runs ``wtal.cli.main`` (what ``python -m
wtal`` runs) from inside that folder, so that a default output path (``runs/...``) would land
there too, and checks that stderr is one ``error:`` line naming the file, option or field and
what was expected, that the exit status is 2, and that the folder holds exactly what the case
put there (nothing new, nothing changed). The shared dataset and finished run are read-only and
checked unchanged at the end.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from wtal.cli import main

TINY = tiny_config()


@dataclass
class Base:
    """Shared, never-modified inputs: a tiny dataset, its config and a finished 2-epoch run."""

    data: Path
    config: Path
    run: Path


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: file bytes, None for folders and links."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
        for p in folder.rglob("*")
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_run) -> Base:
    base = Base(*tiny_run(tmp_path_factory.mktemp("catalogue"), TINY))
    before = {p: _snapshot(p) for p in (base.data, base.run)}
    yield base
    for folder, snapshot in before.items():
        assert _snapshot(folder) == snapshot, f"{folder} changed"


def _train(base: Base, *extra: str, config: str | None = None, data: str | None = None):
    argv = ["train", config or str(base.config), "--data", data or str(base.data)]
    return [*argv, "--run-dir", "out", "--quiet", *extra]


def _copy_data(base: Base) -> Path:
    """A writable copy of the dataset in the case's folder (the current directory)."""
    return Path(shutil.copytree(base.data, "data"))


def _edit_annotations(data: Path, edit: Callable[[dict], None]) -> None:
    path = data / "annotations.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _first(doc: dict, subset: str) -> dict:
    return next(v for v in doc["database"].values() if v["subset"] == subset)


# Each case runs inside its own empty folder and returns (argv, substrings of the error line).
Case = tuple[list[str], list[str]]

# ----------------------------------------------------------------------------- config


def config_int_beyond_int64(base: Base) -> Case:
    argv = _train(base, "--set", "train.epochs=100000000000000000000000")
    return argv, ["train.epochs = 100000000000000000000000", "expected an integer < 2^63"]


def config_yaml_int_beyond_int64(base: Base) -> Case:
    Path("c.yaml").write_text("model: {embed_dim: 100000000000000000000}\n")
    return _train(base, config="c.yaml"), ["c.yaml", "model.embed_dim", "integer < 2^63"]


def config_model_beyond_memory(base: Base) -> Case:
    argv = _train(base, "--set", "model.embed_dim=1000000000000")  # 32 TB of weights
    return argv, ["model.embed_dim = 1000000000000", "does not fit in memory"]


def config_yaml_section_twice(base: Base) -> Case:
    text = json.dumps(TINY)[1:-1]  # the sections, then `train` again with another value
    Path("c.yaml").write_text("{" + text + ', "train": {"epochs": 1}}\n')
    return _train(base, config="c.yaml"), ["c.yaml", "line 1", "key 'train' given twice"]


def config_yaml_key_twice(base: Base) -> Case:
    Path("c.yaml").write_text("train:\n  epochs: 2\n  seed: 1\n  epochs: 3\n")
    return _train(base, config="c.yaml"), ["c.yaml", "line 4", "key 'epochs' given twice"]


def config_yaml_null_section(base: Base) -> Case:
    Path("c.yaml").write_text("train:\n")
    return _train(base, config="c.yaml"), ["c.yaml: train: expected a mapping, got None"]


def config_usage_error(base: Base) -> Case:
    return ["demo", "--seed", "abc"], ["wtal demo: argument --seed: invalid int value: 'abc'"]


def config_usage_missing_value(base: Base) -> Case:
    return ["train", "--resume"], ["wtal train: argument --resume: expected one argument"]


def config_usage_unknown_option(base: Base) -> Case:
    return ["score", "a.json", "b.json", "--frobnicate"], ["unrecognized arguments: --frobnicate"]


# ----------------------------------------------------------------------------- empty options


def empty_run_dir(base: Base) -> Case:
    argv = ["train", str(base.config), "--data", str(base.data), "--run-dir", "", "--quiet"]
    return argv, ["--run-dir: expected a value, got ''"]  # not runs/<config>-<time>


def empty_data(base: Base) -> Case:
    return _train(base, data=" "), ["--data: expected a value, got ' '"]


def empty_bench_out(base: Base) -> Case:
    argv = ["bench", str(base.config), "--data", str(base.data), "--seeds", "0", "--out", ""]
    return argv, ["--out: expected a value, got ''"]  # not runs/bench-<config>


def empty_detect_split(base: Base) -> Case:
    argv = ["detect", str(base.run), "--data", str(base.data), "--split", "", "--out", "r.json"]
    return argv, ["--split: expected a value, got ''"]


def empty_postprocess_gt(base: Base) -> Case:
    argv = ["postprocess", str(base.run / "cas_test.npz"), "--out", "r.json", "--gt", ""]
    return argv, ["--gt: expected a value, got ''"]  # not silently unscored


def empty_demo_out(base: Base) -> Case:
    return ["demo", "--out", "", "--quiet"], ["--out: expected a folder path, got ''"]


# ----------------------------------------------------------------------------- check, then write


def demo_unknown_set(base: Base) -> Case:
    argv = ["demo", "--out", "demo", "--set", "train.nosuch=1", "--quiet"]
    return argv, ["demo.yaml", "unknown config key 'train.nosuch'"]  # no synthetic data left


def demo_bad_set_value(base: Base) -> Case:
    argv = ["demo", "--out", "demo", "--set", "train.epochs=0", "--quiet"]
    return argv, ["train.epochs = 0: expected an integer >= 1"]


def demo_negative_seed(base: Base) -> Case:
    return ["demo", "--out", "demo", "--seed", "-1", "--quiet"], ["train.seed = -1"]


def demo_negative_plots(base: Base) -> Case:
    return ["demo", "--out", "demo", "--plots", "-1"], ["--plots: expected a number >= 0"]


def demo_out_under_a_file(base: Base) -> Case:
    Path("f").write_text("a file, not a folder\n")
    return ["demo", "--out", "f/demo", "--quiet"], ["f/demo", "is a file, not a folder"]


def demo_foreign_data_folder(base: Base) -> Case:
    Path("demo/synth-thumos-seed0").mkdir(parents=True)
    Path("demo/synth-thumos-seed0/notes.txt").write_text("the user's\n")
    argv = ["demo", "--out", "demo", "--quiet"]
    return argv, ["synth-thumos-seed0", "holds no synthetic benchmark"]


def synth_negative_seed(base: Base) -> Case:
    argv = ["data", "synth", "s", "--seed", "-1", "--set", "train_videos=2"]
    return argv, ["--seed: expected an integer >= 0, got -1"]


def plot_no_video_ids(base: Base) -> Case:
    argv = ["plot", str(base.run / "cas_test.npz"), "--videos", " , ", "--out", "p"]
    return argv, ["--videos: expected comma-separated video ids"]  # not the first 5


def plot_pseudo_zero_videos(base: Base) -> Case:
    argv = ["plot-pseudo", str(base.run), "--num-videos", "0", "--out", "p"]
    return argv, ["--num-videos: expected a number >= 1, got 0"]


def plot_pseudo_negative_videos(base: Base) -> Case:
    argv = ["plot-pseudo", str(base.run), "--num-videos", "-2", "--out", "p"]
    return argv, ["--num-videos: expected a number >= 1, got -2"]  # not all but the last 2


def plot_pseudo_missing_data(base: Base) -> Case:
    argv = ["plot-pseudo", str(base.run), "--data", "nope", "--out", "p"]
    return argv, ["nope: not a dataset folder"]  # named by the user: not a warning


# ----------------------------------------------------------------------------- suspicious data


def data_class_listed_twice(base: Base) -> Case:
    data = _copy_data(base)
    _edit_annotations(data, lambda doc: doc["classes"].append(doc["classes"][0]))
    return _train(base, data=str(data)), ["annotations.json", "'action_000' is listed twice"]


def data_fps_infinite(base: Base) -> Case:
    data = _copy_data(base)
    _edit_annotations(data, lambda doc: _first(doc, "test").update(fps=float("inf")))
    return _train(base, data=str(data)), ['"fps" must be a positive number, got inf']


def data_duration_nan(base: Base) -> Case:
    data = _copy_data(base)
    _edit_annotations(data, lambda doc: _first(doc, "validation").update(duration=float("nan")))
    return _train(base, data=str(data)), ['"duration" must be a positive number', "nan"]


def data_snippet_frames_infinite(base: Base) -> Case:
    data = _copy_data(base)
    inf = float("inf")
    _edit_annotations(data, lambda doc: _first(doc, "validation").update(snippet_frames=inf))
    return _train(base, data=str(data)), ['"snippet_frames" must be a positive number']


def score_results_video_twice(base: Base) -> Case:
    text = (base.run / "detections_test.json").read_text()
    vid = next(iter(json.loads(text)["results"]))
    doubled = text.replace('"results": {', '"results": {' + json.dumps(vid) + ": [], ", 1)
    Path("r.json").write_text(doubled)  # json.loads would keep the second, silently
    gt = str(base.data / "annotations.json")
    return ["score", gt, "r.json"], ["r.json", f"key {vid!r} appears twice"]


def score_gt_video_twice(base: Base) -> Case:
    text = (base.data / "annotations.json").read_text()
    vid = next(iter(json.loads(text)["database"]))
    Path("gt.json").write_text(text.replace('"database": {', f'"database": {{"{vid}": 1, ', 1))
    results = str(base.run / "detections_test.json")
    return ["score", "gt.json", results], ["gt.json", f"key {vid!r} appears twice"]


# ----------------------------------------------------------------------------- safety


def safety_dangling_annotation_link(base: Base) -> Case:
    """A broken ``annotations.json`` link beside a planted ``videoname.npy`` pickle: the
    folder is a per-video dataset whose JSON cannot be read, never a W-TALC bundle."""
    data = _copy_data(base)
    (data / "annotations.json").unlink()
    (data / "annotations.json").symlink_to("gone.json")
    obj = np.empty(1, dtype=object)
    obj[0] = _Payload(Path("pwned").resolve())
    np.save(data / "videoname.npy", obj, allow_pickle=True)
    return _train(base, data=str(data)), ["annotations.json", "file not found"]


def safety_looping_annotation_link(base: Base) -> Case:
    data = _copy_data(base)
    (data / "annotations.json").unlink()
    (data / "annotations.json").symlink_to("annotations.json")
    return _train(base, data=str(data)), ["annotations.json", "cannot read"]


def safety_video_id_with_newline(base: Base) -> Case:
    data = _copy_data(base)
    old = "video_validation_0000000"
    _edit_annotations(data, lambda doc: doc["database"].update({"a\nb": doc["database"].pop(old)}))
    (data / "features" / f"{old}.npy").rename(data / "features" / "a\nb.npy")
    return _train(base, data=str(data)), ["video 'a\\nb'", "control characters"]


def safety_class_with_newline(base: Base) -> Case:
    data = _copy_data(base)
    _edit_annotations(data, lambda doc: doc["classes"].append("a\nb"))
    return _train(base, data=str(data)), ["\"classes\": 'a\\nb' contains a control character"]


def safety_label_with_tab(base: Base) -> Case:
    data = _copy_data(base)
    _edit_annotations(
        data, lambda doc: _first(doc, "validation")["annotations"][0].update(label="a\tb")
    )
    return _train(base, data=str(data)), ["label 'a\\tb' contains a control character"]


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_epoch_not_an_integer(base: Base) -> Case:
    state = torch.load(base.run / "epoch_001.pt", weights_only=True)
    torch.save({**state, "epoch": "one"}, "x.pt")
    return _train(base, "--init-from", "x.pt"), ["x.pt", "'epoch' = 'one': expected an integer"]


def checkpoint_epoch_negative(base: Base) -> Case:
    state = torch.load(base.run / "epoch_001.pt", weights_only=True)
    torch.save({**state, "epoch": -5}, "x.pt")
    return _train(base, "--init-from", "x.pt"), ["'epoch' = -5: expected an integer >= 0"]


def checkpoint_config_not_a_mapping(base: Base) -> Case:
    state = torch.load(base.run / "epoch_001.pt", weights_only=True)
    torch.save({**state, "config": [1, 2]}, "x.pt")
    return _train(base, "--init-from", "x.pt"), ["'config' is a list, expected a dict"]


def checkpoint_resume_log_not_utf8(base: Base) -> Case:
    run = Path(shutil.copytree(base.run, "run"))
    (run / "log.jsonl").write_bytes(b"\xff\xfe not a log\n")
    return ["train", "--resume", "run", "--quiet"], ["log.jsonl: cannot read: not UTF-8 text"]


def checkpoint_resume_last_is_a_folder(base: Base) -> Case:
    run = Path(shutil.copytree(base.run, "run"))
    (run / "last.pt").unlink()
    (run / "last.pt").mkdir()
    argv = ["train", "--resume", "run", "--quiet"]
    return argv, ["run/last.pt: is a folder; expected the run's checkpoint file"]


# ----------------------------------------------------------------------- caches, bench, convert


def cache_version_not_a_scalar(base: Base) -> Case:
    arrays = dict(np.load(base.run / "cas_test.npz"))
    np.savez("c.npz", **{**arrays, "version": np.ones((2, 2), dtype=np.int64)})
    argv = ["postprocess", "c.npz", "--out", "r.json"]
    return argv, ["c.npz", "entry 'version': expected one integer, got int64(2, 2)"]


def cache_version_a_string(base: Base) -> Case:
    arrays = dict(np.load(base.run / "cas_test.npz"))
    np.savez("c.npz", **{**arrays, "version": np.array("1")})
    return ["plot", "c.npz", "--out", "p"], ["c.npz", "entry 'version': expected one integer"]


def cache_bench_seed_with_underscore(base: Base) -> Case:
    argv = ["bench", str(base.config), "--data", str(base.data), "--seeds", "1_0", "--out", "b"]
    return argv, ["--seeds: expected non-negative integers like 0,1,2, got '1_0'"]  # not 10


def cache_bench_negative_seed(base: Base) -> Case:
    argv = ["bench", str(base.config), "--data", str(base.data), "--seeds", "0,-1", "--out", "b"]
    return argv, ["--seeds: expected non-negative integers"]


def cache_convert_garbage_bundle_file(base: Base) -> Case:
    src = Path(shutil.copytree(base.data / "wtalc", "src"))
    features = next(src.glob("*Features.npy"))
    features.write_bytes(b"neither an .npy header nor a pickle")
    return ["data", "convert", "src", "out"], [features.name, "not a readable .npy file"]


def cache_convert_fps_not_a_number(base: Base) -> Case:
    argv = ["data", "convert", str(base.data / "wtalc"), "out", "--fps", "abc"]
    return argv, ["wtal data convert: argument --fps: invalid float value: 'abc'"]


class _Payload:
    """Unpickling it creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


KINDS = (
    "config",
    "empty",
    "demo",
    "synth",
    "plot",
    "data",
    "score",
    "safety",
    "checkpoint",
    "cache",
)
CASES = {
    name: fn
    for name, fn in globals().items()
    if inspect.isfunction(fn) and name.split("_")[0] in KINDS
}


def test_catalogue_covers_each_kind():
    kinds = {name.split("_")[0] for name in CASES}
    assert set(KINDS) == kinds
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_line_and_writes_nothing(name, base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, expect = CASES[name](base)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for text in expect:
        assert text in lines[0], (text, lines[0])
    assert _snapshot(tmp_path) == before, "files were written"
    assert not Path("pwned").exists(), "a pickle ran"


@pytest.mark.parametrize("kind", ["usage", "pickle"])
def test_through_the_real_entry_point(kind, base, tmp_path):
    """In a fresh ``python -m wtal``, where Python warnings and argparse print as they do for
    a user: argparse's usage error, and a pickled checkpoint of protocol 4 (torch warns about
    the protocol before refusing), each make one line."""
    if kind == "usage":
        argv, expect = ["plot", "x.npz"], "error: wtal plot: the following arguments are required"
    else:
        payload = pickle.dumps(_Payload(tmp_path / "pwned"), protocol=4)
        (tmp_path / "x.pt").write_bytes(payload)
        argv = ["detect", "x.pt", "--data", str(base.data), "--out", "r.json", "--quiet"]
        expect = "refused: it would run pickled code"
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "wtal", *argv], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]
    assert _snapshot(tmp_path) == before


def test_demo_with_zero_plots_draws_only_the_curve(base, tmp_path, monkeypatch, capsys):
    """``--plots 0`` skips the timelines instead of failing after the training."""
    from wtal import demo

    calls = []
    monkeypatch.setattr(demo, "write_timelines", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(demo, "write_pseudo_plots", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(demo, "plot_map_vs_tiou", lambda curves, path, title: None)
    metrics = json.loads((base.run / "metrics.json").read_text())
    paths = demo.demo_plots(tmp_path, base.data, metrics, metrics, 0)
    assert paths == [tmp_path / "plots" / "map_vs_tiou.png"] and calls == []
