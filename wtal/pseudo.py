"""Fused segments -> snippet pseudo labels (the LP of paper.md §1.6), Δ pseudo labels (§1.7),
the pseudo-label target schedule (§1.8) and pseudo-label quality metrics.

The LP, per column c (20 classes + background for THUMOS14) and fused instance k::

    minimise  sum_t y_t   over y in [0, 1]^T
    s.t.      sum_{t in in_k} y_t - sum_{t in out_k} y_t = phi_k     for every k of column c

Its optimal set is usually a face, not a point, so the authors' labels depended on the solver
(interior point spread the mass, HiGHS returns a vertex; paper.md §7 Q2). We return ONE answer:
the minimum-Euclidean-norm point of the optimal set. For an isolated instance that is
``phi / L`` on each of its ``L`` inner snippets. Infeasible constraint sets (issue #7 of the
reference code: NaN labels) are solved in a least-violation sense: minimise
``violation_weight * sum_k |violation_k| + sum_t y_t``, then the norm of ``(y, violation)``.
With ``violation_weight`` above the LP's largest dual multiplier (always, for isolated
instances, when it is > 1) this is "least total violation first, then least mass".

How it is solved: instances whose supports ``[outer_start, outer_end)`` touch no other instance
of their column have a closed form. Each remaining connected group shrinks to its cells (runs
of snippets with the same constraint pattern; the least-norm point is constant on each). Any
dual vector ``lam`` fixes, by complementary slackness, the labels of cells with non-zero reduced
cost ``1 - A' lam``; if a feasible point of that form exists it is optimal, and the least-norm
one on the remaining cells is a small bounded least-squares problem (an active-set iteration,
and a damped Newton method where that cycles). The dual is guessed by enumerating a small grid
per sub-group (most duals of these +-1 interval matrices are small integers or halves); groups
whose guess is not certified get their dual from ONE HiGHS solve of all of them. Every
(video, column) pair has its own stretch of one flat array, so :func:`solve_pseudo_labels_batch`
runs all of this once for a whole set of videos. What is still not certified (infeasible
groups, degenerate faces) goes to an exact-regularisation path (for small ``eps`` the
minimiser of ``sum y + eps/2 |y|^2`` IS the least-norm LP optimum): a semismooth Newton
method on its dual for a decreasing ``eps``, accepted once an LP duality gap certifies it,
else HiGHS on its LP (a vertex, counted).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from scipy.sparse.csgraph import connected_components

from wtal.io import InputError
from wtal.segments import (
    REFERENCE_OUTER_BAND,
    outer_band_width,
    pairwise_tiou,
    snippets_to_seconds,
)

OUTER_SCALE, OUTER_POWER = REFERENCE_OUTER_BAND
"""Default outer band of the LP regions: the proposals' band
(:func:`wtal.segments.outer_band_width`); the engine passes ``detect.outer_scale/outer_power``."""
VIOLATION_WEIGHT = 100.0
"""Price of one unit of constraint violation, in label mass, for infeasible sets. It must
exceed the LP's dual multipliers (small integers for these +-1 matrices) for "least violation
first"; much larger values cost float64 digits in the Newton labels ``(z - 1) / eps``."""
REG_SCHEDULE = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)
"""Decreasing exact-regularisation weights ``eps``; stops once every group is certified.
Starting large keeps the first Newton solves smooth (most labels strictly inside (0, 1)).
Much below 1e-4 the labels ``(z - 1) / eps`` lose digits to float64 cancellation."""
RESIDUAL_TOL = 1e-10
"""Newton stops when every constraint residual of a group is below this."""
GAP_TOL = 1e-9
"""A group is certified when its LP duality gap is below ``GAP_TOL * max(1, objective)``."""
FEASIBILITY_TOL = 1e-6
"""A constraint violated by more than this counts as violated in the stats."""
MAX_NEWTON_ITER = 200
"""Newton iterations per regularisation level."""
DUAL_GRID = (-1.0, 0.0, 0.5, 1.0, 2.0)
"""Candidate values of each dual multiplier tried by enumeration for small coupled groups.
The optimal duals of these +-1 interval matrices are mostly such small integers or halves; a
wrong guess is harmless (the face certificate rejects it and a HiGHS dual is used)."""
DUAL_GRID_COARSE = (-1.0, 0.0, 1.0, 2.0)
"""Grid used instead where ``len(DUAL_GRID) ** K`` exceeds ``ENUM_MAX_CANDIDATES``."""
ENUM_MAX_CANDIDATES = 1024
"""Most dual candidates enumerated per sub-group (time and memory ~ candidates x cells)."""
MERGE_MIN_CANDIDATES = 32
"""Grids with more candidates than this first drop and merge cells (see ``_merge_cells``);
for smaller ones the bookkeeping costs more than it saves."""
ENUM_MAX_ROWS = 5
"""Largest coupled group (in constraints) whose dual is enumerated (``len(DUAL_GRID) ** K``
candidates); larger groups take their dual from one HiGHS solve per video."""
CERT_TOL = 1e-9
"""Tolerance of the face certificate: reduced costs and ``A' beta`` within it of 0 (or 1)
count as 0 (or 1), and a certified point meets every constraint to within it."""
MAX_FACE_ITER = 10
"""Primal-dual active-set iterations of the least-norm problem on an optimal face."""
FACE_NEWTON_ITER = 50
"""Newton iterations on an optimal face for groups where the active-set iteration cycles."""
_RIDGE = 1e-13  # Tikhonov shift of the face systems (entries are integer cell counts)
_ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
_MAX_BACKTRACK = 40  # halvings of the step before the line search gives up on a group
_LM_MAX = 1e-1  # cap of the Levenberg-Marquardt shift (times 1/eps) when the Hessian is singular


@dataclass(frozen=True)
class PseudoStats:
    """What :func:`solve_pseudo_labels` did for one video (or
    :func:`solve_pseudo_labels_batch` for a batch: counts summed, maxima over the batch)."""

    n_lps: int
    """Columns with at least one instance (one LP each in the reference code)."""
    n_instances: int
    """Constraints (fused instances) over all columns."""
    n_closed_form: int
    """Instances solved in closed form (isolated, or with an empty support)."""
    n_groups: int
    """Coupled groups (>= 2 instances sharing snippets)."""
    n_dual_lp: int
    """Coupled groups certified with a dual vector from the per-video HiGHS solve (the rest of
    the certified groups used an enumerated dual)."""
    n_newton: int
    """Coupled groups that no dual vector certified (e.g. infeasible ones), solved by the
    regularised Newton method."""
    n_fallback: int
    """Coupled groups not certified by the duality gap, solved by HiGHS instead (a vertex)."""
    n_infeasible: int
    """Columns whose constraint set is infeasible (some violation > ``feasibility_tol``)."""
    n_violated: int
    """Constraints violated by more than ``feasibility_tol``."""
    max_violation: float
    """Largest ``|sum_in y - sum_out y - phi|`` over all constraints."""
    max_gap: float
    """Largest relative duality gap of a certified coupled group (0 when none)."""
    solve_time_s: float
    """Wall time of the whole call, seconds."""


def _to_numpy(x: Any, dtype: type) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor: no torch import needed here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D array: ``np.unique`` by a sort, which is many times
    faster than numpy's default (hash-based) path for integer arrays of these sizes."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def lp_regions(
    segments: np.ndarray,
    num_snippets: int,
    *,
    outer_scale: float = OUTER_SCALE,
    outer_power: float = OUTER_POWER,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inner and outer snippet ranges of each fused instance's LP constraint (paper.md §1.6.4).

    ``s = int(start)``, ``e = int(end)`` (truncation), ``L = e - s``,
    ``delta = outer_scale * L ** outer_power``, ``outer_start = max(0, int(s - delta))``,
    ``outer_end = min(T - 1, int(e + delta + 1))``. Inner is ``[s, e)``, outer is
    ``[outer_start, s) U [e, outer_end)``: the right outer part starts AT e here, one earlier
    than in the proposal score (§7 Q5). Ranges are clipped to ``[0, T]`` like numpy slicing.

    Args:
        segments: (N, 2) float, fused ``[start, end]`` in snippets, ``0 <= start <= end``.
        num_snippets: T.
        outer_scale: factor of the outer half-width.
        outer_power: exponent of the outer half-width.

    Returns:
        ``(outer_start, start, end, outer_end)``, four (N,) int64 arrays with
        ``outer_start <= start <= end``; the support is ``[outer_start, max(end, outer_end))``.
    """
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    s = np.trunc(seg[:, 0]).astype(np.int64)
    e = np.trunc(seg[:, 1]).astype(np.int64)
    delta = outer_band_width(e - s, outer_scale, outer_power)
    outer_s = np.maximum(0, np.trunc(s - delta).astype(np.int64))
    outer_e = np.minimum(num_snippets - 1, np.trunc(e + delta + 1).astype(np.int64))
    s, e = np.clip(s, 0, num_snippets), np.clip(e, 0, num_snippets)
    return np.minimum(outer_s, s), s, e, np.clip(outer_e, 0, num_snippets)


def constraint_matrix(
    segments: np.ndarray,
    num_snippets: int,
    *,
    outer_scale: float = OUTER_SCALE,
    outer_power: float = OUTER_POWER,
) -> sparse.csr_matrix:
    """The LP's equality matrix of one column: (N, T) CSR, +1 inner, -1 outer, built vectorized."""
    outer_s, s, e, outer_e = lp_regions(
        segments, num_snippets, outer_scale=outer_scale, outer_power=outer_power
    )
    rows, cols, vals = _support_entries(outer_s, s, e, outer_e)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(s), num_snippets))


def _support_entries(
    outer_s: np.ndarray, s: np.ndarray, e: np.ndarray, outer_e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, snippet and +-1 value of every non-zero of the constraint rows (flat arrays)."""
    hi = np.maximum(e, outer_e)
    lens = hi - outer_s  # (N,)
    rows = np.repeat(np.arange(len(s)), lens)
    first = np.repeat(np.cumsum(lens) - lens, lens)
    cols = outer_s[rows] + np.arange(lens.sum()) - first
    vals = np.where((cols >= s[rows]) & (cols < e[rows]), 1.0, -1.0)
    return rows, cols, vals


def _validate(segments, scores, labels, num_snippets, num_columns, video):
    def fail(what: str):
        raise InputError(None, what, video=video)

    if num_snippets < 1 or num_columns < 1:
        fail(f"num_snippets and num_columns must be >= 1, got {num_snippets}, {num_columns}")
    if segments.ndim != 2 or segments.shape[1] != 2:
        fail(f"segments: expected shape (N, 2), got {segments.shape}")
    n = len(segments)
    if scores.shape != (n,) or labels.shape != (n,):
        fail(f"scores/labels: expected shape ({n},), got {scores.shape} and {labels.shape}")
    if not (np.isfinite(segments).all() and np.isfinite(scores).all()):
        fail("segments/scores: expected finite numbers")
    bad = np.flatnonzero((segments[:, 0] < 0) | (segments[:, 1] < segments[:, 0]))
    if len(bad):
        fail(f"segment {bad[0]}: expected 0 <= start <= end, got {segments[bad[0]].tolist()}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_columns))
    if len(bad):
        fail(f"segment {bad[0]}: label {labels[bad[0]]} outside [0, {num_columns})")


def solve_pseudo_labels(
    segments: Any,
    scores: Any,
    labels: Any,
    num_snippets: int,
    num_columns: int,
    *,
    outer_scale: float = OUTER_SCALE,
    outer_power: float = OUTER_POWER,
    violation_weight: float = VIOLATION_WEIGHT,
    reg_schedule: Sequence[float] = REG_SCHEDULE,
    residual_tol: float = RESIDUAL_TOL,
    gap_tol: float = GAP_TOL,
    feasibility_tol: float = FEASIBILITY_TOL,
    max_newton_iter: int = MAX_NEWTON_ITER,
    closed_form: bool = True,
    dual_grid: Sequence[float] = DUAL_GRID,
    enum_max_rows: int = ENUM_MAX_ROWS,
    dual_certificate: bool = True,
    video: str | None = None,
) -> tuple[np.ndarray, PseudoStats]:
    """Snippet pseudo labels of one video: the minimum-norm optimum of the §1.6 LP per column.

    Args:
        segments: (N, 2) float, fused instances ``[start, end]``, snippet units (numpy or torch).
        scores: (N,) float, fused score phi of each instance (the constraint's right side).
        labels: (N,) int, column of each instance in ``[0, num_columns)``.
        num_snippets: T.
        num_columns: C + 1 (classes + background).
        outer_scale: see :func:`lp_regions`.
        outer_power: see :func:`lp_regions`.
        violation_weight: mass price of one unit of violation (> 1); see the module docstring.
        reg_schedule: decreasing exact-regularisation weights tried for coupled groups.
        residual_tol: Newton stopping tolerance on the constraint residuals.
        gap_tol: relative LP duality gap that certifies a coupled group.
        feasibility_tol: violation above which a constraint counts as violated.
        max_newton_iter: Newton iterations per regularisation level.
        closed_form: solve isolated instances in closed form (False sends them through the
            Newton path too; for tests).
        dual_grid: candidate dual values enumerated per sub-group (see :data:`DUAL_GRID`).
        enum_max_rows: largest sub-group whose dual is enumerated.
        dual_certificate: certify coupled groups from a dual vector first (False sends every
            coupled group to the Newton method; for tests and comparisons).
        video: video id, only for error messages.

    Returns:
        ``(pseudo, stats)``: pseudo is a (T, num_columns) float64 numpy array in [0, 1],
        0 in columns without instances and never NaN; stats is a :class:`PseudoStats`.

    Raises:
        InputError: malformed shapes, non-finite values, ``end < start`` or a bad label.
    """
    labels_out, stats = solve_pseudo_labels_batch(
        [segments], [scores], [labels], [num_snippets], num_columns,
        outer_scale=outer_scale, outer_power=outer_power, violation_weight=violation_weight,
        reg_schedule=reg_schedule, residual_tol=residual_tol, gap_tol=gap_tol,
        feasibility_tol=feasibility_tol, max_newton_iter=max_newton_iter,
        closed_form=closed_form, dual_grid=dual_grid, enum_max_rows=enum_max_rows,
        dual_certificate=dual_certificate, video_ids=[video],
    )  # fmt: skip
    return labels_out[0], stats


def solve_pseudo_labels_batch(
    segments: Sequence[Any],
    scores: Sequence[Any],
    labels: Sequence[Any],
    num_snippets: Sequence[int],
    num_columns: int,
    *,
    outer_scale: float = OUTER_SCALE,
    outer_power: float = OUTER_POWER,
    violation_weight: float = VIOLATION_WEIGHT,
    reg_schedule: Sequence[float] = REG_SCHEDULE,
    residual_tol: float = RESIDUAL_TOL,
    gap_tol: float = GAP_TOL,
    feasibility_tol: float = FEASIBILITY_TOL,
    max_newton_iter: int = MAX_NEWTON_ITER,
    closed_form: bool = True,
    dual_grid: Sequence[float] = DUAL_GRID,
    enum_max_rows: int = ENUM_MAX_ROWS,
    dual_certificate: bool = True,
    video_ids: Sequence[str | None] | None = None,
) -> tuple[list[np.ndarray], PseudoStats]:
    """:func:`solve_pseudo_labels` of many videos in one vectorized pass (same answers).

    Every (video, column) pair gets its own stretch of one flat label array, so the groups
    of all videos are solved together: one enumeration, one face solve per group-size bucket
    and at most one HiGHS call for the whole batch instead of per video. This is how the
    engine regenerates the labels of all training videos.

    Args:
        segments: per video, (N_v, 2) float fused instances in snippets.
        scores: per video, (N_v,) float fused scores.
        labels: per video, (N_v,) int columns in ``[0, num_columns)``.
        num_snippets: per video, T_v.
        num_columns: C + 1, shared by all videos.
        video_ids: per video, its id for error messages (optional).
        (others): as in :func:`solve_pseudo_labels`.

    Returns:
        ``(pseudo, stats)``: a list of (T_v, num_columns) float64 arrays, and one
        :class:`PseudoStats` summed over the batch (``max_*`` fields are maxima, ``n_lps``
        and ``n_infeasible`` count (video, column) pairs).
    """
    t0 = time.perf_counter()
    n_videos = len(num_snippets)
    if not (len(segments) == len(scores) == len(labels) == n_videos):
        raise ValueError("segments, scores, labels and num_snippets must have one entry per video")
    ids = list(video_ids) if video_ids is not None else [None] * n_videos
    segs, phis, labs = [], [], []
    for v in range(n_videos):
        seg_v = segments[v]
        seg_v = _to_numpy(seg_v, np.float64).reshape(-1, 2) if np.size(seg_v) else np.zeros((0, 2))
        phi_v = _to_numpy(scores[v], np.float64).reshape(-1)
        lab_v = _to_numpy(labels[v], np.int64).reshape(-1)
        _validate(seg_v, phi_v, lab_v, int(num_snippets[v]), int(num_columns), ids[v])
        segs.append(seg_v)
        phis.append(phi_v)
        labs.append(lab_v)
    if violation_weight <= 1:
        raise ValueError(f"violation_weight must be > 1, got {violation_weight}")
    T_v = np.asarray([int(t) for t in num_snippets], np.int64)
    count = np.asarray([len(p) for p in phis], np.int64)
    seg = np.concatenate(segs) if n_videos else np.zeros((0, 2))
    phi = np.concatenate(phis) if n_videos else np.zeros(0)
    lab = np.concatenate(labs) if n_videos else np.zeros(0, np.int64)
    vid = np.repeat(np.arange(n_videos), count)  # video of each instance
    # Every (video, column) pair with instances gets its own stretch of one flat array,
    # T_v + 1 positions long: the spare position keeps neighbouring stretches apart, so
    # groups never cross a column or a video. Columns without instances take no space.
    pairs, pair_of = np.unique(vid * num_columns + lab, return_inverse=True)
    pair_T = T_v[pairs // num_columns]
    off_p = np.cumsum(pair_T + 1) - (pair_T + 1)
    flat = np.zeros(int((pair_T + 1).sum()))
    T = T_v[vid]  # (N,) snippets of each instance's video
    outer_s, s, e, outer_e = lp_regions(seg, T, outer_scale=outer_scale, outer_power=outer_power)
    hi = np.maximum(e, outer_e)
    base = off_p[pair_of.reshape(-1)]
    g_lo, g_in0, g_in1, g_hi = base + outer_s, base + s, base + e, base + hi  # flat positions

    # Connected groups of instances over shared snippets: sort the non-empty supports, a new
    # group starts where a support begins at or after every earlier support's end.
    nonempty = np.flatnonzero(hi > outer_s)
    order = nonempty[np.argsort(g_lo[nonempty], kind="stable")]
    reach = np.maximum.accumulate(g_hi[order])
    starts_group = np.r_[True, g_lo[order][1:] >= reach[:-1]] if len(order) else np.zeros(0, bool)
    gid = np.cumsum(starts_group) - 1  # (len(order),)
    sizes = np.bincount(gid) if len(gid) else np.zeros(0, np.int64)
    single = order[sizes[gid] == 1] if closed_form else order[:0]
    coupled = np.setdiff1d(order, single, assume_unique=True)

    # Closed form of an isolated instance: phi > 0 spreads phi over the inner snippets,
    # phi < 0 spreads |phi| over the outer ones (capped at 1: least violation beyond that).
    k = single
    n_in = (e - s)[k]
    n_out = (s - outer_s + np.maximum(outer_e - e, 0))[k]
    pos, neg = phi[k] > 0, phi[k] < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        v_in = np.where(pos & (n_in > 0), np.minimum(phi[k] / n_in, 1.0), 0.0)
        v_out = np.where(neg & (n_out > 0), np.minimum(-phi[k] / n_out, 1.0), 0.0)
    # Step changes at the region edges (supports of isolated instances are disjoint); one
    # bincount adds them in the same order as sequential np.add.at calls would.
    edges = np.concatenate([g_in0[k], g_in1[k], g_lo[k], np.maximum(g_in1, g_hi)[k]])
    steps = np.concatenate([v_in - v_out, v_out - v_in, v_out, -v_out])
    flat += np.cumsum(np.bincount(edges, steps, minlength=len(flat) + 1))[:-1]

    n_fallback = n_dual_lp = n_newton = 0
    max_gap = 0.0
    newton_rows = coupled[:0]
    gid_of = np.full(len(phi), -1)
    gid_of[order] = gid
    if not dual_certificate:
        newton_rows = coupled
    elif len(coupled):
        rows = coupled[np.argsort(gid_of[coupled], kind="stable")]
        g = np.unique(gid_of[rows], return_inverse=True)[1]
        cs = _cell_system(rows, g, g_lo, g_in0, g_in1, g_hi)
        x_cell, done, n_dual_lp = _certify_groups(
            cs, phi, g_lo, g_in0, g_in1, g_hi, dual_grid, enum_max_rows, violation_weight
        )
        edges = np.concatenate([cs["cell_lo"], cs["cell_hi"]])
        steps = np.concatenate([x_cell, -x_cell])
        flat += np.cumsum(np.bincount(edges, steps, minlength=len(flat) + 1))[:-1]
        newton_rows = rows[~done[g]]
    if len(newton_rows):
        n_newton = len(_sorted_unique(gid_of[newton_rows]))
        y, cert, gaps, entries = _solve_coupled(
            newton_rows, gid, order, g_lo, g_in0, g_in1, g_hi, phi,
            violation_weight, reg_schedule, residual_tol, gap_tol, max_newton_iter,
        )  # fmt: skip
        if cert.size:
            max_gap = float(gaps[cert].max()) if cert.any() else 0.0
        if not cert.all():
            n_fallback = int((~cert).sum())
            y = _highs_fallback(y, ~cert, entries, phi, violation_weight)
        flat[entries["var_pos"]] = y
    flat = np.clip(flat, 0.0, 1.0)
    # Scatter the stretches into per-video (T_v, num_columns) arrays (one buffer, row-major).
    size_v = T_v * num_columns
    out_off = np.cumsum(size_v) - size_v
    t = np.arange(pair_T.sum()) - np.repeat(np.cumsum(pair_T) - pair_T, pair_T)
    dst = np.repeat(out_off[pairs // num_columns] + pairs % num_columns, pair_T) + t * num_columns
    out = np.zeros(int(size_v.sum()))
    out[dst] = flat[np.repeat(off_p, pair_T) + t]
    pseudo = [
        out[o : o + n].reshape(T_v_i, num_columns)
        for o, n, T_v_i in zip(out_off.tolist(), size_v.tolist(), T_v.tolist(), strict=True)
    ]

    # Residuals of every constraint from prefix sums of the labels.
    cum = np.r_[0.0, np.cumsum(flat)]
    inner = cum[g_in1] - cum[g_in0]
    outer = (cum[g_in0] - cum[g_lo]) + (cum[np.maximum(g_in1, g_hi)] - cum[g_in1])
    viol = np.abs(inner - outer - phi)
    violated = viol > feasibility_tol
    stats = PseudoStats(
        n_lps=len(pairs),
        n_instances=len(phi),
        n_closed_form=len(single) + len(phi) - len(nonempty),
        n_groups=int((sizes >= 2).sum()) if closed_form else len(sizes),
        n_dual_lp=n_dual_lp,
        n_newton=n_newton,
        n_fallback=n_fallback,
        n_infeasible=len(_sorted_unique(base[violated])),
        n_violated=int(violated.sum()),
        max_violation=float(viol.max()) if len(viol) else 0.0,
        max_gap=max_gap,
        solve_time_s=time.perf_counter() - t0,
    )
    return pseudo, stats


def _solve_coupled(coupled, gid, order, g_lo, g_in0, g_in1, g_hi, phi, w, schedule, tol, gap_tol,
                   max_iter):  # fmt: skip
    """Min-norm optimum of every coupled group; returns labels per coupled variable."""
    gid_of = np.full(len(phi), -1)
    gid_of[order] = gid
    old = gid_of[coupled]
    uniq, g = np.unique(old, return_inverse=True)  # groups renumbered 0..G-1
    rows_sorted = np.argsort(g, kind="stable")
    rows = coupled[rows_sorted]  # coupled rows grouped
    g = g[rows_sorted]
    n_groups = len(uniq)
    k_count = np.bincount(g, minlength=n_groups)
    row_rank = np.arange(len(rows)) - np.repeat(np.cumsum(k_count) - k_count, k_count)
    g_start = np.full(n_groups, np.iinfo(np.int64).max)
    g_end = np.zeros(n_groups, np.int64)
    np.minimum.at(g_start, g, g_lo[rows])
    np.maximum.at(g_end, g, g_hi[rows])
    n_var = g_end - g_start
    var_off = np.cumsum(n_var) - n_var
    var_pos = np.repeat(g_start - var_off, n_var) + np.arange(n_var.sum())

    r, cpos, val = _support_entries(g_lo[rows], g_in0[rows], g_in1[rows], g_hi[rows])
    rg = g[r]  # group of each entry
    lcol = cpos - g_start[rg]
    y = np.zeros(n_var.sum())
    cert = np.zeros(n_groups, bool)
    gaps = np.full(n_groups, np.inf)

    # Batch groups of similar size together: pad to the next powers of two.
    kp = 1 << np.ceil(np.log2(k_count)).astype(np.int64)
    npad = 1 << np.ceil(np.log2(n_var)).astype(np.int64)
    bucket_key = kp * (1 << 40) + npad
    for key in np.unique(bucket_key):
        members = np.flatnonzero(bucket_key == key)
        slot = np.full(n_groups, -1)
        slot[members] = np.arange(len(members))
        K, n = int(kp[members[0]]), int(npad[members[0]])
        sel = slot[rg] >= 0
        A = np.zeros((len(members), K, n))
        A[slot[rg[sel]], row_rank[r[sel]], lcol[sel]] = val[sel]
        b = np.zeros((len(members), K))
        rsel = slot[g] >= 0
        b[slot[g[rsel]], row_rank[rsel]] = phi[rows[rsel]]
        rmask = np.arange(K)[None, :] < k_count[members][:, None]
        cmask = np.arange(n)[None, :] < n_var[members][:, None]
        yb, cb, gb = _newton_bucket(A, b, rmask, cmask, w, schedule, tol, gap_tol, max_iter)
        cert[members], gaps[members] = cb, gb
        take = np.flatnonzero(cmask.ravel())
        gi, col = np.divmod(take, n)
        y[var_off[members][gi] + col] = yb.ravel()[take]
    entries = {"var_pos": var_pos, "rows": rows, "row_group": g, "entry_row": r,
               "entry_var": var_off[rg] + lcol, "entry_val": val, "var_group": np.repeat(
                   np.arange(n_groups), n_var)}  # fmt: skip
    return y, cert, gaps, entries


# --------------------------------------------------------------------------------------------
# Coupled groups: exact least-norm optimum from a dual vector (cell space)


def _size_buckets(k_count, n_cells):
    """Bucket of each group: its row count rounded up to a power of two, so that groups
    padded together have similar sizes (one big group must not pad all the others). Cells
    (at most ``4 K`` per group) are padded to the bucket's largest count: fewer, larger
    batches cost less than many small ones at these sizes.

    Returns:
        ``(bucket, k_pad, j_pad)``: (G,) bucket of each group; per bucket the padded row
        and cell counts.
    """
    kp = 1 << np.ceil(np.log2(np.maximum(k_count, 1))).astype(np.int64)
    keys, bucket = np.unique(kp, return_inverse=True)
    bucket = bucket.reshape(-1)
    j_pad = np.zeros(len(keys), np.int64)
    np.maximum.at(j_pad, bucket, n_cells)
    return bucket, keys, np.maximum(j_pad, 1)


def _certify_groups(cs, phi, g_lo, g_in0, g_in1, g_hi, dual_grid, enum_max_rows, w):
    """Least-norm optimum of every coupled group that a dual vector certifies (cell space).

    Duals are enumerated per linked sub-group (all groups at once), then checked bucket by
    bucket of similar sizes; the groups they do not certify get their duals from ONE HiGHS
    solve of all of them and are checked again.

    Returns:
        ``(x_cell, done, n_dual_lp)``: (J,) label of every cell (0 where not certified), (G,)
        whether each group is certified, and how many were certified by the HiGHS duals.
    """
    k_count, n_cells = cs["k_count"], cs["n_cells"]
    x_cell = np.zeros(len(cs["cell_lo"]))
    done = np.zeros(len(k_count), bool)
    bucket, k_pad, j_pad = _size_buckets(k_count, n_cells)
    dense = [
        (m := np.flatnonzero(bucket == i), *_dense_groups(cs, m, phi, int(k), int(j)))
        for i, (k, j) in enumerate(zip(k_pad, j_pad, strict=True))
    ]

    def certify(lam_rows, todo, newton, batches):
        for members, A, n, b in batches:
            sel = todo[members]
            if not sel.any():
                continue
            members, A, n, b = members[sel], A[sel], n[sel], b[sel]
            lam = _rows_to_groups(lam_rows, cs, members, A.shape[1])
            x, ok = _face_least_norm(A, n, b, lam, CERT_TOL, CERT_TOL, MAX_FACE_ITER, newton)
            slot = np.full(len(done), -1)
            slot[members[ok]] = np.arange(ok.sum())
            s = slot[cs["cell_group"]]
            x_cell[s >= 0] = x[ok][s[s >= 0], cs["cell_rank"][s >= 0]]
            done[members[ok]] = True

    links = _subgroups(cs, g_lo, g_in0, g_in1, g_hi)
    # Only groups whose every sub-group was enumerated are checked here: with a sub-group
    # left at sign(phi) (overlapping instances) the guess is practically never optimal.
    largest = np.zeros(len(done), np.int64)
    np.maximum.at(largest, cs["row_group"], links[2][links[0]])
    first = _subgroup_duals(cs, phi, *links, dual_grid, enum_max_rows)
    certify(first, largest <= enum_max_rows, False, dense)
    rest = ~done
    if not rest.any():
        return x_cell, done, 0
    lam_rows = _lp_duals(cs, phi, rest, w)
    if lam_rows is None:
        return x_cell, done, 0
    # Few groups are left: one padded batch costs less than one per bucket. HiGHS duals are
    # optimal, so their faces are not empty and worth the Newton method where needed.
    members = np.flatnonzero(rest)
    k, j = int(k_count[members].max()), int(n_cells[members].max())
    certify(lam_rows, rest, True, [(members, *_dense_groups(cs, members, phi, k, j))])
    return x_cell, done, int(done[rest].sum())


def _rows_to_groups(values, cs, members, n_rows):
    """(R,) per-row values -> (len(members), n_rows) padded per-group matrix."""
    slot = np.full(len(cs["k_count"]), -1)
    slot[members] = np.arange(len(members))
    row_slot = slot[cs["row_group"]]
    mine = row_slot >= 0
    out = np.zeros((len(members), n_rows))
    out[row_slot[mine], cs["row_rank"][mine]] = values[mine]
    return out


def _cell_system(rows, g, g_lo, g_in0, g_in1, g_hi):
    """Cells of every coupled group: maximal snippet runs on which all its rows agree.

    By symmetry the least-norm optimum is constant on a cell, so a group's problem shrinks
    from its snippets to at most ``4 K`` cells (K rows) with sizes ``n_j``.

    Args:
        rows: (R,) instance indices, sorted by group.
        g: (R,) group 0..G-1 of each row (non-decreasing; groups ordered by position).

    Returns:
        dict with ``cell_lo``/``cell_hi`` (J,) flat snippet ranges, ``cell_group`` (J,),
        ``cell_rank`` (J,) index inside its group, ``n_cells`` (G,), ``k_count`` (G,),
        ``row_rank`` (R,), and the entries ``entry_row`` / ``entry_cell`` / ``entry_val``.
    """
    n_groups = int(g[-1]) + 1
    k_count = np.bincount(g, minlength=n_groups)
    first = np.cumsum(k_count) - k_count
    row_rank = np.arange(len(rows)) - np.repeat(first, k_count)
    lo, a, z = g_lo[rows], g_in0[rows], g_in1[rows]
    hi = np.maximum(z, g_hi[rows])
    g_start = np.minimum.reduceat(lo, first)
    g_end = np.maximum.reduceat(hi, first)
    bps = _sorted_unique(np.concatenate([lo, a, z, hi]))
    c_lo, c_hi = bps[:-1], bps[1:]
    c_grp = np.searchsorted(g_start, c_lo, side="right") - 1
    keep = c_lo < g_end[c_grp]  # drop the gaps between groups
    c_lo, c_hi, c_grp = c_lo[keep], c_hi[keep], c_grp[keep]
    n_cells = np.bincount(c_grp, minlength=n_groups)
    c_first = np.cumsum(n_cells) - n_cells
    r, cell, val = _support_entries(*(np.searchsorted(c_lo, x) for x in (lo, a, z, hi)))
    return {
        "rows": rows, "row_group": g, "row_rank": row_rank, "k_count": k_count,
        "cell_lo": c_lo, "cell_hi": c_hi, "cell_group": c_grp,
        "cell_rank": np.arange(len(c_lo)) - c_first[c_grp], "n_cells": n_cells,
        "entry_row": r, "entry_cell": cell, "entry_val": val,
    }  # fmt: skip


def _dense_groups(cs, members, phi, n_rows, n_cols):
    """Padded dense (G, K, J) matrices, (G, J) cell sizes and (G, K) right sides of groups."""
    slot = np.full(len(cs["k_count"]), -1)
    slot[members] = np.arange(len(members))
    A = np.zeros((len(members), n_rows, n_cols))
    er = cs["entry_row"]
    s = slot[cs["row_group"][er]]
    sel = s >= 0
    cells = cs["cell_rank"][cs["entry_cell"][sel]]
    A[s[sel], cs["row_rank"][er[sel]], cells] = cs["entry_val"][sel]
    b = np.zeros((len(members), n_rows))
    s = slot[cs["row_group"]]
    b[s[s >= 0], cs["row_rank"][s >= 0]] = phi[cs["rows"][s >= 0]]
    n = np.zeros((len(members), n_cols))
    s = slot[cs["cell_group"]]
    n[s[s >= 0], cs["cell_rank"][s >= 0]] = (cs["cell_hi"] - cs["cell_lo"])[s >= 0]
    return A, n, b


def _face_least_norm(A, n, b, lam, tol, feas_tol, max_iter, newton=False):
    """Least-norm point of the LP optimal face that the dual vector ``lam`` describes.

    With reduced costs ``r = 1 - A' lam``, complementary slackness fixes a cell's labels to 0
    where ``r > 0`` and to 1 where ``r < 0``; for ANY ``lam`` a feasible point of that form is
    LP-optimal (zero duality gap), and the face of such points is the whole optimal set. On
    the free cells (``r = 0``) the least-norm point solves ``min sum n_j x_j^2`` subject to the
    constraints and ``0 <= x <= 1``, whose KKT point is ``x = clip(A' beta, 0, 1)``: found by a
    primal-dual active-set iteration, then verified.

    Args:
        A: (G, K, J) +-1/0 cell matrices (padded rows and cells are 0).
        n: (G, J) cell sizes in snippets (0 for padding).
        b: (G, K) right sides.
        lam: (G, K) dual vectors.
        newton: finish groups the iteration leaves uncertified with :func:`_face_newton`
            (worth it only for duals known to be optimal: a wrong guess has an empty face).

    Returns:
        ``(x, ok)``: (G, J) label of each cell, and (G,) whether the point is certified.
    """
    r = 1.0 - np.einsum("gkj,gk->gj", A, lam)
    valid = n > 0
    upper = (r < -tol) & valid
    face = (np.abs(r) <= tol) & valid
    eye = np.eye(A.shape[1])
    pad = (np.abs(A).sum(2) == 0)[:, :, None] * eye
    x = np.zeros(n.shape)
    ok = np.zeros(len(A), bool)
    live = np.arange(len(A))  # groups still iterating: a group stops once certified or fixed
    one = np.zeros_like(face)
    free = face.copy()
    for _ in range(max_iter):
        Al, nl, fl, ol, frl, ul = A[live], n[live], face[live], one[live], free[live], upper[live]
        fixed = nl * (ul | ol)
        rhs = b[live] - np.einsum("gkj,gj->gk", Al, fixed)
        M = (Al * (nl * frl)[:, None, :]) @ Al.transpose(0, 2, 1) + pad[live]
        # A tiny ridge makes rank-deficient systems (duplicate rows, rows without free
        # cells) solvable; its error is far below CERT_TOL or the check below rejects it.
        beta = np.linalg.solve(M + _RIDGE * eye, rhs[..., None])[..., 0]
        z = np.einsum("gkj,gk->gj", Al, beta)
        new_one = fl & (z >= 1.0)
        new_free = fl & (z > 0.0) & ~new_one
        # A fixed point: every face cell sits where clip(A' beta, 0, 1) puts it.
        wrong = (frl & ((z < -tol) | (z > 1 + tol))) | (ol & (z < 1 - tol))
        consistent = ~(fl & (wrong | (~frl & ~ol & (z > tol)))).any(1)
        xl = np.where(frl, np.clip(z, 0.0, 1.0), 0.0) + (ul | ol)
        resid = np.abs(np.einsum("gkj,gj->gk", Al, nl * xl) - b[live]).max(1)
        okl = consistent & (resid <= feas_tol)
        x[live], ok[live] = xl, okl
        moving = ~okl & ((new_free != frl).any(1) | (new_one != ol).any(1))
        live = live[moving]
        if not len(live):
            break
        free[live], one[live] = new_free[moving], new_one[moving]
    bad = np.flatnonzero(~ok & face.any(1)) if newton else []
    if len(bad):  # the active-set iteration can cycle: a damped Newton method does not
        xb, okb = _face_newton(A[bad], n[bad], b[bad], face[bad], upper[bad], feas_tol)
        x[bad[okb]], ok[bad[okb]] = xb[okb], True
    return x, ok


def _face_newton(A, n, b, face, upper, feas_tol, max_iter=FACE_NEWTON_ITER):
    """Least-norm point on the faces of groups the active-set iteration left uncertified.

    Minimises the dual ``theta(beta) = sum_j n_j h(z_j) - rhs' beta``, ``z = A' beta`` on the
    face cells (``h`` integrates ``clip(., 0, 1)``), by Newton steps with a backtracking line
    search and a Levenberg-Marquardt shift (the generalized Hessian is singular where no cell
    is strictly inside (0, 1)). Its minimiser gives ``x = clip(z, 0, 1)``, the KKT point.

    Returns:
        ``(x, ok)``: (G, J) labels (face cells ``clip(z)``, cells above the face 1) and (G,)
        whether every constraint holds to ``feas_tol``.
    """
    K = A.shape[1]
    eye = np.eye(K)
    w = n * face  # (G, J) weight of each free cell
    rhs = b - np.einsum("gkj,gj->gk", A, n * upper)
    acts = ((A != 0) & face[:, None, :]).any(2)  # (G, K) rows that touch the face

    def parts(beta):
        z = np.einsum("gkj,gk->gj", A, beta)
        y = np.clip(z, 0.0, 1.0)
        h = np.where(z <= 0, 0.0, np.where(z < 1, 0.5 * z * z, z - 0.5))
        theta = (w * h).sum(1) - (rhs * beta).sum(1)
        grad = np.where(acts, np.einsum("gkj,gj->gk", A, w * y) - rhs, 0.0)
        return theta, grad, z

    beta = np.zeros(rhs.shape)
    theta, grad, z = parts(beta)
    for _ in range(max_iter):
        res = np.abs(grad).max(1)
        if (res <= 0.01 * feas_tol).all():
            break
        d = w * ((z > 0) & (z < 1))
        shift = np.minimum(_LM_MAX, res) + 1e-14
        H = (A * d[:, None, :]) @ A.transpose(0, 2, 1) + (shift[:, None] + ~acts)[:, :, None] * eye
        step = -np.linalg.solve(H, grad[..., None])[..., 0]
        slope = (grad * step).sum(1)
        t = np.ones(len(beta))
        done = res <= 0.01 * feas_tol
        for _ in range(_MAX_BACKTRACK):
            th_n, g_n, z_n = parts(beta + t[:, None] * step)
            accept = ~done & (th_n <= theta + _ARMIJO * t * slope)
            beta[accept] += t[accept, None] * step[accept]
            theta[accept], grad[accept], z[accept] = th_n[accept], g_n[accept], z_n[accept]
            done |= accept
            if done.all():
                break
            t = np.where(done, t, 0.5 * t)
        if not (done | (res <= 0.01 * feas_tol)).any():
            break
    x = np.where(face, np.clip(z, 0.0, 1.0), 0.0) + upper
    resid = np.abs(np.einsum("gkj,gj->gk", A, n * x) - b).max(1)
    return x, resid <= feas_tol


def _subgroups(cs, g_lo, g_in0, g_in1, g_hi):
    """Linked sub-groups of the rows of every group.

    Two rows of a group are linked when the inner range of one meets the support of the
    other; rows that only share outer snippets interact through cells the optimum leaves at 0
    (reduced cost ``1 + lam_i + lam_j > 0`` for non-negative duals), so each linked sub-group
    gets its own enumeration.

    Returns:
        ``(sub, sub_rank, size)``: (R,) sub-group of each row, (R,) its rank inside it, and
        (S,) the size of each sub-group.
    """
    rows, g = cs["rows"], cs["row_group"]
    k_count = cs["k_count"]
    R = len(rows)
    first = np.cumsum(k_count) - k_count
    kr = k_count[g]
    i = np.repeat(np.arange(R), kr)
    j = first[g][i] + np.arange(len(i)) - np.repeat(np.cumsum(kr) - kr, kr)
    lo, a, z = g_lo[rows], g_in0[rows], g_in1[rows]
    hi = np.maximum(z, g_hi[rows])
    link = (i != j) & (z[i] > a[i]) & (a[i] < hi[j]) & (lo[j] < z[i])
    adj = sparse.csr_matrix((np.ones(link.sum()), (i[link], j[link])), shape=(R, R))
    n_sub, sub = connected_components(adj, directed=False)
    size = np.bincount(sub, minlength=n_sub)
    order = np.argsort(sub, kind="stable")
    sub_rank = np.empty(R, np.int64)
    sub_rank[order] = np.arange(R) - np.repeat(np.cumsum(size) - size, size)
    return sub, sub_rank, size


def _subgroup_duals(cs, phi, sub, sub_rank, size, values, max_rows):
    """Dual value of every row, enumerated on the grid per linked sub-group (see
    :func:`_subgroups`); all sub-groups of one size are enumerated together. The face
    certificate checks the assembled vector on the whole group. Rows of sub-groups above
    ``max_rows`` keep ``sign(phi)`` (the isolated dual).

    Returns:
        (R,) dual value of each row of ``cs``.
    """
    rows = cs["rows"]
    lam = np.sign(phi[rows])
    er, ec, ev = cs["entry_row"], cs["entry_cell"], cs["entry_val"]
    small = size[sub[er]] <= max_rows
    er, ec, ev = er[small], ec[small], ev[small]
    # The cells a sub-group touches, numbered inside the sub-group (others do not matter).
    n_all = len(cs["cell_lo"])
    uniq, local = np.unique(sub[er] * n_all + ec, return_inverse=True)
    local = local.reshape(-1)
    u_unit, u_cell = uniq // n_all, uniq % n_all
    u_rank = np.arange(len(uniq)) - np.searchsorted(u_unit, u_unit)
    cells_per_unit = np.bincount(u_unit, minlength=len(size))
    cell_size = (cs["cell_hi"] - cs["cell_lo"])[u_cell]
    r_all = np.arange(len(rows))
    for K in _sorted_unique(size[size <= max_rows]):
        units = np.flatnonzero(size == K)
        uslot = np.full(len(size), -1)
        uslot[units] = np.arange(len(units))
        J = max(int(cells_per_unit[units].max()), 1)
        A = np.zeros((len(units), K, J))
        e = uslot[sub[er]] >= 0
        A[uslot[sub[er[e]]], sub_rank[er[e]], u_rank[local[e]]] = ev[e]
        n = np.zeros((len(units), J))
        c = uslot[u_unit] >= 0
        n[uslot[u_unit[c]], u_rank[c]] = cell_size[c]
        r = r_all[uslot[sub] >= 0]
        b = np.zeros((len(units), K))
        b[uslot[sub[r]], sub_rank[r]] = phi[rows[r]]
        grid = values if len(values) ** K <= ENUM_MAX_CANDIDATES else DUAL_GRID_COARSE
        best = _enumerated_duals(A, n, b, grid)
        lam[r] = best[uslot[sub[r]], sub_rank[r]]
    return lam


def _merge_cells(A, n, vals):
    """Drop and merge cells before a dual enumeration over the grid ``vals ** K``.

    A cell whose term ``n_j max(0, a_j' lam - 1)`` is 0 at every grid point adds nothing, and
    cells with the same column ``a_j`` add up: drop the former, merge the latter (J shrinks
    severalfold; with dyadic grid values every term is exact, so the argmax is unchanged).
    """
    G, K, _ = A.shape
    top = (np.where(A > 0, vals.max(), 0.0) - np.where(A < 0, vals.min(), 0.0)).sum(1)  # (G, J)
    code = ((A + 1.0) * 3.0 ** np.arange(K)[:, None]).sum(1).astype(np.int64)  # column pattern
    gi, ji = np.nonzero((n > 0) & (top > 1.0))
    uniq, first, inv = np.unique(gi * 3**K + code[gi, ji], return_index=True, return_inverse=True)
    unit = uniq // 3**K
    rank = np.arange(len(uniq)) - np.searchsorted(unit, unit)
    J = max(int(rank.max()) + 1, 1) if len(uniq) else 1
    A2 = np.zeros((G, K, J))
    A2[unit, :, rank] = A[gi[first], :, ji[first]]
    slot = (unit * J + rank)[inv.reshape(-1)]
    n2 = np.bincount(slot, n[gi, ji], minlength=G * J).reshape(G, J)
    return A2, n2


def _enumerated_duals(A, n, b, values):
    """Best dual vector of each group over the grid ``values ** K`` (exact when the LP's
    optimal duals include a grid point; the face certificate decides).

    Args:
        A: (G, K, J) cell matrices, only cells the rows touch (padding: 0 with n = 0);
            n: (G, J) cell sizes; b: (G, K) right sides.

    Returns:
        (G, K) the grid point maximising the LP dual ``b' lam - sum_j n_j max(0, a_j' lam - 1)``.
    """
    G, K, _ = A.shape
    vals = np.asarray(values, float)
    if len(vals) ** K > MERGE_MIN_CANDIDATES:
        A, n = _merge_cells(A, n, vals)
    grid = np.stack(np.meshgrid(*([vals] * K), indexing="ij"), -1)
    grid = grid.reshape(-1, K)  # (M, K)
    # float32 halves the memory traffic and is exact here: with grid values that are
    # multiples of 1/2 and integer cell sizes, every product and sum below is a multiple
    # of 1/2 far below 2**23 (other grids only risk a near-tie, which the certificate catches).
    excess = np.matmul(grid[None].astype(np.float32), A.astype(np.float32))  # (G, M, J)
    excess -= 1.0
    np.maximum(excess, 0.0, out=excess)
    penalty = np.matmul(excess, n.astype(np.float32)[:, :, None])[..., 0]  # (G, M)
    dual = b @ grid.T - penalty
    return grid[np.argmax(dual, 1)]


def _lp_duals(cs, phi, groups, w):
    """Dual value of every row of the groups selected by the (G,) mask ``groups``, from ONE
    HiGHS solve of their elastic LP in cell space (variables: cell masses in [0, n_j] and
    violations; sparse, no padding). Returns (R,) values (0 outside), or None on failure."""
    rsel = groups[cs["row_group"]]
    csel = groups[cs["cell_group"]]
    row_new = np.cumsum(rsel) - 1
    cell_new = np.cumsum(csel) - 1
    er, ec = cs["entry_row"], cs["entry_cell"]
    e = rsel[er]
    m, nv = int(rsel.sum()), int(csel.sum())
    # A x + v+ - v- = phi, built at once in the CSC layout HiGHS takes (no conversions).
    k = np.arange(m)
    rows = np.r_[row_new[er[e]], k, k]
    cols = np.r_[cell_new[ec[e]], nv + k, nv + m + k]
    vals = np.r_[cs["entry_val"][e], np.ones(m), -np.ones(m)]
    A_eq = sparse.csc_matrix((vals, (rows, cols)), shape=(m, nv + 2 * m))
    c = np.r_[np.ones(nv), np.full(2 * m, w)]
    ub = np.r_[(cs["cell_hi"] - cs["cell_lo"])[csel], np.full(2 * m, np.inf)]
    b_eq = phi[cs["rows"][rsel]]
    # No presolve: the system is already reduced to cells, and presolve costs more than it
    # saves here (the duals are checked by the face certificate either way).
    res = linprog(c, A_eq=A_eq, b_eq=b_eq, bounds=np.c_[np.zeros(nv + 2 * m), ub],
                  method="highs", options={"presolve": False})  # fmt: skip
    if res.status != 0:
        return None
    lam = np.zeros(len(rsel))
    lam[rsel] = res.eqlin.marginals
    return lam


def _dual(A, b, rmask, cmask, mu, eps, w):
    """Dual objective, labels, residuals and their pieces at ``mu`` (all batched)."""
    z = np.einsum("gkn,gk->gn", A, mu)  # (G, n)
    u = (z - 1.0) / eps
    y = np.clip(u, 0.0, 1.0) * cmask
    sr = (np.abs(mu) - w) / eps  # elastic part: violation = sign(mu) * max(0, sr)
    viol = np.sign(mu) * np.maximum(sr, 0.0) * rmask
    grad = np.einsum("gkn,gn->gk", A, y) + viol - b  # (G, K)
    hu = np.where(u <= 0, 0.0, np.where(u < 1, 0.5 * u * u, u - 0.5)) * cmask
    theta = eps * (hu.sum(1) + 0.5 * (np.maximum(sr, 0.0) ** 2 * rmask).sum(1)) - (b * mu).sum(1)
    return theta, grad, u, sr, y


def _newton_level(A, b, rmask, cmask, mu, eps, w, tol, max_iter):
    """Newton iterations at one eps; only groups not yet converged are computed."""
    mu = mu.copy()
    eye = np.eye(A.shape[1])
    theta, grad, u, sr, _ = _dual(A, b, rmask, cmask, mu, eps, w)
    res = np.abs(grad).max(1)
    live = res > tol
    for _ in range(max_iter):
        idx = np.flatnonzero(live)
        if not len(idx):
            break
        Ai, bi, ri, ci = A[idx], b[idx], rmask[idx], cmask[idx]
        d = ((u[idx] > 0) & (u[idx] < 1) & ci).astype(np.float64)
        H = (Ai * d[:, None, :]) @ Ai.transpose(0, 2, 1) + ((sr[idx] > 0) & ri)[:, :, None] * eye
        shift = np.minimum(_LM_MAX, res[idx]) + 1e-14  # Levenberg-Marquardt for singular H
        H = H / eps + (shift[:, None] / eps + ~ri)[:, :, None] * eye  # padded rows: identity
        step = -np.linalg.solve(H, grad[idx][..., None])[..., 0]
        slope = (grad[idx] * step).sum(1)
        t = np.ones(len(idx))
        done = np.zeros(len(idx), bool)
        for _ in range(_MAX_BACKTRACK):
            cand = mu[idx] + t[:, None] * step
            th_n, g_n, u_n, sr_n, _ = _dual(Ai, bi, ri, ci, cand, eps, w)
            res_n = np.abs(g_n).max(1)
            # Armijo, or a halved residual (theta differences drown in rounding near the end).
            ok = ~done & ((th_n <= theta[idx] + _ARMIJO * t * slope) | (res_n < 0.5 * res[idx]))
            j = idx[ok]
            mu[j], theta[j], grad[j], u[j], sr[j], res[j] = (
                cand[ok],
                th_n[ok],
                g_n[ok],
                u_n[ok],
                sr_n[ok],
                res_n[ok],
            )
            done |= ok
            if done.all():
                break
            t = np.where(done, t, 0.5 * t)
        live[idx[~done]] = False  # no descent left: stalled at rounding level
        live &= res > tol
    return mu


def _newton_bucket(A, b, rmask, cmask, w, schedule, tol, gap_tol, max_iter):
    """Semismooth Newton on the dual of ``min w|v|_1 + 1'y + eps/2 (|y|^2 + |v|^2)``,
    ``A y + v = b``, ``0 <= y <= 1``, for each eps of the schedule; certify by LP duality."""
    G = A.shape[0]
    # Start where an isolated instance's solution lies: mu = sign(phi) (1 + eps |phi| / L).
    n_in = np.maximum((A > 0).sum(2), 1)
    n_out = np.maximum((A < 0).sum(2), 1)
    eps0 = schedule[0]
    mu = np.where(b >= 0, 1 + eps0 * b / n_in, -(1 + eps0 * -b / n_out)) * rmask
    y_best = np.zeros(cmask.shape)
    cert = np.zeros(G, bool)
    gaps = np.full(G, np.inf)
    prev = None
    for eps in schedule:
        if prev is not None and prev[2] is not None:  # mu is affine in eps on a fixed active set
            mu = prev[0] + (eps - prev[1]) * prev[2]
        mu = _newton_level(A, b, rmask, cmask, mu, eps, w, tol, max_iter)
        theta, grad, u, sr, y = _dual(A, b, rmask, cmask, mu, eps, w)
        if prev is not None:
            slope_eps = (mu - prev[0]) / (eps - prev[1])
            mu0 = np.clip(mu - eps * slope_eps, -w, w)  # dual extrapolated to eps = 0
            z0 = np.einsum("gkn,gk->gn", A, mu0)
            # Weak duality for the right side actually met, A y + v (it differs from b by the
            # Newton residual, checked separately): w must not amplify that residual.
            v = np.sign(mu) * np.maximum(sr, 0.0) * rmask
            met = np.einsum("gkn,gn->gk", A, y) + v
            lower = (met * mu0).sum(1) - (np.maximum(z0 - 1.0, 0.0) * cmask).sum(1)
            primal = y.sum(1) + w * np.abs(v).sum(1)
            gap = (primal - lower) / np.maximum(1.0, np.abs(primal))
            newly = ~cert & (gap <= gap_tol) & (np.abs(grad).max(1) <= tol)
            y_best[newly], gaps[newly] = y[newly], gap[newly]
            cert |= newly
            prev = (mu, eps, slope_eps)
        else:
            prev = (mu, eps, None)
        if cert.all():
            break
    y_best[~cert] = y[~cert]
    return y_best, cert, np.maximum(gaps, 0.0)


def _highs_fallback(y, groups, entries, phi, w):
    """HiGHS on the penalised LP of the uncertified groups (a vertex, not the min-norm point)."""
    rsel = groups[entries["row_group"]]
    vsel = groups[entries["var_group"]]
    rows_new = np.full(len(rsel), -1)
    rows_new[rsel] = np.arange(rsel.sum())
    vars_new = np.full(len(vsel), -1)
    vars_new[vsel] = np.arange(vsel.sum())
    esel = rsel[entries["entry_row"]]
    m, n = int(rsel.sum()), int(vsel.sum())
    A = sparse.csr_matrix(
        (
            entries["entry_val"][esel],
            (rows_new[entries["entry_row"][esel]], vars_new[entries["entry_var"][esel]]),
        ),
        shape=(m, n),
    )
    eye = sparse.identity(m, format="csr")
    A_eq = sparse.hstack([A, eye, -eye], format="csr")  # A y + v+ - v- = phi
    c = np.r_[np.ones(n), np.full(2 * m, w)]
    bounds = np.r_[np.tile([0.0, 1.0], (n, 1)), np.tile([0.0, np.inf], (2 * m, 1))]
    res = linprog(c, A_eq=A_eq, b_eq=phi[entries["rows"][rsel]], bounds=bounds, method="highs")
    if res.x is not None:  # the elastic LP is always feasible and bounded
        y = y.copy()
        y[vsel] = res.x[:n]
    return y


# --------------------------------------------------------------------------------------------
# Δ pseudo labels and the target schedule (paper.md §1.7, §1.8; method.py:172-262)

REGEN_EPOCHS = (200, 230, 245, 260, 275, 300)
"""0-based epochs at whose start the pseudo labels are regenerated."""
ZERO_TARGET_UNTIL = 200
"""Up to and including this epoch the pseudo-label target is zero (no distillation)."""
DELTA_START = 251
"""First epoch trained on Δ pseudo labels instead of the latest pseudo labels."""
DELTA_COEFFICIENTS = ((251, 2.0), (301, 2.15))
"""``(first epoch, alpha)`` pairs: alpha of the Δ pseudo labels from that epoch on."""
HISTORY_LENGTH = 3
"""Pseudo-label sets the reference keeps (only the latest two are ever read)."""


def delta_pseudo_labels(latest: Any, previous: Any, coefficient: float, *, clamp_min=None) -> Any:
    """Δ pseudo labels ``coefficient * (latest - previous)`` (paper.md §1.7).

    Entries can be negative: a class whose label fell between two regenerations is pushed
    down by the cross-entropy (the "self-correction"; unbounded ascent, §7 Q6).

    Args:
        latest: (T, C+1) pseudo labels of the latest regeneration (numpy or torch).
        previous: (T, C+1) pseudo labels of the regeneration before it.
        coefficient: alpha (2.0, then 2.15 in the reference schedule).
        clamp_min: if given, entries below it are raised to it (e.g. 0 forbids unlearning);
            None (default) reproduces the reference.

    Returns:
        Same type and shape as ``latest``.
    """
    if tuple(latest.shape) != tuple(previous.shape):
        raise ValueError(f"shape mismatch: {tuple(latest.shape)} vs {tuple(previous.shape)}")
    delta = coefficient * (latest - previous)
    if clamp_min is None:
        return delta
    return delta.clamp(min=clamp_min) if hasattr(delta, "clamp") else np.maximum(delta, clamp_min)


def update_history(
    history: Sequence[tuple[int, Any]],
    epoch: int,
    labels: Any,
    history_length: int = HISTORY_LENGTH,
) -> list[tuple[int, Any]]:
    """Append one regeneration ``(epoch, labels)`` and keep the last ``history_length``."""
    return (list(history) + [(epoch, labels)])[-history_length:]


def pseudo_target(
    epoch: int,
    history: Mapping[int, Any] | Sequence[tuple[int, Any]],
    *,
    regen_epochs: Sequence[int] = REGEN_EPOCHS,
    zero_target_until: int = ZERO_TARGET_UNTIL,
    delta_start: int = DELTA_START,
    delta_coefficients: Sequence[tuple[int, float]] = DELTA_COEFFICIENTS,
    clamp_min: float | None = None,
) -> Any | None:
    """Pseudo-label target of the distillation loss at ``epoch`` (the §1.8 table).

    ``epoch <= zero_target_until``: None (zero target). Then the latest regeneration ``Y(r)``
    with ``r <= epoch`` until ``delta_start``; from ``delta_start`` on
    ``alpha * (Y(latest) - Y(previous))``, alpha from ``delta_coefficients``.

    Args:
        epoch: 0-based epoch; regenerations at ``epoch`` happen before its first batch.
        history: regenerations so far, ``{regen_epoch: labels}`` or ``[(regen_epoch, labels)]``.
        regen_epochs: epochs that regenerate; the latest one ``<= epoch`` is used.
        zero_target_until: last epoch with a zero target.
        delta_start: first epoch with Δ pseudo labels.
        delta_coefficients: ``(first epoch, alpha)`` pairs, sorted by epoch.
        clamp_min: passed to :func:`delta_pseudo_labels`.

    Returns:
        The target labels (type of the stored labels), or None for a zero target.

    Raises:
        KeyError: a regeneration the schedule needs is missing from ``history``.
    """
    if epoch <= zero_target_until:
        return None
    store = dict(history)
    done = [r for r in sorted(regen_epochs) if r <= epoch]
    if not done:
        return None
    use_delta = epoch >= delta_start and len(done) >= 2
    needed = done[-2:] if use_delta else done[-1:]
    missing = [r for r in needed if r not in store]
    if missing:
        raise KeyError(f"epoch {epoch}: pseudo labels of regeneration(s) {missing} missing")
    if not use_delta:
        return store[done[-1]]
    alpha = [a for first, a in delta_coefficients if first <= epoch][-1]
    return delta_pseudo_labels(store[done[-1]], store[done[-2]], alpha, clamp_min=clamp_min)


# --------------------------------------------------------------------------------------------
# Quality of pseudo labels against ground truth


def pseudo_label_quality(
    pseudo: np.ndarray,
    gt_segments: np.ndarray,
    gt_labels: np.ndarray,
    *,
    pseudo_segments: np.ndarray | None = None,
    pseudo_segment_labels: np.ndarray | None = None,
    tiou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Where the pseudo-label mass of one video lies, and how good its pseudo segments are.

    A snippet ``t`` is inside the GT of class c when its centre ``t + 0.5`` lies in a GT
    segment of class c. The right place for the mass of class column c is inside the GT of
    c; for the background column (the last one) it is outside every GT segment. Segment
    precision / recall are best-match rates (not one-to-one) over the action columns: a
    pseudo segment is a hit when its best same-class GT tIoU is >= ``tiou_threshold``, and a
    GT segment is found when its best same-class pseudo segment tIoU is. Background pseudo
    segments have no GT and are left out. Counts and sums are returned so that videos can be
    pooled with :func:`summarize_quality`.

    Args:
        pseudo: (T, C+1) pseudo labels.
        gt_segments: (M, 2) float, GT ``[start, end)`` in snippets.
        gt_labels: (M,) int GT classes in ``[0, C)``.
        pseudo_segments: (N, 2) float fused segments in snippets (optional).
        pseudo_segment_labels: (N,) int their columns in ``[0, C]`` (C = background).
        tiou_threshold: tIoU of a hit.

    Returns:
        ``mass_inside`` / ``mass_outside``: (C+1,) label mass in the right / wrong place per
        column (see above); ``inside_fraction``: right-place mass of the class columns over
        their total (nan without mass); ``background_outside_fraction``: the same for the
        background column. With segments also ``precision``, ``recall``, ``mean_best_tiou``
        (mean over action pseudo segments of the best same-class GT tIoU) and
        ``mean_gt_best_tiou``, plus the counts ``n_pseudo``, ``n_hits``, ``n_gt``,
        ``n_found`` and the sums ``sum_best_tiou``, ``sum_gt_best_tiou``.
    """
    pseudo = _to_numpy(pseudo, np.float64)
    T, ncol = pseudo.shape
    gts = _to_numpy(gt_segments, np.float64).reshape(-1, 2)
    gtl = _to_numpy(gt_labels, np.int64).reshape(-1)
    centre = np.arange(T) + 0.5
    in_gt = (centre[None, :] >= gts[:, :1]) & (centre[None, :] < gts[:, 1:])  # (M, T)
    right = np.zeros((ncol, T), bool)
    np.logical_or.at(right, gtl, in_gt)
    right[ncol - 1] = ~in_gt.any(0)  # background belongs outside every action
    mass_in = (pseudo.T * right).sum(1)  # (C+1,)
    mass_out = (pseudo.T * ~right).sum(1)
    out: dict[str, Any] = {
        "mass_inside": mass_in,
        "mass_outside": mass_out,
        "inside_fraction": _ratio(mass_in[:-1].sum(), mass_in[:-1].sum() + mass_out[:-1].sum()),
        "background_outside_fraction": _ratio(mass_in[-1], mass_in[-1] + mass_out[-1]),
    }
    if pseudo_segments is not None:
        ps = _to_numpy(pseudo_segments, np.float64).reshape(-1, 2)
        pl = _to_numpy(pseudo_segment_labels, np.int64).reshape(-1)
        action = pl < ncol - 1
        ps, pl = ps[action], pl[action]
        tiou = pairwise_tiou(ps, gts) * (pl[:, None] == gtl[None, :])  # (N, M) same class only
        best_p = tiou.max(1) if tiou.shape[1] else np.zeros(len(ps))
        best_g = tiou.max(0) if tiou.shape[0] else np.zeros(len(gts))
        counts = {
            "n_pseudo": len(ps),
            "n_hits": int((best_p >= tiou_threshold).sum()),
            "n_gt": len(gts),
            "n_found": int((best_g >= tiou_threshold).sum()),
            "sum_best_tiou": float(best_p.sum()),
            "sum_gt_best_tiou": float(best_g.sum()),
        }
        out |= counts | _rates(counts)
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _rates(c: Mapping[str, float]) -> dict[str, float]:
    return {
        "precision": _ratio(c["n_hits"], c["n_pseudo"]),
        "recall": _ratio(c["n_found"], c["n_gt"]),
        "mean_best_tiou": _ratio(c["sum_best_tiou"], c["n_pseudo"]),
        "mean_gt_best_tiou": _ratio(c["sum_gt_best_tiou"], c["n_gt"]),
    }


def summarize_quality(per_video: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Pool :func:`pseudo_label_quality` results of many videos (micro averages: every
    pseudo segment, GT segment and unit of mass counts once).

    Returns:
        JSON-ready floats ``precision``, ``recall``, ``mean_best_tiou``,
        ``mean_gt_best_tiou``, ``inside_fraction``, ``background_outside_fraction`` and the
        counts ``videos``, ``n_pseudo``, ``n_gt`` (None where undefined, e.g. no mass).
    """
    keys = ("n_pseudo", "n_hits", "n_gt", "n_found", "sum_best_tiou", "sum_gt_best_tiou")
    with_segments = [q for q in per_video if "n_pseudo" in q]
    totals = {k: sum(q[k] for q in with_segments) for k in keys}
    m_in = sum((np.asarray(q["mass_inside"]) for q in per_video), np.zeros(1))
    m_out = sum((np.asarray(q["mass_outside"]) for q in per_video), np.zeros(1))
    out = {"videos": len(per_video)}
    if with_segments:
        out |= {"n_pseudo": totals["n_pseudo"], "n_gt": totals["n_gt"]} | _rates(totals)
    if per_video:
        out["inside_fraction"] = _ratio(m_in[:-1].sum(), m_in[:-1].sum() + m_out[:-1].sum())
        out["background_outside_fraction"] = _ratio(m_in[-1], m_in[-1] + m_out[-1])
    return {k: None if v != v else v for k, v in out.items()}  # NaN is not JSON: None


# --------------------------------------------------------------------------------------------
# Export of pseudo segments as an annotation file


def pseudo_annotations(
    segments: Mapping[str, Any],
    timing: Mapping[str, Any],
    class_names: Sequence[str],
    subset: str,
    *,
    version: str = "wtal pseudo labels",
) -> dict[str, Any]:
    """Pseudo segments of training videos as an ActionFormer/ActivityNet annotation file.

    The format of ActionFormer's ``thumos14.json``: ``{"version", "database": {video_id:
    {"subset", "duration", "fps", "annotations": [{"label", "segment", "segment(frames)",
    "label_id", "score"}]}}}`` with seconds in ``segment``; ``score`` (the fused score phi)
    is extra and ignored by loaders that do not know it. Background segments are left out.
    Videos keep their order; annotations go by start time.

    Args:
        segments: per video, (N, 4) rows ``[start, end, score, column]`` in snippets (numpy or
            torch), columns in ``[0, C]`` with C = background.
        timing: per video, ``[num_snippets, fps, snippet_frames, duration_s]`` (duration NaN
            when unknown: the end of the last snippet is used).
        class_names: the C class names; ``label_id`` is the index in this list.
        subset: the subset name written for every video (e.g. ``validation``).
        version: the file's ``version`` string.

    Returns:
        The JSON-ready dict.

    Raises:
        InputError: a video without timing, or malformed segment rows.
    """
    num_classes = len(class_names)
    database: dict[str, Any] = {}
    for video_id, rows in segments.items():
        if video_id not in timing:
            raise InputError(None, "no timing stored for this video", video=video_id)
        rows = _to_numpy(rows, np.float64)
        if rows.ndim != 2 or rows.shape[1] != 4 or not np.isfinite(rows).all():
            raise InputError(
                None, f"expected finite (N, 4) segment rows, got {rows.shape}", video_id
            )
        T, fps, snippet_frames, duration = (float(x) for x in _to_numpy(timing[video_id], float))
        if not duration > 0:  # unknown (NaN): the features' extent
            duration = float(snippets_to_seconds(T, fps, snippet_frames))
        rows = rows[rows[:, 3] < num_classes]  # background column: no action
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        seconds = np.clip(snippets_to_seconds(rows[:, :2], fps, snippet_frames), 0.0, duration)
        database[video_id] = {
            "subset": subset,
            "duration": duration,
            "fps": fps,
            "annotations": [
                {
                    "label": class_names[int(c)],
                    "segment": [float(a), float(b)],
                    "segment(frames)": [float(a * fps), float(b * fps)],
                    "label_id": int(c),
                    "score": float(s),
                }
                for (a, b), s, c in zip(seconds, rows[:, 2], rows[:, 3], strict=True)
            ],
        }
    return {"version": version, "database": database}
