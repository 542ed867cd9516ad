"""A run's pseudo-label regenerations, read back from its checkpoint and written out: one
regeneration as an annotation file (:func:`export_pseudo`, ``wtal export-pseudo``), or every
regeneration as one figure per training video (:func:`write_pseudo_plots`, ``wtal plot-pseudo``).

The checkpoint stores each regeneration's LP inputs (fused segments and snippet timing per
video) under ``pseudo_segment_epochs`` / ``pseudo_segments``; the labels are re-solved from them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtal import __version__
from wtal.checkpoint import checkpoint_config, load_checkpoint
from wtal.config import Config
from wtal.data.split import open_split, report_warnings
from wtal.io import InputError, check_output_file, write_json
from wtal.lp import solve_pseudo_labels_batch
from wtal.plots import plot_pseudo_evolution, safe_file_names
from wtal.pseudo import pseudo_annotations

log = logging.getLogger(__name__)


def read_pseudo_rounds(run_dir: Path) -> tuple[dict[str, Any], list[tuple[int, dict]]]:
    """The checkpoint of a run folder (metadata checked, config under ``"cfg"``) and its
    stored regenerations ``[(epoch, inputs)]``.

    Raises:
        InputError: no loadable checkpoint, entries not as wtal writes them, or none stored.
    """
    where = run_dir / "last.pt" if run_dir.is_dir() else run_dir
    state = load_checkpoint(run_dir)
    state["cfg"] = checkpoint_config(state, where)
    epochs, inputs = state.get("pseudo_segment_epochs", []), state.get("pseudo_segments", [])
    well_formed = (
        isinstance(epochs, list)
        and isinstance(inputs, list)
        and len(epochs) == len(inputs)
        and all(isinstance(e, int) for e in epochs)
        and all(
            isinstance(x, dict)
            and isinstance(x.get("segments"), dict)
            and isinstance(x.get("timing"), dict)
            for x in inputs
        )
    )
    if not well_formed:
        what = "entries 'pseudo_segment_epochs'/'pseudo_segments': not as wtal writes them"
        raise InputError(where, what)
    rounds = list(zip(epochs, inputs, strict=True))
    if not rounds:
        raise InputError(where, "no pseudo-label regeneration stored (none reached yet?)")
    return state, rounds


def pick_round(rounds: list[tuple[int, dict]], epoch: int | None, where: Path) -> tuple[int, dict]:
    """The regeneration at ``epoch`` (default: the last)."""
    if epoch is None:
        return rounds[-1]
    for e, inputs in rounds:
        if e == epoch:
            return e, inputs
    raise InputError(where, f"no regeneration at epoch {epoch} (stored: {[e for e, _ in rounds]})")


@dataclass(frozen=True)
class PseudoExport:
    """What :func:`export_pseudo` wrote: ``num_segments`` pseudo segments on ``num_videos``
    videos of ``subset``, from the regeneration at ``epoch``, into ``path``."""

    path: Path
    epoch: int
    subset: str
    num_segments: int
    num_videos: int


def export_pseudo(
    run_dir: str | Path, out: str | Path, *, epoch: int | None = None
) -> PseudoExport:
    """Write the fused segments of one regeneration (default: the last) on the training videos,
    in seconds, as an ActionFormer-style annotation file (:func:`wtal.pseudo.pseudo_annotations`).
    """
    out = check_output_file(out, "--out")
    run_dir = Path(run_dir)
    state, rounds = read_pseudo_rounds(run_dir)
    epoch, inputs = pick_round(rounds, epoch, run_dir)
    subset = state["cfg"].data.train_subset
    annotations = pseudo_annotations(
        inputs["segments"],
        inputs["timing"],
        state["class_names"],
        subset,
        version=f"wtal {__version__} pseudo labels, epoch {epoch}, {run_dir.name}",
    )
    write_json(out, annotations)
    return PseudoExport(
        path=out,
        epoch=epoch,
        subset=subset,
        num_segments=sum(len(v["annotations"]) for v in annotations["database"].values()),
        num_videos=len(annotations["database"]),
    )


def write_pseudo_plots(
    run_dir: str | Path,
    out: str | Path,
    *,
    videos: Sequence[str] | None = None,
    num_videos: int = 3,
    data: str | None = None,
) -> list[Path]:
    """One PNG per training video (``OUT/pseudo_<video>.png``): its pseudo labels at every
    regeneration stored in ``RUN_DIR/last.pt``, with ground truth when the data is readable."""
    run_dir = Path(run_dir)
    state, rounds = read_pseudo_rounds(run_dir)
    timing = rounds[-1][1]["timing"]
    if not videos and num_videos < 1:  # a negative N would slice off the last videos instead
        raise InputError(None, f"--num-videos: expected a number >= 1, got {num_videos}")
    videos = list(videos or list(timing)[:num_videos])
    unknown = [v for v in videos if v not in timing]
    if unknown:
        raise InputError(run_dir, f"--videos: not training videos of this run: {unknown[:3]}")
    gt = training_ground_truth(state["cfg"], data, state["class_names"])
    class_names = state["class_names"]
    ncol = len(class_names) + 1
    files = safe_file_names(out, videos, prefix="pseudo_")
    paths = []
    for vid in videos:
        T, fps, snippet_frames, _ = (float(x) for x in timing[vid])
        rows = [inputs["segments"][vid].numpy() for _, inputs in rounds]
        labels, _ = solve_pseudo_labels_batch(
            [r[:, :2] for r in rows],
            [r[:, 2] for r in rows],
            [r[:, 3].astype(np.int64) for r in rows],
            [int(T)] * len(rows),
            ncol,
            outer_scale=state["cfg"].detect.outer_scale,  # the band the run trained with
            outer_power=state["cfg"].detect.outer_power,
            video_ids=[vid] * len(rows),
        )
        seg_s, seg_labels = gt.get(vid, (None, None))
        paths.append(files[vid])
        plot_pseudo_evolution(
            paths[-1], vid, [e for e, _ in rounds], labels, fps=fps,
            snippet_frames=snippet_frames, class_names=class_names, gt_segments_s=seg_s,
            gt_labels=seg_labels,
        )  # fmt: skip
    return paths


def training_ground_truth(
    cfg: Config, data: str | None, class_names: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{video: (segments_s (M, 2), labels (M,))} of the run's training subset; empty (with a
    warning) when the run's dataset cannot be read any more, so that plots still show the
    labels. A ``data`` folder the user names must be readable: an error otherwise."""
    try:
        dataset = open_split(cfg, cfg.data.train_subset, path=data, class_names=class_names)
    except InputError as exc:
        if data is not None:
            raise
        log.warning("no ground truth overlay (%s)", exc)
        return {}
    report_warnings(dataset)
    return dataset.segments_by_video()
