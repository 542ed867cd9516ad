"""``wtal infer``: new videos (or their feature files) through a trained run to detections.

The flow checks everything before it writes anything: the inputs exist, the run loads, the
extractor fits the run (feature dimension, frame rate, snippet grid), every video decodes.
Then it runs the model, detects with the run's own ``detect`` config
(:func:`wtal.inference.results_from_predictions`, the path ``wtal detect`` takes) and writes,
per video, ``<id>.json`` (ActivityNet results, seconds), ``<id>.csv`` (``start,end,label,score``)
and ``<id>.png`` (timeline: attention, CAS of the top classes, proposals and detections).

The model is not causal in time: the EM bases, the random walk and the video-level scores
pool over the whole video, so cutting a video into chunks changes its CAS. Videos are run in
one pass up to :data:`LONG_VIDEO_SNIPPETS` snippets (memory grows linearly with length) and
in chunks only beyond it, with a warning (:func:`predict_videos`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wtal.config import Config
from wtal.data import Video
from wtal.distributed import resolve_device
from wtal.extractors import RANDOM_WEIGHTS
from wtal.featmeta import FEATURES_META_FILE, read_features_meta, recorded_extractor
from wtal.feature_file import feature_video, read_feature_array
from wtal.inference import (
    Prediction,
    detect,
    load_trained_model,
    predict_as_configured,
    results_from_predictions,
)
from wtal.io import InputError, atomic_path, check_output_folder, write_json
from wtal.segments import snippets_to_seconds

log = logging.getLogger("wtal")

LONG_VIDEO_SNIPPETS = 50_000
"""Longest video run in one pass (about 9 hours of 16-frame snippets at 25 fps; with
2048-d features a pass then holds a few GB). Longer videos are cut into near-equal chunks of
at most this many snippets, each run on its own: their CAS and scores differ from one pass.
``wtal infer --max-snippets`` changes it; lower it for runs with ``model.walk_method =
dense``, whose (T, T) solve needs T^2 floats."""
CSV_HEADER = ("start", "end", "label", "score")
"""Columns of ``<id>.csv``: segment start and end in seconds, class name, detection score."""


@dataclass(frozen=True)
class Grid:
    """The time grid of a video's feature rows: ``fps`` frames per second, one row every
    ``snippet_frames`` frames (the extractor's stride)."""

    fps: float
    snippet_frames: float


@dataclass(frozen=True)
class TrainedRun:
    """A loaded run: model (eval mode, CPU), config, checkpoint state and where it came from."""

    model: torch.nn.Module
    cfg: Config
    state: dict[str, Any]
    checkpoint: Path
    extractor: dict[str, Any] | None
    """The extractor record the run was trained with (None: external features)."""

    @property
    def feat_dim(self) -> int:
        return int(self.state["feat_dim"])

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.state["class_names"]]

    @property
    def grid(self) -> Grid:
        """The run's feature grid: the extractor's when recorded, else the config's."""
        if self.extractor is not None:
            return Grid(float(self.extractor["fps"]), float(self.extractor["stride"]))
        return Grid(self.cfg.data.fps, self.cfg.data.snippet_frames)


def load_run(run: str | Path, overrides: list[str] | None = None) -> TrainedRun:
    """A run folder (its ``last.pt``) or a checkpoint file, with its extractor record."""
    path = Path(run).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    model, cfg, state = load_trained_model(path, overrides)
    return TrainedRun(model, cfg, state, path, recorded_extractor(state, path))


def check_grid(run: TrainedRun, grid: Grid, where: str | Path, what: str) -> None:
    """Refuse features on another time grid than the run's (``what`` names their source)."""
    want = run.grid
    if not math.isclose(grid.fps, want.fps, rel_tol=1e-6):
        raise InputError(
            where, f"{what} at {grid.fps:g} fps; the run {run.checkpoint} expects {want.fps:g} fps"
        )
    if not math.isclose(grid.snippet_frames, want.snippet_frames, rel_tol=1e-6):
        raise InputError(
            where,
            f"{what} one row every {grid.snippet_frames:g} frames; the run {run.checkpoint} "
            f"expects every {want.snippet_frames:g}",
        )


def check_dim(run: TrainedRun, dim: int, where: str | Path, what: str) -> None:
    """Refuse features of another dimension than the run's."""
    if dim != run.feat_dim:
        raise InputError(
            where, f"{what} are {dim}-d; the run {run.checkpoint} was trained on {run.feat_dim}-d"
        )


def features_grid(path: Path) -> tuple[Grid, float | None] | None:
    """The grid and the video's duration (seconds, None if not recorded) of a feature file
    written by ``wtal features`` (``OUT/features/<id>.npy`` beside
    ``OUT/features_meta.json``); None when there is no meta file."""
    meta_path = path.parent.parent / FEATURES_META_FILE
    if path.parent.name != "features" or not meta_path.is_file():
        return None
    meta = read_features_meta(meta_path)
    entry = meta.get("videos", {}).get(path.stem, {})
    duration_s = entry.get("duration_s") if isinstance(entry, dict) else None
    duration_s = float(duration_s) if isinstance(duration_s, (int, float)) else None
    return Grid(float(meta["fps"]), float(meta["stride"])), duration_s


def load_features(path: Path, run: TrainedRun) -> tuple[np.ndarray, float | None]:
    """One video's ``(T, D)`` feature file, checked against the run (dimension, and grid when
    a ``features_meta.json`` describes it), and its duration in seconds when that file
    records it."""
    features = read_feature_array(path)
    check_dim(run, features.shape[1], path, "features")
    described = features_grid(path)
    if described is None:
        return features.astype(np.float32), None
    check_grid(run, described[0], path, "features extracted")
    return features.astype(np.float32), described[1]


def recorded_weights(run: TrainedRun) -> str:
    """The ``--weights`` argument that rebuilds the run's extractor: ``none`` for random
    weights, its weights file (one stream) or their folder (two streams).

    Raises:
        InputError: the run records no weights files, or they are gone: pass ``--weights``.
    """
    record = run.extractor or {}
    shas = set(record.get("weights_sha256", {}).values())
    if shas == {RANDOM_WEIGHTS}:
        return "none"
    files = [Path(f) for f in record.get("weights_files", {}).values()]
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        what = f"its weights file {missing[0]} is gone" if missing else "no weights file recorded"
        raise InputError(run.checkpoint, f"extractor {record.get('name')}: {what}; pass --weights")
    return str(files[0]) if len(files) == 1 else str(files[0].parent)


def extract_features(
    videos: dict[str, Path],
    run: TrainedRun,
    name: str | None,
    weights: str | None,
    device: torch.device,
) -> list[Video]:
    """Features of every video, extracted as the run's were (or with ``name``/``weights``).

    Videos are sampled at the run's frame rate and cut on its snippet grid, so a video's own
    frame rate never mismatches; the extractor's dimension must be the run's. A run trained
    on external features (no record) needs ``name`` and is warned about: its features may
    not come from that extractor.

    Raises:
        InputError: no extractor known, a dimension that does not fit, weights that cannot be
            loaded, or a video that does not decode (naming it).
    """
    from wtal.extract import extract_video
    from wtal.extractors import build_extractor
    from wtal.video import FeatureSpec, VideoSampler

    first = next(iter(videos.values()))
    record = run.extractor
    if name is None and record is None:
        what = "records no extractor (trained on external features): pass --extractor NAME"
        raise InputError(run.checkpoint, f"{what} to extract {first}")
    if weights is None:
        weights = recorded_weights(run) if record is not None else None
    if weights is None:
        raise InputError(run.checkpoint, f"pass --weights for extractor {name} (or none)")
    grid = run.grid
    if grid.snippet_frames != int(grid.snippet_frames):
        what = f"features one row every {grid.snippet_frames:g} frames: cannot extract videos"
        raise InputError(run.checkpoint, f"{what} on that grid")
    preprocess = {k: v for k, v in ((record or {}).get("preprocess") or {}).items() if v}
    spec = FeatureSpec(
        fps=grid.fps,
        snippet_frames=int((record or {}).get("snippet_frames", grid.snippet_frames)),
        stride=int(grid.snippet_frames),
        **preprocess,
    )
    for path in videos.values():  # opens and decodes a first frame: a broken file fails now
        frames = iter(VideoSampler(path, spec.fps))
        next(frames)
        frames.close()
    extractor = build_extractor(name or record["name"], weights, device, spec)
    check_dim(run, extractor.dim, first, f"extractor {extractor.name}'s features")
    if record is None:
        what = "records no extractor: assuming its features are"
        log.warning("%s %s %s's", run.checkpoint, what, extractor.name)
    elif extractor.name != record["name"]:
        log.warning("%s: trained on %s features, not %s's", run.checkpoint, record["name"], name)
    elif {s: w["sha256"] for s, w in extractor.weights.items()} != record["weights_sha256"]:
        log.warning("%s: extractor weights differ from the run's features'", run.checkpoint)
    found = []
    for vid, path in videos.items():  # all decoded before anything is written
        features, info = extract_video(path, extractor, spec)
        duration_s = float(info["duration_s"])
        found.append(
            feature_video(
                vid, features, run.cfg.data, len(run.class_names), fps=grid.fps,
                snippet_frames=grid.snippet_frames, duration_s=duration_s,
            )
        )  # fmt: skip
    return found


def predict_videos(
    model: torch.nn.Module,
    videos: Sequence[Video],
    device: torch.device,
    cfg: Config,
    max_snippets: int = LONG_VIDEO_SNIPPETS,
) -> list[Prediction]:
    """:func:`wtal.inference.predict` on each video, cutting those over ``max_snippets``.

    A long video becomes ``ceil(T / max_snippets)`` near-equal chunks, each a video of its
    own; their CAS and attention are concatenated and their video scores averaged weighted
    by length. The model pools over its whole input (it is not causal), so this is not
    what one pass would give: a warning names each chunked video.
    """

    def run(batch: Sequence[Video], batch_size: int) -> list[Prediction]:
        batched = replace(cfg, train=replace(cfg.train, batch_size=batch_size))
        return predict_as_configured(model.to(device), batch, batched, device)

    short = [i for i, v in enumerate(videos) if v.features.shape[0] <= max_snippets]
    found = dict(zip(short, run([videos[i] for i in short], cfg.train.batch_size), strict=True))
    for i, video in enumerate(videos):
        num_snippets = video.features.shape[0]
        if num_snippets <= max_snippets:
            continue
        count = math.ceil(num_snippets / max_snippets)
        log.warning(
            "video %r: %d snippets > %d, run in %d chunks (scores differ from one pass)",
            video.video_id,
            num_snippets,
            max_snippets,
            count,
        )
        chunks = [replace(video, features=f) for f in np.array_split(video.features, count)]
        # one chunk per pass: padded together, chunks would cost what the cut saves
        found[i] = merge_chunks(video.video_id, run(chunks, 1))
    return [found[i] for i in range(len(videos))]


def merge_chunks(video_id: str, chunks: Sequence[Prediction]) -> Prediction:
    """One prediction from those of consecutive chunks of a video (see :func:`predict_videos`)."""
    lengths = np.array([p.cas.shape[0] for p in chunks], dtype=np.float64)  # (K,)
    scores = np.stack([p.video_scores for p in chunks])  # (K, C+1)
    first = chunks[0]
    return replace(
        first,
        video_id=video_id,
        video_scores=(lengths[:, None] * scores).sum(0) / lengths.sum(),
        cas=np.concatenate([p.cas for p in chunks]),
        attention=np.concatenate([p.attention for p in chunks]),
    )


def detections_csv(detections: Sequence[dict[str, Any]]) -> str:
    """``start,end,label,score`` lines (header first) of ActivityNet results entries."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for det in detections:
        start, end = det["segment"]
        writer.writerow([f"{start:.3f}", f"{end:.3f}", det["label"], f"{det['score']:.6f}"])
    return buffer.getvalue()


def write_outputs(
    out: Path, preds: Sequence[Prediction], class_names: Sequence[str], cfg: Config
) -> dict[str, tuple[list[Path], int]]:
    """Detect on each prediction and write ``<id>.json``, ``<id>.csv`` and ``<id>.png`` into
    ``out`` (each atomically; ids made safe file names by
    :func:`wtal.plots.safe_file_names`).

    Returns:
        ``{video_id: ([json, csv, png], number of detections)}``.
    """
    from wtal.plots import plot_video, safe_file_names  # matplotlib: only when plotting

    ids = [p.video_id for p in preds]
    names = {
        suffix: safe_file_names(out, ids, suffix=suffix) for suffix in (".json", ".csv", ".png")
    }
    results = results_from_predictions(preds, class_names, cfg.detect)
    written: dict[str, tuple[list[Path], int]] = {}
    for pred in preds:
        vid = pred.video_id
        detections = results["results"][vid]
        paths = [names[suffix][vid] for suffix in (".json", ".csv", ".png")]
        write_json(paths[0], {**results, "results": {vid: detections}})
        with atomic_path(paths[1]) as tmp:
            tmp.write_text(detections_csv(detections))
        found = detect(pred, replace(cfg.detect, fusion="none"))  # the proposals, unfused
        segments = snippets_to_seconds(found.segments.numpy(), pred.fps, pred.snippet_frames)
        plot_video(
            paths[2],
            pred,
            class_names,
            detections=detections,
            proposals=(segments, found.labels.numpy()),
        )
        written[vid] = (paths, len(detections))
    return written


@dataclass(frozen=True)
class Inputs:
    """What ``wtal infer`` reads: video files and feature files, by video id (file stem)."""

    videos: dict[str, Path]
    features: dict[str, Path]


def collect_inputs(videos: Sequence[str | Path], features: Sequence[str | Path]) -> Inputs:
    """Every input exists and names a distinct video id (its file stem).

    Raises:
        InputError: no input, a missing file, or two inputs with the same id.
    """
    if not videos and not features:
        raise InputError(None, "wtal infer needs VIDEO files or --features X.npy")
    seen: dict[str, Path] = {}
    found: dict[str, dict[str, Path]] = {"videos": {}, "features": {}}
    for kind, paths in (("videos", videos), ("features", features)):
        for given in paths:
            path = Path(given).expanduser()
            if not path.is_file():
                raise InputError(
                    path, "is a folder; expected a file" if path.is_dir() else "file not found"
                )
            vid = path.stem
            if vid in seen:
                raise InputError(path, f"same video id {vid!r} as {seen[vid]}; rename one")
            seen[vid] = path
            found[kind][vid] = path
    return Inputs(found["videos"], found["features"])


def run_inference(
    videos: Sequence[str | Path],
    features: Sequence[str | Path],
    run: str | Path,
    out: str | Path,
    *,
    extractor: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    max_snippets: int | None = None,
) -> dict[str, tuple[list[Path], int]]:
    """The whole of ``wtal infer``: check every input, extract, predict, detect, write.

    Args:
        videos: video files, extracted with the run's recorded extractor (or ``extractor``).
        features: ``(T, D)`` ``.npy`` feature files on the run's grid.
        run: run folder or checkpoint.
        out: output folder (created; files in it with the same names are replaced).
        extractor: extractor name instead of the recorded one (needed for a run trained on
            external features without ``features_meta.json``).
        weights: the extractor's weights (path or ``none``) instead of the recorded ones.
        device: ``auto``, ``cpu`` or ``cuda``, for the extractor and the model.
        max_snippets: videos longer than this are run in chunks (:func:`predict_videos`;
            default :data:`LONG_VIDEO_SNIPPETS`).

    Returns:
        ``{video_id: ([json, csv, png], number of detections)}``.

    Raises:
        InputError: bad input of any kind, before anything is written.
    """
    out_dir = check_output_folder(out, "--out")
    max_snippets = LONG_VIDEO_SNIPPETS if max_snippets is None else max_snippets
    if max_snippets < 1:
        raise InputError(None, f"--max-snippets: expected a number >= 1, got {max_snippets}")
    inputs = collect_inputs(videos, features)
    trained = load_run(run)
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available")
    torch_device = resolve_device(device)
    records: list[Video] = []
    if inputs.videos:
        records += extract_features(inputs.videos, trained, extractor, weights, torch_device)
    for vid, path in inputs.features.items():
        array, duration_s = load_features(path, trained)
        grid, num_classes = trained.grid, len(trained.class_names)
        records.append(
            feature_video(
                vid, array, trained.cfg.data, num_classes, fps=grid.fps,
                snippet_frames=grid.snippet_frames, duration_s=duration_s,
            )
        )  # fmt: skip
    preds = predict_videos(trained.model, records, torch_device, trained.cfg, max_snippets)
    return write_outputs(out_dir, preds, trained.class_names, trained.cfg)
