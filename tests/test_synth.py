"""The synthetic benchmark: deterministic, exact ground truth, and hard in the intended ways."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from wtal.io import InputError
from wtal.segments import seconds_to_snippets, snippets_to_seconds
from wtal.synth import ANET, THUMOS, SynthSpec, _Prototypes, apply_overrides, generate_synthetic

TINY = replace(THUMOS, train_videos=6, test_videos=6, feat_dim=16, max_snippets=120)


@pytest.fixture(scope="module")
def thumos():
    return generate_synthetic(THUMOS, seed=0)


def test_same_seed_same_numbers_other_seed_other_numbers():
    a_rec, a_feat, _ = generate_synthetic(TINY, seed=7)
    b_rec, b_feat, _ = generate_synthetic(TINY, seed=7)
    c_rec, c_feat, _ = generate_synthetic(TINY, seed=8)
    for x, y in zip(a_feat, b_feat, strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a_rec, b_rec, strict=True):
        np.testing.assert_array_equal(x.segments_s, y.segments_s)
        assert x.segment_labels == y.segment_labels and x.duration_s == y.duration_s
    assert not all(np.array_equal(x, y) for x, y in zip(a_feat, c_feat, strict=False))


def test_ground_truth_is_exact_on_the_snippet_grid(thumos):
    records, features, names = thumos
    for rec, feats in zip(records, features, strict=True):
        assert feats.dtype == np.float32 and feats.shape[1] == THUMOS.feat_dim
        assert feats.min() >= 0  # ReLU features, I3D-like
        assert rec.duration_s == snippets_to_seconds(len(feats), 25, 16)
        spans = np.concatenate([rec.segments_s, rec.ambiguous_s])
        spans = spans[np.argsort(spans[:, 0])]
        snippets = seconds_to_snippets(spans, 25, 16)
        np.testing.assert_allclose(snippets, np.round(snippets), atol=1e-9)
        assert snippets.min() >= 0 and snippets.max() <= len(feats) + 1e-9
        assert np.all(snippets[:, 1] > snippets[:, 0])
        gaps = snippets[1:, 0] - snippets[:-1, 1]  # non-overlapping, min gap respected
        assert np.all(gaps >= THUMOS.min_gap_snippets - 1e-9)
        assert set(rec.labels) == set(rec.segment_labels) and set(rec.labels) <= set(names)


def test_thumos_preset_statistics(thumos):
    records, features, names = thumos
    assert len(names) == 20
    train = [r for r in records if r.subset == "validation"]
    test = [r for r in records if r.subset == "test"]
    assert (len(train), len(test)) == (200, 212)
    counts = np.array([len(r.segment_labels) for r in records])
    assert 10 <= counts.mean() <= 20 and counts.std() > 5 and counts.max() >= 40
    lengths = np.array([len(f) for f in features])
    assert lengths.min() == THUMOS.min_snippets and lengths.max() == THUMOS.max_snippets
    assert sum(len(r.labels) > 1 for r in records) >= 30  # multi-label videos
    assert sum(len(r.ambiguous_s) for r in test) > 0 and all(len(r.ambiguous_s) == 0 for r in train)
    assert sum(f.nbytes for f in features) < 100e6  # per layout, comfortably small


def test_anet_preset_statistics():
    records, features, names = generate_synthetic(ANET, seed=0)
    assert len(names) == 50 and len(records) == 900
    counts = np.array([len(r.segment_labels) for r in records])
    assert counts.min() >= 1 and counts.mean() < 2
    coverage = [np.ptp(r.segments_s, axis=1).sum() / r.duration_s for r in records]
    assert np.median(coverage) > 0.3  # long instances


def _projections(spec, seed, records, features):
    """Per-snippet projections on each class's action and context prototypes."""
    protos = _Prototypes(np.random.default_rng(seed), spec)  # the generator's first draws
    names = [f"action_{c:03d}" for c in range(spec.num_classes)]
    zones = {k: ([], []) for k in ("core", "edge", "near", "far")}
    for rec, feats in zip(records, features, strict=True):
        centered = feats - feats.mean(0)
        spans = np.round(seconds_to_snippets(rec.segments_s, spec.fps, spec.snippet_frames))
        covered = np.zeros(len(feats), bool)
        for s, e in spans.astype(int):
            covered[max(0, s - 12) : e + 12] = True
        for (s, e), name in zip(spans.astype(int), rec.segment_labels, strict=True):
            c = names.index(name)
            act = centered @ protos.action[c] / spec.feat_dim
            ctx = centered @ protos.context[c] / spec.feat_dim
            if e - s >= 6:
                zones["core"][0].append(act[s + (e - s) // 2])
                zones["edge"][0].extend([act[s], act[e - 1]])
            if s >= 1:
                zones["near"][1].append(ctx[s - 1])  # the snippet just before the action
            zones["far"][0].extend(act[~covered])
            zones["far"][1].extend(ctx[~covered])

    def mean(values):
        return float(np.mean(values)) if values else float("nan")

    return {k: (mean(a), mean(b)) for k, (a, b) in zones.items()}


def test_signal_is_strong_in_the_core_weak_at_edges_and_context_leaks():
    spec = replace(THUMOS, train_videos=40, test_videos=1)
    records, features, _ = generate_synthetic(spec, seed=1)
    zones = _projections(spec, 1, records, features)
    core, edge, far = zones["core"][0], zones["edge"][0], zones["far"][0]
    # Incompleteness: the boundary carries some class signal, far less than the core.
    assert core - far > 3 * (edge - far) > 0
    # Context confusion: the class's context is clearly up just outside its actions.
    assert zones["near"][1] - zones["far"][1] > 0.25 * (core - far)


def test_apply_overrides():
    spec = apply_overrides(THUMOS, ["train_videos=3", "noise_std=2", "name='X'", "test_subset=val"])
    assert (spec.train_videos, spec.noise_std, spec.name, spec.test_subset) == (3, 2.0, "X", "val")
    with pytest.raises(InputError, match="family_similarity"):
        apply_overrides(THUMOS, ["family_similarity=1.0"])
    with pytest.raises(InputError, match="expected FIELD=VALUE"):
        apply_overrides(THUMOS, ["train_videos"])
    with pytest.raises(ValueError):
        SynthSpec(min_snippets=50, max_snippets=40)
