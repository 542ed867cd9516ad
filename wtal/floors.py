"""Floors: what a detector that knows nothing about time scores on a split; and how much the
model's attention and CAS vary in time at all (:func:`localization_signal`).

A localization recipe is only useful when it beats these; every evaluation reports them beside
the model's mAP (``metrics["floors"]``, and ``wtal bench`` prints their mean over seeds), so a
recipe that classifies videos but does not localize is visible at once.

- ``whole_video``: each video's true classes, one segment = the whole video, score 1. It needs
  no model at all; on datasets whose actions cover most of a video (ActivityNet) it is high.
- ``uniform_attention``: what the model's own video-level scores give with a flat attention:
  every class, one segment = the whole video, scored by the model's video score for that class
  (a CAS constant in time has the whole video as its only proposal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wtal import __version__
from wtal.segments import snippets_to_seconds

if TYPE_CHECKING:  # the floors need the predictions' numbers only, never torch
    from wtal.inference import Prediction

FLOORS: tuple[str, ...] = ("whole_video", "uniform_attention")
"""The floors every evaluation reports, in this order."""


def _duration(pred: Prediction) -> float:
    """Seconds of the video: its recorded duration, else its snippets on its own grid."""
    if pred.duration_s > 0:  # False for NaN (unknown duration)
        return float(pred.duration_s)
    return float(snippets_to_seconds(pred.cas.shape[0], pred.fps, pred.snippet_frames))


def floor_results(
    preds: Sequence[Prediction], class_names: Sequence[str], floor: str
) -> dict[str, Any]:
    """The detections of one floor for every video, in the ActivityNet results format.

    Args:
        preds: per-video predictions; ``labels`` (C,) multi-hot ground truth is used by
            ``whole_video``, ``video_scores`` (C+1,) by ``uniform_attention``.
        class_names: (C,) names of the classes, background excluded.
        floor: one of :data:`FLOORS`.

    Returns:
        ``{"version", "results": {video: [{"label", "score", "segment": [0, duration_s]}]},
        "external_data"}``.
    """
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {FLOORS}, got {floor!r}")
    num_classes = len(class_names)
    results: dict[str, list[dict[str, Any]]] = {}
    for pred in preds:
        if floor == "whole_video":
            classes = np.flatnonzero(np.asarray(pred.labels)[:num_classes] > 0)
            scores = np.ones(len(classes))
        else:
            classes = np.arange(num_classes)
            scores = np.asarray(pred.video_scores, np.float64)[:num_classes]
        segment = [0.0, _duration(pred)]
        results[pred.video_id] = [
            {"label": class_names[int(c)], "score": float(s), "segment": segment}
            for c, s in zip(classes.tolist(), scores.tolist(), strict=True)
        ]
    return {"version": f"wtal {__version__}", "results": results, "external_data": {}}


def localization_signal(preds: Sequence[Prediction]) -> dict[str, float]:
    """How much the model's outputs vary in time, averaged over videos (all in [0, 1]).

    A model that classifies videos but does not localize has a flat, low attention and a CAS
    whose top class never rises far above its median: these numbers show it before any mAP.

    Returns:
        ``attention_mean``: mean attention over all snippets; ``attention_range``: mean over
        videos of max - min attention; ``cas_peak``: mean over videos of the largest CAS value
        (background excluded); ``cas_contrast``: mean over videos of max - median in time of
        the CAS column of the video's top-scored class.
    """
    if not preds:
        return {"attention_mean": 0.0, "attention_range": 0.0, "cas_peak": 0.0, "cas_contrast": 0.0}
    att_mean, att_range, peak, contrast = [], [], [], []
    for pred in preds:
        att = np.asarray(pred.attention, np.float64)
        cas = np.asarray(pred.cas, np.float64)[:, :-1]
        top = cas[:, int(np.argmax(np.asarray(pred.video_scores)[:-1]))]
        att_mean.append(att.mean())
        att_range.append(att.max() - att.min())
        peak.append(cas.max())
        contrast.append(top.max() - np.median(top))
    return {
        "attention_mean": float(np.mean(att_mean)),
        "attention_range": float(np.mean(att_range)),
        "cas_peak": float(np.mean(peak)),
        "cas_contrast": float(np.mean(contrast)),
    }
