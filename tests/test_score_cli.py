"""Tests for ``wtal score``: output on good input, one-line errors and exit status 2 on bad."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wtal.cli import main

GT = {
    "database": {
        "v1": {
            "subset": "test",
            "annotations": [
                {"label": "a", "segment": [0.0, 10.0]},
                {"label": "b", "segment": [20.0, 30.0]},
            ],
        },
        "v2": {"subset": "test", "annotations": [{"label": "a", "segment": [5.0, 9.0]}]},
        "t1": {"subset": "train", "annotations": [{"label": "a", "segment": [0.0, 1.0]}]},
    }
}
RESULTS = {
    "results": {
        "v1": [
            {"label": "a", "score": 0.9, "segment": [0.0, 10.0]},
            {"label": "b", "score": 0.8, "segment": [20.0, 26.0]},  # tIoU 0.6
        ],
        "v2": [{"label": "a", "score": 0.7, "segment": [5.0, 9.0]}],
        "unknown": [{"label": "a", "score": 0.9, "segment": [0.0, 1.0]}],
    }
}


def write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return write(tmp_path / "gt.json", GT), write(tmp_path / "det.json", RESULTS)


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_table(files, capsys):
    status, out, err = run(["score", *files, "--preset", "thumos", "--per-class"], capsys)
    assert status == 0 and err == ""
    assert "subset 'test'" in out  # chosen automatically: "test" beats "train"
    assert "1 unknown video" in out
    lines = out.splitlines()
    map_row = next(line for line in lines if line.startswith("mAP"))
    # a: 100 everywhere; b (tIoU 0.6): 100 up to 0.6, then 0 -> mAP 50 at 0.7
    assert map_row.split()[1:] == ["100.00"] * 6 + ["50.00", "92.86"]
    assert "0.1:0.5 100.00" in out
    assert any(line.startswith("b ") for line in lines)


def test_json(files, capsys):
    status, out, _ = run(["score", *files, "--tiou", "0.5", "0.7", "--json"], capsys)
    assert status == 0
    data = json.loads(out)
    assert data["mAP"] == {"0.50": 100.0, "0.70": 50.0}
    assert data["average_mAP"] == 75.0
    assert data["counts"]["ignored_unknown_video"] == 1
    assert data["per_class_AP"]["b"] == [100.0, 0.0]
    assert data["subset"] == "test" and data["protocol"] == "official"


def test_wtalc_protocol_and_explicit_subset(files, capsys):
    argv = ["score", *files, "--protocol", "wtalc", "--subset", "train", "--json"]
    status, out, err = run(argv + ["--fps", "16", "--snippet-frames", "16"], capsys)
    data = json.loads(out)
    assert status == 0 and data["protocol"] == "wtalc" and data["subset"] == "train"
    assert len(data["tiou_thresholds"]) == 7  # thumos preset is the wtalc default
    assert data["counts"]["ignored_unknown_video"] == 4  # no prediction is for a train video
    assert data["average_mAP"] == 0.0 and "warning: " in err


def test_empty_results_warn(files, tmp_path, capsys):
    empty = write(tmp_path / "empty.json", {"results": {}})
    status, out, err = run(["score", files[0], empty, "--json"], capsys)
    assert status == 0
    assert json.loads(out)["average_mAP"] == 0.0
    assert err.startswith("warning: ") and "mAP is 0" in err


def test_fixture_end_to_end(shared_data, capsys):
    folder = shared_data / "eval_fixtures"
    if not (folder / "expected.json").is_file():
        pytest.skip(f"no evaluation fixtures in {folder}")
    name = "thumos14_pred_noisy.json"
    expected = json.loads((folder / "expected.json").read_text())[name]
    argv = ["score", str(folder / "thumos14_gt.json"), str(folder / name), "--preset", "thumos"]
    status, out, _ = run(argv + ["--json"], capsys)
    assert status == 0
    assert json.loads(out)["average_mAP"] == pytest.approx(expected["official_average_mAP"])
    legacy = expected["wtalc_legacy_with_ambiguous_filter"]
    status, out, _ = run(argv + ["--protocol", "wtalc", "--ambiguous-filter", "--json"], capsys)
    averages = json.loads(out)["averages"]
    assert averages["0.1:0.7"] == pytest.approx(legacy["average_mAP_0.1-0.7"], abs=1e-6)


BAD_RESULTS = [
    ("{not json", "malformed JSON at line 1"),
    ({"predictions": {}}, "missing top-level field 'results'"),
    (
        {"results": {"v1": [{"label": "a", "score": float("nan"), "segment": [0, 1]}]}},
        "video 'v1': prediction 0: field 'score': expected a finite number",
    ),
    (
        {"results": {"v2": [{"label": "a", "score": 0.5, "segment": [4.0, 2.0]}]}},
        "video 'v2': prediction 0: field 'segment': expected finite [start, end] with end",
    ),
    (
        {"results": {"v1": [{"label": "a", "segment": [0, 1]}]}},
        "video 'v1': prediction 0: expected {'label': str, 'score': number",
    ),
    ({"results": {"v1": {"label": "a"}}}, "video 'v1': expected a list of predictions"),
]


@pytest.mark.parametrize(("content", "message"), BAD_RESULTS)
def test_bad_results_file(files, tmp_path, capsys, content, message):
    bad = write(tmp_path / "bad.json", content)
    status, out, err = run(["score", files[0], bad], capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"error: {bad}: ")
    assert message in err


BAD_GT = [
    ({"taxonomy": []}, "missing top-level field 'database'"),
    ({"database": {"v1": {"subset": "test"}}}, "video 'v1': field 'annotations'"),
    (
        {"database": {"v1": {"subset": "test", "annotations": [{"label": "a"}]}}},
        "video 'v1': annotation 0: expected {'label': str, 'segment': [start, end]}",
    ),
    (
        {
            "database": {
                "v1": {"subset": "test", "annotations": [{"label": "a", "segment": [3, 1]}]}
            }
        },  # fmt: skip
        "video 'v1': annotation 0: field 'segment'",
    ),
]


@pytest.mark.parametrize(("content", "message"), BAD_GT)
def test_bad_ground_truth_file(files, tmp_path, capsys, content, message):
    bad = write(tmp_path / "bad_gt.json", content)
    status, out, err = run(["score", bad, files[1]], capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: ")
    assert message in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--subset", "validation"], "subset 'validation' not found"),
        (["--tiou", "0.5", "1.5"], "--tiou: thresholds must be in (0, 1]"),
        (["--fps", "0"], "--fps: expected a number > 0"),
    ],
)
def test_bad_options(files, capsys, extra, message):
    status, _, err = run(["score", *files, *extra], capsys)
    assert status == 2 and err.count("\n") == 1 and message in err


def test_missing_file(files, tmp_path, capsys):
    status, _, err = run(["score", files[0], str(tmp_path / "nope.json")], capsys)
    assert status == 2 and err == f"error: {tmp_path / 'nope.json'}: file not found\n"


def test_subprocess_one_line_error(files, tmp_path):
    bad = write(tmp_path / "bad.json", {"results": {"v9": [{"label": "a", "score": 1}]}})
    proc = subprocess.run(
        [sys.executable, "-m", "wtal", "score", files[0], bad], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {bad}: video 'v9': prediction 0")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
