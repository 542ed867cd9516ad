"""Tests for wtal.fusion: fusion, NMS and soft-NMS against literal per-class loops; and the
one detection path :func:`wtal.inference.detect_segments` that calls them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from wtal.config import DetectConfig
from wtal.configcheck import ConfigError
from wtal.fusion import (
    gaussian_fuse,
    greedy_clusters,
    nms,
    segment_overlap,
    soft_nms,
)
from wtal.inference import detect_segments
from wtal.proposals import Segments, generate_proposals
from wtal.segments import pairwise_tiou

F64 = torch.float64

PROPOSALS = {
    "class_threshold": 0.16,
    "thresholds": np.arange(0.001, 0.04, 0.002),
    "min_length": 2,
    "outer_scale": 0.0785,
    "outer_power": 0.9,
    "inclusive_end": True,
    "float32_means": False,
}
"""The reference's proposal settings (detectionMAP.py), written out here on purpose."""

RATIO = {"overlap_threshold": 0.25, "overlap": "ratio"}
"""The reference's clustering: overlap ratio above 0.25."""


def _fuse(p: Segments, **settings) -> Segments:
    """:func:`gaussian_fuse` at the reference's test-time settings, ``settings`` replacing some."""
    return gaussian_fuse(p, **({"temperature": 0.2, **RATIO} | settings))


# ----------------------------------------------------------------------------- references


def _overlap(anchor, other, measure):
    (a_s, a_e), (o_s, o_e) = anchor, other
    if measure == "ratio":
        return max(0.0, min(a_e, o_e) - max(a_s, o_s) + 1) / (o_e - o_s + 1)
    inter = max(0.0, min(a_e, o_e) - max(a_s, o_s))
    union = (a_e - a_s) + (o_e - o_s) - inter
    return inter / union if union > 0 else 0.0


def _rows(p: Segments):
    return list(
        zip(
            p.segments.tolist(), p.scores.tolist(), p.inner.tolist(), p.labels.tolist(), strict=True
        )
    )


def _greedy_reference(p: Segments, threshold, measure):
    """Per class: best remaining (ties: lower index), absorb overlap > threshold, repeat."""
    rows = _rows(p)
    clusters = []
    for c in sorted(set(p.labels.tolist())):
        pool = [j for j, r in enumerate(rows) if r[3] == c]
        while pool:
            i = max(pool, key=lambda j: (rows[j][1], -j))
            group = [i] + [
                j for j in pool if j != i and _overlap(rows[i][0], rows[j][0], measure) > threshold
            ]
            clusters.append((c, group))
            pool = [j for j in pool if j not in group]
    return rows, clusters


def _fuse_reference(p: Segments, temperature, threshold=0.25, measure="ratio"):
    """paper.md §1.5 with plain exp(inner / T) weights and a member-by-member sum."""
    rows, clusters = _greedy_reference(p, threshold, measure)
    out = []
    for c, group in clusters:
        s = e = phi = inner = d = 0.0
        for j in group:
            (s_j, e_j), phi_j, inner_j, _ = rows[j]
            w = math.exp(inner_j / temperature)
            s, e, phi, inner = s + w * s_j, e + w * e_j, phi + w * phi_j, inner + w * inner_j
            d += np.sign(inner_j) * w
        out.append((c, s / d, e / d, phi / d, inner / d))
    return sorted(out, key=lambda r: (r[0], -r[3]))


def _soft_nms_reference(p: Segments, sigma, measure, score_threshold=None):
    rows = _rows(p)
    out = []
    for c in sorted(set(p.labels.tolist())):
        pool = {j: rows[j][1] for j, r in enumerate(rows) if r[3] == c}
        if score_threshold is not None:
            pool = {j: v for j, v in pool.items() if v >= score_threshold}
        while pool:
            i = max(pool, key=lambda j: (pool[j], -j))
            out.append((c, *rows[i][0], pool.pop(i)))
            for j in pool:
                pool[j] *= math.exp(-(_overlap(rows[i][0], rows[j][0], measure) ** 2) / sigma)
            if score_threshold is not None:
                pool = {j: v for j, v in pool.items() if v >= score_threshold}
    return sorted(out, key=lambda r: (r[0], -r[3]))


def _table(out: Segments):
    return np.column_stack(
        [out.labels.numpy(), out.segments.numpy(), out.scores.numpy(), out.inner.numpy()]
    )


def _random_proposals(rng, n, num_classes=3, length=60.0, integer=False) -> Segments:
    start = rng.uniform(0, length, size=n)
    end = start + rng.uniform(0, 12, size=n)
    if integer:
        start, end = np.floor(start), np.floor(end) + 1
    return Segments(
        torch.from_numpy(np.stack([start, end], 1)),
        torch.from_numpy(rng.normal(0.2, 0.3, size=n)),
        torch.from_numpy(rng.uniform(0.01, 1.0, size=n)),
        torch.from_numpy(rng.integers(0, num_classes, size=n)),
    )


def _cas_proposals(seed) -> Segments:
    rng = np.random.default_rng(seed)
    num_snippets = int(rng.integers(50, 400))
    cas = np.exp(rng.normal(np.log(0.01), 1.2, size=(num_snippets, 3)))
    for c in range(3):
        for _ in range(4):
            s = int(rng.integers(0, num_snippets))
            cas[s : s + int(rng.integers(2, 40)), c] += rng.uniform(0.05, 1.0)
    return generate_proposals(np.clip(cas, 0, 1), np.ones(3), **PROPOSALS)


# ----------------------------------------------------------------------------- fusion


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("temperature", [0.2, 0.02])
def test_fuse_matches_reference_on_cas_proposals(seed, temperature):
    p = _cas_proposals(seed)
    out = _fuse(p, temperature=temperature)
    ref = np.array(_fuse_reference(p, temperature)).reshape(-1, 5)
    got = _table(out)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got[:, 0], ref[:, 0])
    np.testing.assert_allclose(got[:, 1:], ref[:, 1:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("measure", ["ratio", "iou"])
def test_fuse_matches_reference_on_random_segments(seed, measure):
    # Fractional segments, some less than one snippet apart (the ratio's +1 arithmetic
    # makes them overlap), some of zero length.
    rng = np.random.default_rng(50 + seed)
    p = _random_proposals(rng, int(rng.integers(1, 80)))
    threshold = float(rng.choice([0.0, 0.25, 0.5]))
    out = gaussian_fuse(p, temperature=0.1, overlap_threshold=threshold, overlap=measure)
    ref = np.array(_fuse_reference(p, 0.1, threshold, measure)).reshape(-1, 5)
    np.testing.assert_allclose(_table(out), ref, rtol=1e-10, atol=1e-10)


def test_fusing_identical_proposals_returns_it():
    p = Segments(
        torch.tensor([[3.0, 17.0]] * 5, dtype=F64),
        torch.full((5,), 0.4, dtype=F64),
        torch.full((5,), 0.7, dtype=F64),
        torch.zeros(5, dtype=torch.long),
    )
    for temperature in (0.2, 0.0016):
        out = _fuse(p, temperature=temperature)
        assert out.segments.tolist() == [[3.0, 17.0]]  # exactly, not 1 ulp off
        assert out.scores.tolist() == [0.4] and out.inner.tolist() == [0.7]


def test_single_proposal_passes_through():
    p = Segments(
        torch.tensor([[1103.0, 1110.0]], dtype=F64),
        torch.tensor([0.123456789], dtype=F64),
        torch.tensor([0.987654321], dtype=F64),
        torch.tensor([4]),
    )
    out = _fuse(p, temperature=0.02)
    for got, want in zip(out, p, strict=True):
        assert torch.equal(got, want)


def test_small_temperature_takes_max_inner_boundaries_without_overflow():
    p = Segments(
        torch.tensor([[10.0, 30.0], [12.0, 28.0], [9.0, 31.0]], dtype=F64),
        torch.tensor([0.5, 0.4, 0.3], dtype=F64),
        torch.tensor(
            [3.0, 5.0, 4.0], dtype=F64
        ),  # exp(5 / 1e-4) overflows float64: log-space needed
        torch.zeros(3, dtype=torch.long),
    )
    out = _fuse(p, temperature=1e-4)
    assert out.segments.tolist() == [[12.0, 28.0]]
    assert out.scores.tolist() == [0.4]
    assert torch.isfinite(out.scores).all()


def test_sign_denominator():
    p = Segments(
        torch.tensor([[0.0, 10.0], [1.0, 9.0]], dtype=F64),
        torch.tensor([0.5, 0.4], dtype=F64),
        torch.tensor([0.3, -0.3], dtype=F64),
        torch.zeros(2, dtype=torch.long),
    )
    w = np.exp(np.array([0.3, -0.3]) / 0.2)
    plain = _fuse(p, sign_denominator=False)
    assert plain.scores.item() == pytest.approx((w @ [0.5, 0.4]) / w.sum())
    signed = _fuse(p)  # reference: sum sign(inner) * w = w0 - w1 > 0
    assert signed.scores.item() == pytest.approx((w @ [0.5, 0.4]) / (w[0] - w[1]))
    p_neg = p._replace(inner=torch.tensor([-0.3, -0.2], dtype=F64))
    with pytest.raises(ValueError, match="not positive"):
        _fuse(p_neg)


def test_ratio_overlap_is_asymmetric_and_inclusive():
    anchor = torch.tensor([[0.0, 100.0], [0.0, 4.0], [0.0, 4.0]], dtype=F64)
    other = torch.tensor([[40.0, 42.0], [4.0, 8.0], [5.0, 6.0]], dtype=F64)
    # contained: 3/3; touching at 4: inclusive intersection 1 of length 5; gap of 1: 0.
    assert segment_overlap(anchor, other, "ratio").tolist() == [1.0, 0.2, 0.0]
    assert segment_overlap(other, anchor, "ratio")[0].item() == pytest.approx(3 / 101)


def test_iou_overlap_matches_pairwise_tiou():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 20, size=(30, 2)), axis=1)
    b = np.sort(rng.uniform(0, 20, size=(30, 2)), axis=1)
    got = segment_overlap(torch.from_numpy(a), torch.from_numpy(b), "iou").numpy()
    np.testing.assert_allclose(got, np.diag(pairwise_tiou(a, b)), rtol=1e-12, atol=1e-15)


def test_clusters_point_to_their_anchor():
    p = _cas_proposals(3)
    owner = greedy_clusters(p, **RATIO)
    anchors = owner.unique()
    assert torch.equal(owner[anchors], anchors)  # anchors own themselves
    assert torch.equal(p.labels[owner], p.labels)  # clusters never cross classes


# ----------------------------------------------------------------------------- NMS, soft-NMS


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("measure", ["ratio", "iou"])
def test_nms_matches_reference(seed, measure):
    rng = np.random.default_rng(100 + seed)
    p = _random_proposals(rng, int(rng.integers(1, 80)), integer=seed % 2 == 0)
    threshold = float(rng.choice([0.1, 0.25, 0.5]))
    rows, clusters = _greedy_reference(p, threshold, measure)
    kept = sorted(
        ((c, *rows[g[0]][0], rows[g[0]][1]) for c, g in clusters), key=lambda r: (r[0], -r[3])
    )
    out = nms(p, overlap_threshold=threshold, overlap=measure)
    np.testing.assert_array_equal(_table(out)[:, :4], np.array(kept).reshape(-1, 4))


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("measure", ["ratio", "iou"])
def test_soft_nms_matches_reference(seed, measure):
    rng = np.random.default_rng(200 + seed)
    p = _random_proposals(rng, int(rng.integers(1, 60)))
    p = p._replace(scores=p.scores.abs())  # soft-NMS assumes positive scores
    threshold = None if seed % 2 else 0.05
    out = soft_nms(p, sigma=0.5, overlap=measure, score_threshold=threshold)
    ref = np.array(_soft_nms_reference(p, 0.5, measure, threshold)).reshape(-1, 4)
    np.testing.assert_allclose(_table(out)[:, :4], ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- detect


@pytest.mark.parametrize("method", ["gaussian", "nms", "soft-nms", "none"])
def test_empty_inputs(method):
    empty = Segments.empty()
    for out in (_fuse(empty), nms(empty, **RATIO), soft_nms(empty, sigma=0.5, overlap="ratio")):
        assert out.segments.shape == (0, 2) and out.labels.shape == (0,)
    assert greedy_clusters(empty, **RATIO).shape == (0,)
    dcfg = DetectConfig(fusion=method)
    out = detect_segments(np.zeros((0, 4)), np.ones(4), dcfg)
    assert out.segments.shape == (0, 2)
    out = detect_segments(np.ones((30, 4)), np.zeros(4), dcfg)  # no class passes
    assert out.segments.shape == (0, 2)


@pytest.mark.parametrize("method", ["gaussian", "nms", "soft-nms", "none"])
def test_detect_order_and_composition(method):
    """The default detection settings are the reference's, passed to the right kernel."""
    rng = np.random.default_rng(9)
    num_snippets = 80 if method == "soft-nms" else 300  # soft-NMS: one round per proposal
    cas = np.clip(np.exp(rng.normal(np.log(0.02), 1.5, size=(num_snippets, 5))), 0, 1)
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.2])
    out = detect_segments(torch.from_numpy(cas), scores, DetectConfig(fusion=method))
    labels, s = out.labels.numpy(), out.scores.numpy()
    assert np.all(np.diff(labels) >= 0)
    for c in np.unique(labels):
        assert np.all(np.diff(s[labels == c]) <= 0)
    assert 1 not in labels
    proposals = generate_proposals(cas, scores, **PROPOSALS)
    if method == "gaussian":
        want = _fuse(proposals)
    elif method == "nms":
        want = nms(proposals, **RATIO)
    elif method == "soft-nms":
        want = soft_nms(proposals, sigma=0.5, overlap="ratio")
    else:
        want = proposals
        assert len(out.scores) == len(proposals.scores)
        return
    for got, expected in zip(out, want, strict=True):
        assert torch.equal(got, expected)


def test_detect_takes_every_setting_from_the_config():
    rng = np.random.default_rng(4)
    cas = np.clip(np.exp(rng.normal(np.log(0.05), 1.0, size=(200, 3))), 0, 1)
    scores = np.array([0.9, 0.5, 0.05])
    dcfg = DetectConfig(
        class_threshold=0.04,
        thresholds=(0.01, 0.2, 0.03),
        min_length=3,
        outer_scale=0.25,
        outer_power=1.0,
        inclusive_end=False,
        temperature=0.05,
        overlap_threshold=0.4,
        overlap="iou",
    )
    proposals = generate_proposals(
        cas,
        scores,
        class_threshold=0.04,
        thresholds=np.arange(0.01, 0.2, 0.03),
        min_length=3,
        outer_scale=0.25,
        outer_power=1.0,
        inclusive_end=False,
        float32_means=False,
    )
    assert 2 in proposals.labels.tolist()  # the class filter follows the config
    want = gaussian_fuse(proposals, temperature=0.05, overlap_threshold=0.4, overlap="iou")
    for got, expected in zip(detect_segments(cas, scores, dcfg), want, strict=True):
        assert torch.equal(got, expected)
    # An explicit temperature (the pseudo labels') replaces the config's.
    cold = gaussian_fuse(proposals, temperature=0.002, overlap_threshold=0.4, overlap="iou")
    for got, expected in zip(
        detect_segments(cas, scores, dcfg, temperature=0.002), cold, strict=True
    ):
        assert torch.equal(got, expected)
    assert not torch.equal(cold.segments, want.segments)
    sigma = DetectConfig(fusion="soft-nms", soft_nms_sigma=0.1, overlap="iou")
    soft = soft_nms(generate_proposals(cas, scores, **PROPOSALS), sigma=0.1, overlap="iou")
    for got, expected in zip(detect_segments(cas, scores, sigma), soft, strict=True):
        assert torch.equal(got, expected)


def test_bad_arguments():
    p = _cas_proposals(0)
    with pytest.raises(ValueError, match="temperature"):
        _fuse(p, temperature=0)
    with pytest.raises(ValueError, match="overlap_threshold"):
        nms(p, overlap_threshold=-0.1, overlap="ratio")
    with pytest.raises(ValueError, match="overlap measure"):
        nms(p, overlap_threshold=0.25, overlap="giou")
    with pytest.raises(ConfigError, match="detect.fusion"):
        DetectConfig(fusion="wbf")


# ----------------------------------------------------------------------------- parity


def test_parity_with_reference_outputs(shared_data):
    """Every stored fused segment of the authors' code (README in reference_outputs/)."""
    path = shared_data / "reference_outputs" / "postprocess_lp_parity.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = np.load(path)
    for v in range(data["cas"].shape[0]):
        dcfg = DetectConfig(class_threshold=0.16, overlap_threshold=0.25)
        reference = detect_segments(
            data["cas"][v], data["vid"][v], replace(dcfg, float32_means=True), temperature=0.02
        )
        exact = detect_segments(data["cas"][v], data["vid"][v], dcfg, temperature=0.02)
        for c in range(data["cas"].shape[2]):
            want = data[f"fused_{v}_{c}"].reshape(-1, 3)
            m = reference.labels == c
            got = torch.cat([reference.segments[m], reference.scores[m, None]], dim=1).numpy()
            assert got.shape == want.shape, (v, c)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=f"video {v} col {c}")
            # Exact float64 means differ from the reference's float32 ones by ~1e-7 relative.
            m = exact.labels == c
            got = torch.cat([exact.segments[m], exact.scores[m, None]], dim=1).numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"video {v} col {c}")
