"""Throughput of ``wtal features`` on the CPU: decoding, preprocessing and I3D-RGB.

A synthetic H.264 video (moving gradient, yuv420p, the usual pixel format of real videos) is
written to a temporary folder with PyAV, then timed through the stages of the pipeline:

* ``decode``: sampling at 25 fps (PyAV decode + RGB conversion of the sampled frames);
* ``decode + preprocess``: plus the short-side-256 resize, 224 centre crop, [-1, 1];
* ``i3d-rgb batch B``: the whole pipeline, random weights (speed does not depend on them),
  on the first seconds of the video only (I3D dominates: about 1 s per 16-frame snippet on
  one CPU thread).

Throughput is sampled frames per second (25 sampled frames = one second of video), of wall
time and of this process's CPU time (the honest figure on a shared machine). One CPU thread
by default, like the rest of the package's measurements.

Run from the repository root: ``PYTHONPATH=. python benchmarks/bench_features.py``
(needs the video extra: ``pip install av``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from wtal.extract import extract_video
from wtal.extractors import build_extractor
from wtal.video import FeatureSpec, VideoSampler, iter_preprocessed


def write_test_video(path: Path, seconds: float, height: int, width: int, rate: int) -> int:
    """An H.264 video of a moving colour gradient; returns its frame count."""
    import av

    num_frames = round(seconds * rate)
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(rate))
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(num_frames):
            rgb = np.stack([(xs + 4 * t) % 256, (ys + 2 * t) % 256, (xs + ys) % 256], axis=-1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return num_frames


def timed(fn) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, sampled frames) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    frames = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, frames


def format_table(rows: list[tuple[str, float, float, int]]) -> str:
    """A Markdown table of ``(stage, wall s, cpu s, frames)`` rows with frames per second."""
    head = ("stage", "frames", "wall s", "cpu s", "frames/s", "frames/cpu s")
    widths = [22] + [max(len(h), 8) for h in head[1:]]
    table = [head, tuple("-" * w for w in widths)]
    for name, wall, cpu, frames in rows:
        table.append(
            (
                name,
                frames,
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{frames / wall:.1f}",
                f"{frames / cpu:.1f}",
            )
        )
    lines = []
    for cells in table:
        padded = [
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append("| " + " | ".join(padded) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the test video")
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--rate", type=int, default=30, help="source frame rate")
    parser.add_argument("--i3d-seconds", type=float, default=2.5, help="video fed to I3D")
    parser.add_argument("--batch", type=int, default=4, help="the batched I3D run's batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("wtal").setLevel(logging.ERROR)  # the random-weights warning: expected
    spec = FeatureSpec()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        write_test_video(video, args.seconds, args.height, args.width, args.rate)
        short = Path(tmp) / "short.mp4"
        write_test_video(short, args.i3d_seconds, args.height, args.width, args.rate)
        rows.append(("decode", *timed(lambda: sum(1 for _ in VideoSampler(video, spec.fps)))))
        stream = lambda: sum(1 for _ in iter_preprocessed(VideoSampler(video, spec.fps), spec))  # noqa: E731
        rows.append(("decode + preprocess", *timed(stream)))
        extractor = build_extractor("i3d-rgb", "none", "cpu", spec)
        for batch in (1, args.batch):
            run = lambda b=batch: extract_video(short, extractor, spec, b)[1]["samples"]  # noqa: E731
            rows.append((f"i3d-rgb batch {batch}", *timed(run)))
    print(
        f"video {args.width}x{args.height} @ {args.rate} fps, H.264; sampled at {spec.fps:g} fps;"
        f" {torch.get_num_threads()} thread(s)"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
