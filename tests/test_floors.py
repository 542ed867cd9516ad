"""The floors of wtal.floors: detections that know nothing about time, scored by the evaluator."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from wtal.bench import format_bench
from wtal.evaluation import evaluate_detections
from wtal.floors import FLOORS, floor_results

CLASSES = ["jump", "run", "swim"]


def _pred(vid: str, labels: list[int], scores: list[float], duration: float = 10.0):
    """The attributes of a :class:`wtal.inference.Prediction` that the floors read."""
    return SimpleNamespace(
        video_id=vid,
        labels=np.asarray(labels, np.float32),
        video_scores=np.asarray([*scores, 0.5]),  # background last
        cas=np.zeros((8, 4)),
        fps=25.0,
        snippet_frames=16.0,
        duration_s=duration,
    )


def _gt(instances: dict[str, list[tuple[str, float, float]]], duration: float = 10.0) -> dict:
    return {
        "database": {
            vid: {
                "subset": "test",
                "duration": duration,
                "annotations": [{"label": c, "segment": [a, b]} for c, a, b in items],
            }
            for vid, items in instances.items()
        }
    }


def test_whole_video_floor_is_the_true_classes_over_the_whole_video():
    preds = [_pred("a", [1, 0, 1], [0.1, 0.9, 0.2]), _pred("b", [0, 1, 0], [0.3, 0.3, 0.3], 6.0)]
    results = floor_results(preds, CLASSES, "whole_video")["results"]
    assert results["a"] == [
        {"label": "jump", "score": 1.0, "segment": [0.0, 10.0]},
        {"label": "swim", "score": 1.0, "segment": [0.0, 10.0]},
    ]
    assert results["b"] == [{"label": "run", "score": 1.0, "segment": [0.0, 6.0]}]


def test_uniform_attention_floor_scores_every_class_by_the_video_score():
    pred = _pred("a", [1, 0, 0], [0.1, 0.9, 0.2])
    items = floor_results([pred], CLASSES, "uniform_attention")["results"]["a"]
    assert [(d["label"], d["score"]) for d in items] == [("jump", 0.1), ("run", 0.9), ("swim", 0.2)]
    assert all(d["segment"] == [0.0, 10.0] for d in items)


def test_unknown_duration_falls_back_to_the_snippet_grid():
    pred = _pred("a", [1, 0, 0], [0.1, 0.9, 0.2], duration=math.nan)
    (item,) = floor_results([pred], CLASSES, "whole_video")["results"]["a"]
    assert item["segment"] == [0.0, 8 * 16 / 25]  # 8 snippets of 16 frames at 25 fps


def test_whole_video_floor_map_follows_the_instances_coverage():
    # one instance covering 60 % of each video: the whole-video segment has tIoU 0.6 with it
    gt = _gt({"a": [("jump", 0.0, 6.0)], "b": [("run", 2.0, 8.0)]})
    preds = [_pred("a", [1, 0, 0], [0, 0, 0]), _pred("b", [0, 1, 0], [0, 0, 0])]
    results = floor_results(preds, CLASSES, "whole_video")
    m = evaluate_detections(gt, results, (0.5, 0.6, 0.7), subset="test")
    assert m.map_per_tiou.tolist() == pytest.approx([100.0, 100.0, 0.0])


def test_unknown_floor_is_refused():
    with pytest.raises(ValueError, match="floor must be one of"):
        floor_results([], CLASSES, "oracle")


def test_bench_prints_the_floors_per_stage():
    stats = {"mean": 10.0, "std": 1.0, "values": [9.0, 11.0]}
    table = {"mAP": {"0.5": stats}, "averages": {"0.5:0.95": stats}}
    summary = {
        "seeds": [0, 1],
        "stages": {"base": {"official": table, "wtalc": table}},
        "floors": {"base": {f: {"mean": 4.34, "std": 0.0, "values": [4.34] * 2} for f in FLOORS}},
    }
    text = format_bench(summary)
    assert "| whole video | 4.34 +- 0.00 |" in text
    assert "| uniform attention | 4.34 +- 0.00 |" in text


def test_localization_signal_of_a_flat_and_a_peaked_video():
    from wtal.floors import localization_signal

    flat = _pred("flat", [1, 0, 0], [0.6, 0.2, 0.1])
    flat.attention = np.full(8, 0.3)
    flat.cas = np.full((8, 4), 0.1)
    peaked = _pred("peak", [0, 1, 0], [0.1, 0.7, 0.2])
    peaked.attention = np.array([0.0, 0.0, 0.9, 1.0, 0.2, 0.0, 0.0, 0.0])
    peaked.cas = np.zeros((8, 4))
    peaked.cas[:, 1] = [0.0, 0.0, 0.5, 0.8, 0.1, 0.0, 0.0, 0.0]  # the top class (run)
    peaked.cas[:, 3] = 0.9  # background: never counted
    assert localization_signal([flat]) == pytest.approx(
        {"attention_mean": 0.3, "attention_range": 0.0, "cas_peak": 0.1, "cas_contrast": 0.0}
    )
    both = localization_signal([flat, peaked])
    assert both["attention_range"] == pytest.approx(0.5)  # (0 + 1) / 2
    assert both["cas_peak"] == pytest.approx(0.45)  # (0.1 + 0.8) / 2
    assert both["cas_contrast"] == pytest.approx(0.4)  # (0 + (0.8 - median 0)) / 2
    assert both["attention_mean"] == pytest.approx((0.3 + 2.1 / 8) / 2)


def test_a_test_split_without_video_labels_trains_and_reports_no_classification_map(tmp_path):
    """Segments whose videos say ``"labels": []``: detection mAP is scored, the video
    classification mAP is ``None`` (no class has a positive video) instead of a traceback."""
    import json
    from dataclasses import replace

    from conftest import TINY_SPEC, tiny_config

    from wtal.configfile import config_from_dict
    from wtal.engine import fit
    from wtal.synth import THUMOS, write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, replace(THUMOS, **TINY_SPEC), seed=0)
    ann_path = data / "annotations.json"
    ann = json.loads(ann_path.read_text())
    db = ann.get("database", ann)
    for entry in db.values():
        if entry["subset"] == "test":
            entry["labels"] = []
    ann_path.write_text(json.dumps(ann))
    cfg = tiny_config(**{"pseudo.enabled": False, "data.path": str(data)})
    with pytest.warns(RuntimeWarning, match="no prediction matches"):  # the whole-video floor
        metrics = fit(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert metrics["classification_map"] is None
    assert set(metrics["floors"]) == set(FLOORS)
