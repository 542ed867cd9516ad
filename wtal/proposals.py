"""CAS -> candidate segments: multi-threshold grouping with the outer-inner contrastive score.

paper.md §1.4 (reference: ``evaluation/detectionMAP.py`` and ``utils/utils.py``, proposal
loops). For every class whose video score passes ``class_threshold`` and every CAS threshold
θ, the maximal runs of ``cas[:, c] > θ`` that are at least ``min_length`` snippets long become
proposals, scored by

    phi = mean(CAS inside) - mean(CAS in the outer band around it)            (OIC score)

Everything is computed at once for all thresholds and classes of one video: the CAS is
binarised as a ``(C, n_thr, T)`` tensor, runs are read off its first difference, and the
inner and outer means come from per-class cumulative sums (or, with ``float32_means``, from
an emulation of the reference's numpy float32 arithmetic). No Python loop runs over
snippets or segments.

Units: snippets. Segments are ``[start, end)`` with float coordinates (integers here; the
fusion makes them fractional).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from wtal.segments import outer_band_width

_PAIRWISE_BLOCK = 128
"""numpy's pairwise-summation leaf size (``PW_BLOCKSIZE`` in its loops)."""

_PAIRWISE_LANES = 8
"""numpy's unroll factor inside a pairwise leaf (8 partial sums)."""

_LEAF_BUCKETS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 16))
"""Ranges of blocks-of-8 per leaf processed together (bounds padding to 2x the values)."""


class Segments(NamedTuple):
    """What a detector outputs for one video: candidate or final action segments.

    Attributes:
        segments: (N, 2) float64, snippet units, ``[start, end)``.
        scores: (N,) float64, outer-inner contrastive score phi (fused for fused output).
        inner: (N,) float64, mean CAS inside the segment (the fusion weight's input).
        labels: (N,) int64, class column of the CAS.
    """

    segments: Tensor
    scores: Tensor
    inner: Tensor
    labels: Tensor

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> Segments:
        """No segments (shapes ``(0, 2)``, ``(0,)``, ``(0,)``, ``(0,)``)."""
        f = torch.zeros(0, dtype=torch.float64, device=device)
        return cls(f.reshape(0, 2), f, f.clone(), torch.zeros(0, dtype=torch.long, device=device))


def _as_tensor(x: Tensor | np.ndarray | Sequence[float], device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x if device is None else x.to(device)
    return torch.as_tensor(np.asarray(x), device=device)


def generate_proposals(
    cas: Tensor | np.ndarray,
    video_scores: Tensor | np.ndarray,
    *,
    class_threshold: float,
    thresholds: Sequence[float] | np.ndarray | Tensor,
    min_length: int,
    outer_scale: float,
    outer_power: float,
    inclusive_end: bool,
    float32_means: bool,
) -> Segments:
    """Multi-threshold proposals with the outer-inner contrastive (OIC) score, paper.md §1.4.

    Every setting is explicit; :class:`wtal.config.DetectConfig` declares the values the
    package uses (:func:`wtal.inference.detect_segments` passes them).

    For each class ``c`` with ``video_scores[c] >= class_threshold`` and each threshold θ, every
    maximal run ``[s, e)`` of ``cas[:, c] > θ`` with ``L = e - s >= min_length`` gives one
    proposal. With ``delta = outer_scale * L**outer_power`` (computed as ``float(L)**power``
    in float64, as the reference does):

    * ``inclusive_end=True`` (reference, an off-by-one inherited from RSKP): the inner mean
      covers ``[s, min(e + 1, T))``, the stored segment is ``[s, e + 1)`` (its end may be
      ``T + 1``), the outer band is ``[max(0, trunc(s - delta)), s)`` plus
      ``[e + 1, min(T - 1, trunc(e + delta + 1)))``.
    * ``inclusive_end=False`` (textbook half-open runs): inner ``[s, e)``, stored ``[s, e)``,
      outer ``[max(0, trunc(s - delta)), s)`` plus ``[e, min(T, trunc(e + delta)))``.

    ``phi = inner - mean(outer)``, with the outer mean 0 when the band is empty.

    Args:
        cas: (T, C) class activation sequence of one video (any float dtype, any device).
        video_scores: (C,) video-level class scores; classes below ``class_threshold`` are
            skipped (the reference filters on predicted scores, not on labels).
        class_threshold: minimum video score of a class (reference: 0.16).
        thresholds: CAS thresholds θ (reference: ``np.arange(0.001, 0.04, 0.002)``); a run
            needs ``cas > θ`` strictly.
        min_length: minimum run length ``e - s`` in snippets (reference: 2).
        outer_scale: scale of the outer band half-width (reference: 0.0785; the textbook
            ``0.25 * L`` band of the original outer-inner contrast, AutoLoc and RSKP's own
            code, is 0.25 with power 1).
        outer_power: power of the run length in the band half-width (reference: 0.9).
        inclusive_end: reproduce the reference's run-plus-one-snippet segments (see above).
        float32_means: compute the inner and outer means exactly as the reference's numpy
            does on its float32 CAS: the CAS and thresholds are rounded to float32, sums use
            numpy's float32 pairwise summation, the mean and ``phi`` are rounded to float32.
            Needed to match the reference's stored outputs to 1e-9 (the exact float64 means
            of the default differ from them by about 1e-7 relative).

    Returns:
        :class:`Segments` on the device of ``cas``, float64, sorted by class (ascending), then
        threshold (ascending), then start (ascending): the reference's generation order.
    """
    cas = _as_tensor(cas)
    device = cas.device
    video_scores = _as_tensor(video_scores, device)
    if cas.ndim != 2:
        raise ValueError(f"cas must be (T, C), got shape {tuple(cas.shape)}")
    num_snippets, num_classes = cas.shape
    if video_scores.shape != (num_classes,):
        raise ValueError(
            f"video_scores must be ({num_classes},) to match cas {tuple(cas.shape)}, "
            f"got {tuple(video_scores.shape)}"
        )
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    work_dtype = torch.float32 if float32_means else torch.float64
    thr = _as_tensor(thresholds).to(device=device, dtype=torch.float64).reshape(-1)
    thr = thr.to(work_dtype)  # float32: numpy 1.x compared a float32 CAS in float32

    classes = torch.nonzero(video_scores.to(torch.float64) >= class_threshold).flatten()  # (C',)
    if num_snippets == 0 or classes.numel() == 0 or thr.numel() == 0:
        return Segments.empty(device)
    cas_ct = cas.to(work_dtype).t()[classes].contiguous()  # (C', T)

    # Runs: pad the binarised CAS with a 0 on both sides; +1 steps are starts, -1 steps ends.
    binary = (cas_ct[:, None, :] > thr[None, :, None]).to(torch.int8)  # (C', n_thr, T)
    binary = torch.nn.functional.pad(binary, (1, 1))  # (C', n_thr, T + 2)
    step = binary[..., 1:] - binary[..., :-1]  # (C', n_thr, T + 1)
    # In every (class, threshold) row the steps alternate +1 (start s), -1 (end e,
    # exclusive); nonzero() is row-major, so its even entries are starts, the odd ones the
    # matching ends, in (class, threshold, start) order: the reference's generation order.
    steps = torch.nonzero(step)  # (2R, 3): class row, threshold, position
    starts, ends = steps[0::2], steps[1::2, 2]
    row, s = starts[:, 0], starts[:, 2]
    length = ends - s  # (R,)
    keep = length >= min_length
    row, s, e, length = row[keep], s[keep], ends[keep], length[keep]
    if s.numel() == 0:
        return Segments.empty(device)

    # Band half-width from a float64 table over lengths, computed by numpy's pow like the
    # reference's Python ``0.0785 * (L ** 0.9)``, so truncation ties resolve identically.
    table = outer_band_width(np.arange(num_snippets + 1), outer_scale, outer_power)
    delta = torch.from_numpy(table).to(device)[length]  # (R,)
    s64, e64 = s.to(torch.float64), e.to(torch.float64)
    left_start = torch.clamp(torch.trunc(s64 - delta), min=0).long()
    if inclusive_end:
        stored_end = e + 1
        inner_stop = torch.clamp(e + 1, max=num_snippets)
        right_stop = torch.clamp(torch.trunc((e64 + delta) + 1), max=num_snippets - 1).long()
    else:
        stored_end = e
        inner_stop = e
        right_stop = torch.clamp(torch.trunc(e64 + delta), max=num_snippets).long()
    right_len = torch.clamp(right_stop - stored_end, min=0)  # empty when the band is clipped
    left_len = s - left_start

    oic = _oic_float32 if float32_means else _oic_exact
    inner, phi = oic(cas_ct, row, s, inner_stop, left_start, left_len, stored_end, right_len)

    segments = torch.stack([s64, stored_end.to(torch.float64)], dim=1)  # (R, 2)
    return Segments(segments, phi, inner, classes[row])


def _oic_exact(cas_ct, row, s, inner_stop, left_start, left_len, right_start, right_len):
    """Inner mean and phi in float64 from per-class cumulative sums. Shapes (R,)."""
    num_rows, num_snippets = cas_ct.shape
    csum = torch.zeros(num_rows, num_snippets + 1, dtype=torch.float64, device=cas_ct.device)
    csum[:, 1:] = torch.cumsum(cas_ct, dim=1)  # (C', T + 1)
    flat = csum.reshape(-1)
    base = row * (num_snippets + 1)

    def range_sum(start: Tensor, stop: Tensor) -> Tensor:
        return flat[base + stop] - flat[base + start]

    inner = range_sum(s, inner_stop) / (inner_stop - s)
    right_start = right_start.clamp(max=num_snippets)  # the stored end may be T + 1 (empty band)
    outer_sum = range_sum(left_start, s) + range_sum(right_start, right_start + right_len)
    outer_len = left_len + right_len
    outer = torch.where(outer_len > 0, outer_sum / outer_len.clamp(min=1), 0.0)
    return inner, inner - outer


def _oic_float32(cas_ct, row, s, inner_stop, left_start, left_len, right_start, right_len):
    """Inner mean and phi exactly as numpy computes them on a float32 CAS. Shapes (R,).

    The reference takes ``np.mean`` of float32 slices: a float32 pairwise sum, a division
    rounded to float32, and ``inner - outer`` in float32. Returned as float64.
    """
    # One flat float32 source with a trailing 0.0 that padded positions read (adding +0.0
    # never changes a float32 sum); inner and outer lists summed in one batched call.
    flat = torch.cat([cas_ct.reshape(-1), cas_ct.new_zeros(1)])
    base = row * cas_ct.shape[1]
    inner_len = inner_stop - s
    outer_len = left_len + right_len
    sums = _pairwise_sum_f32(
        flat,
        a_start=torch.cat([base + s, base + left_start]),
        a_len=torch.cat([inner_len, left_len]),
        b_start=torch.cat([base + s, base + right_start]),
        n=torch.cat([inner_len, outer_len]),
    )
    inner_sum, outer_sum = sums.split(len(s))
    inner = (inner_sum.double() / inner_len).float()
    outer = (outer_sum.double() / outer_len.clamp(min=1)).float()
    phi = torch.where(outer_len > 0, inner - outer, inner)  # float32 subtraction
    return inner.double(), phi.double()


def _gather_two_ranges(
    flat: Tensor, a_start: Tensor, a_len: Tensor, b_start: Tensor, pos: Tensor, valid: Tensor
) -> Tensor:
    """Values at list positions ``pos`` ((R, ...) int64) of two concatenated ranges per row.

    Position ``p`` of row ``r`` is ``flat[a_start[r] + p]`` when ``p < a_len[r]``, else
    ``flat[b_start[r] + p - a_len[r]]``. Invalid positions read ``flat[-1]``, which the
    caller sets to +0.0.
    """
    shape = (-1,) + (1,) * (pos.ndim - 1)
    a_len = a_len.view(shape)
    idx = torch.where(pos < a_len, a_start.view(shape) + pos, b_start.view(shape) + pos - a_len)
    return flat[torch.where(valid, idx, flat.numel() - 1)]


def _pairwise_sum_f32(
    flat: Tensor,
    a_start: Tensor,
    a_len: Tensor,
    b_start: Tensor,
    n: Tensor,
    offset: Tensor | None = None,
) -> Tensor:
    """numpy's float32 pairwise sum of one list of values per row, vectorized over rows.

    Row ``r`` sums ``n[r]`` values, the concatenation of two ranges of ``flat`` (see
    :func:`_gather_two_ranges`; the reference's outer band is such a list). Reproduces
    numpy's ``pairwise_sum``: a list longer than 128 is split at ``n // 2`` rounded down to a
    multiple of 8 and the halves are summed recursively; a shorter list is summed in 8
    interleaved partial sums over its first ``n - n % 8`` values, combined as a tree, and the
    remaining values are added in order. Verified bit for bit against ``np.mean`` in tests.

    Args:
        flat: (M,) float32 source values, the last one 0.0 (read by padded positions).
        a_start: (R,) int64 start of the first range in ``flat``.
        a_len: (R,) int64 length of the first range.
        b_start: (R,) int64 start of the second range in ``flat``.
        n: (R,) int64 number of values summed by this call.
        offset: (R,) int64 list position where this call starts (recursion); None for 0.

    Returns:
        (R,) float32 sums (0 for empty rows).
    """
    if offset is None:
        offset = torch.zeros_like(n)
    out = torch.zeros(n.shape, dtype=torch.float32, device=flat.device)
    if n.numel() == 0:
        return out
    big = n > _PAIRWISE_BLOCK
    if bool(big.any()):
        ranges = (a_start[big], a_len[big], b_start[big])
        n_big, off_big = n[big], offset[big]
        half = n_big // 2
        half = half - half % _PAIRWISE_LANES
        left = _pairwise_sum_f32(flat, *ranges, half, off_big)
        right = _pairwise_sum_f32(flat, *ranges, n_big - half, off_big + half)
        out[big] = left + right
    # Leaves (n <= 128), bucketed by how many blocks of 8 they hold so that the padded
    # gather stays within twice the values actually summed.
    blocks = torch.div(n, _PAIRWISE_LANES, rounding_mode="floor")
    for lo, hi in _LEAF_BUCKETS:
        leaf = ~big & (blocks >= lo) & (blocks <= hi)
        if bool(leaf.any()):
            ranges = (a_start[leaf], a_len[leaf], b_start[leaf])
            out[leaf] = _pairwise_leaf_f32(flat, ranges, n[leaf], offset[leaf], hi)
    return out


def _pairwise_leaf_f32(
    flat: Tensor, ranges: tuple[Tensor, Tensor, Tensor], n: Tensor, offset: Tensor, blocks: int
) -> Tensor:
    """numpy's pairwise leaf (``n <= 128``, at most ``blocks`` blocks of 8) per row, float32."""
    n_lanes = n - n % _PAIRWISE_LANES  # values that go to the 8 partial sums
    lane_pos = torch.arange(blocks * _PAIRWISE_LANES, device=flat.device).expand(len(n), -1)
    tail_pos = n_lanes[:, None] + torch.arange(_PAIRWISE_LANES - 1, device=flat.device)
    pos = torch.cat([lane_pos, tail_pos], dim=1)  # (R, 8 * blocks + 7) list positions
    valid = torch.cat([lane_pos < n_lanes[:, None], tail_pos < n[:, None]], dim=1)
    vals = _gather_two_ranges(flat, *ranges, offset[:, None] + pos, valid)  # one gather
    lanes = torch.zeros(len(n), _PAIRWISE_LANES, dtype=torch.float32, device=flat.device)
    for b in range(blocks):  # numpy adds block after block into the 8 partial sums
        lanes = lanes + vals[:, b * _PAIRWISE_LANES : (b + 1) * _PAIRWISE_LANES]  # (R, 8)
    r = lanes.unbind(1)
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for k in range(_PAIRWISE_LANES - 1):  # the n % 8 trailing values, in order
        total = total + vals[:, blocks * _PAIRWISE_LANES + k]
    return total
