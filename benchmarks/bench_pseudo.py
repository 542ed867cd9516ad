"""Pseudo-label time per video: wtal.lp vs a literal per-column ``linprog`` loop.

The reference does what the authors' code does (paper.md §1.6): for each video and each
column with fused instances, build the dense (N, T) constraint matrix in a Python loop and
call ``scipy.optimize.linprog`` once (HiGHS, the default of current scipy). It returns a vertex
of the optimal set; wtal returns its least-norm point, so the table also prints the largest
difference of total mass per column (both are optimal: it should be ~1e-9).

wtal is timed two ways on the same videos: ``solve_pseudo_labels`` called once per video
(``per-video``), and ``solve_pseudo_labels_batch`` on all of them at once (``batch``, what the
engine does at a regeneration); the two must agree to 1e-9, which the script checks.
``groups`` counts the coupled groups (all solved by the regularised Newton method);
``fallback`` those its duality gap did not certify, left to a HiGHS vertex.

Inputs: the fused segments stored in ``postprocess_lp_parity.npz`` (noisy CAS, ~540 instances
per video, T = 2000) when the shared data is present, and synthetic videos shaped like a trained
model's output (a few active columns, ~10-30 instances each, T of a THUMOS14 video).

Run: ``python benchmarks/bench_pseudo.py [--repeats 3] [--videos 50] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linprog

from wtal.lp import solve_pseudo_labels, solve_pseudo_labels_batch
from wtal.segments import REFERENCE_OUTER_BAND

NUM_COLUMNS = 21  # THUMOS14: 20 classes + background
PARITY = (
    Path(
        os.environ.get("WTAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    / "reference_outputs"
    / "postprocess_lp_parity.npz"
)


def reference_loop(segments, scores, labels, T, num_columns):
    """One dense LP per column, matrix built in a Python loop (the reference behaviour)."""
    pseudo = np.zeros((T, num_columns))
    for c in range(num_columns):
        idx = np.flatnonzero(labels == c)
        if not len(idx):
            continue
        A = np.zeros((len(idx), T))
        for row, k in enumerate(idx):
            s, e = int(segments[k, 0]), int(segments[k, 1])
            delta = REFERENCE_OUTER_BAND[0] * (e - s) ** REFERENCE_OUTER_BAND[1]
            A[row, s:e] = 1.0
            A[row, max(0, int(s - delta)) : s] = -1.0
            A[row, e : min(T - 1, int(e + delta + 1))] = -1.0
        res = linprog(np.ones(T), A_eq=A, b_eq=scores[idx], bounds=(0.0, 1.0), method="highs")
        if res.x is not None:
            pseudo[:, c] = res.x
    return pseudo


def parity_videos():
    if not PARITY.is_file():
        return []
    ref = np.load(PARITY)
    T, ncol = ref["pseudo"].shape[1:]
    videos = []
    for v in range(ref["pseudo"].shape[0]):
        fused = [ref[f"fused_{v}_{c}"] for c in range(ncol)]
        keep = [c for c in range(ncol) if len(fused[c])]
        videos.append(
            (
                np.concatenate([fused[c][:, :2] for c in keep]),
                np.concatenate([fused[c][:, 2] for c in keep]),
                np.concatenate([np.full(len(fused[c]), c) for c in keep]),
                T,
            )
        )
    return videos


def synthetic_videos(n, seed):
    """Trained-model-like fused segments: 2-4 active columns, 10-30 instances each."""
    rng = np.random.default_rng(seed)
    videos = []
    for _ in range(n):
        T = int(rng.integers(150, 1500))
        cols = rng.choice(NUM_COLUMNS, int(rng.integers(2, 5)), replace=False)
        segs, scores, labels = [], [], []
        for c in cols:
            k = int(rng.integers(10, 31))
            start = rng.uniform(0, T - 10, k)
            length = rng.uniform(3, 25, k)
            segs.append(np.stack([start, np.minimum(start + length, T)], 1))
            scores.append(rng.uniform(0.02, 0.5, k))
            labels.append(np.full(k, c))
        videos.append((np.concatenate(segs), np.concatenate(scores), np.concatenate(labels), T))
    return videos


def timed(fn, args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def bench(name, videos, repeats):
    """Best of ``repeats`` per video (reference, per-video call) and per batch; the three are
    interleaved in every repeat, so a change of machine load hits them alike."""
    n = len(videos)
    t_ref, t_ours, t_batch = np.full(n, np.inf), np.full(n, np.inf), np.inf
    batch_args = (*zip(*videos, strict=True), NUM_COLUMNS)
    for _ in range(repeats):
        for i, (segments, scores, labels, T) in enumerate(videos):
            args = (segments, scores, labels, T, NUM_COLUMNS)
            tr, ref = timed(reference_loop, args)
            to, (ours, stats) = timed(solve_pseudo_labels, args)
            t_ref[i], t_ours[i] = min(t_ref[i], tr), min(t_ours[i], to)
        tb, (batch, st) = timed(solve_pseudo_labels_batch, batch_args)
        t_batch = min(t_batch, tb)
    n_inst = n_closed = 0
    max_mass_diff = 0.0
    for (segments, scores, labels, T), y in zip(videos, batch, strict=True):
        ref = reference_loop(segments, scores, labels, T, NUM_COLUMNS)
        single, stats = solve_pseudo_labels(segments, scores, labels, T, NUM_COLUMNS)
        assert np.abs(single - y).max() < 1e-9, "batch and per-video answers differ"
        n_inst += stats.n_instances
        n_closed += stats.n_closed_form
        max_mass_diff = max(max_mass_diff, float(np.abs(ref.sum(0) - y.sum(0)).max()))
    t_ref, t_ours = t_ref.sum(), t_ours.sum()
    print(
        f"| {name:<22} | {n:>6} | {n_inst / n:>10.0f} | {n_closed / max(n_inst, 1):>6.0%} "
        f"| {1e3 * t_ref / n:>12.2f} | {1e3 * t_ours / n:>9.2f} | {t_ref / t_ours:>6.1f}x "
        f"| {1e3 * t_batch / n:>8.2f} | {t_ref / t_batch:>6.1f}x "
        f"| {max_mass_diff:>9.1e} | {st.n_groups:>6} | {st.n_fallback:>8} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--videos", type=int, default=50, help="synthetic videos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        "| inputs                 | videos | inst/video | closed | reference ms | per-video "
        "| ratio   | batch ms | ratio   | mass diff | groups | fallback |"
    )
    widths = (24, 8, 12, 8, 14, 11, 9, 10, 9, 11, 8, 10)
    print("|" + "|".join("-" * w for w in widths) + "|")
    print(f"(ms per video, best of {args.repeats}; group counts are those of the batch call)")
    parity = parity_videos()
    if parity:
        bench("parity npz (noisy CAS)", parity, args.repeats)
    bench("synthetic trained-like", synthetic_videos(args.videos, args.seed), args.repeats)


if __name__ == "__main__":
    main()
