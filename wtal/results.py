"""Results files (ActivityNet format, seconds): made by a checkpoint (:func:`detect_to_file`,
``wtal detect``), re-made from a CAS cache (:func:`postprocess_cache`, ``wtal postprocess``),
and scored against ground truth (:func:`score_file`, ``wtal score``).

Every input is checked before the first file is written. The files that belong to a results
file sit beside it: ``results.json`` -> ``results.cas.npz`` (the CAS cache) and
``results.metrics.json`` (both protocols, when there is ground truth). Modules that need torch
are imported inside the two detection functions: ``wtal score`` never pays for torch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wtal.io import InputError, check_output_file
from wtal.segments import DEFAULT_FPS, DEFAULT_SNIPPET_FRAMES
from wtal.tables import format_detection_metrics

if TYPE_CHECKING:
    from wtal.config import DetectConfig
    from wtal.data import FeatureDataset
    from wtal.evaluation import DetectionMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenResults:
    """What :func:`detect_to_file` or :func:`postprocess_cache` wrote.

    Attributes:
        path: the results JSON.
        num_detections: detections in it, all videos together.
        num_videos: videos in it.
        detect: the detection settings used.
        split: the dataset split detected or the GT subset scored (None: no dataset, no GT).
        metrics: both protocols (``*.metrics.json``); None when nothing was scored.
        metrics_path: where ``metrics`` were written.
        cache: the CAS cache written beside the results (``detect_to_file`` only).
    """

    path: Path
    num_detections: int
    num_videos: int
    detect: DetectConfig
    split: str | None = None
    metrics: dict[str, Any] | None = None
    metrics_path: Path | None = None
    cache: Path | None = None


def format_written(written: WrittenResults) -> str:
    """What ``wtal detect`` (with its CAS cache) or ``wtal postprocess`` (with its fusion
    settings) wrote, then the metrics of both protocols when anything was scored."""
    d, kind = written.detect, "split" if written.cache is not None else "subset"
    what = f"wrote {written.path}: {written.num_detections} detections in {written.num_videos}"
    if written.cache is not None:
        lines = [f"{what} videos (CAS cache: {written.cache})"]
        if written.split is not None and written.metrics is None:
            lines.append(
                f"split {written.split!r} has no ground-truth segments: nothing was scored"
            )
    else:
        settings = (
            f"temperature {d.temperature}, overlap threshold {d.overlap_threshold}, "
            f"soft-NMS sigma {d.soft_nms_sigma}"
        )
        lines = [f"fusion {d.fusion} ({settings}): {what} videos"]
    if written.metrics is not None:
        where = f"metrics: {written.metrics_path}"
        lines.append(f"{kind} {written.split!r}, mAP (%) by tIoU ({where}):")
        lines.append(format_detection_metrics(written.metrics))
    return "\n".join(lines)


def sidecar(out: Path, suffix: str) -> Path:
    """``results.json`` -> ``results<suffix>``: files that belong to an output sit beside it."""
    return out.with_name(out.stem + suffix)


@contextmanager
def _logged_warnings() -> Iterator[None]:
    """Log the evaluator's Python warnings on the ``wtal`` logger (the CLI prints them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log.warning("%s", warning.message)


def _write_results(
    out: Path,
    results: dict[str, Any],
    metrics: dict[str, Any] | None,
    metrics_path: Path,
    detect: DetectConfig,
    split: str | None,
    *,
    cache: Path | None = None,
) -> WrittenResults:
    """Write the results JSON and, when anything was scored, its metrics beside it; say what
    was written (the inputs are all checked by then)."""
    from wtal.io import write_json

    write_json(out, results)
    if metrics is not None:
        write_json(metrics_path, metrics)
    return WrittenResults(
        path=out,
        num_detections=sum(len(v) for v in results["results"].values()),
        num_videos=len(results["results"]),
        detect=detect,
        split=split,
        metrics=metrics,
        metrics_path=metrics_path if metrics is not None else None,
        cache=cache,
    )


def check_dataset_fits(
    dataset: FeatureDataset, class_names: list[str], feat_dim: int, where: str | Path
) -> None:
    """The dataset must have the checkpoint's feature dim and class list (same order)."""
    if dataset.feat_dim != feat_dim:
        raise InputError(
            where, f"features are {dataset.feat_dim}-d; the checkpoint expects {feat_dim}-d"
        )
    if list(dataset.class_names) != class_names:
        missing = [c for c in class_names if c not in dataset.class_names]
        extra = [c for c in dataset.class_names if c not in class_names]
        if missing or extra:
            what = f"missing {missing[:5]}, unknown {extra[:5]}"
        else:
            what = "same classes in another order"
        raise InputError(where, f"classes differ from the checkpoint's ({what})")


def detect_to_file(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | None = None,
    features: str | None = None,
    split: str | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    progress: bool = False,
) -> WrittenResults:
    """Detections of a checkpoint on a dataset split or on one video's feature file.

    Writes ``out``, its CAS cache and, when the split has ground-truth segments, its metrics.

    Args:
        checkpoint: a ``.pt`` file or a run folder (its ``last.pt``).
        out: the results JSON.
        data: dataset root (exactly one of ``data`` and ``features``).
        features: one video's ``(T, D)`` ``.npy`` file.
        split: subset of ``data`` (default: the config's test subset).
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ``section.key=value`` changes to the checkpoint's config.
        progress: a progress bar over the videos.

    Raises:
        InputError: bad input of any kind (nothing is written then).
    """
    import torch

    from wtal.cascache import save_predictions
    from wtal.data.split import open_split, report_warnings
    from wtal.distributed import resolve_device
    from wtal.feature_file import load_feature_file
    from wtal.inference import load_trained_model, predict_as_configured, results_from_predictions
    from wtal.scoring import evaluate_predictions

    if (data is None) == (features is None):
        raise InputError(None, "wtal detect needs either --data PATH or --features VIDEO.npy")
    out = check_output_file(out, "--out")
    cache, metrics_path = sidecar(out, ".cas.npz"), sidecar(out, ".metrics.json")
    for path in (cache, metrics_path):
        check_output_file(path, "--out")
    if data is not None:  # last: it wins over a data.path in ``overrides``
        overrides = [*overrides, f"data.path={str(data)!r}"]
    model, cfg, state = load_trained_model(checkpoint, list(overrides))
    class_names, feat_dim = [str(c) for c in state["class_names"]], int(state["feat_dim"])
    dataset = None
    if features is not None:
        videos = [load_feature_file(Path(features), cfg.data, len(class_names), feat_dim)]
        split = ""
    else:
        split = split or cfg.data.test_subset
        dataset = open_split(cfg, split, path=data)
        check_dataset_fits(dataset, class_names, feat_dim, data)
        dataset.check_features(feat_dim)  # every file, before any work or output
        report_warnings(dataset)
        videos = dataset
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available")
    torch_device = resolve_device(device)
    preds = predict_as_configured(
        model.to(torch_device), videos, cfg, torch_device, progress=progress
    )
    metrics = None
    if dataset is not None and any(len(r.segments_s) for r in dataset.records):
        with _logged_warnings():
            results, metrics = evaluate_predictions(preds, dataset, cfg)
    else:
        results = results_from_predictions(preds, class_names, cfg.detect)
    save_predictions(cache, preds, class_names, cfg, split)
    split = split if dataset is not None else None
    return _write_results(out, results, metrics, metrics_path, cfg.detect, split, cache=cache)


def postprocess_cache(
    cache_path: str | Path,
    *,
    out: str | Path | None = None,
    gt: str | None = None,
    subset: str | None = None,
    overrides: Sequence[str] = (),
) -> WrittenResults:
    """Detections re-made from a CAS cache under the cache's config with ``overrides``.

    Args:
        cache_path: a CAS cache (``.npz``) of ``wtal detect`` or ``wtal train``.
        out: the results JSON (default: beside the cache, ``<cache stem>.<fusion>.json``).
        gt: a ground-truth JSON: also score both protocols (metrics beside ``out``).
        subset: the GT subset (default: the cache's split if the GT has it, else automatic).
        overrides: ``section.key=value`` changes to the stored config.

    Raises:
        InputError: bad input of any kind (nothing is written then).
    """
    from wtal.cascache import load_predictions
    from wtal.config import Config, config_to_dict
    from wtal.configfile import config_from_dict
    from wtal.evaluation import load_ground_truth, resolve_subset
    from wtal.inference import results_from_predictions
    from wtal.scoring import score_results

    cache = load_predictions(cache_path)
    cfg = config_from_dict(config_to_dict(cache.config or Config()), list(overrides))
    cache_path = Path(cache_path)
    stem = cache_path.name.removesuffix(".npz").removesuffix(".cas")
    out = check_output_file(
        out if out is not None else cache_path.with_name(f"{stem}.{cfg.detect.fusion}.json"),
        "--out",
    )
    metrics_path = sidecar(out, ".metrics.json")
    ground_truth = None
    if gt is not None:  # every input is checked before the first write
        check_output_file(metrics_path, "--out")
        ground_truth = load_ground_truth(gt)
        if subset is None:
            present = {v.get("subset") for v in ground_truth["database"].values()}
            subset = cache.split if cache.split in present else None
        subset = resolve_subset(ground_truth, subset, source=gt)
    results = results_from_predictions(cache.predictions, cache.class_names, cfg.detect)
    metrics = None
    if ground_truth is not None:
        # each video's own grid, as stored in the cache (resampled rows span more frames:
        # the native grid is then the config's)
        resampled = cfg.data.num_segments > 0
        grid = {
            p.video_id: (p.fps, cfg.data.snippet_frames if resampled else p.snippet_frames)
            for p in cache.predictions
        }
        with _logged_warnings():
            metrics = score_results(results, ground_truth, subset, cfg, grid_by_video=grid)
    subset = subset if ground_truth is not None else None
    return _write_results(out, results, metrics, metrics_path, cfg.detect, subset)


def score_file(
    gt: str | Path,
    results: str | Path,
    tious: Sequence[float] | str | None = None,
    *,
    subset: str | None = None,
    protocol: str = "official",
    fps: float = DEFAULT_FPS,
    snippet_frames: float = DEFAULT_SNIPPET_FRAMES,
    ambiguous_filter: bool = False,
    compat: bool = False,
    strict: bool = False,
) -> DetectionMetrics:
    """Detection mAP of a results file against a ground-truth file.

    Args:
        gt: ground truth JSON (ActivityNet format).
        results: detections JSON (ActivityNet results format).
        tious: thresholds, or a preset name (``thumos``, ``anet``); default: ``thumos`` for
            ``protocol="wtalc"`` (W-TALC numbers are THUMOS14 numbers), else ``anet`` (the
            official evaluator's default).
        subset: the GT subset (default: automatic, :func:`wtal.evaluation.resolve_subset`).
        protocol, fps, snippet_frames, ambiguous_filter, compat: as
            :func:`wtal.evaluation.evaluate_detections` takes them.
        strict: refuse zero-length or duplicate ground truth instead of warning.

    Raises:
        InputError: bad thresholds or grid, unreadable files, bad GT with ``strict``.
    """
    from wtal import evaluation

    if tious is None:
        tious = "thumos" if protocol == "wtalc" else "anet"
    elif not isinstance(tious, str):
        bad = [t for t in tious if not 0.0 < t <= 1.0]
        if bad:
            raise InputError(None, f"--tiou: thresholds must be in (0, 1], got {bad}")
    for flag, value in (("--fps", fps), ("--snippet-frames", snippet_frames)):
        if not 0 < value < float("inf"):
            raise InputError(None, f"{flag}: expected a number > 0, got {value}")
    ground_truth = evaluation.load_ground_truth(gt)
    detections = evaluation.load_results(results)
    subset = evaluation.resolve_subset(ground_truth, subset, source=gt)
    for video, what in evaluation.ground_truth_problems(ground_truth, subset):
        if strict:
            raise InputError(gt, f"{what} (--strict)", video)
        log.warning("%s", InputError(gt, what, video))
    with _logged_warnings():
        return evaluation.evaluate_detections(
            ground_truth,
            detections,
            tious,
            subset=subset,
            protocol=protocol,
            fps=fps,
            snippet_frames=snippet_frames,
            ambiguous_filter=ambiguous_filter,
            compat=compat,
        )
