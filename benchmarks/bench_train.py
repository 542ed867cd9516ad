"""Epoch time of batched training vs one video per forward pass.

Every mode runs the engine's own :func:`wtal.engine.train_one_epoch` on the same in-memory
THUMOS14-sized dataset and the same model, so they compute the same optimizer steps (the
gradient of 10 videos summed per step, as the reference accumulates 10 single-video passes):

* ``one video per pass``: ``batch_size=1``, the reference's loop;
* ``batched, one pass``: ``batch_size=10, max_padding=0``, the 10 videos of a step padded
  to the longest in one masked forward pass;
* ``batched, by length``: ``batch_size=10, max_padding=1.5`` (the default), the 10 videos
  sorted by length and split into passes padded by at most 1.5x;
* ``one video, T x T walk``: one video per pass with ``model.walk_method=dense``, the
  random walk solved as the (T, T) system the authors' code inverts (once, ``--no-dense``
  skips it), for the distance to the authors' algorithm.

A last row times what no batching can remove: the embedding product (forward and weight
gradient of ``Linear(D, E)``) of every snippet of the epoch, in steps of 10 videos, and the
speed-up over one video per pass that a step costing only that would reach.

The dataset: 200 videos of 2048-d non-negative random features (I3D-sized), 20 classes.
Video lengths are THUMOS14's validation videos (duration * 25 / 16 snippets) when
``../shared/data`` is present, else log-normal lengths with the same median and spread.
Both the base-stage epochs (no memory) and the inter-video epochs (memory branch on) are timed.

Run from the repository root: ``python benchmarks/bench_train.py`` (``--videos 50`` for a
quicker look; the printed epoch time is then scaled to 200 videos).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import torch

from wtal.config import Config, DataConfig, ModelConfig, TrainConfig
from wtal.data import Video, collate
from wtal.engine import train_one_epoch
from wtal.inference import build_model

REPO = Path(__file__).resolve().parents[1]
DURATIONS = REPO.parent / "shared" / "data" / "thumos14_wtalc_reduced"

FPS, SNIPPET_FRAMES = 25.0, 16.0  # THUMOS14 I3D snippets
MEDIAN_SNIPPETS, LOG_STD = 235.0, 1.0  # THUMOS14 validation: median 235 snippets, heavy tail
MIN_SNIPPETS = 14  # the shortest THUMOS14 validation video
EPOCH_VIDEOS = 200  # THUMOS14's training set size; timings are reported per 200 videos


def thumos_lengths(num_videos: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Video lengths in snippets: THUMOS14 validation videos when available."""
    durations, subsets = DURATIONS / "duration.npy", DURATIONS / "subset.npy"
    if durations.is_file() and subsets.is_file():
        d = np.load(durations, allow_pickle=True).astype(float).ravel()
        s = np.load(subsets, allow_pickle=True).astype(str).ravel()
        real = np.maximum(np.round(d[s == "validation"] * FPS / SNIPPET_FRAMES), 1).astype(int)
        return rng.choice(real, num_videos, replace=num_videos > len(real)), "THUMOS14 val"
    lengths = np.exp(rng.normal(np.log(MEDIAN_SNIPPETS), LOG_STD, num_videos))
    return np.maximum(lengths.round().astype(int), MIN_SNIPPETS), "log-normal"


class MemoryDataset(torch.utils.data.Dataset):
    """Videos held in memory (the benchmark times the model, not the disk)."""

    def __init__(self, lengths: np.ndarray, feat_dim: int, num_classes: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.videos = []
        for i, length in enumerate(lengths.tolist()):
            labels = np.zeros(num_classes, np.float32)
            labels[rng.choice(num_classes, 1 + (rng.random() < 0.15), replace=False)] = 1
            features = np.maximum(rng.standard_normal((length, feat_dim), np.float32), 0)
            empty = np.zeros((0, 2))
            self.videos.append(
                Video(
                    f"video_{i:04d}", "validation", features, labels, empty,
                    np.zeros(0, np.int64), empty, length * SNIPPET_FRAMES / FPS, FPS,
                    SNIPPET_FRAMES,
                )
            )  # fmt: skip

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> Video:
        return self.videos[i]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epoch(
    cfg: Config,
    dataset: MemoryDataset,
    batch_size: int,
    epoch: int,
    seed: int,
    device: torch.device,
) -> float:
    """Seconds of one :func:`train_one_epoch` loading ``batch_size`` videos at a time."""
    torch.manual_seed(seed)
    model = build_model(cfg, dataset.videos[0].features.shape[1], len(dataset.videos[0].labels))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr_values[0])
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
    )
    synchronize(device)
    start = time.perf_counter()
    train_one_epoch(model, loader, optimizer, cfg, epoch, device, progress=False)
    synchronize(device)
    return time.perf_counter() - start


def time_embedding(
    dataset: MemoryDataset, embed_dim: int, seed: int, device: torch.device
) -> float:
    """Seconds of the epoch's embedding products alone (the floor of any batching)."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(dataset.videos[0].features.shape[1], embed_dim).to(device)
    steps = [dataset.videos[i : i + 10] for i in range(0, len(dataset), 10)]
    synchronize(device)
    start = time.perf_counter()
    for step in steps:
        x = torch.from_numpy(np.concatenate([v.features for v in step])).to(device)
        torch.relu(layer(x)).sum().backward()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=EPOCH_VIDEOS, help="videos per epoch")
    parser.add_argument("--feat-dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--embed-dim", type=int, default=2048, help="embedding dimension")
    parser.add_argument("--classes", type=int, default=20, help="number of classes")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per mode, best kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-dense", action="store_true", help="skip the T x T walk row")
    args = parser.parse_args()
    device = torch.device(args.device)

    rng = np.random.default_rng(args.seed)
    lengths, source = thumos_lengths(args.videos, rng)
    dataset = MemoryDataset(lengths, args.feat_dim, args.classes, args.seed)
    cfg = Config(
        data=DataConfig(),
        model=dataclasses.replace(ModelConfig(), embed_dim=args.embed_dim),
        train=dataclasses.replace(TrainConfig(), device=device.type),
    )
    print(
        f"{args.videos} videos ({source} lengths: median {int(np.median(lengths))}, "
        f"max {int(lengths.max())}, total {int(lengths.sum())} snippets), "
        f"D={args.feat_dim}, E={args.embed_dim}, {args.classes} classes; "
        f"torch {torch.__version__}, "
        + (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{torch.get_num_threads()} threads, {platform.processor()}"
        )
    )
    scale = EPOCH_VIDEOS / args.videos
    header = f"{'stage':<22}{'mode':<24}{'s / epoch':>12}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    stages = (("base (no memory)", 0), ("inter-video (memory)", cfg.train.warmup_epoch + 1))
    # (mode, videos loaded at a time, max_padding, random-walk solve, epochs timed)
    modes = [
        ("one video per pass", 1, 0.0, "woodbury", args.repeats),
        ("batched, one pass", 10, 0.0, "woodbury", args.repeats),
        ("batched, by length", 10, 1.5, "woodbury", args.repeats),
    ]
    if not args.no_dense:
        modes.append(("one video, T x T walk", 1, 0.0, "dense", 1))
    single = {}
    for stage, epoch in stages:
        for mode, batch_size, max_padding, walk, repeats in modes:
            run_cfg = dataclasses.replace(
                cfg,
                model=dataclasses.replace(cfg.model, walk_method=walk),
                train=dataclasses.replace(cfg.train, max_padding=max_padding),
            )
            seconds = scale * min(
                time_epoch(run_cfg, dataset, batch_size, epoch, args.seed, device)
                for _ in range(repeats)
            )
            single.setdefault(stage, seconds)
            print(f"{stage:<22}{mode:<24}{seconds:>12.1f}{single[stage] / seconds:>9.1f}x")
    floor = scale * min(
        time_embedding(dataset, args.embed_dim, args.seed, device) for _ in range(2)
    )
    stage = stages[0][0]
    print(f"{'embedding alone':<22}{'(floor)':<24}{floor:>12.1f}{single[stage] / floor:>9.1f}x")


if __name__ == "__main__":
    main()
