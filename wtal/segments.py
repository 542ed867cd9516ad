"""Segment primitives shared by detection, pseudo labels and evaluation.

Numpy only (:func:`segment_tiou`, the one tIoU, also takes torch tensors, without importing
torch). Inside the pipeline every segment is in *snippet* units, half-open
``[start, end)``; :func:`snippets_to_seconds` is the one place where snippets become
seconds, and :func:`seconds_to_snippets` the one place where seconds become snippets.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

DEFAULT_FPS = 25.0
"""Frame rate of THUMOS14 / ActivityNet I3D feature extraction (W-TALC, ACM-Net, paper.md
§5.1): the snippet grid wherever none is given (a dataset opened without ``fps``, the
``wtalc`` scoring grid, a W-TALC conversion)."""
DEFAULT_SNIPPET_FRAMES = 16.0
"""Frames per I3D feature snippet (non-overlapping 16-frame chunks), likewise."""

REFERENCE_OUTER_BAND: tuple[float, float] = (0.0785, 0.9)
"""The reference's ``(outer_scale, outer_power)``: ``0.0785 * L ** 0.9`` snippets per side
(detectionMAP.py:130, utils.py:197); the defaults of ``detect.outer_scale/outer_power``."""


def to_numpy(x: Any, dtype: type) -> np.ndarray:
    """``x`` (numpy, a list or a torch tensor on any device) as a numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch tensor: no torch import needed here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def outer_band_width(lengths: np.ndarray, scale: float, power: float) -> np.ndarray:
    """Half-width of the outer band on each side of a segment: ``scale * L ** power`` snippets.

    The one formula of the outer band, for the proposals' outer-inner score and the pseudo
    labels' LP regions alike. Computed in float64 by numpy's array ``pow`` (which can differ
    from Python's scalar ``**`` in the last bit), the same way for both callers.

    Args:
        lengths: segment lengths L in snippets, any shape.
        scale: factor of the band (``detect.outer_scale``).
        power: exponent of L (``detect.outer_power``).

    Returns:
        float64 array of the shape of ``lengths``.
    """
    return scale * np.asarray(lengths, dtype=np.float64) ** power


def snippets_to_seconds(x: np.ndarray | float, fps: float, snippet_frames: float) -> np.ndarray:
    """Convert snippet positions to seconds.

    Snippet ``i`` covers frames ``[i * snippet_frames, (i + 1) * snippet_frames)``, so
    position ``x`` (snippets, may be fractional) is at ``x * snippet_frames / fps`` seconds.

    Args:
        x: positions in snippets, any shape.
        fps: frame rate of the features' source video (THUMOS14 I3D: 25).
        snippet_frames: frames per feature snippet (THUMOS14 I3D: 16).

    Returns:
        float64 array of the same shape, seconds.
    """
    return np.asarray(x, dtype=np.float64) * (float(snippet_frames) / float(fps))


def seconds_to_snippets(
    t: np.ndarray | float, fps: float | np.ndarray, snippet_frames: float | np.ndarray
) -> np.ndarray:
    """Convert seconds to fractional snippet positions (inverse of :func:`snippets_to_seconds`).

    Args:
        t: times in seconds, any shape.
        fps: frame rate of the features' source video; or an array broadcastable against
            ``t`` (e.g. (N, 1) for (N, 2) segments of videos on different grids).
        snippet_frames: frames per feature snippet, likewise.

    Returns:
        float64 array of the broadcast shape, snippet units (not rounded: callers choose).
    """
    rate = np.asarray(fps, dtype=np.float64) / np.asarray(snippet_frames, dtype=np.float64)
    return np.asarray(t, dtype=np.float64) * rate


def segment_tiou(
    a_start: Any, a_end: Any, b_start: Any, b_end: Any, zero_union: float = 0.0
) -> Any:
    """Temporal IoU of segments ``[a_start, a_end]`` and ``[b_start, b_end]``, elementwise.

    The one tIoU of the package (evaluation, pseudo labels, fusion). ActivityNet definition
    on continuous coordinates, in this float order: ``inter / (len_a + len_b - inter)`` with
    ``inter = max(0, min(ends) - max(starts))``. Starts and ends come as separate arrays so
    that callers holding them as columns (fusion) or as rows pass views without copying.
    Works on numpy arrays (computed in float64) and on torch tensors (their dtype and
    device; torch is not imported here).

    Args:
        a_start, a_end: any shape.
        b_start, b_end: broadcastable against ``a_start``; ``a[:, None, k]`` with
            ``b[None, :, k]`` gives every pair (see :func:`pairwise_tiou`).
        zero_union: the value where the union is 0 (two zero-length segments at one point).
            The official ActivityNet evaluator computes 0/0 = NaN there, which its matching
            accepts ahead of any finite tIoU: ``inf`` reproduces that order.

    Returns:
        tIoU in [0, 1] (or ``zero_union``), of the broadcast shape.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a_start, torch.Tensor):
        xp = torch
    else:
        xp = np
        a_start, a_end, b_start, b_end = (
            np.asarray(x, dtype=np.float64) for x in (a_start, a_end, b_start, b_end)
        )
    inter = (xp.minimum(a_end, b_end) - xp.maximum(a_start, b_start)).clip(min=0.0)
    union = (a_end - a_start) + (b_end - b_start) - inter
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 where the union is 0
        return xp.where(union > 0, inter / union, zero_union)


def pairwise_tiou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`segment_tiou` of every segment of ``a`` with every segment of ``b``.

    Args:
        a: (N, 2) float, [start, end].
        b: (M, 2) float, [start, end].

    Returns:
        (N, M) float64 tIoU in [0, 1]; 0 where the union is 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    return segment_tiou(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])  # (N, M)
