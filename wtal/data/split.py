"""The splits of a run: the subsets a config names, opened as it says, and a deterministic,
class-stratified validation split held out of the training subset.

:func:`open_datasets` gives the training views and the test split, :func:`open_validation`
the held-out videos, and :func:`check_splits` refuses a test split that could not be scored.

Settings of the pseudo-label stage have to be chosen on something other than the test split
(paper.md §7 Q15). :func:`validation_split` holds out a share of the training videos; the
engine leaves them out of training, pseudo labels and the memory, and scores them with the
test-time evaluator (their temporal annotations serve as ground truth).

The split depends only on the videos' ids and labels and on the seed: every video gets a
rank from a hash of ``(seed, video_id)``, and each stratum holds out its lowest-ranked videos.
So the order in which a dataset lists its videos, and ``train.seed``, change nothing.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from wtal.annotations import Problem
from wtal.config import Config
from wtal.data.dataset import FeatureDataset
from wtal.io import InputError

log = logging.getLogger("wtal")


def _rank(seed: int, video_id: str) -> bytes:
    """A seeded pseudo-random key of a video, the same in every process and on every platform."""
    return hashlib.sha256(f"{seed}\0{video_id}".encode()).digest()


def held_out_count(fraction: float, num_videos: int) -> int:
    """Videos of a stratum of ``num_videos`` held out: ``round(fraction * n)`` (halves up),
    at least one when the stratum has two or more videos (and ``fraction`` > 0)."""
    if fraction <= 0:
        return 0
    count = math.floor(fraction * num_videos + 0.5)
    return max(count, 1) if num_videos >= 2 else count


def validation_split(
    labels: Mapping[str, Sequence[str]], fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split videos into training and validation, stratified by class.

    Each video belongs to the stratum of its rarest label (the label with the fewest videos;
    ties by name), so a multi-label video counts once; videos without labels form one stratum
    of their own. A stratum of ``n`` videos holds out :func:`held_out_count` of them, those
    with the lowest :func:`_rank`.

    Args:
        labels: ``{video_id: video-level label names}``.
        fraction: share to hold out, in [0, 1).
        seed: the split's seed (``data.val_seed``).

    Returns:
        ``(train_ids, val_ids)``, each sorted.
    """
    per_label = Counter(name for names in labels.values() for name in set(names))
    strata: dict[str | None, list[str]] = {}
    for video_id, names in labels.items():
        rarest = min(set(names), key=lambda n: (per_label[n], n)) if names else None
        strata.setdefault(rarest, []).append(video_id)
    held_out: set[str] = set()
    for members in strata.values():
        ranked = sorted(members, key=lambda v: (_rank(seed, v), v))
        held_out.update(ranked[: held_out_count(fraction, len(members))])
    train_ids = sorted(v for v in labels if v not in held_out)
    return train_ids, sorted(held_out)


def open_split(
    cfg: Config,
    subset: str,
    *,
    path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    sampling: str = "uniform",
) -> FeatureDataset:
    """One subset of the dataset at ``path`` (default ``cfg.data.path``), read as ``cfg.data``
    says (layout, fps, snippet length, fixed-length resampling)."""
    dc = cfg.data
    return FeatureDataset(
        dc.path if path is None else path,
        subset,
        layout=dc.layout,
        fps=dc.fps,
        snippet_frames=dc.snippet_frames,
        num_segments=dc.num_segments or None,
        sampling=sampling,
        seed=cfg.train.seed,
        class_names=class_names,
        max_abs_feature=dc.max_abs_feature,
    )


def split_training_videos(cfg: Config, dataset: FeatureDataset) -> tuple[list[str], list[str]]:
    """``(train_ids, val_ids)`` of the training subset under ``data.val_fraction`` and
    ``data.val_seed`` (:func:`validation_split`; no validation videos at 0).

    Raises:
        InputError: the fraction leaves no training video, or none of some class.
    """
    dc = cfg.data
    labels = {r.video_id: list(r.labels) for r in dataset.records}
    train_ids, val_ids = validation_split(labels, dc.val_fraction, dc.val_seed)
    where = f"data.val_fraction = {dc.val_fraction}"
    if not train_ids:
        what = f"leaves no training video of the {len(labels)} in subset {dc.train_subset!r}"
        raise InputError(None, f"{where} {what}; lower it")
    kept = {name for v in train_ids for name in labels[v]}
    lost = sorted({name for names in labels.values() for name in names} - kept)
    if lost:
        what = f"leaves no training video of class {lost[0]!r}"
        raise InputError(None, f"{where} {what} (subset {dc.train_subset!r}); lower it")
    return train_ids, val_ids


def _only_videos(dataset: FeatureDataset, video_ids: Sequence[str]) -> FeatureDataset:
    """A view of ``dataset`` that serves only ``video_ids`` (in the dataset's order)."""
    keep = set(video_ids)
    view = copy.copy(dataset)  # shares the open source; only the record list differs
    view.records = [r for r in dataset.records if r.video_id in keep]
    return view


def report_warnings(*datasets: FeatureDataset) -> None:
    """Log the loader warnings of ``datasets`` (each once: splits of one folder share the
    annotation file's) on the ``wtal`` logger, which the CLI prints as ``warning: ...``."""
    for problem in dict.fromkeys(p for d in datasets for p in d.warnings):
        log.warning("%s", InputError(problem.path, problem.what, problem.video))


def check_splits(
    train_set: FeatureDataset, test_set: FeatureDataset, train_truth: bool = False
) -> None:
    """Refuse a test split that could not be scored; warn about untrainable test classes.

    Without any ground-truth segment in the test split, every mAP of the run would be
    meaningless (and evaluation fails at the end of training). A class with ground truth in
    the test split but on no training video can never be detected: its AP is 0.
    ``train_truth`` (``pseudo.oracle``, which labels training videos from their ground
    truth) also refuses the first training video without a ground-truth instance.
    """
    for r in train_set.records if train_truth else ():
        if not len(r.segment_labels):
            what = "no ground-truth instance, which pseudo.oracle needs on every training video"
            raise InputError(train_set.source.ann_path, what, video=r.video_id)
    if not any(len(r.segments_s) for r in test_set.records):
        what = (
            f"subset {test_set.subset!r} has no ground-truth segments, so nothing could be "
            "scored; set data.test_subset to a subset with ground truth (wtal detect writes "
            "detections for videos without)"
        )
        raise InputError(test_set.source.ann_path, what)
    trained = {name for r in train_set.records for name in r.labels}
    untrainable = sorted({n for r in test_set.records for n in r.segment_labels} - trained)
    if untrainable:
        what = (
            f"{len(untrainable)} class(es) have ground truth in subset {test_set.subset!r} "
            f"but no training video, so they cannot be learned (AP 0): {untrainable[:5]}"
        )
        test_set.warnings.append(Problem("warning", str(test_set.source.ann_path), what))


def open_datasets(cfg: Config) -> tuple[FeatureDataset, FeatureDataset, FeatureDataset]:
    """The training split as trained on (random-perturbed sampling when resampling), the
    training split read deterministically (for pseudo labels and memory initialisation), and
    the test split. Validation videos (``data.val_fraction``) are in neither training view:
    :func:`open_validation` serves them."""
    dc = cfg.data
    resampled = dc.num_segments > 0
    train = open_split(cfg, dc.train_subset, sampling="random" if resampled else "uniform")
    train_fixed = open_split(cfg, dc.train_subset) if resampled else train
    test = open_split(cfg, dc.test_subset, class_names=train.class_names)
    if dc.val_fraction > 0:
        train_ids, _ = split_training_videos(cfg, train)
        train = _only_videos(train, train_ids)
        train_fixed = _only_videos(train_fixed, train_ids) if resampled else train
    return train, train_fixed, test


def open_validation(cfg: Config) -> FeatureDataset | None:
    """The validation videos of the training subset, read deterministically like the test
    split; None when ``data.val_fraction`` is 0."""
    if cfg.data.val_fraction <= 0:
        return None
    train = open_split(cfg, cfg.data.train_subset)
    return _only_videos(train, split_training_videos(cfg, train)[1])
