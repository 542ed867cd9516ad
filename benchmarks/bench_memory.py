"""Peak memory of a training epoch plus a predict pass, on a dataset and on one 10x larger.

Per-video features are memory-mapped and read one batch at a time, so the peak resident
memory must stay nearly flat when the number of videos grows. Each measurement runs in a
fresh Python process that opens the datasets, builds the model (I3D-sized: 2048-d features,
``model.embed_dim`` 2048), trains one epoch on the training subset, predicts every test
video and reports its peak resident set size (``VmHWM`` of ``/proc/self/status``).

Two readers run on the same files:

* ``wtal``: the package's own reader (memory-mapped, lazy);
* ``eager``: the naive reference that loads every feature file into memory before
  training, as the W-TALC code does with its single feature array.

The datasets have the same video lengths (cycled through ``VIDEO_LENGTHS``) and differ only
in the number of videos. What still grows with the number of videos is small: annotations,
and the per-video CAS that ``predict`` returns, (T, C+1) float64 per test video.

The allocator matters: glibc raises its mmap threshold each time a large block is freed, so
over the first ~15 optimizer steps ever more freed tensors stay on the heap, and the peak
climbs by ~200 MB before it levels off, whatever the dataset size. A one-epoch run on the
small dataset (2 steps) stops before that. The main columns therefore fix the threshold
(``MALLOC_MMAP_THRESHOLD_``, see ``mallopt(3)``) to measure what the code holds; the last
column is the same run under the default allocator.

Run from the repository root: ``PYTHONPATH=. python benchmarks/bench_memory.py`` (Linux:
reads ``/proc``). Options: ``--videos`` per subset in the small dataset (default 10: one full
batch, so both datasets train on batches of the same size), ``--scale`` (default 10),
``--feat-dim`` (default 2048).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""glibc setting for the main columns: blocks of 64 KiB and more always go back to the OS."""
VIDEO_LENGTHS = (64, 128, 256, 512)
"""Snippets per video, cycled: THUMOS14-like lengths (I3D at 25 fps / 16 frames)."""
NUM_CLASSES = 20
"""Action classes (THUMOS14)."""
FPS, SNIPPET_FRAMES = 25.0, 16.0
"""Frame rate and frames per snippet recorded in the annotations."""
SUBSETS = ("validation", "test")
"""Training and test subset names (the config defaults)."""


def write_dataset(out: Path, videos_per_subset: int, feat_dim: int, seed: int = 0) -> int:
    """Write a per-video dataset, one feature file at a time; returns the feature bytes.

    Every video has one class and one action instance; features are uniform in [0, 1)
    (non-negative, like post-ReLU I3D features). Nothing but the numbers matters here.
    """
    rng = np.random.default_rng(seed)
    (out / "features").mkdir(parents=True)
    database, total = {}, 0
    for subset in SUBSETS:
        for i in range(videos_per_subset):
            video_id = f"{subset}_{i:05d}"
            length = VIDEO_LENGTHS[i % len(VIDEO_LENGTHS)]
            features = rng.random((length, feat_dim), dtype=np.float32)  # (T, D)
            np.save(out / "features" / f"{video_id}.npy", features)
            total += features.nbytes
            duration = length * SNIPPET_FRAMES / FPS
            database[video_id] = {
                "subset": subset,
                "duration": duration,
                "fps": FPS,
                "annotations": [
                    {"segment": [0.25 * duration, 0.5 * duration], "label": f"c{i % NUM_CLASSES}"}
                ],
            }
    classes = [f"c{k}" for k in range(NUM_CLASSES)]
    doc = {"version": "bench_memory", "classes": classes, "database": database}
    (out / "annotations.json").write_text(json.dumps(doc))
    return total


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(data: Path, reader: str) -> dict[str, float]:
    """One training epoch and one predict pass in this process; peak RSS and time."""
    import torch

    from wtal.configfile import load_config
    from wtal.data import collate
    from wtal.data.split import open_datasets
    from wtal.engine import train_one_epoch
    from wtal.inference import build_model, predict_as_configured

    cfg = load_config(None, [f"data.path={str(data)!r}", "train.device='cpu'"])
    train_set, _, test_set = open_datasets(cfg)
    if reader == "eager":  # the naive reference: every feature file in memory up front
        for dataset in (train_set, test_set):
            cache = {vid: np.load(dataset.source.feature_path(vid)) for vid in dataset.video_ids}
            dataset.source.load = cache.__getitem__
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, train_set.feat_dim, train_set.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr_values[0])
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=collate,
    )
    device = torch.device("cpu")
    start = time.perf_counter()
    train_one_epoch(model, loader, optimizer, cfg, 0, device, progress=False)
    preds = predict_as_configured(model, test_set, cfg, device)
    assert len(preds) == len(test_set)
    return {"peak_mb": peak_rss_mb(), "time_s": time.perf_counter() - start}


def run_child(data: Path, reader: str, env: dict[str, str]) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter, so that peaks do not carry over."""
    cmd = [sys.executable, __file__, "--measure", reader, str(data)]
    env = {**os.environ, **env}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10, help="videos per subset (small set)")
    parser.add_argument("--scale", type=int, default=10, help="size ratio of the large set")
    parser.add_argument("--feat-dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--measure", nargs=2, metavar=("READER", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[1]), args.measure[0])))
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="wtal_bench_memory_") as tmp:
        for factor in (1, args.scale):
            data = Path(tmp) / f"x{factor}"
            n = args.videos * factor
            disk_mb = write_dataset(data, n, args.feat_dim) / 2**20
            lazy = run_child(data, "wtal", FIXED_MALLOC)
            eager = run_child(data, "eager", FIXED_MALLOC)
            default = run_child(data, "wtal", {})
            rows.append((f"{factor}x", 2 * n, disk_mb, lazy, eager, default))
            print(f"measured {factor}x", file=sys.stderr)

    print(
        f"one training epoch + one predict pass; features {args.feat_dim}-d float32, "
        f"video lengths {VIDEO_LENGTHS} snippets, model.embed_dim 2048, CPU"
    )
    malloc = " ".join(f"{k}={v}" for k, v in FIXED_MALLOC.items())
    print(f"peak RSS in MB; wtal and eager columns with {malloc}")
    header = f"{'dataset':>8} {'videos':>7} {'features MB':>12} {'wtal':>8} {'eager':>8}"
    header += f" {'eager / wtal':>13} {'wtal, default malloc':>21} {'wtal time s':>12}"
    print(header)
    for name, videos, disk_mb, lazy, eager, default in rows:
        print(
            f"{name:>8} {videos:>7} {disk_mb:>12.0f} {lazy['peak_mb']:>8.0f} "
            f"{eager['peak_mb']:>8.0f} {eager['peak_mb'] / lazy['peak_mb']:>12.2f}x "
            f"{default['peak_mb']:>21.0f} {lazy['time_s']:>12.1f}"
        )
    small, large = rows
    ratios = [large[i]["peak_mb"] / small[i]["peak_mb"] for i in (3, 4, 5)]
    line = f"{'ratio':>8} {'':>7} {large[2] / small[2]:>11.1f}x {ratios[0]:>7.2f}x"
    print(line + f" {ratios[1]:>7.2f}x {'':>13} {ratios[2]:>20.2f}x")


if __name__ == "__main__":
    main()
