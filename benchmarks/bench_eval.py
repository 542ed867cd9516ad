"""Time ``wtal.evaluation`` on the evaluation fixtures against naive per-prediction references.

The references below are the literal algorithms, one prediction at a time in Python: the
official ActivityNet matcher (seconds) and the W-TALC ``getLocMAP`` matcher (snippet index
sets). Both are measured in the same run as ``evaluate_detections``, on one core.

    python benchmarks/bench_eval.py [--data DIR] [--repeats N]

Columns: JSON parse time of the results file (not part of the evaluation time), our time
(best of N, GT and results already parsed), the reference time (one run), their ratio and the
largest per-class AP difference in percent points.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: the timings must not depend on BLAS threads

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wtal.evaluation import evaluate_detections  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval_fixtures"


def _subset_instances(gt: dict, subset: str) -> list[tuple[str, str, float, float]]:
    return [
        (video, ann["label"], float(ann["segment"][0]), float(ann["segment"][1]))
        for video, entry in gt["database"].items()
        if entry["subset"] == subset
        for ann in entry["annotations"]
    ]


def _predictions(results: dict) -> list[tuple[str, str, float, float, float]]:
    return [
        (video, p["label"], p["score"], float(p["segment"][0]), float(p["segment"][1]))
        for video, preds in results["results"].items()
        for p in preds
    ]


def _interpolated_ap(precision: list[float], recall: list[float]) -> float:
    mprec = [0.0, *precision, 0.0]
    mrec = [0.0, *recall, 1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum(
        (mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
    )


def _ap_from_hits(hits: list[float], npos: int) -> float:
    tp, precision, recall = 0.0, [], []
    for rank, hit in enumerate(hits, start=1):
        tp += hit
        precision.append(tp / rank)
        recall.append(tp / npos)
    return _interpolated_ap(precision, recall)


def reference_official(gt: dict, results: dict, subset: str, tious: list[float]) -> dict:
    """ActivityNet ``compute_average_precision_detection``, literally. -> {label: [AP %]}."""
    instances = _subset_instances(gt, subset)
    subset_videos = {v for v, e in gt["database"].items() if e["subset"] == subset}
    classes = list(dict.fromkeys(label for _, label, _, _ in instances))
    preds = [p for p in _predictions(results) if p[0] in subset_videos and p[1] in classes]
    out = {}
    for label in classes:
        gts = [g for g in instances if g[1] == label]
        by_video: dict[str, list[int]] = {}
        for j, g in enumerate(gts):
            by_video.setdefault(g[0], []).append(j)
        mine = [p for p in preds if p[1] == label]
        order = np.argsort(np.array([p[2] for p in mine]), kind="stable")[::-1]
        lock = [[False] * len(gts) for _ in tious]
        hits = [[0.0] * len(mine) for _ in tious]
        for idx, k in enumerate(order):
            video, _, _, ps, pe = mine[k]
            same = by_video.get(video, [])
            if not same:
                continue
            seg = np.array([[gts[j][2], gts[j][3]] for j in same])
            inter = np.clip(np.minimum(pe, seg[:, 1]) - np.maximum(ps, seg[:, 0]), 0, None)
            union = (seg[:, 1] - seg[:, 0]) + (pe - ps) - inter
            with np.errstate(invalid="ignore", divide="ignore"):
                tiou = inter / union
            ranked = np.argsort(tiou, kind="stable")[::-1]
            for t, thr in enumerate(tious):
                for jj in ranked:
                    if tiou[jj] < thr:
                        break
                    if lock[t][same[jj]]:
                        continue
                    hits[t][idx] = 1.0
                    lock[t][same[jj]] = True
                    break
        out[label] = [100 * _ap_from_hits(hits[t], len(gts)) for t in range(len(tious))]
    return out


def reference_wtalc(
    gt: dict, results: dict, subset: str, tious: list[float], factor: float, filt: bool
) -> dict:
    """W-TALC ``getLocMAP`` on Python sets of snippet indices. -> {label: [AP %]}."""
    instances = _subset_instances(gt, subset)
    videos = {g[0] for g in instances}
    classes = list(dict.fromkeys(label for _, label, _, _ in instances))
    ambiguous = gt.get("ambiguous", {}) if filt else {}

    def snippets(start: float, end: float, widen: bool) -> set[int]:
        s, e = round(start * factor), round(end * factor)
        return set(range(s, max(e, s + 1) if widen else e))

    preds = [p for p in _predictions(results) if p[0] in videos and p[1] in classes]
    preds = [
        p
        for p in preds
        if not any(
            snippets(p[3], p[4], True) & snippets(a, b, False) for a, b in ambiguous.get(p[0], [])
        )
    ]
    out = {}
    for label in classes:
        ranked = sorted((p for p in preds if p[1] == label), key=lambda p: -p[2])
        aps = []
        for thr in tious:
            remaining = [g for g in instances if g[1] == label]
            npos, hits = len(remaining), []
            for video, _, _, ps, pe in ranked:
                p = snippets(ps, pe, True)
                best_iou, best_j = 0.0, None
                for j, g in enumerate(remaining):
                    if g[0] == video:
                        gset = snippets(g[2], g[3], False)
                        iou = len(gset & p) / len(gset | p)
                        if iou >= thr and iou > best_iou:
                            best_iou, best_j = iou, j
                if best_j is not None:
                    del remaining[best_j]
                hits.append(float(best_j is not None))
            aps.append(100 * _ap_from_hits(hits, npos))
        out[label] = aps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="eval_fixtures folder")
    parser.add_argument("--repeats", type=int, default=5, help="best-of repeats for ours")
    args = parser.parse_args()
    expected = json.loads((args.data / "expected.json").read_text())

    header = (
        f"{'fixture':<28} {'protocol':<9} {'n_pred':>7} {'n_gt':>6} {'parse s':>8} "
        f"{'ours s':>8} {'ref s':>8} {'ratio':>7} {'max|diff|':>10}"
    )
    print(header)
    print("-" * len(header))
    gts: dict[str, dict] = {}
    for name, exp in expected.items():
        if exp["gt"] not in gts:
            gts[exp["gt"]] = json.loads((args.data / exp["gt"]).read_text())
        gt = gts[exp["gt"]]
        start = time.perf_counter()
        results = json.loads((args.data / name).read_text())
        parse_s = time.perf_counter() - start
        tious = exp["tiou_thresholds"]
        runs = [("official", False)]
        if name.startswith("thumos"):
            runs.append(("wtalc", True))
        for protocol, filt in runs:
            ours_s = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                metrics = evaluate_detections(
                    gt, results, tious, subset=exp["subset"], protocol=protocol,
                    ambiguous_filter=filt,
                )  # fmt: skip
                ours_s = min(ours_s, time.perf_counter() - start)
            start = time.perf_counter()
            if protocol == "official":
                ref = reference_official(gt, results, exp["subset"], tious)
            else:
                ref = reference_wtalc(gt, results, exp["subset"], tious, 25.0 / 16.0, filt)
            ref_s = time.perf_counter() - start
            diff = max(
                float(np.abs(np.asarray(ref[c]) - ap).max())
                for c, ap in zip(metrics.class_names, metrics.ap_per_class, strict=True)
            )
            label = protocol + ("+amb" if filt else "")
            print(
                f"{name:<28} {label:<9} {metrics.num_predictions:>7} "
                f"{metrics.num_ground_truth:>6} {parse_s:>8.3f} {ours_s:>8.3f} {ref_s:>8.3f} "
                f"{ref_s / ours_s:>6.0f}x {diff:>10.1e}"
            )


if __name__ == "__main__":
    main()
