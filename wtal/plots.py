"""Headless figures. Built on :class:`matplotlib.figure.Figure` with the Agg canvas, never
through ``pyplot``: no display and no global figure state. PNGs are written atomically; times
on every axis are seconds, converted from snippets by :func:`wtal.segments.snippets_to_seconds`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wtal.io import atomic_path
from wtal.segments import snippets_to_seconds

PSEUDO_MAX_CLASSES = 6
"""Class columns drawn per pseudo-label figure: GT classes first, then those with the most
label mass over all regenerations."""
PSEUDO_DPI = 100
"""Resolution of the pseudo-label PNGs (a 12-inch-wide figure is 1200 pixels)."""
GT_ALPHA = 0.18
"""Opacity of the ground-truth spans behind the label curves."""


def _class_color(index: int) -> tuple[float, float, float, float]:
    """A fixed colour per class index (tab10, cycling), the same in every figure."""
    return colormaps["tab10"](index % 10)


def plot_pseudo_evolution(
    path: str | os.PathLike,
    video_id: str,
    epochs: Sequence[int],
    labels: Sequence[np.ndarray],
    *,
    fps: float,
    snippet_frames: float,
    class_names: Sequence[str],
    gt_segments_s: np.ndarray | None = None,
    gt_labels: np.ndarray | None = None,
    max_classes: int = PSEUDO_MAX_CLASSES,
) -> list[int]:
    """How one video's pseudo labels change over the regenerations, against its GT.

    One row per regeneration epoch; x is time in seconds; one curve per class column (its
    pseudo-label mass per snippet, drawn as steps), the background column dashed grey, and
    the GT segments as shaded spans in their class colour on every row.

    Args:
        path: the PNG to write (atomically).
        video_id: the video, for the title.
        epochs: the regeneration epochs, one per row.
        labels: per row, (T, C+1) pseudo labels (background last).
        fps: frame rate of the snippets.
        snippet_frames: frames per snippet.
        class_names: the C class names.
        gt_segments_s: (M, 2) GT ``[start, end]`` in seconds, or None (no overlay).
        gt_labels: (M,) GT class indices.
        max_classes: most class columns drawn (GT classes first, then by total mass).

    Returns:
        The class columns drawn.
    """
    if len(epochs) != len(labels) or not len(labels):
        raise ValueError("need one (T, C+1) label array per epoch, at least one")
    num_classes = len(class_names)
    gt = np.zeros((0, 2)) if gt_segments_s is None else np.asarray(gt_segments_s, float)
    gt = gt.reshape(-1, 2)
    gt_cls = np.zeros(0, int) if gt_labels is None else np.asarray(gt_labels, int).reshape(-1)
    mass = sum(np.asarray(y, float)[:, :num_classes].sum(0) for y in labels)  # (C,)
    by_mass = [int(c) for c in np.argsort(-mass, kind="stable") if mass[c] > 0]
    shown = list(dict.fromkeys([*gt_cls.tolist(), *by_mass]))[:max_classes]

    fig = Figure(figsize=(12, 1.0 + 1.6 * len(labels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(labels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, epoch, y in zip(axes, epochs, labels, strict=True):
        y = np.asarray(y, float)
        T = y.shape[0]
        edges = snippets_to_seconds(np.arange(T + 1), fps, snippet_frames)  # (T+1,) seconds
        for (a, b), c in zip(gt, gt_cls, strict=True):
            ax.axvspan(a, b, color=_class_color(int(c)), alpha=GT_ALPHA, lw=0)
        for c in shown:
            ax.stairs(y[:, c], edges, color=_class_color(c), lw=1.2, label=class_names[c])
        if y.shape[1] > num_classes:
            ax.stairs(y[:, num_classes], edges, color="0.4", ls="--", lw=0.8, label="background")
        ax.set_ylabel(f"epoch {epoch}")
        ax.set_xlim(0, edges[-1])
        ax.set_ylim(bottom=0)
    axes[0].set_title(f"{video_id}: pseudo labels per regeneration (shaded: ground truth)")
    axes[0].legend(loc="upper right", fontsize="small", ncol=min(4, len(shown) + 1))
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PSEUDO_DPI)
    return shown
