"""Decoding, frame sampling, snippets and preprocessing (wtal.video) on tiny lossless videos."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.io import InputError
from wtal.segments import snippets_to_seconds
from wtal.video import (
    FeatureSpec,
    VideoSampler,
    iter_clips,
    num_snippets,
    preprocess_frames,
    resized_shape,
    tail_padding,
)

av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")

HEIGHT, WIDTH = 32, 40


def frame_pixels(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Frame ``index`` of the test videos: its index in red (low byte) and green (high byte),
    a gradient in blue so that resizing has something to do."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = index % 256, index // 256
    rgb[..., 2] = (np.arange(width) * 255 // max(width - 1, 1))[None, :]
    return rgb


def decoded_index(rgb: np.ndarray) -> int:
    return int(rgb[0, 0, 0]) + 256 * int(rgb[0, 0, 1])


def write_video(
    path: Path,
    num_frames: int,
    rate: Fraction | int = 30,
    pts_ms: list[int] | None = None,
    size: tuple[int, int] = (HEIGHT, WIDTH),
    pixels=frame_pixels,
) -> Path:
    """A lossless FFV1 video (frame j = ``pixels(j)``): constant ``rate`` in .avi (exact
    timestamps j / rate), or variable rate in .mkv with the millisecond timestamps ``pts_ms``."""
    container = av.open(str(path), "w")
    stream = container.add_stream("ffv1", rate=rate)
    stream.height, stream.width = size
    stream.pix_fmt = "bgr0"
    if pts_ms is not None:  # millisecond timestamps from the encoder on
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    for j in range(num_frames):
        frame = av.VideoFrame.from_ndarray(pixels(j, *size), format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[j], Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def read_times(path: Path) -> list[Fraction]:
    """Every frame's timestamp in seconds (exact), relative to the first: a plain decode."""
    with av.open(str(path)) as container:
        times = [f.pts * f.time_base for f in container.decode(video=0)]
    return [t - times[0] for t in times]


def reference_indices(times: list[Fraction], fps: float) -> list[int]:
    """Slow and obvious: for each k / fps before the end (the last frame plus the interval
    before it), the frame with the nearest timestamp, the earlier one on a tie."""
    rate = Fraction(str(fps))
    end = times[-1] + (times[-1] - times[-2])
    chosen, k = [], 0
    while Fraction(k) / rate < end:
        target = Fraction(k) / rate
        chosen.append(min(range(len(times)), key=lambda j: (abs(times[j] - target), j)))
        k += 1
    return chosen


def _vfr_pts(num_frames: int) -> list[int]:
    gaps = np.random.default_rng(0).integers(5, 90, size=num_frames - 1)
    return [0, *np.cumsum(gaps).tolist()]


@pytest.mark.parametrize(
    "rate, fps, vfr",
    [
        (30, 25.0, False),
        (24, 25.0, False),
        (Fraction(30000, 1001), 25.0, False),
        (30, 10.0, False),
        (25, 29.97, False),
        (30, 25.0, True),
    ],
)
def test_sampling_matches_reference(tmp_path, rate, fps, vfr):
    num_frames = 40
    pts = _vfr_pts(num_frames) if vfr else None
    path = write_video(tmp_path / ("v.mkv" if vfr else "v.avi"), num_frames, rate, pts)
    times = read_times(path)
    if vfr:
        assert times == [Fraction(p, 1000) for p in pts]
    else:  # the container keeps the exact rate (29.97 is 30000/1001, not rounded)
        assert times == [j / Fraction(rate) for j in range(num_frames)]
    sampler = VideoSampler(path, fps)
    sampled = list(sampler)
    expected = reference_indices(times, fps)
    assert [index for index, _ in sampled] == expected
    assert [decoded_index(rgb) for _, rgb in sampled] == expected  # the right pixels, too
    assert sampler.info["samples"] == len(expected)
    assert sampler.info["source_frames"] == num_frames
    assert sampler.info["duration_s"] == pytest.approx(float(2 * times[-1] - times[-2]))


def test_snippets_cover_the_video_in_dataset_time(tmp_path):
    """ceil(samples / stride) snippets; their start times (snippets_to_seconds with the
    stride) fall inside the video and together reach its end."""
    for n, rate in [(40, 30), (17, 24), (50, Fraction(30000, 1001))]:
        sampler = VideoSampler(write_video(tmp_path / f"v{n}.avi", n, rate), 25.0)
        samples = sum(1 for _ in sampler)
        duration = sampler.info["duration_s"]
        for stride in (16, 8):
            count = num_snippets(samples, stride)
            assert count == math.ceil(samples / stride)
            assert snippets_to_seconds(count - 1, 25.0, stride) < duration
            assert snippets_to_seconds(count, 25.0, stride) >= duration - 1e-12


@pytest.mark.parametrize("clip_frames, stride", [(16, 16), (17, 16), (8, 16), (16, 8), (3, 1)])
@pytest.mark.parametrize("count", [1, 7, 16, 17, 33])
def test_clips_against_reference(clip_frames, stride, count):
    frames = (torch.tensor([float(i)]) for i in range(count))
    clips = list(iter_clips(frames, clip_frames, stride))
    expected = [
        [min(i * stride + t, count - 1) for t in range(clip_frames)]
        for i in range(math.ceil(count / stride))
    ]
    assert [clip[:, 0].int().tolist() for clip, _ in clips] == expected
    assert [padded for _, padded in clips] == [
        sum(i * stride + t >= count for t in range(clip_frames)) for i in range(len(expected))
    ]
    padding = tail_padding(count, clip_frames, stride)
    assert padding == clips[-1][1]


def _reference_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of an antialiased bilinear resize: a triangle filter as wide as the
    scale (at least one pixel) around each output pixel's centre, normalized per row."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    center = (np.arange(out_size)[:, None] + 0.5) * scale  # (out, 1) in input pixels
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(in_size)[None, :] + 0.5 - center) / support)
    return weights / weights.sum(axis=1, keepdims=True)  # (out, in)


@pytest.mark.parametrize("height, width", [(32, 40), (300, 410), (256, 256), (410, 300)])
def test_preprocess_matches_numpy_reference(height, width):
    frames = np.random.default_rng(1).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    short, crop = 64, 56
    out = preprocess_frames(frames, short, crop).numpy()
    new_h, new_w = resized_shape(height, width, short)
    assert min(new_h, new_w) == short
    assert max(new_h, new_w) == round(max(height, width) * short / min(height, width))
    wh, ww = _reference_weights(height, new_h), _reference_weights(width, new_w)
    resized = wh @ frames.transpose(0, 3, 1, 2).astype(np.float64) @ ww.T  # (2, 3, new_h, new_w)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    expected = resized[:, :, top : top + crop, left : left + crop] / 127.5 - 1.0
    assert out.shape == (2, 3, crop, crop) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=2e-5)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_unreadable_videos_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 50)
    empty = tmp_path / "empty.avi"
    container = av.open(str(empty), "w")
    stream = container.add_stream("ffv1", rate=25)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "bgr0"
    container.start_encoding()
    container.close()
    audio = tmp_path / "audio.wav"
    container = av.open(str(audio), "w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in [*stream.encode(frame), *stream.encode()]:
        container.mux(packet)
    container.close()
    cases = [
        (garbage, "cannot open as a video"),
        (empty, "no decodable video frames"),
        (audio, "no video stream"),
        (tmp_path / "missing.mp4", "cannot open as a video"),
    ]
    for path, what in cases:
        with pytest.raises(InputError, match=what) as info:
            list(VideoSampler(path, 25.0))
        assert str(path) in str(info.value)


def test_spec_refuses_bad_values():
    for field, value in [("fps", 0.0), ("fps", math.inf), ("stride", 0), ("crop", 300)]:
        with pytest.raises(InputError, match=field):
            FeatureSpec(**{field: value})
