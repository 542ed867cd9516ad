"""``wtal data synth|check|convert``: summaries, one-line errors, exit status, atomicity."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_data import make_records

from wtal.cli import main
from wtal.data import write_pervideo, write_wtalc
from wtal.synth import THUMOS, generate_synthetic


def run(capsys, *argv):
    """Run the CLI in-process; return (exit status, stdout, stderr lines)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err.splitlines()


@pytest.fixture()
def pervideo(tmp_path):
    records, features, classes = make_records(np.random.default_rng(0))
    root = tmp_path / "pv"
    write_pervideo(root, records, features, classes)
    return root


@pytest.fixture()
def bundle(tmp_path):
    records, features, classes = make_records(np.random.default_rng(0))
    root = tmp_path / "wt"
    write_wtalc(root, "Tiny", records, features, classes)
    return root


def edit_annotations(root, fn):
    path = root / "annotations.json"
    doc = json.loads(path.read_text())
    fn(doc["database"])
    path.write_text(json.dumps(doc))
    return path


def test_check_clean_dataset(capsys, pervideo):
    status, out, err = run(capsys, "data", "check", pervideo)
    assert status == 0 and err == []
    assert "subset train: 3 videos, 6 instances, 0 ambiguous" in out
    assert "subset test: 2 videos, 4 instances, 1 ambiguous" in out
    assert "classes: 3" in out and "feature dim: 6" in out and "0 errors, 0 warnings" in out


# Each corruption: (how to make it, the one error line expected).
def _missing(root):
    (root / "features" / "vid1.npy").unlink()
    return f"error: {root}/features/vid1.npy: video 'vid1': feature file missing"


def _extra(root):
    np.save(root / "features" / "stray.npy", np.ones((3, 6), np.float32))
    return (
        f"error: {root}/features/stray.npy: video 'stray': feature file without an annotation entry"
    )


def _dim(root):
    np.save(root / "features" / "vid2.npy", np.ones((9, 5), np.float32))
    what = "features: dim 5, expected 6 like most videos"
    return f"error: {root}/features/vid2.npy: video 'vid2': {what}"


def _nan(root):
    feats = np.load(root / "features" / "vid3.npy")
    feats[2, 1] = np.nan
    np.save(root / "features" / "vid3.npy", feats)
    return f"error: {root}/features/vid3.npy: video 'vid3': features: contains NaN or Inf"


def _inf(root):
    np.save(root / "features" / "vid0.npy", np.full((5, 6), np.inf, np.float32))
    return f"error: {root}/features/vid0.npy: video 'vid0': features: contains NaN or Inf"


def _empty(root):
    np.save(root / "features" / "vid4.npy", np.zeros((0, 6), np.float32))
    return f"error: {root}/features/vid4.npy: video 'vid4': features: empty video (0 snippets)"


def _label(root):
    def corrupt(db):
        db["vid0"]["annotations"][1]["label"] = "Bowling"

    path = edit_annotations(root, corrupt)
    return f"error: {path}: video 'vid0': label 'Bowling' is not in the class list"


def _reversed(root):
    def corrupt(db):
        db["vid1"]["annotations"][0]["segment"] = [2.0, 1.5]

    path = edit_annotations(root, corrupt)
    return f"error: {path}: video 'vid1': annotations[0] [2.0, 1.5] s has end <= start"


def _duplicate(root):
    path = root / "annotations.json"
    text = path.read_text()
    entry = re.search(r'"vid2": (\{.*?\n  \})', text, re.S).group(1)
    path.write_text(text.replace('"vid2": ', f'"vid3": {entry},\n  "vid2": ', 1))
    return f"error: {path}: video 'vid3': duplicate video id"


def _malformed(root):
    path = root / "annotations.json"
    path.write_text('{"database": {')
    what = "malformed JSON at line 1 column 15: Expecting property name enclosed in double quotes"
    return f"error: {path}: {what}"


@pytest.mark.parametrize(
    "corrupt",
    [_missing, _extra, _dim, _nan, _inf, _empty, _label, _reversed, _duplicate, _malformed],
)
def test_check_reports_each_corruption_on_one_line(capsys, pervideo, corrupt):
    expected = corrupt(pervideo)
    status, _, err = run(capsys, "data", "check", pervideo)
    assert status == 2
    assert err == [expected]


def test_check_lists_several_problems(capsys, pervideo):
    expected = {_missing(pervideo), _nan(pervideo), _label(pervideo)}
    status, out, err = run(capsys, "data", "check", pervideo)
    assert status == 2 and set(err) == expected and "3 errors, 0 warnings" in out


def test_segment_after_the_video_is_a_warning(capsys, pervideo):
    def corrupt(db):
        db["vid1"]["annotations"][1]["segment"][1] = db["vid1"]["duration"] + 3.0

    path = edit_annotations(pervideo, corrupt)
    entry = json.loads(path.read_text())["database"]["vid1"]
    status, out, err = run(capsys, "data", "check", pervideo)
    assert status == 0 and "0 errors, 1 warnings" in out
    segment, duration = entry["annotations"][1]["segment"], entry["duration"]
    assert err == [
        f"warning: {path}: video 'vid1': annotations[1] {segment} s ends after the video "
        f"(duration {duration} s)"
    ]


def test_check_wtalc_duplicate_and_reversed(capsys, bundle):
    names = np.load(bundle / "videoname.npy")
    names[1] = names[0]
    np.save(bundle / "videoname.npy", names)
    segments = np.load(bundle / "segments.npy", allow_pickle=True)
    segments[3][0] = [5.0, 4.0]
    np.save(bundle / "segments.npy", segments, allow_pickle=True)
    status, _, err = run(capsys, "data", "check", bundle)
    assert status == 2
    assert err == [
        f"error: {bundle}/videoname.npy: video 'vid0': duplicate video id (2 times)",
        f"error: {bundle}/segments.npy: video 'vid3': segments[0] [5.0, 4.0] s has end <= start",
    ]


def test_check_wtalc_missing_features_file(capsys, bundle):
    (bundle / "Tiny-I3D-JOINTFeatures.npy").unlink()
    status, _, err = run(capsys, "data", "check", bundle)
    assert status == 2 and err == [
        f"error: {bundle}: no <Name>-I3D-JOINTFeatures.npy features file"
    ]


def test_check_not_a_dataset(capsys, tmp_path):
    status, _, err = run(capsys, "data", "check", tmp_path / "nowhere")
    assert status == 2 and err == [
        f"error: {tmp_path}/nowhere: not a dataset folder (missing or not a directory)"
    ]


# ----------------------------------------------------------------------------- convert


def test_convert_round_trips_the_synthetic_bundle(capsys, tmp_path):
    spec = THUMOS.__class__(train_videos=4, test_videos=5, feat_dim=8, ambiguous_prob=0.3)
    status, _, _ = run(
        capsys,
        "data",
        "synth",
        tmp_path / "s",
        "--set",
        "train_videos=4",
        "--set",
        "test_videos=5",
        "--set",
        "feat_dim=8",
        "--set",
        "ambiguous_prob=0.3",
    )
    assert status == 0
    status, out, err = run(capsys, "data", "convert", tmp_path / "s" / "wtalc", tmp_path / "c")
    assert status == 0 and err == [] and "wrote 9 videos" in out
    original = json.loads((tmp_path / "s" / "annotations.json").read_text())
    converted = json.loads((tmp_path / "c" / "annotations.json").read_text())
    assert converted["classes"] == original["classes"]
    assert converted["database"] == original["database"]
    records, features, _ = generate_synthetic(spec, 0)
    for rec, feats in zip(records, features, strict=True):
        np.testing.assert_array_equal(
            np.load(tmp_path / "c" / "features" / f"{rec.video_id}.npy"), feats
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "s"]  # no temporary leftovers


def test_convert_refuses_existing_output(capsys, bundle, tmp_path):
    (tmp_path / "out").mkdir()
    status, _, err = run(capsys, "data", "convert", bundle, tmp_path / "out")
    assert status == 2 and err == [
        f"error: {tmp_path}/out: already exists; choose a new output folder"
    ]


def test_convert_bad_bundle_leaves_nothing(capsys, bundle, tmp_path):
    features = np.load(bundle / "Tiny-I3D-JOINTFeatures.npy", allow_pickle=True)
    features[2][0, 0] = np.nan
    np.save(bundle / "Tiny-I3D-JOINTFeatures.npy", features, allow_pickle=True)
    status, _, err = run(capsys, "data", "convert", bundle, tmp_path / "out")
    assert status == 2
    assert err == [
        f"error: {bundle}/Tiny-I3D-JOINTFeatures.npy: video 'vid2': features: contains NaN or Inf"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wt"]


# ----------------------------------------------------------------------------- synth


# The full THUMOS preset once; ANet with fewer videos (its full size is checked in memory
# by test_synth.py) to keep the suite fast.
@pytest.mark.parametrize(
    ("preset", "overrides", "train", "test", "classes"),
    [
        ("thumos", [], "validation: 200 videos", "test: 212 videos", 20),
        ("anet", ["train_videos=60", "test_videos=30"], "training: 60", "validation: 30", 50),
    ],
)
def test_synth_then_check_both_layouts(capsys, tmp_path, preset, overrides, train, test, classes):
    sets = [arg for item in overrides for arg in ("--set", item)]
    status, out, err = run(
        capsys, "data", "synth", tmp_path / "s", "--preset", preset, "--seed", "3", *sets
    )
    assert status == 0 and err == []
    instances = int(re.search(r"(\d+) instances", out).group(1))
    summaries = []
    for root in (tmp_path / "s", tmp_path / "s" / "wtalc"):
        status, out, err = run(capsys, "data", "check", root)
        assert status == 0 and err == [], err
        assert f"subset {train}" in out and f"subset {test}" in out
        assert f"classes: {classes}" in out and "feature dim: 128" in out
        found = [int(n) for n in re.findall(r"videos, (\d+) instances", out)]
        assert sum(found) == instances
        summaries.append(out.split("\n", 1)[1])  # everything but the layout line
    assert summaries[0] == summaries[1]


def test_synth_errors(capsys, tmp_path):
    status, _, err = run(capsys, "data", "synth", tmp_path, "--set", "train_videos=3")
    assert status == 2 and err == [f"error: {tmp_path}: already exists; choose a new output folder"]
    status, _, err = run(capsys, "data", "synth", tmp_path / "x", "--set", "colour=3")
    assert status == 2 and len(err) == 1 and err[0].startswith("error: --set 'colour=3': expected")
    status, _, err = run(capsys, "data", "synth", tmp_path / "x", "--set", "feat_dim=big")
    assert status == 2 and err == ["error: --set feat_dim: expected int, got 'big'"]
    assert not (tmp_path / "x").exists()


def test_check_malformed_annotation_entry(capsys, pervideo):
    def corrupt(db):
        db["vid2"]["annotations"][1] = {"segment": "soon", "label": "Diving"}

    path = edit_annotations(pervideo, corrupt)
    status, _, err = run(capsys, "data", "check", pervideo)
    what = 'annotations[1]: expected {"segment": [s, e], "label": str}'
    assert status == 2 and err == [f"error: {path}: video 'vid2': {what}"]
