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


def read_feature_array(path: Path) -> np.ndarray:
    """The one numeric, finite ``(T, D)`` array in the ``.npy`` file ``path`` (never unpickled).

    Raises:
        InputError: missing file, an ``.npz`` archive, or not one numeric finite ``(T, D)`` array.
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
    return features


def feature_video(
    video_id: str,
    features: np.ndarray,
    data: DataConfig,
    num_classes: int,
    *,
    fps: float | None = None,
    snippet_frames: float | None = None,
    duration_s: float | None = None,
) -> Video:
    """A new video's ``(T, D)`` features as a :class:`wtal.data.Video` without ground truth.

    The time grid is ``fps`` / ``snippet_frames`` (default: the run's ``data`` section); the
    duration is ``duration_s``, else T snippets on that grid; the features are resampled to
    ``data.num_segments`` rows when the model was trained on resampled videos.
    """
    num_snippets = features.shape[0]
    fps = data.fps if fps is None else fps
    snippet_frames = data.snippet_frames if snippet_frames is None else snippet_frames
    if duration_s is None:
        duration_s = float(snippets_to_seconds(num_snippets, fps, snippet_frames))
    if data.num_segments:  # the model was trained on resampled videos: test likewise
        snippet_frames *= num_snippets / data.num_segments
        features = resample(features, data.num_segments)
    return Video(
        video_id=video_id,
        subset="",
        features=np.ascontiguousarray(features, dtype=np.float32),
        labels=np.zeros(num_classes, dtype=np.float32),
        segments_s=np.zeros((0, 2)),
        segment_labels=np.zeros(0, dtype=np.int64),
        ambiguous_s=np.zeros((0, 2)),
        duration_s=duration_s,
        fps=fps,
        snippet_frames=snippet_frames,
    )


def load_feature_file(path: Path, data: DataConfig, num_classes: int, feat_dim: int) -> Video:
    """The ``(T, D)`` array in ``path`` as a video (id = file stem, see :func:`feature_video`).

    Raises:
        InputError: see :func:`read_feature_array`, or a ``D`` other than ``feat_dim``.
    """
    features = read_feature_array(path)
    if features.shape[1] != feat_dim:
        raise InputError(
            path, f"features are {features.shape[1]}-d; the checkpoint expects {feat_dim}-d"
        )
    return feature_video(path.stem, features, data, num_classes)
