"""A deterministic, class-stratified validation split of the training subset.

Settings of the pseudo-label stage have to be chosen on something other than the test split
(paper.md §7 Q15). :func:`validation_split` holds out a share of the training videos; the
engine leaves them out of training, pseudo labels and the memory, and scores them with the
test-time evaluator (their temporal annotations serve as ground truth).

The split depends only on the videos' ids and labels and on the seed: every video gets a
rank from a hash of ``(seed, video_id)``, and each stratum holds out its lowest-ranked videos.
So the order in which a dataset lists its videos, and ``train.seed``, change nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence


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
