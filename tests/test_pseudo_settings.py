"""Pseudo-label settings that follow or override the detection config: ``pseudo.fusion`` and
the outer band of the LP regions (``detect.outer_scale/outer_power``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_wtal

import wtal.inference as inference
import wtal.regenerate as regenerate
from wtal.configcheck import ConfigError
from wtal.configfile import load_config
from wtal.data.split import open_datasets
from wtal.inference import build_model
from wtal.lp import lp_regions, solve_pseudo_labels
from wtal.proposals import Segments
from wtal.pseudo import background_gaps, confident
from wtal.regenerate import generate_pseudo_labels
from wtal.scoring import evaluate_model
from wtal.segments import REFERENCE_OUTER_BAND, outer_band_width, seconds_to_snippets
from wtal.synth import THUMOS, write_synthetic

_DETECT, _SOLVE = inference.detect_segments, regenerate.solve_pseudo_labels_batch


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    spec = replace(
        THUMOS,
        train_videos=4,
        test_videos=3,
        feat_dim=16,
        num_classes=3,
        min_snippets=30,
        median_snippets=40,
        max_snippets=50,
    )
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, spec, seed=2)
    return out


def _run_detection_paths(data: Path, monkeypatch, *extra: str) -> dict[str, list]:
    """Pseudo labels then a test evaluation of an untrained model; returns the fusion
    method and outer band that each pass gave the one detection function, and the LP's."""
    cfg = load_config(
        None,
        [
            f"data.path={str(data)!r}",
            "model.embed_dim=16",
            "train.device='cpu'",
            "detect.class_threshold=0.0",  # an untrained model: keep every class
            *extra,
        ],
    )
    calls: dict[str, list] = {"detect": [], "lp": []}
    detect, solve = _DETECT, _SOLVE

    def spy_detect(cas, video_scores, dcfg, **kwargs):
        calls["detect"].append((dcfg.fusion, dcfg.outer_scale, dcfg.outer_power))
        return detect(cas, video_scores, dcfg, **kwargs)

    def spy_solve(*args, **kwargs):
        calls["lp"].append((kwargs["outer_scale"], kwargs["outer_power"]))
        return solve(*args, **kwargs)

    monkeypatch.setattr(inference, "detect_segments", spy_detect)
    monkeypatch.setattr(regenerate, "solve_pseudo_labels_batch", spy_solve)
    torch.manual_seed(0)
    train, train_fixed, test = open_datasets(cfg)
    model = build_model(cfg, train.feat_dim, train.num_classes)
    device = torch.device("cpu")
    generate_pseudo_labels(model, train_fixed, cfg, 0.02, device)
    calls["pseudo"], calls["detect"] = calls["detect"], []
    evaluate_model(model, test, cfg, device)
    calls["test"] = calls.pop("detect")
    return calls


def test_pseudo_fusion_switches_only_the_pseudo_labels(data, monkeypatch):
    calls = _run_detection_paths(data, monkeypatch, "pseudo.fusion='nms'")
    assert len(calls["pseudo"]) == 4 and len(calls["test"]) == 3  # one detect() per video
    assert {c[0] for c in calls["pseudo"]} == {"nms"}
    assert {c[0] for c in calls["test"]} == {"gaussian"}


def test_pseudo_fusion_defaults_to_the_detection_fusion(data, monkeypatch):
    calls = _run_detection_paths(data, monkeypatch, "detect.fusion='nms'")
    assert {c[0] for c in calls["pseudo"]} == {c[0] for c in calls["test"]} == {"nms"}


def test_pseudo_fusion_is_checked():
    with pytest.raises(ConfigError, match="pseudo.fusion = 'max': expected null"):
        load_config(None, ["pseudo.fusion='max'"])


def test_lp_regions_take_the_detection_outer_band(data, monkeypatch):
    calls = _run_detection_paths(
        data, monkeypatch, "detect.outer_scale=0.25", "detect.outer_power=1.0"
    )
    assert calls["lp"] == [(0.25, 1.0)]
    assert {c[1:] for c in calls["pseudo"]} == {c[1:] for c in calls["test"]} == {(0.25, 1.0)}
    defaults = _run_detection_paths(data, monkeypatch)
    assert defaults["lp"] == [REFERENCE_OUTER_BAND]


def test_a_wider_outer_band_changes_the_lp_rows():
    segments = np.array([[10.0, 30.0], [50.0, 52.0]])
    default = np.stack(lp_regions(segments, 80), 1)  # (N, 4): outer_start, start, end, outer_end
    wider = np.stack(lp_regions(segments, 80, outer_scale=0.25, outer_power=1.0), 1)
    # L = 20: delta = 0.0785 * 20**0.9 = 1.16, outer [trunc(8.84), 10) + [30, trunc(32.16));
    # delta = 0.25 * 20 = 5: [5, 10) + [30, 36).
    assert default[0].tolist() == [8, 10, 30, 32]
    assert wider[0].tolist() == [5, 10, 30, 36]
    labels, _ = solve_pseudo_labels(segments, [0.5, 0.5], [0, 0], 80, 2, outer_scale=0.25)
    assert np.isfinite(labels).all()


def test_one_outer_band_formula():
    lengths = np.arange(0, 300)
    expected = 0.0785 * lengths.astype(np.float64) ** 0.9  # what both callers computed before
    np.testing.assert_array_equal(outer_band_width(lengths, *REFERENCE_OUTER_BAND), expected)
    outer_s, s, e, outer_e = lp_regions(np.array([[100.0, 200.0]]), 400)
    delta = outer_band_width(np.array([100]), *REFERENCE_OUTER_BAND)[0]
    assert (outer_s[0], outer_e[0]) == (int(100 - delta), int(200 + delta + 1))


def _prediction(background_score: float) -> inference.Prediction:
    """Three classes + background; class 0 and the background column each have one bump."""
    cas = np.full((40, 4), 1e-4)
    cas[5:15, 0] = 0.03
    cas[20:35, 3] = 0.03
    return inference.Prediction(
        video_id="v",
        video_scores=np.array([0.9, 0.01, 0.01, background_score]),
        cas=cas,
        attention=np.full(40, 0.5),
        labels=np.array([1, 0, 0], dtype=np.float32),
        fps=25.0,
        snippet_frames=16.0,
        duration_s=float("nan"),
    )


@pytest.mark.parametrize("background_score", [0.05, 0.5])
def test_keep_background_lets_only_the_background_column_past_the_filter(background_score):
    dcfg = load_config(None, []).detect  # class_threshold 0.16
    pred = _prediction(background_score)
    filtered = inference.detect(pred, dcfg, background=True)
    kept = inference.detect(pred, dcfg, background=True, keep_background=True)
    assert set(filtered.labels.tolist()) == ({0, 3} if background_score >= 0.16 else {0})
    assert set(kept.labels.tolist()) == {0, 3}
    same = kept.labels == 0  # the class columns do not change
    assert torch.equal(kept.segments[same], filtered.segments[filtered.labels == 0])
    # test-time detections never have the background column, whatever the switch
    test_time = inference.detect(pred, dcfg, keep_background=True)
    assert set(test_time.labels.tolist()) == {0}
    assert pred.video_scores[3] == background_score  # the prediction is not modified


def _pseudo_labels(data: Path, *extra: str) -> dict:
    """One regeneration by an untrained model (seed 0) under ``extra`` overrides; its stats."""
    cfg = load_config(
        None, [f"data.path={str(data)!r}", "model.embed_dim=16", "train.device='cpu'", *extra]
    )
    torch.manual_seed(0)
    train, train_fixed, _ = open_datasets(cfg)
    model = build_model(cfg, train.feat_dim, train.num_classes)
    return generate_pseudo_labels(model, train_fixed, cfg, 0.02, torch.device("cpu"))[1]


def test_keep_background_reaches_the_pseudo_labels(data, monkeypatch):
    seen: dict[str, list] = {"pseudo": []}
    detect = _DETECT

    def spy(cas, video_scores, dcfg, **kwargs):
        seen["pseudo"].append(float(video_scores[-1]))  # the background column's score
        return detect(cas, video_scores, dcfg, **kwargs)

    monkeypatch.setattr(inference, "detect_segments", spy)
    for flag, expect_one in (("False", False), ("True", True)):
        seen["pseudo"].clear()
        _pseudo_labels(data, f"pseudo.keep_background={flag}")
        assert len(seen["pseudo"]) == 4
        assert all(s == 1.0 for s in seen["pseudo"]) == expect_one


def _confident_reference(scores, labels, ratio):
    """One segment at a time: kept when at least ``ratio`` x its column's best, or the best;
    every segment at ratio 0."""
    keep = []
    for s, c in zip(scores.tolist(), labels.tolist(), strict=True):
        best = max(x for x, d in zip(scores.tolist(), labels.tolist(), strict=True) if d == c)
        keep.append(ratio == 0 or s >= ratio * best or s == best)
    return torch.tensor(keep, dtype=torch.bool)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 1.0])
def test_confident_matches_a_loop(seed, ratio):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 30, (1,), generator=gen))
    scores = torch.rand(n, generator=gen, dtype=torch.float64) - 0.2  # some negative
    labels = torch.randint(0, 6, (n,), generator=gen)
    kept = confident(scores, labels, ratio)
    assert torch.equal(kept, _confident_reference(scores, labels, ratio))
    for c in labels.unique():  # the best of every column stays
        assert kept[labels == c][scores[labels == c].argmax()]
    if ratio == 0.0:  # the reference's pseudo labels: every segment
        assert kept.all()


def test_confident_keeps_the_best_of_a_negative_column():
    scores = torch.tensor([0.4, 0.01, -0.3, -0.1], dtype=torch.float64)
    labels = torch.tensor([2, 2, 5, 5])
    assert confident(scores, labels, 0.2).tolist() == [True, False, False, True]
    assert confident(scores[:0], labels[:0], 0.2).shape == (0,)


def _lp_inputs(monkeypatch) -> dict[str, list]:
    """Spy on the LP: the returned dict holds the ``segments``, ``scores``, ``labels`` and
    ``T`` (snippets per video) of the last call to ``solve_pseudo_labels_batch``."""
    seen: dict[str, list] = {}
    solve = _SOLVE

    def spy(segments, scores, labels, num_snippets, *args, **kwargs):
        seen.update(segments=segments, scores=scores, labels=labels, T=num_snippets)
        return solve(segments, scores, labels, num_snippets, *args, **kwargs)

    monkeypatch.setattr(regenerate, "solve_pseudo_labels_batch", spy)
    return seen


def test_min_score_ratio_filters_what_the_lp_gets(data, monkeypatch):
    seen = _lp_inputs(monkeypatch)
    got = {}
    for ratio in (0.0, 0.5):
        stats = _pseudo_labels(
            data, "detect.class_threshold=0.0", f"pseudo.min_score_ratio={ratio}"
        )
        got[ratio] = (seen["scores"], seen["labels"], stats["segments"])
    (all_s, all_l, n_all), (kept_s, kept_l, n_kept) = got[0.0], got[0.5]
    assert n_kept < n_all == sum(len(s) for s in all_s)
    for s, lab, ks, kl in zip(all_s, all_l, kept_s, kept_l, strict=True):
        mask = confident(torch.from_numpy(s), torch.from_numpy(lab), 0.5).numpy()
        assert np.array_equal(ks, s[mask]) and np.array_equal(kl, lab[mask])


def test_min_score_ratio_is_checked():
    with pytest.raises(ConfigError, match="pseudo.min_score_ratio"):
        load_config(None, ["pseudo.min_score_ratio=1.5"])


def _gaps_reference(segments, scores, num_snippets):
    """One segment at a time in start order, bounds clipped to the video: every stretch of
    ``[0, T)`` no segment covers, kept when the LP would give it an inner snippet."""
    if not len(scores) or scores.mean() <= 0:
        return []
    segs = sorted(tuple(np.clip([s, e], 0, num_snippets)) for s, e in segments.tolist())
    gaps, covered = [], 0.0
    for s, e in segs:
        if s > covered:
            gaps.append((covered, s))
        covered = max(covered, e)
    gaps.append((covered, float(num_snippets)))
    return [(a, b) for a, b in gaps if np.floor(b) > np.floor(a)]


@pytest.mark.parametrize("seed", range(8))
def test_background_gaps_match_a_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    T = int(torch.randint(5, 80, (1,), generator=gen))
    n = int(torch.randint(0, 8, (1,), generator=gen))
    start = torch.rand(n, generator=gen, dtype=torch.float64) * (T + 4) - 2  # some outside
    length = torch.rand(n, generator=gen, dtype=torch.float64) * T / 3
    segments = torch.stack([start, start + length], 1)
    scores = torch.rand(n, generator=gen, dtype=torch.float64) + 0.05
    gaps, gap_scores = background_gaps(segments, scores, T)
    expected = _gaps_reference(segments.numpy(), scores.numpy(), T)
    assert gaps.shape == (len(expected), 2) and gap_scores.shape == (len(expected),)
    if expected:
        np.testing.assert_allclose(gaps.numpy(), np.array(expected))
        assert torch.all(gap_scores == scores.mean())


def test_background_gaps_of_a_video_without_a_sure_action():
    one = torch.tensor([[3.0, 7.0]], dtype=torch.float64)
    assert background_gaps(one[:0], torch.zeros(0, dtype=torch.float64), 10)[0].shape == (0, 2)
    assert len(background_gaps(one, torch.tensor([-0.1], dtype=torch.float64), 10)[0]) == 0
    gaps, scores = background_gaps(one, torch.tensor([0.3], dtype=torch.float64), 10)
    assert gaps.tolist() == [[0.0, 3.0], [7.0, 10.0]] and scores.tolist() == [0.3, 0.3]
    # a gap shorter than a snippet the LP would see is dropped
    two = torch.tensor([[0.0, 3.2], [3.8, 10.0]], dtype=torch.float64)
    assert len(background_gaps(two, torch.tensor([0.3, 0.3], dtype=torch.float64), 10)[0]) == 0


def test_background_gaps_replace_the_background_detections(data, monkeypatch):
    seen = _lp_inputs(monkeypatch)
    extra = ("detect.class_threshold=0.0", "pseudo.keep_background=True")
    _pseudo_labels(data, *extra)
    plain = dict(seen)
    assert any(np.any(lab == 3) for lab in plain["labels"])  # detections to replace
    _pseudo_labels(data, "detect.class_threshold=0.0", "pseudo.background_gaps=True")
    background = 3  # 3 classes, then the background column
    for i, T in enumerate(seen["T"]):
        cls = plain["labels"][i] != background
        segments, labels = seen["segments"][i], seen["labels"][i]
        n = int(cls.sum())  # the class segments first, untouched
        np.testing.assert_array_equal(segments[:n], plain["segments"][i][cls])
        np.testing.assert_array_equal(seen["scores"][i][:n], plain["scores"][i][cls])
        gaps, gap_scores = background_gaps(
            torch.from_numpy(segments[:n]), torch.from_numpy(seen["scores"][i][:n]), T
        )
        assert np.all(labels[n:] == background) and len(labels) == n + len(gaps)
        np.testing.assert_array_equal(segments[n:], gaps.numpy())
        np.testing.assert_array_equal(seen["scores"][i][n:], gap_scores.numpy())
    assert any(np.any(lab == background) for lab in seen["labels"])


@pytest.mark.parametrize("switch", ["background_gaps", "oracle"])
def test_keep_background_is_refused_where_nothing_reads_it(switch):
    with pytest.raises(ConfigError, match="pseudo.keep_background"):
        load_config(None, ["pseudo.keep_background=True", f"pseudo.{switch}=True"])
    load_config(None, [f"pseudo.{switch}=True"])  # alone, each is fine


def test_oracle_feeds_the_ground_truth_to_the_lp(data, monkeypatch):
    seen = _lp_inputs(monkeypatch)
    _pseudo_labels(data, "detect.class_threshold=0.0")  # the same model's detections
    background = 3
    detected = np.concatenate(
        [s[lab != background] for s, lab in zip(seen["scores"], seen["labels"], strict=True)]
    )
    score = detected[detected > 0].mean()
    cfg = load_config(None, [f"data.path={str(data)!r}"])
    train_fixed = open_datasets(cfg)[1]
    truth = train_fixed.segments_by_video()
    for gaps_too in (False, True):
        extra = ("pseudo.oracle=True", f"pseudo.background_gaps={gaps_too}")
        stats = _pseudo_labels(data, "detect.class_threshold=0.0", *extra)
        for i, video in enumerate(train_fixed.video_ids):
            gt_s, gt_labels = truth[video]
            rec = train_fixed[i]
            gt = seconds_to_snippets(gt_s, rec.fps, rec.snippet_frames)
            n = len(gt_labels)
            np.testing.assert_allclose(seen["segments"][i][:n], gt)
            assert np.array_equal(seen["labels"][i][:n], gt_labels)
            np.testing.assert_allclose(seen["scores"][i], score)
            T = seen["T"][i]
            gaps = background_gaps(torch.from_numpy(gt), torch.ones(n, dtype=torch.float64), T)[0]
            gaps = gaps if gaps_too else gaps[:0]  # the background column: the gaps or nothing
            np.testing.assert_allclose(seen["segments"][i][n:], gaps.numpy())
            assert np.all(seen["labels"][i][n:] == background)
        assert stats["quality"]["precision"] == 1.0 and stats["quality"]["recall"] == 1.0


def test_oracle_needs_ground_truth_on_every_training_video(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    ann = json.loads((copy / "annotations.json").read_text())
    video = next(v for v, r in ann["database"].items() if r["subset"] == "validation")
    ann["database"][video]["annotations"] = []
    (copy / "annotations.json").write_text(json.dumps(ann))
    run = tmp_path / "run"
    done = run_wtal(
        [
            "train",
            "configs/demo.yaml",
            "--data",
            str(copy),
            "--run-dir",
            str(run),
            "--set",
            "pseudo.oracle=True",
        ]
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "annotations.json" in done.stderr and repr(video) in done.stderr
    assert "pseudo.oracle" in done.stderr and not run.exists()
    cfg = load_config(None, [f"data.path={str(copy)!r}", "pseudo.enabled=False"])
    assert len(open_datasets(cfg)[1]) == 4  # without the oracle the video is fine


def test_oracle_score_without_a_positive_detection_or_a_video():
    pred = _prediction(0.5)
    seconds = 16.0 / 25.0  # one snippet
    truth = {"v": (np.array([[2 * seconds, 6 * seconds]]), np.array([1]))}
    f64 = torch.float64
    found = Segments(  # a negative class segment and a positive background one: no score
        torch.tensor([[0.0, 3.0], [10.0, 20.0]], dtype=f64),
        torch.tensor([-0.2, 0.7], dtype=f64),
        torch.tensor([-0.2, 0.7], dtype=f64),
        torch.tensor([0, 3]),
    )
    (out,) = regenerate._oracle_segments(truth, [pred], [found], background=3)
    assert out.segments.tolist() == [[2.0, 6.0]] and out.labels.tolist() == [1]
    assert out.scores.tolist() == [1.0]
    found = found._replace(scores=torch.tensor([0.3, 0.7], dtype=f64))
    assert regenerate._oracle_segments(truth, [pred], [found], 3)[0].scores.tolist() == [0.3]
    assert regenerate._oracle_segments({}, [], [], 3) == []  # a rank without videos
