"""Proposals + Gaussian weighted fusion: vectorized wtal vs a literal Python-loop reference.

The reference below follows paper.md §1.4-1.5 line by line: per class, per threshold, per
run (runs found with numpy within one threshold), the inner and outer means with
``np.mean``, then the greedy fusion loop with a per-member weighted sum. Both run in the
same process on the same inputs:

* a THUMOS14-sized synthetic CAS (T = 2000, 20 classes that all pass the class filter,
  20 thresholds, temperature 0.2 as at test time);
* the four videos of ``reference_outputs/postprocess_lp_parity.npz`` (T = 2000, 21 columns,
  temperature 0.02 as for pseudo labels), when ``../shared/data`` is present. There the
  reference is fed the float32 CAS as the authors' code is.

Rows marked ``f32`` run wtal with ``float32_means=True`` against the reference on the
float32 CAS (the authors' arithmetic, bit-exact means); the others run the default exact
float64 means against the reference on the CAS cast to float64.

``max|diff|`` is the largest absolute difference of fused [start, end, score] rows.
Timings use one CPU thread (stable on a shared machine; the work per call is small).

Run from the repository root: ``PYTHONPATH=. python benchmarks/bench_postprocess.py``
(or with the package installed: ``python benchmarks/bench_postprocess.py``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from wtal.config import DetectConfig
from wtal.inference import detect_segments

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "data" / "reference_outputs" / "postprocess_lp_parity.npz"

CLASS_THRESHOLD = 0.16  # reference video-score filter
THRESHOLDS = np.arange(0.001, 0.04, 0.002)  # reference CAS thresholds 0.001 ... 0.039
OUTER_SCALE, OUTER_POWER = 0.0785, 0.9  # reference outer band 0.0785 * L**0.9
MIN_LENGTH = 2  # reference minimum run length
OVERLAP_THRESHOLD = 0.25  # reference fusion overlap
TEST_TEMPERATURE = 0.2  # reference fusion temperature at test time
PSEUDO_TEMPERATURE = 0.02  # temperature of the parity file (pseudo-label path)


# ----------------------------------------------------------------------------- reference


def reference_proposals(column: np.ndarray, thresholds: np.ndarray) -> list[list[float]]:
    """§1.4 literally for one CAS column: [start, end, phi, inner] per proposal."""
    num_snippets = column.shape[0]
    proposals = []
    for theta in thresholds:
        padded = np.concatenate([[0], (column > theta).astype(np.int8), [0]])
        steps = np.diff(padded)
        for s, e in zip(np.flatnonzero(steps == 1), np.flatnonzero(steps == -1), strict=True):
            length = int(e - s)
            if length < MIN_LENGTH:
                continue
            inner = np.mean(column[s : e + 1])  # includes snippet e, as the reference does
            delta = OUTER_SCALE * length**OUTER_POWER
            outer_start = max(0, int(s - delta))
            outer_stop = min(num_snippets - 1, int(e + delta + 1))
            band = list(range(outer_start, int(s))) + list(range(int(e) + 1, outer_stop))
            outer = np.mean(column[band]) if band else 0.0
            proposals.append([float(s), float(e + 1), float(inner - outer), float(inner)])
    return proposals


def reference_fuse(proposals: list[list[float]], temperature: float) -> list[list[float]]:
    """§1.5 literally: greedy by phi, ratio overlap > 0.25, exp(inner / T) weighted means."""
    remaining = sorted(range(len(proposals)), key=lambda j: -proposals[j][2])
    fused = []
    while remaining:
        i = remaining[0]
        s_i, e_i = proposals[i][0], proposals[i][1]
        group, rest = [i], []
        for j in remaining[1:]:
            s_j, e_j = proposals[j][0], proposals[j][1]
            inter = max(0.0, min(e_i, e_j) - max(s_i, s_j) + 1)
            (group if inter / (e_j - s_j + 1) > OVERLAP_THRESHOLD else rest).append(j)
        num_s = num_e = num_phi = denom = 0.0
        for j in group:
            s_j, e_j, phi_j, inner_j = proposals[j]
            w = np.exp(inner_j / temperature)
            num_s, num_e, num_phi = num_s + w * s_j, num_e + w * e_j, num_phi + w * phi_j
            denom += np.sign(inner_j) * w
        fused.append([num_s / denom, num_e / denom, num_phi / denom])
        remaining = rest
    return sorted(fused, key=lambda row: -row[2])


def reference_detect(cas: np.ndarray, video_scores: np.ndarray, temperature: float):
    """Per class: filter, proposals, fusion. Returns ({class: (M, 3) array}, #proposals)."""
    thresholds = THRESHOLDS
    out, count = {}, 0
    for c in range(cas.shape[1]):
        if video_scores[c] < CLASS_THRESHOLD:
            continue
        proposals = reference_proposals(cas[:, c], thresholds)
        count += len(proposals)
        out[c] = np.array(reference_fuse(proposals, temperature)).reshape(-1, 3)
    return out, count


# ----------------------------------------------------------------------------- inputs


def synthetic_cas(num_snippets: int, num_classes: int, seed: int) -> np.ndarray:
    """A CAS like a noisy trained model's: log-normal background plus action bumps."""
    rng = np.random.default_rng(seed)
    cas = np.exp(rng.normal(np.log(0.002), 1.0, size=(num_snippets, num_classes)))
    for c in range(num_classes):
        for _ in range(rng.integers(5, 20)):
            length = int(rng.integers(4, 80))
            start = int(rng.integers(0, num_snippets - length))
            bump = rng.uniform(0.3, 1.0) * np.sin(np.linspace(0.1, np.pi - 0.1, length))
            cas[start : start + length, c] += bump * rng.uniform(0.5, 1.0, size=length)
    return np.clip(cas, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- timing


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def compare(name, cas, video_scores, temperature, float32_means, repeats):
    ref_input = cas if float32_means else cas.astype(np.float64)
    t_ref, (ref, count) = best_time(
        lambda: reference_detect(ref_input, video_scores, temperature), max(1, repeats // 2)
    )
    cas_t = torch.from_numpy(cas)
    dcfg = DetectConfig(float32_means=float32_means)  # otherwise the reference's settings

    def ours():
        return detect_segments(cas_t, video_scores, dcfg, temperature=temperature)

    ours()  # warm-up
    t_ours, out = best_time(ours, repeats * 4)
    diff, fused = 0.0, 0
    for c, rows in ref.items():
        m = out.labels == c
        mine = torch.cat([out.segments[m], out.scores[m, None]], dim=1).numpy()
        fused += len(mine)
        if mine.shape != rows.shape:
            diff = float("inf")
            continue
        if len(rows):
            diff = max(diff, float(np.abs(mine - rows).max()))
    print(
        f"| {name:<34} | {count:>6} | {fused:>5} | {t_ref * 1e3:>9.1f} | {t_ours * 1e3:>8.2f} "
        f"| {t_ref / t_ours:>7.0f}x | {diff:>9.1e} |"
    )
    return t_ref / t_ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parity", type=Path, default=PARITY)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(
        "| case                               | props  | fused | loop (ms) | ours (ms) "
        "| speedup  | max|diff| |"
    )
    print("|" + "|".join("-" * w for w in (36, 8, 7, 11, 10, 10, 11)) + "|")
    speedups: dict[bool, list[float]] = {False: [], True: []}  # by float32_means
    for seed in range(3):
        cas = synthetic_cas(2000, 20, seed)
        scores = np.ones(20)  # every class passes the filter: the heaviest case
        for f32 in (False, True):
            name = f"synthetic T=2000 C=20 seed={seed}" + (" f32" if f32 else "")
            speedups[f32].append(compare(name, cas, scores, TEST_TEMPERATURE, f32, args.repeats))
    if args.parity.is_file():
        data = np.load(args.parity)
        for v in range(data["cas"].shape[0]):
            for f32 in (False, True):
                name = f"parity video {v} (T=0.02)" + (" f32" if f32 else "")
                cas, scores = data["cas"][v], data["vid"][v]
                speedups[f32].append(
                    compare(name, cas, scores, PSEUDO_TEMPERATURE, f32, args.repeats)
                )
    else:
        print(f"(parity file not found at {args.parity}; skipped)")
    for f32, label in ((False, "float64 means (default)"), (True, "float32_means=True")):
        values = speedups[f32]
        print(f"speedup, {label}: min {min(values):.0f}x, median {np.median(values):.0f}x")


if __name__ == "__main__":
    main()
