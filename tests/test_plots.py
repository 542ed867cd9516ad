"""Timelines and mAP curves: valid PNGs, the classes shown, and ``wtal plot``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from wtal.cascache import save_predictions
from wtal.cli import main
from wtal.inference import Prediction
from wtal.plots import DPI, plot_map_vs_tiou, plot_video, relevant_classes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["run", "jump", "throw", "swim"]


def _prediction(video_id: str = "v1", num_snippets: int = 60) -> Prediction:
    """A CAS with a clear bump of class 1 at snippets 10-20 and of class 2 at 35-45."""
    t = np.arange(num_snippets)
    cas = np.full((num_snippets, 5), 0.01)
    cas[:, 1] += 0.8 * ((t >= 10) & (t < 20))
    cas[:, 2] += 0.5 * ((t >= 35) & (t < 45))
    return Prediction(
        video_id=video_id,
        video_scores=np.array([0.05, 0.9, 0.6, 0.3, 0.1]),
        cas=cas,
        attention=cas[:, 1:3].max(axis=1),
        labels=np.array([0, 1, 0, 0], dtype=np.float32),
        fps=25.0,
        snippet_frames=16.0,
        duration_s=num_snippets * 16 / 25,
    )


def _read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path)


def test_relevant_classes_puts_ground_truth_first():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2])
    assert relevant_classes(scores, [0, 2, 2]) == [2, 0, 1, 3, 4]
    assert relevant_classes(scores, [], top_predicted=2) == [1, 3]
    assert relevant_classes(scores, [0, 4], top_predicted=3, max_classes=3) == [4, 0, 1]


def test_plot_video_writes_a_legible_png(tmp_path):
    pred = _prediction()
    detections = [
        {"label": "jump", "score": 0.7, "segment": [6.4, 12.8]},
        {"label": "throw", "score": 0.2, "segment": [22.4, 28.8]},
        {"label": "unknown", "score": 0.9, "segment": [0.0, 1.0]},  # ignored
    ]
    ground_truth = [{"label": "jump", "segment": [6.4, 12.8]}]
    proposals = (np.array([[6.4, 12.8], [7.0, 12.0], [22.4, 28.8]]), np.array([1, 1, 2]))
    path = tmp_path / "v1.png"
    shown = plot_video(
        path,
        pred,
        CLASSES,
        detections=detections,
        ground_truth=ground_truth,
        proposals=proposals,
    )
    assert shown == [1, 2, 3, 0]  # GT class, then the top 3 others by video score
    image = _read_png(path)
    assert image.shape[1] == 12 * DPI and image.shape[0] > 3 * DPI
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["v1.png"]  # written atomically


def test_plot_video_without_ground_truth_uses_video_labels(tmp_path):
    pred = _prediction(num_snippets=1)  # a one-snippet video still plots
    shown = plot_video(tmp_path / "short.png", pred, CLASSES, top_predicted=1)
    assert shown == [1, 2]  # labels say class 1; plus the best other class
    _read_png(tmp_path / "short.png")


def test_map_vs_tiou(tmp_path):
    tious = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    curves = {"base": (tious, [50, 45, 40, 30, 20, 10, 5]), "full": (tious, [55] * 7)}
    plot_map_vs_tiou(curves, tmp_path / "map.png")
    assert _read_png(tmp_path / "map.png").shape[:2] == (4 * DPI, 6 * DPI)
    with pytest.raises(ValueError, match="7 tIoUs but 2 mAP values"):
        plot_map_vs_tiou({"bad": (tious, [1, 2])}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "cas.npz"
    save_predictions(path, [_prediction(f"v{i}") for i in range(3)], CLASSES)
    return path


def test_cli_plots_the_first_videos(cache, tmp_path, capsys):
    gt = tmp_path / "gt.json"
    annotations = [{"label": "jump", "segment": [6.4, 12.8]}]
    gt.write_text(json.dumps({"database": {"v0": {"subset": "test", "annotations": annotations}}}))
    out = tmp_path / "plots"
    assert main(["plot", str(cache), "--num", "2", "--gt", str(gt), "--out", str(out)]) == 0
    assert "wrote 2 plots" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["v0.png", "v1.png"]
    for path in out.iterdir():
        _read_png(path)


def test_cli_plots_named_videos_with_given_results(cache, tmp_path, capsys):
    results = tmp_path / "r.json"
    detections = [{"label": "swim", "score": 1.0, "segment": [1.0, 2.0]}]
    results.write_text(json.dumps({"results": {"v2": detections}}))
    out = tmp_path / "plots"
    argv = ["plot", str(cache), "--videos", "v2", "--results", str(results), "--out", str(out)]
    assert main(argv) == 0
    assert [p.name for p in out.iterdir()] == ["v2.png"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--videos", "v1,nope"], "no video 'nope' in the cache"),
        (["--num", "0"], "--num: expected a number >= 1"),
        (["--gt", "missing.json"], "missing.json: file not found"),
    ],
)
def test_cli_plot_errors(cache, tmp_path, capsys, extra, message):
    status = main(["plot", str(cache), "--out", str(tmp_path / "plots"), *extra])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "plots").exists()
