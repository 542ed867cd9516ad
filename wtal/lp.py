"""Fused segments -> snippet pseudo labels: the linear program of paper.md §1.6.

A video has T snippets and C + 1 columns (classes + background). Each fused instance k of
column c (a segment in snippets, a score ``phi_k``) asks that the label mass (sum of labels)
on its inner snippets minus the mass on its outer band be ``phi_k``::

    minimise  sum_t y_t   over y in [0, 1]^T   subject to   A y = phi

with ``y`` (T,) the labels of column c and ``A`` (K, T) +1 on inner, -1 on outer snippets
(:func:`lp_regions`). Each column is its own LP; a column without instances is 0.

Which optimum. The optimal set is often a face, so a solver's vertex is arbitrary; we return
its least-norm point, which is unique. For a small enough ``eps`` the minimiser of the smooth
``sum y + eps/2 |y|^2`` under the same constraints IS that point (exact regularisation). An
infeasible set gets violations ``v`` (K,), ``A y + v = phi``, priced ``w |v|_1`` (``w =
violation_weight``, above every dual multiplier): least total violation first, then least mass.

How it is solved. (1) Instances of one column whose supports ``[outer_start, max(end,
outer_end))`` share snippets form a group, an LP of its own. (2) A group of one instance has a
closed form: ``phi / L`` on its ``L`` inner snippets for ``phi > 0``, ``|phi|`` spread over its
outer band for ``phi < 0`` (capped at 1). (3) Other groups: Newton's method on the dual of the
regularised problem. A multiplier ``mu`` (K,) gives ``y = clip((A' mu - 1) / eps, 0, 1)`` and
``v = sign(mu) max(0, (|mu| - w) / eps)``; the dual gradient is the residual ``A y + v - phi``.
Generalised Hessian, Levenberg-Marquardt shift, backtracking line search; ``eps`` decreases
along :data:`REG_SCHEDULE` until the LP duality gap between ``(y, v)`` and ``mu`` extrapolated
to ``eps = 0`` certifies ``y`` as optimal. Groups of similar size are padded into one (G, K, n)
batch. (4) A group that no ``eps`` certifies goes to HiGHS (a vertex, counted in
``n_fallback``). Every (video, column) pair owns a stretch of one flat label array, so
:func:`solve_pseudo_labels_batch` solves the groups of all videos together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from wtal.io import InputError
from wtal.segments import REFERENCE_OUTER_BAND, outer_band_width, to_numpy

VIOLATION_WEIGHT = 100.0
"""Price of one unit of violation, in label mass. Above the LP's dual multipliers (small
integers for these +-1 matrices) for "least violation first"; much larger values cost float64
digits in the Newton labels ``(z - 1) / eps``."""
REG_SCHEDULE = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)
"""Decreasing regularisation weights ``eps`` (until every group is certified). A large start
keeps the first Newton solves smooth; much below 1e-4, ``(z - 1) / eps`` loses float64 digits."""
RESIDUAL_TOL = 1e-10
"""Newton stops when every constraint residual of a group is below this."""
GAP_TOL = 1e-9
"""A group is certified when its LP duality gap is below ``GAP_TOL * max(1, objective)``."""
FEASIBILITY_TOL = 1e-6
"""A constraint violated by more than this counts as violated in the stats."""
MAX_NEWTON_ITER = 200
"""Newton iterations per regularisation level."""
_ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
_MAX_BACKTRACK = 40  # halvings of the step before the line search gives up on a group
_LM_MAX = 1e-1  # cap of the Levenberg-Marquardt shift (times 1/eps) when the Hessian is singular


@dataclass(frozen=True)
class PseudoStats:
    """What :func:`solve_pseudo_labels_batch` did (counts over all videos of the batch)."""

    n_lps: int  # (video, column) pairs with instances (one LP each in the reference code)
    n_instances: int  # constraints (fused instances)
    n_closed_form: int  # instances solved in closed form (isolated, or with an empty support)
    n_groups: int  # groups solved by the Newton method (>= 2 instances sharing snippets)
    n_fallback: int  # groups the duality gap did not certify, solved by HiGHS (a vertex)
    n_infeasible: int  # (video, column) pairs with a violation above feasibility_tol
    n_violated: int  # constraints violated by more than feasibility_tol
    max_violation: float  # largest |sum_in y - sum_out y - phi| over all constraints
    max_gap: float  # largest relative duality gap of a certified group (0 when none)
    solve_time_s: float  # wall time of the whole call, seconds


def lp_regions(
    segments: np.ndarray,
    num_snippets: int | np.ndarray,
    *,
    outer_scale: float = REFERENCE_OUTER_BAND[0],
    outer_power: float = REFERENCE_OUTER_BAND[1],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inner and outer snippet ranges of each fused instance's LP constraint (paper.md §1.6.4).

    ``s, e = int(start), int(end)``, ``delta = outer_scale * (e - s) ** outer_power``, inner
    ``[s, e)``, outer ``[max(0, int(s - delta)), s) U [e, min(T - 1, int(e + delta + 1)))``:
    the right outer part starts AT e, one earlier than in the proposal score (§7 Q5). Ranges
    are clipped to ``[0, T]`` like numpy slicing.

    Args:
        segments: (N, 2) float, fused ``[start, end]`` in snippets, ``0 <= start <= end``.
        num_snippets: T, or (N,) the T of each instance's video.
        outer_scale, outer_power: factor and exponent of the outer half-width.

    Returns:
        ``(outer_start, start, end, outer_end)``, four (N,) int64 arrays, ``outer_start <=
        start <= end``; the support is ``[outer_start, max(end, outer_end))``.
    """
    s, e = np.trunc(np.asarray(segments, np.float64).reshape(-1, 2)).astype(np.int64).T
    delta = outer_band_width(e - s, outer_scale, outer_power)
    outer_s = np.maximum(0, np.trunc(s - delta).astype(np.int64))
    outer_e = np.minimum(num_snippets - 1, np.trunc(e + delta + 1).astype(np.int64))
    s, e = np.clip(s, 0, num_snippets), np.clip(e, 0, num_snippets)
    return np.minimum(outer_s, s), s, e, np.clip(outer_e, 0, num_snippets)


def _support_entries(lo, s, e, hi):
    """Row, position and +-1 value of every non-zero of constraint rows with inner ``[s, e)``
    and support ``[lo, max(e, hi))`` ((N,) int arrays each), as three flat arrays."""
    lens = np.maximum(e, hi) - lo  # (N,)
    rows = np.repeat(np.arange(len(s)), lens)
    cols = lo[rows] + np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    vals = np.where((cols >= s[rows]) & (cols < e[rows]), 1.0, -1.0)
    return rows, cols, vals


def _validate(segments, scores, labels, num_snippets, num_columns, video):
    """Raise an :class:`InputError` naming ``video`` at the first malformed input."""
    n = len(segments)  # segments: (n, 2)
    if num_snippets < 1 or num_columns < 1:
        what = f"num_snippets and num_columns must be >= 1, got {num_snippets}, {num_columns}"
    elif scores.shape != (n,) or labels.shape != (n,):
        what = f"scores/labels: expected shape ({n},), got {scores.shape} and {labels.shape}"
    elif not (np.isfinite(segments).all() and np.isfinite(scores).all()):
        what = "segments/scores: expected finite numbers"
    elif len(bad := np.flatnonzero((segments[:, 0] < 0) | (segments[:, 1] < segments[:, 0]))):
        what = f"segment {bad[0]}: expected 0 <= start <= end, got {segments[bad[0]].tolist()}"
    elif len(bad := np.flatnonzero((labels < 0) | (labels >= num_columns))):
        what = f"segment {bad[0]}: label {labels[bad[0]]} outside [0, {num_columns})"
    else:
        return
    raise InputError(None, what, video=video)


def solve_pseudo_labels(
    segments: Any,
    scores: Any,
    labels: Any,
    num_snippets: int,
    num_columns: int,
    *,
    video: str | None = None,
    **options: Any,
) -> tuple[np.ndarray, PseudoStats]:
    """Snippet pseudo labels of one video: the least-norm optimum of the §1.6 LP per column.

    Args:
        segments: (N, 2) float, fused instances ``[start, end]``, snippet units (numpy or torch).
        scores: (N,) float, fused score phi of each instance (the constraint's right side).
        labels: (N,) int, column of each instance in ``[0, num_columns)``.
        num_snippets: T.
        num_columns: C + 1 (classes + background).
        video: video id, only for error messages.
        **options: the keywords of :func:`solve_pseudo_labels_batch` (outer band, solver
            tolerances, ``closed_form``), with its defaults.

    Returns:
        ``(pseudo, stats)``: pseudo is a (T, num_columns) float64 numpy array in [0, 1],
        0 in columns without instances and never NaN; stats is a :class:`PseudoStats`.

    Raises:
        InputError: malformed shapes, non-finite values, ``end < start`` or a bad label.
    """
    out, stats = solve_pseudo_labels_batch(
        [segments], [scores], [labels], [num_snippets], num_columns, video_ids=[video], **options
    )
    return out[0], stats


def solve_pseudo_labels_batch(
    segments: Sequence[Any],
    scores: Sequence[Any],
    labels: Sequence[Any],
    num_snippets: Sequence[int],
    num_columns: int,
    *,
    outer_scale: float = REFERENCE_OUTER_BAND[0],
    outer_power: float = REFERENCE_OUTER_BAND[1],
    violation_weight: float = VIOLATION_WEIGHT,
    reg_schedule: Sequence[float] = REG_SCHEDULE,
    residual_tol: float = RESIDUAL_TOL,
    gap_tol: float = GAP_TOL,
    feasibility_tol: float = FEASIBILITY_TOL,
    max_newton_iter: int = MAX_NEWTON_ITER,
    closed_form: bool = True,
    video_ids: Sequence[str | None] | None = None,
) -> tuple[list[np.ndarray], PseudoStats]:
    """:func:`solve_pseudo_labels` of many videos in one vectorized pass (same answers).

    Args:
        segments, scores, labels: per video, (N_v, 2), (N_v,), (N_v,) as in
            :func:`solve_pseudo_labels`.
        num_snippets: per video, T_v.
        num_columns: C + 1, shared by all videos.
        outer_scale, outer_power: the outer band, see :func:`lp_regions`.
        violation_weight: mass price of one unit of violation (> 1).
        reg_schedule, residual_tol, gap_tol, max_newton_iter, feasibility_tol: see the
            module constants of the same names.
        closed_form: False sends isolated instances through the Newton method too (tests).
        video_ids: per video, its id for error messages (optional).

    Returns:
        ``(pseudo, stats)``: a list of (T_v, num_columns) float64 arrays, one stats for all.
    """
    t0 = time.perf_counter()
    n_videos = len(num_snippets)
    if not (len(segments) == len(scores) == len(labels) == n_videos):
        raise ValueError("segments, scores, labels and num_snippets must have one entry per video")
    if violation_weight <= 1:
        raise ValueError(f"violation_weight must be > 1, got {violation_weight}")
    ids = list(video_ids) if video_ids is not None else [None] * n_videos
    T_v = np.asarray([int(t) for t in num_snippets], np.int64)
    segs = [to_numpy(x, np.float64).reshape(-1, 2) for x in [np.zeros((0, 2)), *segments]]
    phis = [to_numpy(x, np.float64).reshape(-1) for x in [[], *scores]]
    labs = [to_numpy(x, np.int64).reshape(-1) for x in [[], *labels]]
    for v in range(n_videos):  # everything first, so that bad input fails before any work
        _validate(segs[v + 1], phis[v + 1], labs[v + 1], T_v[v], num_columns, ids[v])
    seg, phi, lab = np.concatenate(segs), np.concatenate(phis), np.concatenate(labs)
    vid = np.repeat(np.arange(n_videos), [len(p) for p in phis[1:]])  # video of each instance
    # Each (video, column) pair with instances owns T_v + 1 positions of one flat array: the
    # spare one keeps neighbouring stretches apart, so groups never cross a column or video.
    pairs, pair_of = np.unique(vid * num_columns + lab, return_inverse=True)
    pair_T = T_v[pairs // num_columns]
    off_p = np.cumsum(pair_T + 1) - (pair_T + 1)
    flat = np.zeros(int((pair_T + 1).sum()))
    outer_s, s, e, outer_e = lp_regions(
        seg, T_v[vid], outer_scale=outer_scale, outer_power=outer_power
    )
    base = off_p[pair_of.reshape(-1)]
    g_lo, g_in0, g_in1 = base + outer_s, base + s, base + e  # flat positions
    g_hi = base + np.maximum(e, outer_e)
    reg = (g_lo, g_in0, g_in1, g_hi)

    # Connected groups over shared snippets: sort the non-empty supports; a new group starts
    # where a support begins at or after every earlier support's end.
    nonempty = np.flatnonzero(g_hi > g_lo)
    order = nonempty[np.argsort(g_lo[nonempty], kind="stable")]
    reach = np.maximum.accumulate(g_hi[order])
    starts_group = np.r_[True, g_lo[order][1:] >= reach[:-1]] if len(order) else np.zeros(0, bool)
    gid = np.cumsum(starts_group) - 1  # (len(order),)
    sizes = np.bincount(gid) if len(gid) else np.zeros(0, np.int64)
    alone = (sizes[gid] == 1) & closed_form
    k, coupled = order[alone], order[~alone]  # k: the isolated instances

    # Closed form of an isolated instance (step 2 of the module docstring).
    n_in, n_out = (e - s)[k], (s - outer_s + np.maximum(outer_e - e, 0))[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        v_in = np.where((phi[k] > 0) & (n_in > 0), np.minimum(phi[k] / n_in, 1.0), 0.0)
        v_out = np.where((phi[k] < 0) & (n_out > 0), np.minimum(-phi[k] / n_out, 1.0), 0.0)
    # Step changes at the region edges (supports of isolated instances are disjoint).
    edges = np.concatenate([g_in0[k], g_in1[k], g_lo[k], g_hi[k]])
    steps = np.concatenate([v_in - v_out, v_out - v_in, v_out, -v_out])
    flat += np.cumsum(np.bincount(edges, steps, minlength=len(flat) + 1))[:-1]

    cert, gaps, failed = _solve_groups(
        flat, coupled, gid[~alone], reg, phi, violation_weight, reg_schedule, residual_tol,
        gap_tol, max_newton_iter,
    )  # fmt: skip
    if len(failed):
        _highs_fallback(flat, failed, reg, phi, violation_weight)
    flat = np.clip(flat, 0.0, 1.0)

    pseudo = [np.zeros((T, num_columns)) for T in T_v.tolist()]
    for pair, o, T in zip(pairs.tolist(), off_p.tolist(), pair_T.tolist(), strict=True):
        pseudo[pair // num_columns][:, pair % num_columns] = flat[o : o + T]

    # Residuals of every constraint from prefix sums of the labels.
    cum = np.r_[0.0, np.cumsum(flat)]
    inner = cum[g_in1] - cum[g_in0]
    outer = (cum[g_in0] - cum[g_lo]) + (cum[g_hi] - cum[g_in1])
    viol = np.abs(inner - outer - phi)
    violated = viol > feasibility_tol
    stats = PseudoStats(
        n_lps=len(pairs),
        n_instances=len(phi),
        n_closed_form=len(k) + len(phi) - len(nonempty),
        n_groups=len(cert),
        n_fallback=int((~cert).sum()),
        n_infeasible=len(np.unique(base[violated])),
        n_violated=int(violated.sum()),
        max_violation=float(viol.max()) if len(viol) else 0.0,
        max_gap=float(gaps[cert].max(initial=0.0)),
        solve_time_s=time.perf_counter() - t0,
    )
    return pseudo, stats


def _solve_groups(flat, rows, gid, reg, phi, w, schedule, tol, gap_tol, max_iter):
    """Least-norm optimum of the groups of ``rows`` (R,) (sorted by support start, group ids
    ``gid``) into ``flat`` by :func:`_newton_bucket` in padded batches. Returns (G,) certified
    and relative duality gap of each group, and the rows of the uncertified groups."""
    g = np.unique(gid, return_inverse=True)[1].reshape(-1)  # groups renumbered 0..G-1
    k_count = np.bincount(g)
    first = np.cumsum(k_count) - k_count
    row_rank = np.arange(len(rows)) - np.repeat(first, k_count)
    lo, s, e, hi = (x[rows] for x in reg)
    g_start = lo[first]  # the group's first support starts leftmost
    n_var = np.maximum.reduceat(hi, first) - g_start
    r, cpos, val = _support_entries(lo, s, e, hi)
    lcol = cpos - g_start[g[r]]  # column of each entry inside its group
    cert, gaps = np.zeros(len(k_count), bool), np.full(len(k_count), np.inf)
    # Buckets: row and snippet counts rounded up to powers of two.
    kp = 1 << np.ceil(np.log2(k_count)).astype(np.int64)
    npad = 1 << np.ceil(np.log2(n_var)).astype(np.int64)
    bucket_key = kp * (1 << 40) + npad
    for key in np.unique(bucket_key):
        members = np.flatnonzero(bucket_key == key)
        slot = np.full(len(k_count), -1)
        slot[members] = np.arange(len(members))
        K, n = int(kp[members[0]]), int(npad[members[0]])
        sel = slot[g[r]] >= 0
        A = np.zeros((len(members), K, n))  # (G, K, n) padded constraint rows
        A[slot[g[r[sel]]], row_rank[r[sel]], lcol[sel]] = val[sel]
        b = np.zeros((len(members), K))  # (G, K) right sides
        rsel = slot[g] >= 0
        b[slot[g[rsel]], row_rank[rsel]] = phi[rows[rsel]]
        rmask = np.arange(K)[None, :] < k_count[members][:, None]
        cmask = np.arange(n)[None, :] < n_var[members][:, None]
        yb, cert[members], gaps[members] = _newton_bucket(
            A, b, rmask, cmask, w, schedule, tol, gap_tol, max_iter
        )
        gi, col = np.nonzero(cmask)
        flat[g_start[members][gi] + col] = yb[gi, col]
    return cert, gaps, rows[~cert[g]]


def _dual(A, b, rmask, cmask, mu, eps, w):
    """Dual objective, gradient (the residual), scaled labels and violations at ``mu``."""
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
        t, done = np.ones(len(idx)), np.zeros(len(idx), bool)
        for _ in range(_MAX_BACKTRACK):
            cand = mu[idx] + t[:, None] * step
            th_n, g_n, u_n, sr_n, _ = _dual(Ai, bi, ri, ci, cand, eps, w)
            res_n = np.abs(g_n).max(1)
            # Armijo, or a halved residual (theta differences drown in rounding near the end).
            ok = ~done & ((th_n <= theta[idx] + _ARMIJO * t * slope) | (res_n < 0.5 * res[idx]))
            j = idx[ok]
            mu[j], theta[j], grad[j] = cand[ok], th_n[ok], g_n[ok]
            u[j], sr[j], res[j] = u_n[ok], sr_n[ok], res_n[ok]
            done |= ok
            if done.all():
                break
            t = np.where(done, t, 0.5 * t)
        live[idx[~done]] = False  # no descent left: stalled at rounding level
        live &= res > tol
    return mu


def _newton_bucket(A, b, rmask, cmask, w, schedule, tol, gap_tol, max_iter):
    """Newton on the dual of ``min w|v|_1 + 1'y + eps/2 (|y|^2 + |v|^2)``, ``A y + v = b``,
    ``0 <= y <= 1``, for each eps of the schedule. Returns (G, n) labels, and (G,) whether LP
    duality certifies them and their relative duality gap."""
    # Start where an isolated instance's solution lies: mu = sign(phi) (1 + eps |phi| / L).
    n_in, n_out = np.maximum((A > 0).sum(2), 1), np.maximum((A < 0).sum(2), 1)
    mu = np.where(b >= 0, 1 + schedule[0] * b / n_in, -(1 - schedule[0] * b / n_out)) * rmask
    y_best, cert, gaps = np.zeros(cmask.shape), np.zeros(len(A), bool), np.full(len(A), np.inf)
    mu_prev = eps_prev = slope_eps = None
    for eps in schedule:
        if slope_eps is not None:  # mu is affine in eps on a fixed active set
            mu = mu_prev + (eps - eps_prev) * slope_eps
        mu = _newton_level(A, b, rmask, cmask, mu, eps, w, tol, max_iter)
        _, grad, _, sr, y = _dual(A, b, rmask, cmask, mu, eps, w)
        if mu_prev is not None:
            slope_eps = (mu - mu_prev) / (eps - eps_prev)
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
        mu_prev, eps_prev = mu, eps
        if cert.all():
            break
    y_best[~cert] = y[~cert]
    return y_best, cert, np.maximum(gaps, 0.0)


def _highs_fallback(flat, rows, reg, phi, w):
    """HiGHS on the elastic LP of the groups of ``rows`` into ``flat`` (a vertex, not the least
    norm point): labels in [0, 1], violations ``v+, v- >= 0``, ``A y + v+ - v- = phi``."""
    r, pos, val = _support_entries(*(x[rows] for x in reg))
    snippets, col = np.unique(pos, return_inverse=True)
    m, n = len(rows), len(snippets)
    A, eye = sparse.csr_matrix((val, (r, col.reshape(-1))), shape=(m, n)), sparse.identity(m)
    A_eq = sparse.hstack([A, eye, -eye], format="csr")
    c = np.r_[np.ones(n), np.full(2 * m, w)]
    bounds = np.r_[np.tile([0.0, 1.0], (n, 1)), np.tile([0.0, np.inf], (2 * m, 1))]
    res = linprog(c, A_eq=A_eq, b_eq=phi[rows], bounds=bounds, method="highs")
    if res.x is not None:  # the elastic LP is always feasible and bounded
        flat[snippets] = res.x[:n]
