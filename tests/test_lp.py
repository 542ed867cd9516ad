"""Tests of wtal.lp: the §1.6 LP's regions, and its labels against slow scipy references
(HiGHS for the optimum, bounded least squares for the least-norm point of the optimal face)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, lsq_linear

from wtal.io import InputError
from wtal.lp import GAP_TOL, lp_regions, solve_pseudo_labels, solve_pseudo_labels_batch


def _reference_matrix(segments: np.ndarray, T: int) -> np.ndarray:
    """Literal per-instance loop of paper.md §1.6.4 (slow, obviously right)."""
    A = np.zeros((len(segments), T))
    for k, (start, end) in enumerate(segments):
        s, e = int(start), int(end)
        delta = 0.0785 * (e - s) ** 0.9
        os_, oe = max(0, int(s - delta)), min(T - 1, int(e + delta + 1))
        A[k, s:e] = 1.0
        A[k, os_:s] = -1.0
        A[k, e:oe] = -1.0
    return A


def _region_matrix(segments: np.ndarray, T: int) -> np.ndarray:
    """The (N, T) constraint rows that :func:`lp_regions` describes."""
    A = np.zeros((len(segments), T))
    for k, (lo, s, e, hi) in enumerate(zip(*lp_regions(segments, T), strict=True)):
        A[k, lo : max(e, hi)] = -1.0
        A[k, s:e] = 1.0
    return A


def _random_video(rng: np.random.Generator, T: int, n: int, ncol: int, neg: float = 0.1):
    starts = rng.uniform(0, T - 4, n)
    ends = np.minimum(starts + rng.uniform(2, 12, n), T + 0.9)
    scores = rng.uniform(0.0, 0.5, n) * np.where(rng.random(n) < neg, -0.05, 1.0)
    labels = rng.integers(0, ncol, n)
    return np.stack([starts, ends], 1), scores, labels


def _lexicographic_reference(A: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Least total violation, then least mass, via two dense HiGHS LPs."""
    K, T = A.shape
    A_el = np.hstack([A, np.eye(K), -np.eye(K)])
    bounds = [(0, 1)] * T + [(0, None)] * (2 * K)
    c1 = np.r_[np.zeros(T), np.ones(2 * K)]
    r1 = linprog(c1, A_eq=A_el, b_eq=b, bounds=bounds, method="highs")
    viol = r1.fun
    c2 = np.r_[np.ones(T), np.zeros(2 * K)]
    r2 = linprog(
        c2, A_eq=A_el, b_eq=b, A_ub=c1[None], b_ub=[viol + 1e-9], bounds=bounds, method="highs"
    )
    return viol, r2.fun


def _least_norm_on_face(A: np.ndarray, b: np.ndarray, mass: float) -> np.ndarray:
    """Least-norm point of the optimal face ``{A y = b, sum y = mass, 0 <= y <= 1}`` by the
    method of multipliers: each step is the bounded least-squares problem
    ``min |y|^2 + W^2 |C y - d - shift|^2`` (scipy's lsq_linear), and ``shift`` accumulates the
    residual until ``C y = d``. Three steps reach ~1e-8 here; five for margin."""
    C, d = np.vstack([A, np.ones((1, A.shape[1]))]), np.r_[b, mass]
    weight, shift = 1e3, np.zeros(len(d))
    M = np.vstack([weight * C, np.eye(A.shape[1])])
    for _ in range(5):
        rhs = np.r_[weight * (d + shift), np.zeros(A.shape[1])]
        y = lsq_linear(M, rhs, bounds=(0.0, 1.0), method="bvls", tol=1e-14).x
        shift += d - C @ y
    return y


def _check_optimal_least_norm(seg, scores, labels, pseudo, T, ncol):
    """Per column: least violation and least mass (linprog); where feasible, every
    constraint met and the least-norm point of the optimal face (lsq_linear)."""
    assert np.isfinite(pseudo).all() and pseudo.min() >= 0 and pseudo.max() <= 1
    for c in range(ncol):
        m = labels == c
        if not m.any():
            assert np.all(pseudo[:, c] == 0)
            continue
        A, b, y = _reference_matrix(seg[m], T), scores[m], pseudo[:, c]
        viol, mass = _lexicographic_reference(A, b)
        assert np.abs(A @ y - b).sum() == pytest.approx(viol, abs=1e-6)
        assert y.sum() == pytest.approx(mass, abs=1e-6)
        if viol < 1e-9:
            assert np.abs(A @ y - b).max() < 1e-6
            np.testing.assert_allclose(y, _least_norm_on_face(A, b, mass), atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_lp_regions_match_loop(seed):
    rng = np.random.default_rng(seed)
    T = 60
    seg, _, _ = _random_video(rng, T, 12, 1)
    np.testing.assert_array_equal(_region_matrix(seg, T), _reference_matrix(seg, T))


def test_isolated_instance_is_uniform_on_inner():
    T = 30
    pseudo, stats = solve_pseudo_labels([[10.4, 14.9]], [0.35], [2], T, 4)
    expected = np.zeros((T, 4))
    expected[10:14, 2] = 0.35 / 4
    np.testing.assert_allclose(pseudo, expected, atol=1e-15)
    assert stats.n_closed_form == 1 and stats.n_groups == 0 and stats.n_infeasible == 0


def test_isolated_negative_score_spreads_over_outer():
    T = 100
    seg = np.array([[40.0, 60.0]])
    pseudo, _ = solve_pseudo_labels(seg, [-0.3], [0], T, 1)
    A = _reference_matrix(seg, T)
    outer = A[0] < 0
    np.testing.assert_allclose(pseudo[outer, 0], 0.3 / outer.sum())
    assert np.all(pseudo[~outer, 0] == 0)


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_equals_newton(seed):
    rng = np.random.default_rng(seed)
    T, n = 400, 8
    starts = np.arange(n) * 48 + rng.uniform(5, 10, n)  # far apart: isolated
    seg = np.stack([starts, starts + rng.uniform(3, 20, n)], 1)
    scores = rng.uniform(-0.2, 0.6, n)
    labels = rng.integers(0, 2, n)
    fast, s1 = solve_pseudo_labels(seg, scores, labels, T, 2)
    slow, s2 = solve_pseudo_labels(seg, scores, labels, T, 2, closed_form=False)
    assert s1.n_closed_form == n and s2.n_groups == n and s2.n_fallback == 0
    np.testing.assert_allclose(fast, slow, atol=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_random_coupled_optimal_feasible_least_norm(seed):
    rng = np.random.default_rng(seed)
    T, ncol = 40, 2
    seg, scores, labels = _random_video(rng, T, 8, ncol)
    pseudo, stats = solve_pseudo_labels(seg, scores, labels, T, ncol)
    assert stats.n_groups > 0 and stats.n_fallback == 0 and stats.max_gap <= GAP_TOL
    _check_optimal_least_norm(seg, scores, labels, pseudo, T, ncol)


@pytest.mark.parametrize("seed", [15, 144, 3, 4, 5, 6])
def test_heavy_overlap_groups_optimal_and_least_norm(seed):
    """Long chains of overlapping instances (degenerate optimal faces) stay exact."""
    rng = np.random.default_rng(seed)
    T = 70
    seg, scores, labels = _random_video(rng, T, 18, 1, neg=0.2)
    pseudo, stats = solve_pseudo_labels(seg, scores, labels, T, 1)
    assert stats.n_fallback == 0
    _check_optimal_least_norm(seg, scores, labels, pseudo, T, 1)


def test_uncertified_groups_fall_back_to_an_optimal_vertex():
    """With one eps no duality gap is ever measured: every group goes to HiGHS, whose vertex
    is still optimal (least violation, least mass), though not the least-norm point."""
    rng = np.random.default_rng(4)
    T = 70
    seg, scores, labels = _random_video(rng, T, 18, 1, neg=0.2)
    pseudo, stats = solve_pseudo_labels(seg, scores, labels, T, 1, reg_schedule=(10.0,))
    assert stats.n_groups > 0 and stats.n_fallback == stats.n_groups
    A, b = _reference_matrix(seg, T), scores
    viol, mass = _lexicographic_reference(A, b)
    assert np.abs(A @ pseudo[:, 0] - b).sum() == pytest.approx(viol, abs=1e-6)
    assert pseudo[:, 0].sum() == pytest.approx(mass, abs=1e-6)


def test_constraint_order_and_column_permutation_do_not_matter():
    rng = np.random.default_rng(7)
    T, ncol = 120, 3
    seg, scores, labels = _random_video(rng, T, 30, ncol)
    base, _ = solve_pseudo_labels(seg, scores, labels, T, ncol)
    perm = rng.permutation(len(seg))
    shuffled, _ = solve_pseudo_labels(seg[perm], scores[perm], labels[perm], T, ncol)
    np.testing.assert_allclose(shuffled, base, atol=1e-8)
    cols = np.array([2, 0, 1])  # column c goes to cols[c]
    moved, _ = solve_pseudo_labels(seg, scores, cols[labels], T, ncol)
    np.testing.assert_allclose(moved[:, cols], base, atol=1e-8)


def test_time_shift_shifts_labels():
    rng = np.random.default_rng(3)
    T, shift = 200, 17
    seg, scores, labels = _random_video(rng, 120, 15, 1)
    seg = seg + 30.0
    seg[:, 1] = np.minimum(seg[:, 1], 160)
    a, _ = solve_pseudo_labels(seg, scores, labels, T, 1)
    b, _ = solve_pseudo_labels(seg + shift, scores, labels, T, 1)
    np.testing.assert_allclose(b[shift:], a[:-shift], atol=1e-8)


def test_infeasible_sets_are_finite_least_violation_and_counted():
    T = 50
    # Isolated: phi = 6 cannot be met by 4 inner snippets in [0, 1].
    pseudo, stats = solve_pseudo_labels([[10.0, 14.0]], [6.0], [0], T, 2)
    assert np.isfinite(pseudo).all() and stats.n_infeasible == 1 and stats.n_violated == 1
    np.testing.assert_allclose(pseudo[10:14, 0], 1.0)
    assert stats.max_violation == pytest.approx(2.0)
    # Coupled: the same segment twice with different scores (least violation 0.2).
    seg = np.array([[20.0, 26.0], [20.0, 26.0], [23.0, 30.0]])
    pseudo, stats = solve_pseudo_labels(seg, [0.3, 0.5, 0.1], [1, 1, 1], T, 2)
    A = _reference_matrix(seg, T)
    viol, mass = _lexicographic_reference(A, np.array([0.3, 0.5, 0.1]))
    assert np.isfinite(pseudo).all() and stats.n_infeasible == 1 and stats.n_fallback == 0
    assert np.abs(A @ pseudo[:, 1] - [0.3, 0.5, 0.1]).sum() == pytest.approx(viol, abs=1e-6)
    assert pseudo[:, 1].sum() == pytest.approx(mass, abs=1e-6)


def test_parity_with_reference_labels(shared_data):
    """Same mass and constraint values as the authors' interior-point labels (README)."""
    ref = np.load(shared_data / "reference_outputs" / "postprocess_lp_parity.npz")
    T, ncol = ref["pseudo"].shape[1:]
    for v in range(ref["pseudo"].shape[0]):
        fused = [ref[f"fused_{v}_{c}"] for c in range(ncol)]
        seg = np.concatenate([f[:, :2] for f in fused if len(f)])
        scores = np.concatenate([f[:, 2] for f in fused if len(f)])
        labels = np.concatenate([np.full(len(f), c) for c, f in enumerate(fused) if len(f)])
        pseudo, stats = solve_pseudo_labels(seg, scores, labels, T, ncol)
        assert stats.n_fallback == 0 and stats.n_infeasible == 0
        for c in range(ncol):
            if not len(fused[c]):
                assert np.all(pseudo[:, c] == 0) and np.all(ref["pseudo"][v, :, c] == 0)
                continue
            A = _region_matrix(fused[c][:, :2], T)
            theirs = ref["pseudo"][v, :, c]
            np.testing.assert_allclose(A @ pseudo[:, c], A @ theirs, atol=1e-6)
            assert pseudo[:, c].sum() == pytest.approx(theirs.sum(), abs=1e-6)
            assert np.linalg.norm(pseudo[:, c]) <= np.linalg.norm(theirs) + 1e-9


def test_torch_inputs_and_empty_input():
    rng = np.random.default_rng(0)
    seg, scores, labels = _random_video(rng, 80, 10, 3)
    a, _ = solve_pseudo_labels(seg, scores, labels, 80, 3)
    b, _ = solve_pseudo_labels(torch.tensor(seg), torch.tensor(scores), torch.tensor(labels), 80, 3)
    np.testing.assert_array_equal(a, b)
    empty, stats = solve_pseudo_labels(np.zeros((0, 2)), [], [], 10, 3)
    assert empty.shape == (10, 3) and not empty.any() and stats.n_lps == 0


@pytest.mark.parametrize(
    "seg, scores, labels, match",
    [
        ([[1.0, 5.0]], [0.1, 0.2], [0], "scores/labels"),
        ([[5.0, 1.0]], [0.1], [0], "start <= end"),
        ([[1.0, 5.0]], [0.1], [3], "label 3"),
        ([[1.0, np.nan]], [0.1], [0], "finite"),
    ],
)
def test_bad_input_raises_input_error(seg, scores, labels, match):
    with pytest.raises(InputError, match=match) as info:
        solve_pseudo_labels(np.array(seg), np.array(scores), np.array(labels), 20, 3, video="v1")
    assert "video 'v1'" in str(info.value)


def test_batch_equals_per_video_calls():
    """Videos of different lengths (one empty) solved together give each video's answer."""
    rng = np.random.default_rng(11)
    ncol = 3
    videos = []
    for T, n in ((60, 14), (25, 0), (90, 25), (40, 9)):
        seg, scores, labels = _random_video(rng, T, n, ncol) if n else (np.zeros((0, 2)), [], [])
        videos.append((seg, np.asarray(scores), np.asarray(labels, np.int64), T))
    batch, stats = solve_pseudo_labels_batch(*zip(*videos, strict=True), ncol)
    singles = [solve_pseudo_labels(*v, ncol) for v in videos]
    for (_, _, _, T), y, (one, _) in zip(videos, batch, singles, strict=True):
        assert y.shape == (T, ncol)
        np.testing.assert_allclose(y, one, atol=1e-9)
    for field in ("n_instances", "n_lps", "n_closed_form", "n_groups"):
        assert getattr(stats, field) == sum(getattr(s, field) for _, s in singles)
    with pytest.raises(InputError, match="video 'b'"):
        solve_pseudo_labels_batch(
            [videos[0][0], np.array([[5.0, 1.0]])], [videos[0][1], [0.1]],
            [videos[0][2], [0]], [60, 20], ncol, video_ids=["a", "b"],
        )  # fmt: skip
