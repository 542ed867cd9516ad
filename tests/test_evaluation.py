"""Tests for wtal.evaluation: fixtures scored by the official evaluator, hand-computed cases,
and the vectorized kernel against slow per-prediction references written here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wtal.evaluation import (
    TIOU_PRESETS,
    evaluate_detections,
    load_ground_truth,
    load_results,
    resolve_subset,
)
from wtal.io import InputError
from wtal.metrics import REPORTED_AVERAGES, classification_map
from wtal.segments import pairwise_tiou, segment_tiou

TOL = 1e-6  # percent, the acceptance tolerance against the recorded evaluator numbers

# ----------------------------------------------------------------------------- helpers


def make_gt(instances, subset="test", extra_videos=(), ambiguous=None):
    """instances: [(video, label, start, end)] -> ActivityNet GT dict (insertion order kept)."""
    database = {}
    for video, label, start, end in instances:
        entry = database.setdefault(video, {"subset": subset, "annotations": []})
        entry["annotations"].append({"label": label, "segment": [start, end]})
    for video in extra_videos:
        database.setdefault(video, {"subset": subset, "annotations": []})
    for video, intervals in (ambiguous or {}).items():
        database[video]["ambiguous"] = intervals
    return {"database": database}


def make_results(predictions):
    """predictions: [(video, label, score, start, end)] -> ActivityNet results dict."""
    results = {}
    for video, label, score, start, end in predictions:
        results.setdefault(video, []).append(
            {"label": label, "score": score, "segment": [start, end]}
        )
    return {"results": results}


def ap_of(metrics, label):
    return metrics.ap_per_class[metrics.class_names.index(label)]


# ----------------------------------------------------------------------------- references


def reference_official(instances, predictions, tious):
    """The ActivityNet algorithm, literally: one prediction at a time, (C, T) AP fractions."""
    classes = list(dict.fromkeys(label for _, label, _, _ in instances))
    ap = np.zeros((len(classes), len(tious)))
    for c, label in enumerate(classes):
        gts = [g for g in instances if g[1] == label]
        preds = [p for p in predictions if p[1] == label]
        if not preds:
            continue
        order = np.argsort(np.array([p[2] for p in preds]), kind="stable")[::-1]
        lock = -np.ones((len(tious), len(gts)))
        tp = np.zeros((len(tious), len(preds)))
        fp = np.zeros((len(tious), len(preds)))
        for idx, k in enumerate(order):
            video, _, _, ps, pe = preds[k]
            same = [j for j, g in enumerate(gts) if g[0] == video]
            if not same:
                fp[:, idx] = 1
                continue
            seg = np.array([[gts[j][2], gts[j][3]] for j in same])
            inter = np.clip(np.minimum(pe, seg[:, 1]) - np.maximum(ps, seg[:, 0]), 0, None)
            union = (seg[:, 1] - seg[:, 0]) + (pe - ps) - inter
            with np.errstate(invalid="ignore", divide="ignore"):
                tiou = inter / union  # 0/0 = NaN, as in the official code
            ranked = np.argsort(tiou, kind="stable")[::-1]
            for t, thr in enumerate(tious):
                for jj in ranked:
                    if tiou[jj] < thr:
                        fp[t, idx] = 1
                        break
                    if lock[t, same[jj]] >= 0:
                        continue
                    tp[t, idx] = 1
                    lock[t, same[jj]] = idx
                    break
                if tp[t, idx] == 0 and fp[t, idx] == 0:
                    fp[t, idx] = 1
        for t in range(len(tious)):
            ap[c, t] = reference_interpolated_ap(
                np.cumsum(tp[t]) / (np.cumsum(tp[t]) + np.cumsum(fp[t])),
                np.cumsum(tp[t]) / len(gts),
            )
    return classes, ap


def reference_interpolated_ap(precision, recall):
    mprec = [0.0, *precision, 0.0]
    mrec = [0.0, *recall, 1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum(
        (mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
    )


def reference_wtalc(instances, predictions, tious, factor, ambiguous=None):
    """getLocMAP as the fixtures README describes it, on Python sets; (C, T) AP fractions."""
    classes = list(dict.fromkeys(label for _, label, _, _ in instances))
    videos_with_gt = {g[0] for g in instances}

    def snippets(start, end, widen):
        s, e = round(start * factor), round(end * factor)
        return set(range(s, max(e, s + 1) if widen else e))

    preds = [p for p in predictions if p[0] in videos_with_gt]
    if ambiguous:
        preds = [
            p
            for p in preds
            if not any(
                snippets(p[3], p[4], True) & snippets(a, b, False)
                for a, b in ambiguous.get(p[0], [])
            )
        ]
    ap = np.zeros((len(classes), len(tious)))
    for c, label in enumerate(classes):
        ranked = sorted((p for p in preds if p[1] == label), key=lambda p: -p[2])
        for t, thr in enumerate(tious):
            remaining = [g for g in instances if g[1] == label]
            npos = len(remaining)
            hits = []
            for video, _, _, ps, pe in ranked:
                best_iou, best_j, matched = 0.0, None, False
                p = snippets(ps, pe, True)
                for j, g in enumerate(remaining):
                    if g[0] != video:
                        continue
                    gset = snippets(g[2], g[3], False)
                    iou = len(gset & p) / len(gset | p)
                    if iou >= thr:
                        matched = True
                        if iou > best_iou:
                            best_iou, best_j = iou, j
                if matched:
                    del remaining[best_j]
                hits.append(float(matched))
            if sum(hits):
                tp = np.cumsum(hits)
                precision = tp / np.arange(1, len(hits) + 1)
                ap[c, t] = reference_interpolated_ap(precision, tp / npos)
    return classes, ap


def random_case(rng, num_videos=4, labels=("a", "b", "c"), tiles=False):
    """Coordinates on a coarse grid and few score values, so that score ties, tIoU ties,
    duplicates and zero lengths all happen. ``tiles``: GT of length 2 on even starts and
    predictions of length 2 anywhere, so that a prediction often straddles two GTs with
    equal tIoU 1/3 and the GT tie rule decides later matches."""
    instances, predictions = [], []

    def segment(step):
        start = (
            float(rng.integers(0, 12)) / 2
            if not tiles
            else float(step * rng.integers(0, 8 // step))
        )
        length = 2.0 if tiles else float(rng.integers(0, 6)) / 2
        return start, start + length

    for v in range(num_videos):
        for _ in range(rng.integers(0, 8)):
            instances.append((f"v{v}", str(rng.choice(labels)), *segment(2)))
        for _ in range(rng.integers(0, 15)):
            score = float(rng.integers(0, 5)) / 4
            predictions.append((f"v{v}", str(rng.choice(labels)), score, *segment(1)))
    if not instances:
        instances.append(("v0", "a", 0.0, 1.0))
    return instances, predictions


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fixtures(shared_data):
    folder = shared_data / "eval_fixtures"
    if not (folder / "expected.json").is_file():
        pytest.skip(f"no evaluation fixtures in {folder}")
    expected = json.loads((folder / "expected.json").read_text())
    gts = {name: load_ground_truth(folder / name) for name in {e["gt"] for e in expected.values()}}
    return folder, expected, gts


def fixture_names():
    return [
        "thumos14_pred_jitter01.json",
        "thumos14_pred_noisy.json",
        "thumos14_pred_exact_rs.json",
        "anet13_pred_jitter01.json",
        "anet13_pred_noisy.json",
    ]


def test_fixture_list_is_complete(fixtures):
    # a new prediction file or recorded number must be added to the parametrization below
    folder, expected, _ = fixtures
    on_disk = sorted(p.name for p in folder.glob("*_pred_*.json"))
    assert sorted(expected) == sorted(fixture_names()) == on_disk
    with_legacy = sorted(n for n, e in expected.items() if "wtalc_legacy" in e)
    assert with_legacy == sorted(n for n in fixture_names() if n.startswith("thumos"))


@pytest.mark.parametrize("name", fixture_names())
def test_official_protocol_matches_recorded_evaluator(fixtures, name):
    folder, expected, gts = fixtures
    exp = expected[name]
    results = load_results(folder / name)
    metrics = evaluate_detections(
        gts[exp["gt"]], results, exp["tiou_thresholds"], subset=exp["subset"]
    )
    assert metrics.num_evaluated == exp["n_predictions"]
    np.testing.assert_allclose(metrics.map_per_tiou, list(exp["official_mAP"].values()), atol=TOL)
    assert metrics.average == pytest.approx(exp["official_average_mAP"], abs=TOL)
    assert sorted(metrics.class_names) == sorted(exp["official_per_class_AP"])
    for label, ap in exp["official_per_class_AP"].items():
        np.testing.assert_allclose(ap_of(metrics, label), ap, atol=TOL, err_msg=label)
    assert metrics.as_dict()["mAP"].keys() == exp["official_mAP"].keys()


@pytest.mark.parametrize("name", [n for n in fixture_names() if n.startswith("thumos")])
@pytest.mark.parametrize("ambiguous_filter", [False, True])
def test_wtalc_protocol_matches_recorded_legacy_evaluator(fixtures, name, ambiguous_filter):
    folder, expected, gts = fixtures
    exp = expected[name]
    key = "wtalc_legacy_with_ambiguous_filter" if ambiguous_filter else "wtalc_legacy"
    legacy = exp[key]
    assert legacy["ambiguous_filter"] == ambiguous_filter
    metrics = evaluate_detections(
        gts[exp["gt"]],
        load_results(folder / name),
        "thumos",
        subset=exp["subset"],
        protocol="wtalc",
        fps=25.0,
        snippet_frames=16.0,
        ambiguous_filter=ambiguous_filter,
    )
    np.testing.assert_allclose(metrics.map_per_tiou, list(legacy["mAP"].values()), atol=TOL)
    assert metrics.averages["0.1:0.7"] == pytest.approx(legacy["average_mAP_0.1-0.7"], abs=TOL)
    assert metrics.averages["0.3:0.7"] == pytest.approx(legacy["average_mAP_0.3-0.7"], abs=TOL)
    assert (metrics.ignored_ambiguous > 0) == ambiguous_filter


# ----------------------------------------------------------------------------- hand cases


def test_perfect_detections_score_100():
    gt = make_gt([("v1", "a", 0.0, 10.0), ("v1", "b", 20.0, 30.0), ("v2", "a", 5.0, 6.0)])
    res = make_results([("v1", "a", 0.9, 0.0, 10.0), ("v1", "b", 0.1, 20.0, 30.0),
                        ("v2", "a", 0.5, 5.0, 6.0)])  # fmt: skip
    for protocol in ("official", "wtalc"):
        m = evaluate_detections(gt, res, "thumos", protocol=protocol, fps=1.0, snippet_frames=1.0)
        np.testing.assert_allclose(m.map_per_tiou, 100.0)
        assert m.average == pytest.approx(100.0)


def test_score_ties_official_ranks_later_prediction_first():
    # Two predictions with one score: the official reversed stable argsort puts the later one
    # (a false positive) first, giving precision 1/2 at full recall; W-TALC keeps file order.
    gt = make_gt([("v1", "a", 0.0, 10.0)])
    res = make_results([("v1", "a", 0.5, 0.0, 10.0), ("v1", "a", 0.5, 20.0, 30.0)])
    official = evaluate_detections(gt, res, [0.5])
    legacy = evaluate_detections(gt, res, [0.5], protocol="wtalc", fps=1.0, snippet_frames=1.0)
    assert official.map_per_tiou[0] == pytest.approx(50.0)
    assert legacy.map_per_tiou[0] == pytest.approx(100.0)


def test_gt_ties_official_takes_later_gt_wtalc_first():
    # The first prediction overlaps both GTs with tIoU 1/3. The official matcher locks the
    # later GT, so the second prediction (which only fits the later GT) is a false positive.
    gt = make_gt([("v1", "a", 0.0, 10.0), ("v1", "a", 10.0, 20.0)])
    res = make_results([("v1", "a", 0.9, 5.0, 15.0), ("v1", "a", 0.8, 10.0, 20.0)])
    official = evaluate_detections(gt, res, [0.3])
    legacy = evaluate_detections(gt, res, [0.3], protocol="wtalc", fps=1.0, snippet_frames=1.0)
    assert official.map_per_tiou[0] == pytest.approx(50.0)  # TP, FP over 2 GT
    assert legacy.map_per_tiou[0] == pytest.approx(100.0)


def test_duplicate_prediction_is_a_false_positive():
    gt = make_gt([("v1", "a", 0.0, 10.0), ("v1", "a", 20.0, 30.0)])
    res = make_results([("v1", "a", 0.9, 0.0, 10.0), ("v1", "a", 0.8, 0.0, 10.0),
                        ("v1", "a", 0.7, 20.0, 30.0)])  # fmt: skip
    m = evaluate_detections(gt, res, [0.5])
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3
    assert m.map_per_tiou[0] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))


def test_locks_are_per_threshold():
    # At 0.5 the first prediction (tIoU 0.6) takes the GT; at 0.7 only the second (tIoU 1) can.
    gt = make_gt([("v1", "a", 0.0, 10.0)])
    res = make_results([("v1", "a", 0.9, 0.0, 6.0), ("v1", "a", 0.8, 0.0, 10.0)])
    m = evaluate_detections(gt, res, [0.5, 0.7])
    np.testing.assert_allclose(m.map_per_tiou, [100.0, 50.0])


def test_class_without_predictions_gets_zero_and_compat_zeroes_map():
    gt = make_gt([("v1", "a", 0.0, 10.0), ("v1", "b", 20.0, 30.0)])
    res = make_results([("v1", "a", 0.9, 0.0, 10.0)])
    m = evaluate_detections(gt, res, [0.5])
    assert m.map_per_tiou[0] == pytest.approx(50.0)
    assert m.classes_without_predictions == ("b",)
    np.testing.assert_allclose(ap_of(m, "a"), [100.0])
    compat = evaluate_detections(gt, res, [0.5], protocol="wtalc", compat=True)
    assert compat.map_per_tiou[0] == 0.0
    np.testing.assert_allclose(ap_of(compat, "a"), [100.0])


def test_zero_length_segments():
    gt = make_gt([("v1", "a", 5.0, 5.0), ("v1", "a", 20.0, 30.0)])
    # A zero-length GT has tIoU 0 with any segment of positive length ...
    m = evaluate_detections(gt, make_results([("v1", "a", 0.9, 4.0, 6.0)]), [0.1])
    assert m.map_per_tiou[0] == 0.0
    # ... while two zero-length segments give 0/0, which the official matcher accepts
    # (even at another time point); zero_union_matches=False scores the pair tIoU 0.
    res = make_results([("v1", "a", 0.9, 7.0, 7.0)])
    assert evaluate_detections(gt, res, [0.9]).map_per_tiou[0] == pytest.approx(50.0)
    off = evaluate_detections(gt, res, [0.9], zero_union_matches=False)
    assert off.map_per_tiou[0] == 0.0
    # A zero-length GT still counts as a positive: recall is at most 1/2.
    res = make_results([("v1", "a", 0.9, 20.0, 30.0)])
    assert evaluate_detections(gt, res, [0.5]).map_per_tiou[0] == pytest.approx(50.0)


def test_unknown_videos_and_labels_are_ignored_and_counted():
    gt = make_gt([("v1", "a", 0.0, 10.0)], extra_videos=["v3"])
    gt["database"]["val1"] = {"subset": "validation", "annotations": [
        {"label": "z", "segment": [0.0, 1.0]}]}  # fmt: skip
    res = make_results([
        ("v1", "a", 0.5, 0.0, 10.0),
        ("v2", "a", 0.9, 0.0, 10.0),  # not in the GT at all
        ("val1", "a", 0.9, 0.0, 10.0),  # another subset
        ("v1", "z", 0.9, 0.0, 10.0),  # label only in another subset
        ("v1", "q", 0.9, 0.0, 10.0),  # unknown label
        ("v3", "a", 0.1, 0.0, 10.0),  # subset video without GT: a false positive
    ])  # fmt: skip
    m = evaluate_detections(gt, res, [0.5], subset="test")
    assert (m.ignored_unknown_video, m.ignored_unknown_label) == (2, 2)
    assert (m.num_predictions, m.num_evaluated) == (6, 2)
    assert m.class_names == ("a",)
    assert m.map_per_tiou[0] == pytest.approx(100.0)  # the false positive ranks last
    strict = evaluate_detections(gt, res, [0.5], subset="test",
                                 unknown_videos_are_false_positives=True)  # fmt: skip
    assert strict.ignored_unknown_video == 0
    assert strict.map_per_tiou[0] == pytest.approx(100 / 3)  # ranks: FP, FP, TP


def test_wtalc_grid_rounds_half_to_even_and_widens_empty_predictions():
    # GT [2.5, 3.5] s -> snippets [2, 4); prediction [2.5, 2.5] -> [2, 2) -> widened [2, 3).
    gt = make_gt([("v1", "a", 2.5, 3.5)])
    res = make_results([("v1", "a", 0.9, 2.5, 2.5)])
    m = evaluate_detections(gt, res, [0.5, 0.6], protocol="wtalc", fps=1.0, snippet_frames=1.0)
    np.testing.assert_allclose(m.map_per_tiou, [100.0, 0.0])
    # The official protocol sees a zero-length prediction: tIoU 0.
    assert evaluate_detections(gt, res, [0.5]).map_per_tiou[0] == 0.0


def test_ambiguous_filter_drops_overlapping_predictions_of_the_same_video():
    gt = make_gt([("v1", "a", 0.0, 10.0), ("v2", "a", 0.0, 10.0)],
                 ambiguous={"v1": [[20.0, 25.0]]})  # fmt: skip
    res = make_results([
        ("v1", "a", 0.9, 0.0, 10.0),
        ("v1", "a", 0.95, 24.0, 30.0),  # overlaps the ambiguous interval: dropped
        ("v2", "a", 0.8, 20.0, 25.0),  # same times, other video: a false positive
        ("v2", "a", 0.7, 0.0, 10.0),
    ])  # fmt: skip
    plain = evaluate_detections(gt, res, [0.5])
    filtered = evaluate_detections(gt, res, [0.5], ambiguous_filter=True)
    assert (plain.ignored_ambiguous, filtered.ignored_ambiguous) == (0, 1)
    assert filtered.num_evaluated == 3
    # ranks TP, FP, TP -> 1/2 * 1 + 1/2 * 2/3
    assert filtered.map_per_tiou[0] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    # the top-level {"ambiguous": {video: [...]}} layout of the fixtures works the same
    gt_top = make_gt([("v1", "a", 0.0, 10.0), ("v2", "a", 0.0, 10.0)])
    gt_top["ambiguous"] = {"v1": [[20.0, 25.0]], "elsewhere": [[0.0, 1.0]]}
    top = evaluate_detections(gt_top, res, [0.5], ambiguous_filter=True)
    np.testing.assert_allclose(top.map_per_tiou, filtered.map_per_tiou)


def test_empty_results_warn_and_score_zero():
    gt = make_gt([("v1", "a", 0.0, 10.0)])
    with pytest.warns(RuntimeWarning, match="mAP is 0"):
        m = evaluate_detections(gt, {"results": {}}, "anet")
    assert m.average == 0.0
    assert m.classes_without_predictions == ("a",)


def test_presets_and_reported_averages():
    gt = make_gt([("v1", "a", 0.0, 10.0)])
    res = make_results([("v1", "a", 0.9, 0.0, 6.5)])  # tIoU 0.65
    thumos = evaluate_detections(gt, res, "thumos")
    assert thumos.tious == TIOU_PRESETS["thumos"]
    assert set(thumos.averages) == {"0.1:0.7", "0.1:0.5", "0.3:0.7"}
    assert thumos.averages["0.1:0.5"] == pytest.approx(100.0)
    assert thumos.averages["0.3:0.7"] == pytest.approx(100 * 4 / 5)
    anet = evaluate_detections(gt, res, "anet")
    assert set(anet.averages) == {"0.5:0.95"} and len(anet.tious) == 10
    assert anet.average == pytest.approx(100 * 4 / 10)  # 0.5 ... 0.65 pass
    assert set(REPORTED_AVERAGES) >= set(thumos.averages)
    table = thumos.format_table(per_class=True)
    assert "0.3:0.7 80.00" in table and "\na " in table
    json.dumps(thumos.as_dict())


@pytest.mark.parametrize("seed", range(30))
def test_official_matches_slow_reference_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    instances, predictions = random_case(
        rng, labels=("a",) if seed >= 10 else ("a", "b", "c"), tiles=seed >= 10
    )
    tious = [0.1, 0.3, 0.5, 0.7, 0.9]
    classes, expected = reference_official(instances, predictions, tious)
    # The official code counts predictions for videos without GT as false positives: list
    # those videos in the subset (even seeds) or ask for the official rule (odd seeds).
    videos = [p[0] for p in predictions]
    gt = make_gt(instances, extra_videos=videos if seed % 2 == 0 else ())
    m = evaluate_detections(
        gt, make_results(predictions), tious, unknown_videos_are_false_positives=seed % 2 == 1
    )
    assert m.ignored_unknown_video == 0
    assert list(m.class_names) == classes
    np.testing.assert_allclose(m.ap_per_class, 100 * expected, atol=1e-9)


@pytest.mark.parametrize("seed", range(30))
def test_wtalc_matches_slow_reference_on_random_inputs(seed):
    rng = np.random.default_rng(100 + seed)
    instances, predictions = random_case(
        rng, labels=("a",) if seed >= 10 else ("a", "b", "c"), tiles=seed >= 10
    )
    videos = sorted({g[0] for g in instances})
    ambiguous = {videos[0]: [[float(rng.integers(0, 10)), float(rng.integers(10, 20))]]}
    tious = [0.1, 0.3, 0.5, 0.7]
    # the I3D grid (rounding at work) or, for tiles, the identity grid (tIoU ties survive)
    fps, snippet_frames = (16.0, 16.0) if seed >= 10 else (25.0, 16.0)
    for filt in (False, True):
        classes, expected = reference_wtalc(instances, predictions, tious, fps / snippet_frames,
                                            ambiguous if filt else None)  # fmt: skip
        m = evaluate_detections(make_gt(instances, ambiguous=ambiguous),
                                make_results(predictions), tious, protocol="wtalc", fps=fps,
                                snippet_frames=snippet_frames, ambiguous_filter=filt)  # fmt: skip
        assert list(m.class_names) == classes
        np.testing.assert_allclose(m.ap_per_class, 100 * expected, atol=1e-9)


def test_same_input_same_numbers():
    instances, predictions = random_case(np.random.default_rng(7))
    gt, res = make_gt(instances), make_results(predictions)
    a = evaluate_detections(gt, res, "thumos")
    b = evaluate_detections(gt, res, "thumos")
    np.testing.assert_array_equal(a.ap_per_class, b.ap_per_class)


# ----------------------------------------------------------------------------- subsets, input


def test_resolve_subset_rule():
    both = {"database": {"a": {"subset": "validation"}, "b": {"subset": "test"}}}
    assert resolve_subset(both) == "test"
    assert resolve_subset(both, "validation") == "validation"
    one = {"database": {"a": {"subset": "training"}}}
    assert resolve_subset(one) == "training"
    anet = {"database": {"a": {"subset": "training"}, "b": {"subset": "validation"}}}
    assert resolve_subset(anet) == "validation"
    with pytest.raises(InputError, match="cannot choose a subset"):
        resolve_subset({"database": {"a": {"subset": "x"}, "b": {"subset": "y"}}})
    with pytest.raises(InputError, match="subset 'test' not found"):
        resolve_subset(one, "test")


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"label": "a", "score": float("nan"), "segment": [0, 1]}, "field 'score'"),
        ({"label": "a", "score": 0.5, "segment": [3, 1]}, "end >= start"),
        ({"label": "a", "score": 0.5, "segment": [0, float("inf")]}, "field 'segment'"),
        ({"label": "a", "score": "high", "segment": [0, 1]}, "prediction 1"),
        ({"label": "a", "segment": [0, 1]}, "prediction 1"),
        ({"label": "a", "score": True, "segment": [0, 1]}, "prediction 1"),
        ({"label": "a", "score": 0.5, "segment": [0, 1, 2]}, "prediction 1"),
        ("not a dict", "prediction 1"),
    ],
)
def test_bad_predictions_raise_input_error_naming_video(prediction, message):
    gt = make_gt([("v1", "a", 0.0, 10.0)])
    res = {"results": {"v1": [{"label": "a", "score": 0.1, "segment": [0, 1]}, prediction]}}
    with pytest.raises(InputError, match=message) as info:
        evaluate_detections(gt, res, "anet")
    assert info.value.video == "v1"


def test_bad_ground_truth_raises_input_error():
    with pytest.raises(InputError, match="missing top-level field 'database'"):
        evaluate_detections({"videos": {}}, {"results": {}}, "anet")
    gt = make_gt([("v1", "a", 5.0, 1.0)])
    with pytest.raises(InputError, match="annotation 0: field 'segment'") as info:
        evaluate_detections(gt, {"results": {}}, "anet")
    assert info.value.video == "v1"
    with pytest.raises(InputError, match="field 'subset'"):
        evaluate_detections({"database": {"v1": {"annotations": []}}}, {"results": {}}, "anet")
    with pytest.raises(InputError, match="missing top-level field 'results'"):
        evaluate_detections(make_gt([("v1", "a", 0, 1)]), {"v1": []}, "anet")


def test_invalid_arguments_raise_value_error():
    gt, res = make_gt([("v1", "a", 0.0, 1.0)]), {"results": {}}
    with pytest.raises(ValueError, match="protocol"):
        evaluate_detections(gt, res, "anet", protocol="voc")
    with pytest.raises(ValueError, match="preset"):
        evaluate_detections(gt, res, "coco")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        evaluate_detections(gt, res, [0.5, 1.5])


def test_loaders_name_the_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(make_gt([("v1", "a", 0.0, 1.0)])))
    assert load_ground_truth(path)["database"]["v1"]["subset"] == "test"
    bad = tmp_path / "res.json"
    bad.write_text('{"results": {"v1": [{"label": "a", "score": 1, "segment": [2, 1]}]}}')
    with pytest.raises(InputError) as info:
        load_results(bad)
    assert str(info.value).startswith(f"{bad}: video 'v1': prediction 0: field 'segment'")


# ----------------------------------------------------------------------------- tIoU


def reference_tiou(a, b):
    """ActivityNet ``segment_iou`` for one pair, Python floats; None where the union is 0."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else None


def tiou_cases():
    rng = np.random.default_rng(0)
    # one decimal: touching, identical and zero-length segments occur
    a = np.sort(np.round(rng.random((30, 2)) * 10, 1), axis=1)
    b = np.sort(np.round(rng.random((20, 2)) * 10, 1), axis=1)
    a[0] = b[0] = [3.0, 3.0]  # a pair with union 0
    return a, b


@pytest.mark.parametrize("zero_union", [0.0, np.inf])
def test_segment_tiou_is_the_reference_bit_for_bit(zero_union):
    a, b = tiou_cases()
    expected = np.array([[reference_tiou(x, y) for y in b] for x in a], dtype=object)
    expected[expected == None] = zero_union  # noqa: E711 (elementwise on an object array)
    a2, b2 = a[:, None], b[None]  # (30, 1, 2), (1, 20, 2): every pair
    got = segment_tiou(a2[..., 0], a2[..., 1], b2[..., 0], b2[..., 1], zero_union)
    np.testing.assert_array_equal(got, expected.astype(np.float64))
    swapped = segment_tiou(b2[..., 0], b2[..., 1], a2[..., 0], a2[..., 1], zero_union)
    np.testing.assert_array_equal(swapped, got)  # symmetric
    paired = segment_tiou(a[:20, 0], a[:20, 1], b[:, 0], b[:, 1], zero_union)
    np.testing.assert_array_equal(paired, np.diag(got[:20]))
    assert got[0, 0] == zero_union and np.all((got[1:] >= 0) & (got[1:] <= 1))


def test_pairwise_tiou_and_torch_tensors_use_the_same_formula():
    torch = pytest.importorskip("torch")
    a, b = tiou_cases()
    pairs = pairwise_tiou(a, b)
    np.testing.assert_array_equal(
        pairs, np.array([[reference_tiou(x, y) or 0.0 for y in b] for x in a])
    )
    ta, tb = torch.from_numpy(a[:20]), torch.from_numpy(b)
    got = segment_tiou(ta[:, 0], ta[:, 1], tb[:, 0], tb[:, 1])
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), np.diag(pairs[:20]))


# ----------------------------------------------------------------------------- classification


def reference_classification_map(scores, labels):
    aps = []
    for c in range(scores.shape[1]):
        order = sorted(range(len(scores)), key=lambda i: -scores[i, c])
        hits, total = 0, 0.0
        for rank, i in enumerate(order, start=1):
            if labels[i, c]:
                hits += 1
                total += hits / rank
        if labels[:, c].sum():
            aps.append(total / labels[:, c].sum())
    return 100 * float(np.mean(aps))


def test_classification_map_hand_case_and_reference():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
    labels = np.array([[1, 0], [0, 1], [1, 0]])
    # class 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; class 1: rank 1 -> 1
    assert classification_map(scores, labels) == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = np.round(rng.random((30, 6)), 1)  # rounding makes ties
        labels = rng.random((30, 6)) < 0.3
        expected = reference_classification_map(scores, labels)
        assert classification_map(scores, labels) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError):
        classification_map(np.zeros((3, 2)), np.zeros((3, 3)))


def test_evaluation_does_not_import_torch():
    code = "import sys, wtal.evaluation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
