"""Raw video -> sampled frames -> preprocessed snippet clips (the input of ``wtal features``).

Decoding uses PyAV (FFmpeg), an optional extra (``pip install "wtal[video]"``): it is imported
inside the functions that need it, so the package imports and tests without it.

Sampling. Frames are sampled at ``fps`` without re-encoding: sample ``k`` is the source frame
whose timestamp (``pts x time_base``, exact fractions, relative to the first frame) is
nearest to ``k / fps`` seconds, the earlier frame on a tie. Samples are taken while
``k / fps`` is before the video's end (the last frame's timestamp plus its interval), so
constant rates (30, 24, 29.97 = 30000/1001) and variable rates alike are handled by their
timestamps, never by counting frames.

Snippets. Snippet ``i`` is the ``clip_frames`` samples from ``i x stride``; a video of ``K``
samples has ``ceil(K / stride)`` snippets, the last padded by repeating the last sample.
Ceil, not floor: every sampled frame is in some snippet, so an action in the last second of
a video still has a feature (floor drops up to ``stride - 1`` frames at the end, which is
what several public extraction scripts do; the two differ by at most one snippet). Snippet
``i`` starts at ``i x stride / fps`` seconds, which is
``wtal.segments.snippets_to_seconds(i, fps, stride)``: the dataset's ``snippet_frames`` is
the stride (equal to ``snippet_frames`` by default, non-overlapping snippets).

Preprocessing. Each sample is resized (bilinear, antialiased) so that its short side is
``resize_short`` pixels, centre-cropped to ``crop`` x ``crop`` and mapped from [0, 255] to
[-1, 1] (RGB, the input range of the published I3D).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wtal.io import InputError
from wtal.segments import DEFAULT_FPS, DEFAULT_SNIPPET_FRAMES

VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
    ".ts",
    ".nut",
)
"""File name endings (lower case) that count as videos when VIDEOS is a folder."""


@dataclass(frozen=True)
class FeatureSpec:
    """How frames are sampled, cut into snippets and preprocessed (recorded in the metadata)."""

    fps: float = DEFAULT_FPS
    """Sampling rate in frames per second (THUMOS14 / ActivityNet I3D features: 25)."""
    snippet_frames: int = int(DEFAULT_SNIPPET_FRAMES)
    """Sampled frames per snippet: one feature vector each (I3D features: 16)."""
    stride: int = int(DEFAULT_SNIPPET_FRAMES)
    """Sampled frames from one snippet's start to the next (= snippet_frames: no overlap)."""
    resize_short: int = 256
    """Short side of each frame after resizing, pixels (the published I3D preprocessing)."""
    crop: int = 224
    """Side of the square centre crop, pixels (I3D's 224 x 224 input)."""
    flow_clip: float = 20.0
    """Optical flow (pixels per frame) is clipped to +-flow_clip, then divided by it to reach
    [-1, 1] (the published I3D flow preprocessing)."""

    def __post_init__(self) -> None:
        checks = [
            ("fps", 0 < self.fps < math.inf, "a frame rate > 0"),
            ("snippet_frames", self.snippet_frames >= 1, "an integer >= 1"),
            ("stride", self.stride >= 1, "an integer >= 1"),
            ("resize_short", self.resize_short >= 1, "an integer >= 1"),
            ("crop", 1 <= self.crop <= self.resize_short, "an integer in [1, resize_short]"),
            ("flow_clip", 0 < self.flow_clip < math.inf, "a number > 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(None, f"{name}: expected {expected}, got {getattr(self, name)}")


def num_snippets(num_samples: int, stride: int) -> int:
    """Snippets of a video with ``num_samples`` sampled frames: ``ceil(num_samples / stride)``."""
    return -(-num_samples // stride)


def tail_padding(num_samples: int, snippet_frames: int, stride: int) -> int:
    """Repeated frames at the end of the last snippet (0 when the video fills it)."""
    last_start = (num_snippets(num_samples, stride) - 1) * stride
    return max(0, last_start + snippet_frames - num_samples)


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        msg = 'decoding videos needs PyAV: pip install "wtal[video]" (or: pip install av)'
        raise InputError(None, msg) from None
    return av


def library_versions() -> dict[str, str]:
    """Versions of PyAV and the FFmpeg it is built on (for the features' metadata)."""
    av = _import_av()
    ffmpeg = getattr(av, "ffmpeg_version_info", None)
    if ffmpeg is None:
        ffmpeg = ".".join(map(str, av.library_versions.get("libavcodec", ())))
        ffmpeg = f"libavcodec {ffmpeg}"
    return {"pyav": av.__version__, "ffmpeg": str(ffmpeg)}


class VideoSampler:
    """Iterate over a video's frames sampled at ``fps``: ``(source_index, rgb)`` pairs.

    ``rgb`` is a (H, W, 3) uint8 array; ``source_index`` counts decoded frames from 0. A
    source frame repeats when ``fps`` is above the source rate and frames are skipped when
    below. After the iteration, :attr:`info` holds the source's frame rate, frame count and
    duration and the number of samples.

    Raises (while iterating):
        InputError: naming the file when it cannot be opened or decoded, has no video
            stream or no frames.
    """

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        self.path = Path(path)
        self.fps = Fraction(str(float(fps)))  # exact decimal: 29.97 stays 2997/100
        self.info: dict[str, Any] = {}

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        av = _import_av()
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise InputError(self.path, f"cannot open as a video ({_reason(exc)})") from None
        with container:
            if not container.streams.video:
                raise InputError(self.path, "no video stream")
            stream = container.streams.video[0]
            try:
                yield from self._sample(container.decode(stream), stream)
            except av.FFmpegError as exc:
                raise InputError(self.path, f"cannot decode ({_reason(exc)})") from None

    def estimated_samples(self) -> int | None:
        """Samples expected from the container's duration (for a progress bar), or None."""
        av = _import_av()
        try:
            with av.open(str(self.path)) as container:
                duration = container.duration  # microseconds (av.time_base), may be None
        except (av.FFmpegError, OSError, UnicodeDecodeError):
            return None
        return None if not duration else math.ceil(duration / 1e6 * float(self.fps))

    def _sample(self, frames: Iterator[Any], stream: Any) -> Iterator[tuple[int, np.ndarray]]:
        rate = stream.average_rate or stream.guessed_rate  # only for frames without a pts
        step = Fraction(1, 1) / Fraction(rate) if rate else 1 / self.fps
        k = 0  # next sample to emit, at k / fps seconds
        prev: _Frame | None = None  # the last usable frame
        first_pts: Fraction | None = None
        interval = step
        decoded = dropped = 0
        for frame in frames:
            time_base = frame.time_base or stream.time_base
            if frame.pts is None or time_base is None:
                t = prev.time + step if prev is not None else Fraction(0)
            else:
                pts = frame.pts * Fraction(time_base)
                first_pts = pts if first_pts is None else first_pts
                t = pts - first_pts
            decoded += 1
            if prev is not None and t <= prev.time:  # out of order or duplicate: unusable
                dropped += 1
                continue
            if prev is not None:
                middle = (prev.time + t) / 2
                while k / self.fps <= middle:  # nearer to prev (or a tie: the earlier frame)
                    yield prev.index, prev.rgb()
                    k += 1
                interval = t - prev.time
            prev = _Frame(decoded - 1, t, frame)
        if prev is None:
            raise InputError(self.path, "no decodable video frames")
        end = prev.time + interval  # the last frame lasts as long as the interval before it
        while k / self.fps < end:
            yield prev.index, prev.rgb()
            k += 1
        self.info = {
            "source_fps": float(rate) if rate else float((decoded - dropped) / end),
            "source_frames": decoded,
            "dropped_frames": dropped,
            "duration_s": float(end),
            "samples": k,
        }


class _Frame:
    """A decoded frame, converted to RGB only if sampled (and then once)."""

    def __init__(self, index: int, time: Fraction, frame: Any) -> None:
        self.index, self.time, self._frame = index, time, frame
        self._rgb: np.ndarray | None = None

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = _to_rgb(self._frame)
        return self._rgb


def _to_rgb(frame: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame (FFmpeg converts the pixel format)."""
    return frame.to_ndarray(format="rgb24")


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words (its messages repeat the file name, which the error names already)."""
    text = getattr(exc, "strerror", None) or str(exc).strip().split("\n")[0]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def resized_shape(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) after scaling the short side to ``short`` (the long side rounded half up)."""
    if height <= width:
        return short, max(1, math.floor(width * short / height + 0.5))
    return max(1, math.floor(height * short / width + 0.5)), short


def preprocess_frames(frames: np.ndarray | Tensor, resize_short: int, crop: int) -> Tensor:
    """Resize, centre-crop and normalize RGB frames.

    Args:
        frames: (N, H, W, 3) uint8 RGB.
        resize_short: short side after the bilinear, antialiased resize (pixels).
        crop: side of the square centre crop (pixels); the crop starts at
            ``(size - crop) // 2`` on each axis.

    Returns:
        (N, 3, crop, crop) float32 in [-1, 1].
    """
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()  # (N, 3, H, W) in [0, 255]
    height, width = resized_shape(x.shape[2], x.shape[3], resize_short)
    if (height, width) != tuple(x.shape[2:]):
        x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False, antialias=True)
    top, left = (height - crop) // 2, (width - crop) // 2
    x = x[:, :, top : top + crop, left : left + crop]  # (N, 3, crop, crop)
    return x / 127.5 - 1.0


def iter_clips(
    frames: Iterator[Tensor], clip_frames: int, stride: int
) -> Iterator[tuple[Tensor, int]]:
    """Cut a stream of frames into clips of ``clip_frames`` every ``stride`` frames.

    Clip ``i`` holds frames ``[i * stride, i * stride + clip_frames)``; there are
    ``ceil(K / stride)`` clips for ``K`` frames, those that run past the end padded by
    repeating the last frame. Only the frames still needed are kept in memory.

    Args:
        frames: per-frame tensors of equal shape, e.g. (3, H, W).
        clip_frames: frames per clip.
        stride: frames from one clip's start to the next.

    Yields:
        ``(clip, padded)``: (clip_frames, ...) stacked frames and how many of them repeat
        the last frame.
    """
    buffer: list[Tensor] = []
    buf_start = 0  # frame index of buffer[0]
    start = 0  # first frame of the next clip
    count = 0
    for frame in frames:
        count += 1
        if count - 1 < start:  # between clips (stride > clip_frames): never needed
            buf_start = count
            continue
        buffer.append(frame)
        while start + clip_frames <= buf_start + len(buffer):
            offset = start - buf_start
            yield torch.stack(buffer[offset : offset + clip_frames]), 0
            start += stride
            drop = min(start - buf_start, len(buffer))
            del buffer[:drop]
            buf_start += drop
    while start < count:  # the tail: clips that start before the end but run past it
        offset = start - buf_start
        tail = buffer[offset:]
        padded = clip_frames - len(tail)
        yield torch.stack(tail + [buffer[-1]] * padded), padded
        start += stride


def iter_preprocessed(sampler: VideoSampler, spec: FeatureSpec) -> Iterator[Tensor]:
    """The sampler's frames preprocessed one by one, each (3, crop, crop) float32; a source
    frame sampled several times in a row is preprocessed once."""
    last_index, last = -1, None
    for index, rgb in sampler:
        if index != last_index or last is None:
            last = preprocess_frames(rgb[None], spec.resize_short, spec.crop)[0]
            last_index = index
        yield last
