"""Catalogue of corrupt inputs through the real CLI: one ``error:`` line, exit 2, nothing written.

Every case builds a broken input in ``tmp_path``, runs ``wtal.cli.main`` (the function behind
``python -m wtal``; two cases also run as a subprocess) and checks that stderr is exactly one
line naming the file (and video or field) and the problem, that the exit status is 2, and
that no output was left behind: the run folder, output folder or dataset does not exist, or
an existing run folder is byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from wtal.checkpoint import load_checkpoint
from wtal.cli import main
from wtal.configfile import load_config
from wtal.data.split import open_datasets
from wtal.engine import fit
from wtal.io import InputError

TINY = tiny_config()
TRAIN_IDS = [f"video_validation_{i:07d}" for i in range(6)]
TEST_IDS = [f"video_test_{i:07d}" for i in range(4)]


@dataclass
class Base:
    """Shared, never-modified inputs: a dataset, its config and two finished runs."""

    data: Path
    config: Path
    run: Path  # 2 epochs of TINY on `data` (last.pt, epoch_001.pt, epoch_002.pt)
    wide_run: Path  # the same with model.embed_dim = 32


def _yaml(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_run) -> Base:
    root = tmp_path_factory.mktemp("bad_input")
    _, config, _ = tiny_run(root, TINY)
    data = [f"data.path={str(root / 'data')!r}"]
    short = ["train.epochs=1", "pseudo.enabled=False"]  # base stage only
    wide = load_config(config, [*data, "model.embed_dim=32", *short])
    fit(wide, root / "wide_run", progress=False)
    return Base(root / "data", config, root / "run", root / "wide_run")


@dataclass
class Case:
    """A broken invocation and what it must (not) produce."""

    argv: list[str]
    expect: list[str]  # substrings of the error line (file, video or field, problem)
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
    unchanged: list[Path] = field(default_factory=list)  # folders that must not change


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _copy_data(base: Base, tmp: Path) -> Path:
    return Path(shutil.copytree(base.data, tmp / "data"))


def _feature(data: Path, video_id: str) -> Path:
    return data / "features" / f"{video_id}.npy"


def _train(base: Base, tmp: Path, data: Path, expect: list[str], config: Path | None = None):
    run = tmp / "run"
    argv = ["train", str(config or base.config), "--data", str(data), "--run-dir", str(run)]
    return Case([*argv, "--quiet"], expect, absent=[run])


def _edit_annotations(data: Path, edit: Callable[[dict], None]) -> None:
    path = data / "annotations.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _resume_case(run: Path, expect: list[str]) -> Case:
    return Case(["train", "--resume", str(run), "--quiet"], expect, unchanged=[run])


# ----------------------------------------------------------------------------- features


def case_truncated_npy(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    path = _feature(data, TRAIN_IDS[1])
    path.write_bytes(path.read_bytes()[:-40])  # header intact, rows missing
    return _train(base, tmp, data, [path.name, TRAIN_IDS[1], "not a numeric .npy"])


def case_wrong_dtype(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    np.save(_feature(data, TRAIN_IDS[2]), np.ones((30, 8), dtype=np.complex64))
    return _train(base, tmp, data, [TRAIN_IDS[2], "expected a numeric array", "complex64"])


def case_pickled_npy(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    obj = np.empty(1, dtype=object)
    obj[0] = {"not": "features"}
    np.save(_feature(data, TRAIN_IDS[3]), obj, allow_pickle=True)
    return _train(base, tmp, data, [TRAIN_IDS[3], "Python objects"])


def case_dim_between_videos(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    np.save(_feature(data, TRAIN_IDS[4]), np.ones((30, 9), dtype=np.float32))
    return _train(base, tmp, data, [TRAIN_IDS[4], "dim 9, expected 8"])


def case_test_dim_differs_from_train(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    for vid in TEST_IDS:
        np.save(_feature(data, vid), np.ones((30, 9), dtype=np.float32))
    return _train(base, tmp, data, [TEST_IDS[0], "dim 9, expected 8"])


def case_nan_features(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    path = _feature(data, TRAIN_IDS[5])
    x = np.load(path)
    x[3, 2] = np.nan
    np.save(path, x)
    return _train(base, tmp, data, [path.name, TRAIN_IDS[5], "NaN"])


def case_zero_length_video(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    np.save(_feature(data, TEST_IDS[2]), np.zeros((0, 8), dtype=np.float32))
    return _train(base, tmp, data, [TEST_IDS[2], "empty video"])


def case_feature_file_missing(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    _feature(data, TEST_IDS[3]).unlink()
    return _train(base, tmp, data, [TEST_IDS[3], "feature file missing"])


def case_feature_file_unreadable(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    path = _feature(data, TRAIN_IDS[1])
    path.unlink()
    path.mkdir()  # a folder where a file should be: unreadable even for root
    return _train(base, tmp, data, [path.name, TRAIN_IDS[1], "not a numeric .npy"])


# ----------------------------------------------------------------------------- annotations


def case_unknown_class(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)

    def edit(doc: dict) -> None:
        doc["database"][TRAIN_IDS[2]]["annotations"][0]["label"] = "Juggling"
        doc["database"][TRAIN_IDS[2]]["labels"].append("Juggling")

    _edit_annotations(data, edit)
    return _train(base, tmp, data, ["annotations.json", TRAIN_IDS[2], "'Juggling'"])


def case_segment_end_before_start(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)

    def edit(doc: dict) -> None:
        doc["database"][TEST_IDS[1]]["annotations"][1]["segment"] = [5.0, 4.0]

    _edit_annotations(data, edit)
    return _train(base, tmp, data, ["annotations.json", TEST_IDS[1], "end <= start"])


def case_annotations_malformed_json(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    path = data / "annotations.json"
    path.write_text(path.read_text()[:200])
    return _train(base, tmp, data, ["annotations.json", "malformed JSON"])


def case_dataset_missing(base: Base, tmp: Path) -> Case:
    return _train(base, tmp, tmp / "nowhere", ["nowhere", "not a dataset folder"])


# ----------------------------------------------------------------------------- config


def case_config_unknown_key(base: Base, tmp: Path) -> Case:
    config = _yaml(tmp / "typo.yaml", {**TINY, "train": {**TINY["train"], "epochz": 3}})
    return _train(base, tmp, base.data, ["typo.yaml", "'train.epochz'"], config)


def case_config_wrong_type(base: Base, tmp: Path) -> Case:
    config = _yaml(tmp / "typed.yaml", {**TINY, "train": {**TINY["train"], "epochs": "three"}})
    return _train(base, tmp, base.data, ["typed.yaml", "train.epochs", "expected int"], config)


def case_config_malformed_yaml(base: Base, tmp: Path) -> Case:
    config = tmp / "broken.yaml"
    config.write_text("train: {epochs: 3\nmodel: [\n")
    return _train(base, tmp, base.data, ["broken.yaml", "malformed YAML"], config)


def case_config_bad_value(base: Base, tmp: Path) -> Case:
    config = _yaml(tmp / "gpu.yaml", {**TINY, "train": {**TINY["train"], "device": "gpu"}})
    return _train(base, tmp, base.data, ["gpu.yaml", "train.device", "'gpu'"], config)


def case_override_without_value(base: Base, tmp: Path) -> Case:
    case = _train(base, tmp, base.data, ["--set", "'train.epochs'", "section.key=value"])
    case.argv += ["--set", "train.epochs"]
    return case


def case_override_wrong_type(base: Base, tmp: Path) -> Case:
    case = _train(base, tmp, base.data, ["train.lr_values", "expected a list"])
    case.argv += ["--set", "train.lr_values=5e-4"]
    return case


# ----------------------------------------------------------------------------- run folders


def case_run_dir_holds_a_run(base: Base, tmp: Path) -> Case:
    run = Path(shutil.copytree(base.run, tmp / "run"))
    argv = ["train", str(base.config), "--data", str(base.data), "--run-dir", str(run)]
    return Case([*argv, "--quiet"], [str(run), "already holds a run"], unchanged=[run])


def case_resume_not_a_run(base: Base, tmp: Path) -> Case:
    (tmp / "empty").mkdir()
    return _resume_case(tmp / "empty", ["empty", "not a run folder"])


def case_resume_checkpoint_missing(base: Base, tmp: Path) -> Case:
    run = Path(shutil.copytree(base.run, tmp / "run"))
    (run / "last.pt").unlink()
    return _resume_case(run, ["last.pt", "not found", "epoch_002.pt"])


def case_resume_other_model_size(base: Base, tmp: Path) -> Case:
    run = Path(shutil.copytree(base.run, tmp / "run"))
    shutil.copy(base.wide_run / "last.pt", run / "last.pt")
    return _resume_case(run, ["config.yaml", "model.embed_dim: 16 here, 32 in last.pt"])


def case_resume_other_feature_dim(base: Base, tmp: Path) -> Case:
    data = _copy_data(base, tmp)
    run = tmp / "run"
    fit(load_config(base.config, [f"data.path={str(data)!r}"]), run, progress=False)
    for vid in TRAIN_IDS + TEST_IDS:  # the dataset was re-extracted with other features
        np.save(_feature(data, vid), np.ones((30, 12), dtype=np.float32))
    return _resume_case(run, ["last.pt", "trained on 8-d features", "12-d"])


def case_resume_not_a_wtal_checkpoint(base: Base, tmp: Path) -> Case:
    run = Path(shutil.copytree(base.run, tmp / "run"))
    torch.save({"state_dict": {"w": torch.zeros(3)}}, run / "last.pt")
    return _resume_case(run, ["last.pt", "not a wtal checkpoint"])


def case_resume_truncated_checkpoint(base: Base, tmp: Path) -> Case:
    run = Path(shutil.copytree(base.run, tmp / "run"))
    path = run / "last.pt"
    path.write_bytes(path.read_bytes()[:3000])
    return _resume_case(run, ["last.pt", "not a readable wtal checkpoint"])


def case_resume_checkpoint_is_text(base: Base, tmp: Path) -> Case:
    run = Path(shutil.copytree(base.run, tmp / "run"))
    (run / "last.pt").write_text("model weights were here\n")
    return _resume_case(run, ["last.pt", "not a readable wtal checkpoint"])


class _Payload:
    """Unpickling this runs ``Path.touch`` on a marker file: what a malicious file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def case_resume_malicious_pickle(base: Base, tmp: Path) -> Case:
    run = Path(shutil.copytree(base.run, tmp / "run"))
    state = torch.load(run / "last.pt", weights_only=True)
    state["payload"] = _Payload(tmp / "pwned")
    torch.save(state, run / "last.pt")
    return Case(
        ["train", "--resume", str(run), "--quiet"],
        ["last.pt", "refused", "weights_only"],
        absent=[tmp / "pwned"],
        unchanged=[run],
    )


# ----------------------------------------------------------------------------- score


def _score_files(base: Base, tmp: Path) -> tuple[Path, Path]:
    gt = tmp / "gt.json"
    doc = json.loads((base.data / "annotations.json").read_text())
    gt.write_text(json.dumps(doc))
    return gt, base.run / "detections_test.json"


def case_score_results_missing_field(base: Base, tmp: Path) -> Case:
    gt, results = _score_files(base, tmp)
    doc = json.loads(results.read_text())
    vid = next(v for v, dets in doc["results"].items() if dets)
    del doc["results"][vid][0]["score"]
    broken = tmp / "results.json"
    broken.write_text(json.dumps(doc))
    return Case(["score", str(gt), str(broken)], ["results.json", vid, "score"])


def case_score_results_without_results(base: Base, tmp: Path) -> Case:
    gt, _ = _score_files(base, tmp)
    broken = tmp / "results.json"
    broken.write_text(json.dumps({"version": "x", "detections": {}}))
    return Case(["score", str(gt), str(broken)], ["results.json", "results"])


def case_score_gt_malformed(base: Base, tmp: Path) -> Case:
    gt, results = _score_files(base, tmp)
    gt.write_text(gt.read_text()[:-10])
    return Case(["score", str(gt), str(results)], ["gt.json", "malformed JSON"])


def case_score_gt_is_a_directory(base: Base, tmp: Path) -> Case:
    _, results = _score_files(base, tmp)
    (tmp / "gt_dir").mkdir()
    return Case(["score", str(tmp / "gt_dir"), str(results)], ["gt_dir", "cannot read"])


# ----------------------------------------------------------------------------- data


def case_convert_not_a_bundle(base: Base, tmp: Path) -> Case:
    out = tmp / "converted"
    return Case(
        ["data", "convert", str(base.data), str(out)],
        ["videoname.npy", "file not found"],
        absent=[out],
        unchanged=[base.data],
    )


def case_convert_into_existing_folder(base: Base, tmp: Path) -> Case:
    out = tmp / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["data", "convert", str(base.data / "wtalc"), str(out)]
    return Case(argv, ["taken", "already exists"], unchanged=[out])


def case_synth_into_existing_folder(base: Base, tmp: Path) -> Case:
    out = tmp / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    return Case(["data", "synth", str(out)], ["taken", "already exists"], unchanged=[out])


def case_check_missing_folder(base: Base, tmp: Path) -> Case:
    return Case(["data", "check", str(tmp / "nowhere")], ["nowhere", "not a dataset folder"])


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def _check(case: Case, rc: int, stdout: str, stderr: str, before: dict) -> None:
    lines = stderr.strip().splitlines()
    assert rc == 2, (rc, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr + stdout
    for text in case.expect:
        assert text in lines[0], (text, lines[0])
    for path in case.absent:
        assert not path.exists(), f"{path} was written"
    for folder in case.unchanged:
        assert _snapshot(folder) == before[folder], f"{folder} changed"


def test_catalogue_is_large():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, base, tmp_path, capsys):
    case = CASES[name](base, tmp_path)
    before = {folder: _snapshot(folder) for folder in case.unchanged}
    capsys.readouterr()  # drop what building the case printed
    rc = main(case.argv)
    out, err = capsys.readouterr()
    _check(case, rc, out, err, before)
    leftovers = [p for p in tmp_path.rglob(".*.tmp")]  # atomic writes leave no temp files
    assert not leftovers, leftovers


@pytest.mark.parametrize("name", ["truncated_npy", "score_gt_malformed"])
def test_bad_input_in_a_fresh_process(name, base, tmp_path):
    """The same through ``python -m wtal``: no traceback escapes the real entry point."""
    case = CASES[name](base, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "wtal", *case.argv], capture_output=True, text=True
    )
    _check(case, proc.returncode, proc.stdout, proc.stderr, {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without read permission")
def test_unreadable_features_folder(base, tmp_path, capsys):
    data = _copy_data(base, tmp_path)
    (data / "features").chmod(0)
    try:
        rc = main(["train", str(base.config), "--data", str(data), "--quiet", "--run-dir", "r"])
    finally:
        (data / "features").chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "features" in err[0]


def test_video_shorter_than_a_proposal_is_valid_input(base, tmp_path, capsys):
    """A 1-snippet video (below ``detect.min_length``) is real data, not an error: it trains
    and gets no detections."""
    data = _copy_data(base, tmp_path)
    for vid in (TRAIN_IDS[0], TEST_IDS[0]):
        path = _feature(data, vid)
        np.save(path, np.load(path)[:1])
    run = tmp_path / "run"
    rc = main(["train", str(base.config), "--data", str(data), "--run-dir", str(run), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((run / "detections_test.json").read_text())["results"]
    assert results[TEST_IDS[0]] == []


# ----------------------------------------------------------------------------- security


def test_malicious_checkpoint_is_refused_without_running_it(base, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(base.run / "last.pt", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="refused: it would run pickled code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_yaml_python_tags_are_not_executed(base, tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"train: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n")
    rc = main(["train", str(config), "--data", str(base.data), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "evil.yaml" in err[0] and "malformed YAML" in err[0]
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_overrides_are_literals_not_code(base, tmp_path, capsys):
    marker = tmp_path / "pwned"
    code = f"train.epochs=__import__('pathlib').Path({str(marker)!r}).touch()"
    argv = ["train", str(base.config), "--data", str(base.data), "--run-dir", str(tmp_path)]
    rc = main([*argv, "--set", code])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train.epochs" in err[0] and "expected int" in err[0]
    assert not marker.exists()


def test_paths_expand_home_only(base, tmp_path, monkeypatch, capsys):
    """``~`` is expanded in dataset paths; environment variables are not (nor globs)."""
    home = tmp_path / "home"
    shutil.copytree(base.data, home / "data")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WTAL_BENCH_DIR", str(home))
    assert main(["data", "check", "~/data"]) == 0
    train, _, test = open_datasets(load_config(None, ["data.path='~/data'"]))
    assert len(train) == 6 and len(test) == 4
    capsys.readouterr()
    for literal in ("$WTAL_BENCH_DIR/data", "${HOME}/data", str(home / "da*")):
        assert main(["data", "check", literal]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{literal}: not a dataset folder" in err[0]


def test_pickle_is_read_only_from_a_wtalc_bundle():
    """Source scan: the only ``np.load(..., allow_pickle=True)`` is the W-TALC reader; every
    ``torch.load`` passes ``weights_only=True``; no ``pickle.load``, ``eval``/``exec``, unsafe
    YAML load, shell or environment-variable expansion anywhere in the package."""
    package = Path(__file__).resolve().parents[1] / "wtal"
    forbidden = re.compile(
        r"pickle\.loads?\(|(?<![\w.])eval\(|(?<![\w.])exec\(|yaml\.(unsafe_)?load\("
        r"|expandvars|os\.system|shell=True"
    )
    pickled, loads, bad = [], [], []
    for path in sorted(package.rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{path.relative_to(package)}:{lineno}: {line.strip()}"
            if re.search(r"np\.load\(.*allow_pickle=True", line):
                pickled.append(where)
            if "torch.load(" in line:
                loads.append(where)
            if forbidden.search(line):
                bad.append(where)
    assert len(pickled) == 1 and pickled[0].startswith("data/layouts.py"), pickled
    assert "def _load_pickled" in (package / "data" / "layouts.py").read_text()
    assert loads and all("weights_only=True" in x for x in loads), loads
    assert not bad, bad
