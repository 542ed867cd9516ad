"""Tests of wtal.pseudo: the §1.6 LP, Δ pseudo labels, the §1.8 schedule, quality metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from wtal.io import InputError
from wtal.pseudo import (
    constraint_matrix,
    delta_pseudo_labels,
    pseudo_label_quality,
    pseudo_target,
    solve_pseudo_labels,
    solve_pseudo_labels_batch,
    summarize_quality,
    update_history,
)


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


def _random_video(rng: np.random.Generator, T: int, n: int, ncol: int, neg: float = 0.1):
    starts = rng.uniform(0, T - 4, n)
    ends = np.minimum(starts + rng.uniform(2, 12, n), T + 0.9)
    scores = rng.uniform(0.0, 0.5, n) * np.where(rng.random(n) < neg, -0.05, 1.0)
    labels = rng.integers(0, ncol, n)
    return np.stack([starts, ends], 1), scores, labels


def _lexicographic_reference(A: np.ndarray, b: np.ndarray):
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


def _min_norm_kkt_residual(A: np.ndarray, y: np.ndarray, tol: float = 1e-9) -> float:
    """How far y is from the least-norm point of {A x = A y, sum x = sum y, 0 <= x <= 1}.

    y is that point iff some (lam, nu) has y = clip(A' lam + nu, 0, 1) (projection KKT).
    An LP finds the smallest s with |A' lam + nu - y| <= s where 0 < y < 1,
    A' lam + nu <= s where y = 0 and A' lam + nu >= 1 - s where y = 1; 0 means optimal.
    """
    K, T = A.shape
    M = np.hstack([A.T, np.ones((T, 1))])  # (T, K+1) acting on (lam, nu)
    free = (y > tol) & (y < 1 - tol)
    zero, one = y <= tol, y >= 1 - tol
    rows = [M[free], -M[free], M[zero], -M[one]]
    rhs = [y[free], -y[free], np.zeros(zero.sum()), -np.ones(one.sum())]
    A_ub = np.vstack([np.hstack([r, -np.ones((len(r), 1))]) for r in rows])
    res = linprog(
        np.r_[np.zeros(K + 1), 1.0],
        A_ub=A_ub,
        b_ub=np.concatenate(rhs),
        bounds=[(None, None)] * (K + 1) + [(0, None)],
        method="highs",
    )
    return res.fun


@pytest.mark.parametrize("seed", range(5))
def test_constraint_matrix_matches_loop(seed):
    rng = np.random.default_rng(seed)
    T = 60
    seg, _, _ = _random_video(rng, T, 12, 1)
    np.testing.assert_array_equal(constraint_matrix(seg, T).toarray(), _reference_matrix(seg, T))


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
def test_closed_form_equals_general_path(seed):
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


def _check_optimal_min_norm(seg, scores, labels, pseudo, T, ncol):
    """Per column: least violation and least mass (linprog), and the least-norm KKT."""
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
        if viol < 1e-9:  # feasible: every constraint met, and the least-norm optimum
            assert np.abs(A @ y - b).max() < 1e-6
            assert _min_norm_kkt_residual(A, y) < 1e-7


# Solver paths: enumerated duals (default), HiGHS duals only, Newton only.
PATHS = {"default": {}, "highs_dual": {"enum_max_rows": 0}, "newton": {"dual_certificate": False}}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", range(10))
def test_random_coupled_optimal_feasible_min_norm(seed, path):
    rng = np.random.default_rng(seed)
    T, ncol = 40, 2
    seg, scores, labels = _random_video(rng, T, 8, ncol)
    pseudo, stats = solve_pseudo_labels(seg, scores, labels, T, ncol, **PATHS[path])
    assert stats.n_fallback == 0
    if path == "newton":
        assert stats.n_newton == stats.n_groups and stats.n_dual_lp == 0
    _check_optimal_min_norm(seg, scores, labels, pseudo, T, ncol)


@pytest.mark.parametrize("path", ["default", "highs_dual"])
def test_heavy_overlap_groups_all_paths_agree(path):
    """Large chained groups (enumeration misses, HiGHS duals, degenerate faces) stay exact.

    Seeds 15 and 144 have optimal faces where the active-set fixed-point check matters."""
    used = {"dual_lp": 0}
    for seed in (15, 144, 3, 4, 5, 6):
        rng = np.random.default_rng(seed)
        T, ncol = 70, 1
        seg, scores, labels = _random_video(rng, T, 18, ncol, neg=0.2)
        pseudo, stats = solve_pseudo_labels(seg, scores, labels, T, ncol, **PATHS[path])
        used["dual_lp"] += stats.n_dual_lp
        _check_optimal_min_norm(seg, scores, labels, pseudo, T, ncol)
        newton, s2 = solve_pseudo_labels(seg, scores, labels, T, ncol, **PATHS["newton"])
        if s2.n_fallback == 0:  # both certified: the unique least-norm point
            np.testing.assert_allclose(pseudo, newton, atol=1e-6)
    assert used["dual_lp"] > 0  # the HiGHS-dual stage was exercised


@pytest.mark.parametrize("seed", [3, 108])
def test_face_newton_certifies_where_the_active_set_iteration_cycles(seed, monkeypatch):
    """On these faces the active-set iteration alternates between two free sets; the damped
    Newton method on the face certifies the HiGHS dual's face instead of the slow path."""
    import wtal.pseudo as P

    rng = np.random.default_rng(seed)
    T = 70
    seg, scores, labels = _random_video(rng, T, 18, 1, neg=0.2)
    pseudo, stats = solve_pseudo_labels(seg, scores, labels, T, 1)
    assert stats.n_newton == 0 and stats.n_fallback == 0 and stats.n_dual_lp >= 1
    _check_optimal_min_norm(seg, scores, labels, pseudo, T, 1)
    with monkeypatch.context() as m:  # without it, the group needs the regularised path
        m.setattr(P, "_face_newton", lambda A, *a: (np.zeros(A.shape[::2]), np.zeros(len(A), bool)))
        slow, s2 = solve_pseudo_labels(seg, scores, labels, T, 1)
    assert s2.n_newton >= 1
    np.testing.assert_allclose(pseudo, slow, atol=1e-6)


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
    assert np.isfinite(pseudo).all() and stats.n_infeasible == 1
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
            A = constraint_matrix(fused[c][:, :2], T)
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
    assert stats.n_instances == sum(s.n_instances for _, s in singles)
    assert stats.n_lps == sum(s.n_lps for _, s in singles)
    with pytest.raises(InputError, match="video 'b'"):
        solve_pseudo_labels_batch(
            [videos[0][0], np.array([[5.0, 1.0]])], [videos[0][1], [0.1]],
            [videos[0][2], [0]], [60, 20], ncol, video_ids=["a", "b"],
        )  # fmt: skip


def test_delta_pseudo_labels():
    rng = np.random.default_rng(0)
    y = rng.random((7, 3))
    assert not delta_pseudo_labels(y, y.copy(), 2.0).any()
    prev = rng.random((7, 3))
    np.testing.assert_allclose(delta_pseudo_labels(y, prev, 2.15), 2.15 * (y - prev))
    clamped = delta_pseudo_labels(y, prev, 2.0, clamp_min=0.0)
    np.testing.assert_allclose(clamped, np.maximum(2.0 * (y - prev), 0.0))
    t = delta_pseudo_labels(torch.tensor(y), torch.tensor(prev), 2.0, clamp_min=-0.1)
    np.testing.assert_allclose(t.numpy(), np.maximum(2.0 * (y - prev), -0.1))
    with pytest.raises(ValueError):
        delta_pseudo_labels(y, prev[:3], 2.0)


def test_schedule_reproduces_table():
    """Every row of paper.md §1.8 (PL target column)."""
    Y = {r: np.full((2, 2), float(r)) for r in (200, 230, 245, 260, 275, 300)}
    history: list = []
    expected = {
        **{e: None for e in (0, 79, 100, 150, 199, 200)},
        **{e: ("Y", 200) for e in (201, 215, 229)},
        **{e: ("Y", 230) for e in (230, 244)},
        **{e: ("Y", 245) for e in (245, 250)},
        **{e: (2.0, 245, 230) for e in (251, 259)},
        **{e: (2.0, 260, 245) for e in (260, 274)},
        **{e: (2.0, 275, 260) for e in (275, 299)},
        300: (2.0, 300, 275),
        **{e: (2.15, 300, 275) for e in (301, 330, 349)},
    }
    for epoch in range(350):
        if epoch in Y:
            history = update_history(history, epoch, Y[epoch])
            assert len(history) <= 3
        got = pseudo_target(epoch, history)
        if epoch not in expected:
            continue
        want = expected[epoch]
        if want is None:
            assert got is None, epoch
        elif want[0] == "Y":
            np.testing.assert_array_equal(got, Y[want[1]], err_msg=str(epoch))
        else:
            np.testing.assert_allclose(got, want[0] * (Y[want[1]] - Y[want[2]]), err_msg=str(epoch))
    with pytest.raises(KeyError):
        pseudo_target(260, {245: Y[245]})


def test_pseudo_label_quality_hand_case():
    T = 10
    pseudo = np.zeros((T, 3))
    pseudo[2:5, 0] = 0.5  # 1.5 mass, 1.0 of it inside GT [3, 6) of class 0
    pseudo[8, 1] = 0.25  # class 1 has no GT: all outside
    pseudo[4, 2] = 0.1  # background inside an action: the wrong place
    pseudo[0, 2] = 0.3  # background outside every action: the right place
    q = pseudo_label_quality(
        pseudo,
        np.array([[3.0, 6.0]]),
        np.array([0]),
        pseudo_segments=np.array([[3.0, 5.0], [7.0, 9.0], [0.0, 2.0]]),
        pseudo_segment_labels=np.array([0, 0, 2]),  # the background segment is left out
    )
    np.testing.assert_allclose(q["mass_inside"], [1.0, 0.0, 0.3])
    np.testing.assert_allclose(q["mass_outside"], [0.5, 0.25, 0.1])
    assert q["inside_fraction"] == pytest.approx(1.0 / 1.75)
    assert q["background_outside_fraction"] == pytest.approx(0.75)
    assert q["precision"] == 0.5 and q["recall"] == 1.0
    assert q["n_pseudo"] == 2 and q["n_hits"] == 1 and q["n_gt"] == 1 and q["n_found"] == 1
    assert q["mean_best_tiou"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert q["mean_gt_best_tiou"] == pytest.approx(2 / 3)


def test_summarize_quality_pools_counts_not_rates():
    """Micro averages: a video with many segments weighs more than one with few."""
    gt = np.array([[0.0, 4.0]])
    a = np.zeros((8, 2))
    a[0:4, 0] = 1.0  # all inside
    b = np.zeros((8, 2))
    b[4:8, 0] = 0.5  # all outside
    qa = pseudo_label_quality(a, gt, [0], pseudo_segments=[[0.0, 4.0]], pseudo_segment_labels=[0])
    qb = pseudo_label_quality(
        b, gt, [0], pseudo_segments=[[4.0, 8.0], [5.0, 8.0], [0.0, 4.0]],
        pseudo_segment_labels=[0, 0, 0],
    )  # fmt: skip
    s = summarize_quality([qa, qb])
    assert s["precision"] == pytest.approx(2 / 4)  # not the mean of 1 and 1/3
    assert s["recall"] == 1.0 and s["n_pseudo"] == 4 and s["n_gt"] == 2 and s["videos"] == 2
    assert s["inside_fraction"] == pytest.approx(4.0 / 6.0)
    assert s["background_outside_fraction"] is None  # no background mass at all
    assert summarize_quality([]) == {"videos": 0}
