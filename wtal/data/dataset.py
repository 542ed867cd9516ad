"""Video records, fixed-length resampling, the dataset and the padding collate."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from wtal.activitynet import GroundTruth
from wtal.annotations import Problem, Reporter, VideoAnnotation
from wtal.data.layouts import (
    ANNOTATION_FILE,
    DatasetSource,
    FeatureWarnings,
    check_labels,
    feature_problem,
    resolve_class_names,
)
from wtal.io import InputError
from wtal.segments import DEFAULT_FPS, DEFAULT_SNIPPET_FRAMES


@dataclass(frozen=True, eq=False)
class Video:
    """One video: features, labels and ground truth (seconds).

    Attributes:
        video_id: the video's name.
        subset: the subset it belongs to (e.g. ``"validation"``, ``"test"``).
        features: (T, D) float32 snippet features (may be a read-only memmap).
        labels: (C,) float32 multi-hot video-level labels.
        segments_s: (N, 2) float64 ground-truth [start, end] in seconds.
        segment_labels: (N,) int64 class index of each segment.
        ambiguous_s: (M, 2) float64 ambiguous [start, end] in seconds (not ground truth).
        duration_s: video duration in seconds (NaN when unknown).
        fps: frame rate the snippets were cut at.
        snippet_frames: frames per snippet row of ``features``. After resampling to
            ``num_segments`` rows this is ``snippet_frames * T_orig / num_segments``, so that
            :func:`wtal.segments.snippets_to_seconds` stays right for the resampled rows.
    """

    video_id: str
    subset: str
    features: np.ndarray = field(repr=False)
    labels: np.ndarray
    segments_s: np.ndarray
    segment_labels: np.ndarray
    ambiguous_s: np.ndarray
    duration_s: float
    fps: float
    snippet_frames: float


class Batch(NamedTuple):
    """A padded batch of videos (see :func:`collate`)."""

    features: torch.Tensor  # (B, T_max, D) float32, zeros where padded
    mask: torch.Tensor  # (B, T_max) bool, True on real snippets
    labels: torch.Tensor  # (B, C) float32 multi-hot
    video_ids: list[str]
    lengths: torch.Tensor  # (B,) int64 snippets per video


# ----------------------------------------------------------------------------- sampling


def resample(
    features: np.ndarray, num_segments: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Resample a feature sequence to a fixed number of rows.

    Row ``i`` of the output covers original positions ``[i, i + 1) * T / num_segments``.
    Without ``rng`` it takes the first snippet of that span, ``floor(i * T / num_segments)``
    (ACM-Net's uniform test sampling); with ``rng`` a random position inside the span,
    ``floor((i + u_i) * T / num_segments)``, ``u_i ~ U[0, 1)`` (random-perturbed training
    sampling). Shorter videos are stretched by repeating snippets, so every output has
    exactly ``num_segments`` rows (ACM-Net keeps short test videos at their length).

    Args:
        features: (T, D) array, T >= 1.
        num_segments: output length N >= 1.
        rng: generator for random-perturbed sampling; ``None`` for uniform.

    Returns:
        (N, D) array of the input's dtype (a copy of the selected rows).
    """
    num_snippets = features.shape[0]
    if num_segments < 1 or num_snippets < 1:
        raise ValueError(f"cannot resample {num_snippets} snippets to {num_segments}")
    offsets = np.zeros(num_segments) if rng is None else rng.random(num_segments)
    scale = num_snippets / num_segments
    idx = np.floor((np.arange(num_segments) + offsets) * scale).astype(np.int64)  # (N,)
    return np.asarray(features[np.minimum(idx, num_snippets - 1)])


def collate(videos: Sequence[Video]) -> Batch:
    """Pad videos of different lengths into one batch with a validity mask.

    Args:
        videos: B >= 1 records with the same feature dim D and class count C.

    Returns:
        :class:`Batch` with features (B, T_max, D) zero-padded, mask (B, T_max) True on
        real snippets, labels (B, C), video ids and lengths (B,).
    """
    if not videos:
        raise ValueError("collate needs at least one video")
    lengths = np.array([v.features.shape[0] for v in videos], dtype=np.int64)  # (B,)
    feat_dim = videos[0].features.shape[1]
    padded = np.zeros((len(videos), int(lengths.max()), feat_dim), dtype=np.float32)
    for i, video in enumerate(videos):  # one copy per video; rows are contiguous
        padded[i, : lengths[i]] = video.features
    mask = np.arange(padded.shape[1])[None, :] < lengths[:, None]  # (B, T_max)
    return Batch(
        features=torch.from_numpy(padded),
        mask=torch.from_numpy(mask),
        labels=torch.from_numpy(np.stack([v.labels for v in videos]).astype(np.float32)),
        video_ids=[v.video_id for v in videos],
        lengths=torch.from_numpy(lengths),
    )


def length_groups(lengths: Sequence[int] | np.ndarray, max_padding: float) -> list[np.ndarray]:
    """Split a batch into forward passes of videos of similar length.

    Videos are taken shortest first, and a pass grows while its padded size (its longest
    video times its number of videos) stays within ``max_padding`` times its real snippets.
    Padded snippets cost as much as real ones in every (B, T, E) tensor of the model, so a
    batch of lengths 14 ... 2202 padded as one pass does several times the work of its videos.

    Args:
        lengths: (B,) snippets of each video.
        max_padding: >= 1; 0 (or ``inf``) keeps the whole batch in one pass, in its order.

    Returns:
        One int64 index array into ``lengths`` per pass, in ascending length; together they
        are a permutation of ``range(B)``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_padding == 0 or not np.isfinite(max_padding):
        return [np.arange(len(lengths))]
    order = np.argsort(lengths, kind="stable")
    groups, start, total = [], 0, 0
    for i, n in enumerate(lengths[order].tolist()):  # at most batch_size videos
        # n is the longest so far (ascending order): the pass would pad to n * count.
        if i > start and n * (i - start + 1) > max_padding * (total + n):
            groups.append(order[start:i])
            start, total = i, 0
        total += n
    groups.append(order[start:])
    return groups


def split_batch(batch: Batch, max_padding: float) -> list[tuple[np.ndarray, Batch]]:
    """The passes of :func:`length_groups` as smaller batches, each padded to its longest.

    Returns:
        ``(index, sub_batch)`` pairs; ``index`` (b,) are the sub-batch's rows in ``batch``.
    """
    groups = length_groups(batch.lengths.numpy(), max_padding)
    if len(groups) == 1 and np.array_equal(groups[0], np.arange(len(batch.video_ids))):
        return [(groups[0], batch)]
    parts = []
    for index in groups:
        rows = torch.from_numpy(index)
        longest = int(batch.lengths[rows].max())
        sub = Batch(
            features=batch.features[rows, :longest],
            mask=batch.mask[rows, :longest],
            labels=batch.labels[rows],
            video_ids=[batch.video_ids[i] for i in index.tolist()],
            lengths=batch.lengths[rows],
        )
        parts.append((index, sub))
    return parts


# ----------------------------------------------------------------------------- dataset


def _timing_warnings(
    path: os.PathLike,
    records: Sequence[VideoAnnotation],
    fps: float | None,
    snippet_frames: float | None,
) -> list[Problem]:
    """A warning per distinct per-video ``fps``/``snippet_frames`` that differs from the
    given one, naming its first video (one line per value, not one per video: ActivityNet
    has thousands of videos at a handful of frame rates)."""
    problems = []
    for name, given in (("fps", fps), ("snippet_frames", snippet_frames)):
        if given is None:
            continue
        found: dict[float, list[str]] = {}
        for rec in records:
            own = getattr(rec, name)
            if own is not None and own != given:
                found.setdefault(own, []).append(rec.video_id)
        for own, videos in found.items():
            more = f" (and {len(videos) - 1} other videos)" if len(videos) > 1 else ""
            what = f'"{name}" {own:g} differs from data.{name} {given:g}: {own:g} is used{more}'
            problems.append(Problem("warning", str(path), what, videos[0]))
    return problems


class FeatureDataset(torch.utils.data.Dataset):
    """The videos of one subset, as :class:`Video` records.

    Args:
        root: dataset folder, per-video layout or W-TALC bundle (module docstring).
        subset: subset name to serve (W-TALC THUMOS14: ``"validation"`` to train,
            ``"test"`` to test); ``None`` serves every video.
        layout: ``"auto"`` (detect), ``"wtalc"`` or ``"pervideo"``.
        fps: frame rate the snippets were cut at, for videos whose annotation has no
            ``"fps"`` (``None``: :data:`wtal.segments.DEFAULT_FPS`). A video's own ``"fps"``
            always wins; where it differs from an explicit ``fps``, :attr:`warnings` names
            the video.
        snippet_frames: frames per feature snippet, likewise for videos without their own
            ``"snippet_frames"`` (``None``: :data:`wtal.segments.DEFAULT_SNIPPET_FRAMES`).
        num_segments: resample every video to this many rows (:func:`resample`); ``None``
            keeps whole videos.
        sampling: ``"uniform"`` or ``"random"`` (random-perturbed, needs ``num_segments``).
        seed: with the epoch (:meth:`set_epoch`) and the index, seeds random sampling, so
            an item's rows do not depend on worker order.
        class_names: class order; default: the file's class list (W-TALC ``classlist.npy``,
            JSON ``"classes"``) or else the sorted union of all labels in every subset.
        annotation_file: name of the per-video layout's JSON inside ``root``.
        max_abs_feature: :meth:`check_features` warns about features beyond this absolute
            value (0: no such warning).

    Raises:
        InputError: on the first bad annotation or feature file, naming file and video.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        subset: str | None,
        *,
        layout: str = "auto",
        fps: float | None = None,
        snippet_frames: float | None = None,
        num_segments: int | None = None,
        sampling: str = "uniform",
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        annotation_file: str = ANNOTATION_FILE,
        max_abs_feature: float = 0.0,
    ) -> None:
        if sampling not in ("uniform", "random"):
            raise ValueError(f"sampling must be 'uniform' or 'random', got {sampling!r}")
        if sampling == "random" and num_segments is None:
            raise ValueError("random sampling needs num_segments")
        rep = Reporter(strict=True)
        self.source = DatasetSource(root, layout, rep, annotation_file)
        self.class_names = resolve_class_names(self.source, class_names)
        check_labels(rep, self.source, self.class_names)
        self.warnings = list(rep.problems)
        self.records = [r for r in self.source.records if subset is None or r.subset == subset]
        if not self.records:
            subsets = sorted({r.subset for r in self.source.records})
            raise InputError(self.source.ann_path, f"no videos in subset {subset!r} ({subsets})")
        if self.source.layout == "pervideo":
            have = self.source.feature_ids()
            missing = [r.video_id for r in self.records if r.video_id not in have]
            if missing:
                vid = missing[0]
                raise InputError(self.source.feature_path(vid), "feature file missing", vid)
        self.subset, self.max_abs_feature = subset, max_abs_feature
        self.fps = DEFAULT_FPS if fps is None else float(fps)
        self.snippet_frames = (
            DEFAULT_SNIPPET_FRAMES if snippet_frames is None else float(snippet_frames)
        )
        self.warnings += _timing_warnings(self.source.ann_path, self.records, fps, snippet_frames)
        self.num_segments, self.sampling, self.seed, self.epoch = num_segments, sampling, seed, 0
        first = self.source.load(self.records[0].video_id)
        problem = feature_problem(first, None, scan=False)
        if problem:
            vid = self.records[0].video_id
            raise InputError(self.source.feature_path(vid), problem, vid)
        self.feat_dim = int(first.shape[1])
        self._class_index = {name: i for i, name in enumerate(self.class_names)}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def check_features(self, feat_dim: int | None = None) -> None:
        """Read every video's features once and raise on the first bad one.

        Checks shape, dtype, emptiness, NaN/Inf and the feature dim (``feat_dim``, default
        the first video's), so that training fails before it starts rather than mid-epoch.
        Files are memory-mapped one at a time: memory stays bounded by the longest video.
        Integer features and values beyond ``max_abs_feature`` are added to
        :attr:`warnings`.
        """
        feat_dim = self.feat_dim if feat_dim is None else feat_dim
        suspicious = FeatureWarnings(self.max_abs_feature)
        for rec in self.records:
            features, path = self.source.load(rec.video_id), self.source.feature_path(rec.video_id)
            problem = feature_problem(features, feat_dim)
            if problem:
                raise InputError(path, problem, rec.video_id)
            suspicious.add(features, path, rec.video_id)
        self.warnings += suspicious.problems()

    def set_epoch(self, epoch: int) -> None:
        """Select the random-sampling stream of this epoch."""
        self.epoch = int(epoch)

    def _fps(self, rec: VideoAnnotation) -> float:
        return rec.fps if rec.fps is not None else self.fps

    def _snippet_frames(self, rec: VideoAnnotation) -> float:
        return rec.snippet_frames if rec.snippet_frames is not None else self.snippet_frames

    def __getitem__(self, index: int) -> Video:
        rec = self.records[index]
        features = self.source.load(rec.video_id)
        problem = feature_problem(features, self.feat_dim)
        if problem:
            raise InputError(self.source.feature_path(rec.video_id), problem, rec.video_id)
        snippet_frames = self._snippet_frames(rec)
        if self.num_segments is not None:
            rng = None
            if self.sampling == "random":
                rng = np.random.default_rng([self.seed, self.epoch, index])
            snippet_frames *= features.shape[0] / self.num_segments  # rows now span more frames
            features = resample(features, self.num_segments, rng)
        if features.dtype != np.float32:
            features = features.astype(np.float32)
        labels = np.zeros(self.num_classes, dtype=np.float32)  # (C,)
        labels[[self._class_index[n] for n in rec.labels]] = 1.0
        segment_labels = np.array([self._class_index[n] for n in rec.segment_labels], np.int64)
        return Video(
            video_id=rec.video_id,
            subset=rec.subset,
            features=features,
            labels=labels,
            segments_s=rec.segments_s.reshape(-1, 2),
            segment_labels=segment_labels,
            ambiguous_s=rec.ambiguous_s.reshape(-1, 2),
            duration_s=rec.duration_s,
            fps=self._fps(rec),
            snippet_frames=snippet_frames,
        )

    def grids(self) -> dict[str, tuple[float, float]]:
        """``{video_id: (fps, snippet_frames)}`` of the native feature grid (before any
        resampling) of every video, its own values where the annotation gives them."""
        return {r.video_id: (self._fps(r), self._snippet_frames(r)) for r in self.records}

    def segments_by_video(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Ground-truth instances of every video as arrays, without reading features.

        Returns:
            ``{video_id: (segments_s (N, 2) float64 seconds, labels (N,) int64 class index)}``;
            videos without instances map to empty arrays.
        """
        return {
            rec.video_id: (
                rec.segments_s.reshape(-1, 2).astype(np.float64),
                np.array([self._class_index[n] for n in rec.segment_labels], np.int64),
            )
            for rec in self.records
        }

    def ground_truth(self) -> GroundTruth:
        """Ground truth of this subset (seconds), as :func:`wtal.evaluation.evaluate_detections`
        takes it: built from the records read already, not re-serialised and parsed again."""
        records = self.records
        index = np.arange(len(records))
        return GroundTruth(
            video_ids=[r.video_id for r in records],
            subsets=[r.subset for r in records],
            ann_video=np.repeat(index, [len(r.segment_labels) for r in records]),
            ann_labels=[name for r in records for name in r.segment_labels],
            ann_segments=np.concatenate(
                [np.zeros((0, 2)), *(r.segments_s.reshape(-1, 2) for r in records)]
            ),
            amb_video=np.repeat(index, [len(r.ambiguous_s) for r in records]),
            amb_segments=np.concatenate(
                [np.zeros((0, 2)), *(r.ambiguous_s.reshape(-1, 2) for r in records)]
            ),
        )
