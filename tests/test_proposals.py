"""Tests for wtal.proposals: the vectorized proposals against a literal per-run loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wtal.config import DetectConfig
from wtal.proposals import (
    Segments,
    _pairwise_sum_f32,
    generate_proposals,
)
from wtal.segments import REFERENCE_OUTER_BAND

THRESHOLDS = np.arange(0.001, 0.04, 0.002)
"""The reference's CAS thresholds: 0.001, 0.003, ..., 0.039."""

REFERENCE = {
    "class_threshold": 0.16,
    "thresholds": THRESHOLDS,
    "min_length": 2,
    "outer_scale": 0.0785,
    "outer_power": 0.9,
    "inclusive_end": True,
    "float32_means": False,
}
"""The reference's proposal settings (detectionMAP.py), written out here on purpose."""


def _propose(cas, video_scores, **settings):
    """:func:`generate_proposals` with the reference's settings, ``settings`` replacing some."""
    return generate_proposals(cas, video_scores, **(REFERENCE | settings))


def _reference_column(column, thresholds, min_length, scale, power, inclusive_end):
    """paper.md §1.4 for one CAS column, one threshold and one run at a time.

    ``column`` keeps its dtype: float32 means are numpy's float32 ``np.mean`` (the
    reference's arithmetic), float64 means are exact.
    """
    num_snippets = len(column)
    rows = []
    for theta in thresholds:
        if column.dtype == np.float32:
            theta = np.float32(theta)  # numpy 1.x compared a float32 CAS in float32
        inside = [bool(x > theta) for x in column]
        t = 0
        while t < num_snippets:
            if not inside[t]:
                t += 1
                continue
            s = t
            while t < num_snippets and inside[t]:
                t += 1
            e = t  # exclusive
            length = e - s
            if length < min_length:
                continue
            delta = scale * length**power
            if inclusive_end:
                inner = np.mean(column[s : e + 1])
                band = list(range(max(0, int(s - delta)), s))
                band += list(range(e + 1, min(num_snippets - 1, int(e + delta + 1))))
                end = e + 1
            else:
                inner = np.mean(column[s:e])
                band = list(range(max(0, int(s - delta)), s))
                band += list(range(e, min(num_snippets, int(e + delta))))
                end = e
            phi = inner - np.mean(column[band]) if band else inner
            rows.append((s, end, float(phi), float(inner)))
    return rows


def _reference(cas, video_scores, class_threshold=0.16, thresholds=THRESHOLDS, **kw):
    kw = {"min_length": 2, "scale": 0.0785, "power": 0.9, "inclusive_end": True} | kw
    out = []
    for c in range(cas.shape[1]):
        if video_scores[c] >= class_threshold:
            out += [(*r, c) for r in _reference_column(cas[:, c], thresholds, **kw)]
    return out


def _random_cas(rng, num_snippets, num_classes, dtype=np.float64):
    """Spiky CAS: log-normal background (around the thresholds) plus a few plateaus."""
    cas = np.exp(rng.normal(np.log(0.01), 1.2, size=(num_snippets, num_classes)))
    for c in range(num_classes):
        for _ in range(rng.integers(0, 4)):
            s = int(rng.integers(0, num_snippets))
            cas[s : s + int(rng.integers(1, 30)), c] += rng.uniform(0.05, 1.0)
    return np.clip(cas, 0, 1).astype(dtype)


def _assert_matches(out: Segments, ref, exact: bool):
    assert len(out.scores) == len(ref)
    if not ref:
        return
    ref = np.array(ref, dtype=np.float64)
    np.testing.assert_array_equal(out.segments.numpy(), ref[:, :2])
    np.testing.assert_array_equal(out.labels.numpy(), ref[:, 4].astype(np.int64))
    if exact:
        np.testing.assert_array_equal(out.scores.numpy(), ref[:, 2])
        np.testing.assert_array_equal(out.inner.numpy(), ref[:, 3])
    else:
        np.testing.assert_allclose(out.scores.numpy(), ref[:, 2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(out.inner.numpy(), ref[:, 3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    num_snippets = int(rng.integers(1, 300))
    cas = _random_cas(rng, num_snippets, 4)
    scores = rng.uniform(0, 0.4, size=4)
    out = _propose(torch.from_numpy(cas), scores)
    _assert_matches(out, _reference(cas, scores), exact=False)
    assert out.segments.dtype == out.scores.dtype == out.inner.dtype == torch.float64
    assert out.labels.dtype == torch.int64


@pytest.mark.parametrize("seed", range(6))
def test_float32_means_bit_identical_to_numpy(seed):
    rng = np.random.default_rng(100 + seed)
    cas = _random_cas(rng, int(rng.integers(150, 700)), 3, np.float32)
    cas[:, 0] = np.maximum(cas[:, 0], 0.05)  # one run over the whole video: sums > 128 values
    scores = np.full(3, 0.5)
    out = _propose(cas, scores, float32_means=True)
    _assert_matches(out, _reference(cas, scores), exact=True)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("inclusive_end", [True, False])
@pytest.mark.parametrize("band", ["reference", "textbook"])
def test_variants_match_loop_reference(seed, inclusive_end, band):
    rng = np.random.default_rng(200 + seed)
    cas = _random_cas(rng, int(rng.integers(20, 200)), 3)
    scores = np.ones(3)
    scale, power = {"reference": REFERENCE_OUTER_BAND, "textbook": (0.25, 1.0)}[band]
    thresholds = np.sort(rng.uniform(0.001, 0.3, size=5))
    min_length = int(rng.integers(1, 4))
    out = _propose(
        cas,
        scores,
        thresholds=thresholds,
        min_length=min_length,
        outer_scale=scale,
        outer_power=power,
        inclusive_end=inclusive_end,
    )
    ref = _reference(
        cas,
        scores,
        thresholds=thresholds,
        min_length=min_length,
        scale=scale,
        power=power,
        inclusive_end=inclusive_end,
    )
    _assert_matches(out, ref, exact=False)


def test_hand_computed_case():
    # One run [2, 5) of length 3 at every threshold; delta = 0.0785 * 3**0.9 = 0.21.
    cas = np.array([[0.0], [0.0], [0.5], [0.6], [0.7], [0.1], [0.0], [0.0]])
    out = _propose(cas, np.ones(1), thresholds=[0.2])
    # inner includes snippet 5: mean(0.5, 0.6, 0.7, 0.1) = 0.475; end stored as 6.
    # outer band: [trunc(2 - 0.21) = 1, 2) and [6, min(7, trunc(5.21 + 1) = 6)) -> {1}: 0.
    assert out.segments.tolist() == [[2.0, 6.0]]
    assert out.inner.item() == pytest.approx(0.475)
    assert out.scores.item() == pytest.approx(0.475)
    half_open = _propose(cas, np.ones(1), thresholds=[0.2], inclusive_end=False)
    assert half_open.segments.tolist() == [[2.0, 5.0]]
    # inner mean(0.5, 0.6, 0.7) = 0.6; outer {1} (right band [5, trunc(5.21) = 5) is empty).
    assert half_open.scores.item() == pytest.approx(0.6)


def test_class_filter_and_order():
    rng = np.random.default_rng(7)
    cas = _random_cas(rng, 120, 5)
    scores = np.array([0.16, 0.1599, 0.9, 0.0, 0.2])
    out = _propose(cas, scores)
    assert set(out.labels.tolist()) <= {0, 2, 4}  # >= threshold passes, equality included
    assert {0, 2, 4} <= set(out.labels.tolist())
    labels = out.labels.numpy()
    assert np.all(np.diff(labels) >= 0)  # classes ascending, then generation order
    assert len(_propose(cas, scores, class_threshold=0.95).scores) == 0


def test_runs_touching_both_ends():
    cas = np.full((10, 1), 0.5)  # one run [0, 10): inner slice stops at T, end stored T + 1
    out = _propose(cas, np.ones(1), thresholds=[0.1])
    assert out.segments.tolist() == [[0.0, 11.0]]
    assert out.scores.item() == pytest.approx(0.5)  # no outer band at all


@pytest.mark.parametrize(
    "cas, scores, thresholds",
    [
        (np.zeros((0, 3)), np.ones(3), THRESHOLDS),  # no snippets
        (np.ones((5, 3)), np.zeros(3), THRESHOLDS),  # no class passes
        (np.ones((5, 3)), np.ones(3), []),  # no thresholds
        (np.zeros((5, 3)), np.ones(3), THRESHOLDS),  # CAS never above a threshold
        (np.ones((1, 3)), np.ones(3), THRESHOLDS),  # runs shorter than min_length
    ],
)
def test_empty(cas, scores, thresholds):
    out = _propose(cas, scores, thresholds=thresholds)
    assert out.segments.shape == (0, 2) and out.scores.shape == out.labels.shape == (0,)
    out32 = _propose(cas, scores, thresholds=thresholds, float32_means=True)
    assert out32.segments.shape == (0, 2)


def test_bad_shapes():
    with pytest.raises(ValueError, match="cas must be"):
        _propose(np.zeros(5), np.ones(1))
    with pytest.raises(ValueError, match="video_scores"):
        _propose(np.zeros((5, 2)), np.ones(3))


def test_pairwise_sum_f32_is_numpy_sum():
    rng = np.random.default_rng(3)
    values = (rng.random(5000) ** 3).astype(np.float32)
    flat = torch.from_numpy(np.concatenate([values, [np.float32(0)]]))
    lengths = np.array(list(range(0, 300)) + [511, 1024, 1999, 2500])
    a_start = rng.integers(0, 2000, size=len(lengths))
    a_len = np.minimum(rng.integers(0, 400, size=len(lengths)), lengths)
    b_start = rng.integers(0, 2000, size=len(lengths))
    got = _pairwise_sum_f32(
        flat, *(torch.from_numpy(x) for x in (a_start, a_len, b_start, lengths))
    ).numpy()
    for k, n in enumerate(lengths):
        listed = np.concatenate(
            [values[a_start[k] : a_start[k] + a_len[k]], values[b_start[k] :][: n - a_len[k]]]
        )
        assert got[k] == np.sum(listed, dtype=np.float32), n


def test_detect_config_defaults_are_the_reference_settings():
    dcfg = DetectConfig()
    np.testing.assert_array_equal(np.arange(*dcfg.thresholds), THRESHOLDS)
    defaults = {k: getattr(dcfg, k) for k in REFERENCE if k != "thresholds"}
    assert defaults == {k: v for k, v in REFERENCE.items() if k != "thresholds"}
