"""One new video's feature file, read for a trained model: a :class:`wtal.data.Video` without
ground truth (``wtal detect --features VIDEO.npy``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wtal.config import DataConfig
from wtal.data import Video, resample
from wtal.data.layouts import feature_problem
from wtal.io import InputError
from wtal.segments import snippets_to_seconds


def load_feature_file(path: Path, data: DataConfig, num_classes: int, feat_dim: int) -> Video:
    """The ``(T, D)`` array in ``path`` as a video: id = file stem, duration = its T snippets
    at ``data.fps`` and ``data.snippet_frames``, resampled to ``data.num_segments`` when the
    model was trained on resampled videos.

    Args:
        path: a ``.npy`` file (never unpickled).
        data: the data section of the checkpoint's config.
        num_classes: classes of the checkpoint (the video gets all-zero labels).
        feat_dim: feature dimension the checkpoint expects.

    Raises:
        InputError: missing file, not one numeric finite ``(T, D)`` array, or another ``D``.
    """
    try:
        features = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a numeric .npy array ({exc})") from None
    if not isinstance(features, np.ndarray):
        features.close()
        raise InputError(path, "expected one (T, D) .npy array, got an .npz archive")
    problem = feature_problem(features, None)
    if problem:
        raise InputError(path, problem)
    if features.shape[1] != feat_dim:
        raise InputError(
            path, f"features are {features.shape[1]}-d; the checkpoint expects {feat_dim}-d"
        )
    num_snippets = features.shape[0]
    fps, snippet_frames = data.fps, data.snippet_frames
    duration_s = float(snippets_to_seconds(num_snippets, fps, snippet_frames))
    if data.num_segments:  # the model was trained on resampled videos: test likewise
        snippet_frames *= num_snippets / data.num_segments
        features = resample(features, data.num_segments)
    return Video(
        video_id=path.stem,
        subset="",
        features=features.astype(np.float32),
        labels=np.zeros(num_classes, dtype=np.float32),
        segments_s=np.zeros((0, 2)),
        segment_labels=np.zeros(0, dtype=np.int64),
        ambiguous_s=np.zeros((0, 2)),
        duration_s=duration_s,
        fps=fps,
        snippet_frames=snippet_frames,
    )
