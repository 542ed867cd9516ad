"""The ``wtal`` command line: argparse subcommands mapped to plain functions.

Each ``cmd_*`` function takes the parsed arguments and returns an exit status. Modules are
imported inside the commands so that ``wtal score`` never pays for importing torch.
Every :class:`~wtal.io.InputError` ends in one line ``error: ...`` on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from wtal import __version__
from wtal.io import (
    InputError,
    atomic_path,
    check_output_file,
    check_output_folder,
    os_error,
)

if TYPE_CHECKING:
    from wtal.config import Config

# ----------------------------------------------------------------------------- data


def _given(value: str | None, flag: str) -> str | None:
    """``value`` of the option ``flag`` unless it is blank: an empty ``--data ""`` or
    ``--run-dir ""`` must not fall back silently to the default as if it were absent."""
    if value is not None and not value.strip():
        raise InputError(None, f"{flag}: expected a value, got {value!r}")
    return value


def _require_new_folder(out: str) -> None:
    """Refuse an existing output folder before any work (the writers refuse it too)."""
    check_output_folder(out, "OUT")
    if Path(out).exists():
        raise InputError(out, "already exists; choose a new output folder")


def cmd_data_synth(args: argparse.Namespace) -> int:
    from wtal.synth import PRESETS, apply_overrides, write_synthetic

    spec = apply_overrides(PRESETS[args.preset], args.set or [])
    if args.seed < 0:  # numpy's generators take non-negative seeds only
        raise InputError(None, f"--seed: expected an integer >= 0, got {args.seed}")
    _require_new_folder(args.out)
    try:
        counts = write_synthetic(args.out, spec, seed=args.seed)
    except OSError as exc:  # disk full, permissions: one line, nothing half-written
        raise InputError(exc.filename or args.out, f"cannot write ({exc.strerror})") from None
    print(
        f"wrote {args.out}: {counts['videos']} videos, {counts['instances']} instances, "
        f"{counts['classes']} classes, {counts['snippets']} snippets "
        f"(per-video layout; W-TALC bundle in {args.out}/wtalc)"
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from wtal.data import check_dataset, format_summary

    problems, summary = check_dataset(args.path, layout=args.layout)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(format_summary(summary))
    errors = sum(p.level == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{errors} errors, {warnings} warnings")
    return 2 if errors else 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from wtal.data import convert_wtalc

    if not 0 < args.fps < float("inf"):  # NaN fails both comparisons
        raise InputError(None, f"--fps: expected a frame rate > 0, got {args.fps}")
    _require_new_folder(args.out)
    try:
        num_videos = convert_wtalc(args.src, args.out, fps=args.fps)
    except OSError as exc:
        raise InputError(exc.filename or args.out, f"cannot write ({exc.strerror})") from None
    print(f"wrote {num_videos} videos to {args.out}")
    return 0


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="synthesize, check and convert datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = data_sub.add_parser(
        "synth",
        help="write a synthetic WTAL benchmark",
        description="Write a synthetic benchmark in both layouts: OUT/annotations.json + "
        "OUT/features/<video_id>.npy (per-video) and OUT/wtalc/ (W-TALC bundle).",
    )
    synth.add_argument("out", help="output folder (must not exist)")
    synth.add_argument("--preset", choices=("thumos", "anet"), default="thumos")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a SynthSpec field, e.g. --set train_videos=20 (repeatable)",
    )
    synth.set_defaults(func=cmd_data_synth)

    check = data_sub.add_parser("check", help="validate a dataset and print a summary")
    check.add_argument("path", help="dataset folder (per-video layout or W-TALC bundle)")
    check.add_argument("--layout", choices=("auto", "pervideo", "wtalc"), default="auto")
    check.set_defaults(func=cmd_data_check)

    convert = data_sub.add_parser("convert", help="W-TALC bundle -> per-video layout")
    convert.add_argument("src", help="W-TALC bundle folder (pickled files: trusted input only)")
    convert.add_argument("out", help="output folder (must not exist)")
    convert.add_argument(
        "--fps", type=float, default=25.0, help="frame rate of the features (default 25)"
    )
    convert.set_defaults(func=cmd_data_convert)


# ----------------------------------------------------------------------------- score


def cmd_score(args: argparse.Namespace) -> int:
    import json
    import warnings

    from wtal import evaluation

    if args.tiou is not None:
        bad = [t for t in args.tiou if not 0.0 < t <= 1.0]
        if bad:
            raise InputError(None, f"--tiou: thresholds must be in (0, 1], got {bad}")
        tious = args.tiou
    else:  # W-TALC numbers are THUMOS14 numbers; otherwise the official evaluator's default
        tious = args.preset or ("thumos" if args.protocol == "wtalc" else "anet")
    for flag, value in (("--fps", args.fps), ("--snippet-frames", args.snippet_frames)):
        if not 0 < value < float("inf"):
            raise InputError(None, f"{flag}: expected a number > 0, got {value}")
    ground_truth = evaluation.load_ground_truth(args.gt)
    results = evaluation.load_results(args.results)
    subset = evaluation.resolve_subset(ground_truth, args.subset, source=args.gt)
    for video, what in evaluation.ground_truth_problems(ground_truth, subset):
        if args.strict:
            raise InputError(args.gt, f"{what} (--strict)", video)
        print(f"warning: {InputError(args.gt, what, video)}", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = evaluation.evaluate_detections(
            ground_truth,
            results,
            tious,
            subset=subset,
            protocol=args.protocol,
            fps=args.fps,
            snippet_frames=args.snippet_frames,
            ambiguous_filter=args.ambiguous_filter,
            compat=args.compat,
        )
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics.as_dict(), indent=1))
    else:
        print(metrics.format_table(per_class=args.per_class))
    return 0


def _add_score_parser(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser(
        "score",
        help="evaluate a detections file against ground truth",
        description="Detection mAP of an ActivityNet-format results file. Subset by default: "
        "the GT's only subset, else 'test', else 'validation'. tIoU thresholds by default: "
        "the 'thumos' preset for --protocol wtalc, else the 'anet' preset.",
    )
    score.add_argument("gt", help="ground truth JSON (ActivityNet format)")
    score.add_argument("results", help="detections JSON (ActivityNet results format)")
    score.add_argument("--subset", help="GT subset to evaluate (default: automatic)")
    tiou = score.add_mutually_exclusive_group()
    tiou.add_argument("--tiou", type=float, nargs="+", metavar="T", help="tIoU thresholds")
    tiou.add_argument(
        "--preset",
        choices=["thumos", "anet"],
        help="thumos: 0.1:0.1:0.7; anet: 0.5:0.05:0.95",
    )
    score.add_argument(
        "--protocol",
        choices=["official", "wtalc"],
        default="official",
        help="official: ActivityNet evaluator on seconds; wtalc: W-TALC snippet grid",
    )
    score.add_argument(
        "--ambiguous-filter",
        action="store_true",
        help="drop predictions that overlap an ambiguous interval of their video",
    )
    score.add_argument(
        "--compat",
        action="store_true",
        help="reference W-TALC rule: a class without predictions zeroes every mAP",
    )
    score.add_argument(
        "--fps", type=float, default=25.0, help="feature frame rate for --protocol wtalc"
    )
    score.add_argument(
        "--snippet-frames",
        type=float,
        default=16.0,
        help="frames per feature snippet for --protocol wtalc",
    )
    score.add_argument(
        "--strict",
        action="store_true",
        help="refuse zero-length or duplicate ground truth instead of warning",
    )
    score.add_argument("--per-class", action="store_true", help="print per-class AP")
    score.add_argument("--json", action="store_true", help="print the metrics as JSON")
    score.set_defaults(func=cmd_score)


# ----------------------------------------------------------------------------- train


def _run_dir_for(config_path: str | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _absolute_data_path(cfg: Config, config_path: str | None) -> Config:
    """``cfg`` with ``data.path`` made absolute (``~`` expanded), as the run folder stores it:
    ``--resume`` from another directory must find the same data."""
    from dataclasses import replace

    if not cfg.data.path:
        raise InputError(config_path, "data.path is empty: pass --data PATH")
    path = os.path.abspath(os.path.expanduser(cfg.data.path))
    return replace(cfg, data=replace(cfg.data, path=path))


def cmd_train(args: argparse.Namespace) -> int:
    from wtal import distributed
    from wtal.configfile import load_config
    from wtal.engine import fit, resolve_device

    overrides = list(args.set or [])
    if _given(args.data, "--data") is not None:
        overrides.append(f"data.path={args.data!r}")
    if args.device:
        overrides.append(f"train.device={args.device!r}")
    if args.resume and args.init_from:
        raise InputError(None, "--resume continues a run; --init-from starts a new one: pick one")
    if args.resume:
        run_dir = Path(args.resume).expanduser()
        if not (run_dir / "config.yaml").is_file():
            raise InputError(run_dir, "not a run folder (no config.yaml)")
        if args.config or overrides:
            raise InputError(run_dir, "--resume continues a run as configured; drop CONFIG/--set")
        cfg = load_config(run_dir / "config.yaml")
    else:
        if not args.config:
            raise InputError(None, "wtal train needs CONFIG (a YAML file) or --resume RUN_DIR")
        cfg = _absolute_data_path(load_config(args.config, overrides), args.config)
        given = _given(args.run_dir, "--run-dir")
        run_dir = Path(given).expanduser() if given is not None else _run_dir_for(args.config)
        check_output_folder(run_dir, "--run-dir")
        if (run_dir / "config.yaml").exists():  # never overwrite another run's files
            raise InputError(run_dir, "already holds a run: continue it with --resume RUN_DIR")
    # Under torchrun: one process group for the run (a no-op without torchrun).
    with distributed.process_group(resolve_device(cfg.train.device)) as world:
        run_dir = distributed.broadcast_object(run_dir)  # rank 0's timestamp names the run
        main = distributed.is_main()
        if main:
            print(f"run folder: {run_dir}" + (f" ({world} processes)" if world > 1 else ""))
        metrics = fit(
            cfg,
            run_dir,
            resume=bool(args.resume),
            init_from=args.init_from,
            progress=not args.quiet and main,
        )
    if main:
        print(json.dumps({"average_map": metrics["headline"]}, indent=None))
    return 0


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model (base stage and pseudo-label rounds)")
    train.add_argument("config", nargs="?", help="YAML config (only what differs from defaults)")
    train.add_argument("--data", help="dataset root (sets data.path)")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=10 (repeatable)",
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    train.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start a new run from a checkpoint (RUN/epoch_200.pt): its epoch, weights, "
        "optimizer, memory, pseudo labels and random state, under CONFIG",
    )
    train.add_argument("--run-dir", help="run folder (default runs/<config>-<timestamp>)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="sets train.device")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------- detect


def _sidecar(out: Path, suffix: str) -> Path:
    """``results.json`` -> ``results<suffix>``: files that belong to an output sit beside it."""
    return out.with_name(out.stem + suffix)


def _print_metrics(metrics: dict) -> None:
    """The compact mAP table of both protocols, then the headline numbers."""
    print(_metrics_table({"official": metrics["official"], "legacy wtalc": metrics["wtalc"]}))
    line = f"average mAP (headline): {metrics['headline']:.2f}"
    if "classification_map" in metrics:
        line += f"; video classification mAP: {metrics['classification_map']:.2f}"
    print(line)


def _report_warnings(caught: list) -> None:
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)


def _features_video(path: Path, cfg, num_classes: int, feat_dim: int):
    """One new video's ``(T, D)`` feature file as a :class:`wtal.data.Video` without ground
    truth (video id = file stem, duration = its T snippets)."""
    import numpy as np

    from wtal.data import Video, resample
    from wtal.data.layouts import feature_problem
    from wtal.segments import snippets_to_seconds

    try:
        features = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a numeric .npy array ({exc})") from None
    if not isinstance(features, np.ndarray):
        features.close()
        raise InputError(path, "expected one (T, D) .npy array, got an .npz archive")
    problem = feature_problem(features, None)
    if problem:
        raise InputError(path, problem)
    if features.shape[1] != feat_dim:
        raise InputError(
            path, f"features are {features.shape[1]}-d; the checkpoint expects {feat_dim}-d"
        )
    num_snippets = features.shape[0]
    fps, snippet_frames = cfg.data.fps, cfg.data.snippet_frames
    duration_s = float(snippets_to_seconds(num_snippets, fps, snippet_frames))
    if cfg.data.num_segments:  # the model was trained on resampled videos: test likewise
        snippet_frames *= num_snippets / cfg.data.num_segments
        features = resample(features, cfg.data.num_segments)
    return Video(
        video_id=path.stem,
        subset="",
        features=features.astype(np.float32),
        labels=np.zeros(num_classes, dtype=np.float32),
        segments_s=np.zeros((0, 2)),
        segment_labels=np.zeros(0, dtype=np.int64),
        ambiguous_s=np.zeros((0, 2)),
        duration_s=duration_s,
        fps=fps,
        snippet_frames=snippet_frames,
    )


def _check_dataset_fits(dataset, class_names: list[str], feat_dim: int, where: str) -> None:
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


def cmd_detect(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from wtal.cascache import save_predictions
    from wtal.engine import (
        evaluate_predictions,
        load_trained_model,
        open_split,
        report_warnings,
        resolve_device,
    )
    from wtal.inference import predict, results_from_predictions
    from wtal.io import write_json

    if (args.data is None) == (args.features is None):
        raise InputError(None, "wtal detect needs either --data PATH or --features VIDEO.npy")
    out = check_output_file(args.out, "--out")
    cache = _sidecar(out, ".cas.npz")
    for sidecar in (cache, _sidecar(out, ".metrics.json")):
        check_output_file(sidecar, "--out")
    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"data.path={str(args.data)!r}")
    if args.fps is not None:
        overrides.append(f"data.fps={args.fps!r}")
    if args.snippet_frames is not None:
        overrides.append(f"data.snippet_frames={args.snippet_frames!r}")
    model, cfg, state = load_trained_model(args.checkpoint, overrides)
    class_names, feat_dim = [str(c) for c in state["class_names"]], int(state["feat_dim"])
    dataset = None
    if args.features is not None:
        videos = [_features_video(Path(args.features), cfg, len(class_names), feat_dim)]
        split = ""
    else:
        split = _given(args.split, "--split") or cfg.data.test_subset
        dataset = open_split(cfg, split, path=args.data)
        _check_dataset_fits(dataset, class_names, feat_dim, args.data)
        dataset.check_features(feat_dim)  # every file, before any work or output
        report_warnings(dataset)
        videos = dataset
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available")
    device = resolve_device(args.device)
    preds = predict(
        model.to(device),
        videos,
        device,
        video_mix=cfg.detect.video_mix,
        cas_mix=cfg.detect.cas_mix,
        batch_size=cfg.train.batch_size,
        max_padding=cfg.train.max_padding,
        progress=not args.quiet,
    )
    metrics = None
    if dataset is not None and any(len(r.segments_s) for r in dataset.records):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results, metrics = evaluate_predictions(preds, dataset, cfg)
        _report_warnings(caught)
    else:
        results = results_from_predictions(preds, class_names, cfg.detect)
    save_predictions(cache, preds, class_names, cfg, split)
    write_json(out, results)
    count = sum(len(v) for v in results["results"].values())
    print(f"wrote {out}: {count} detections in {len(preds)} videos (CAS cache: {cache})")
    if dataset is not None and metrics is None:
        print(f"split {split!r} has no ground-truth segments: nothing was scored")
    if metrics is not None:
        write_json(_sidecar(out, ".metrics.json"), metrics)
        print(f"split {split!r}, mAP (%) by tIoU (metrics: {_sidecar(out, '.metrics.json')}):")
        _print_metrics(metrics)
    return 0


def _add_detect_parser(sub: argparse._SubParsersAction) -> None:
    detect = sub.add_parser(
        "detect",
        help="detect actions with a trained checkpoint",
        description="Run a checkpoint on a dataset split (or on one video's features), write "
        "ActivityNet-format results, a CAS cache beside them (OUT stem + .cas.npz, for "
        "`wtal postprocess` and `wtal plot`) and, when the split has ground truth, metrics of "
        "both protocols (OUT stem + .metrics.json).",
    )
    detect.add_argument("checkpoint", help="checkpoint .pt, or a run folder (its last.pt)")
    source = detect.add_mutually_exclusive_group()
    source.add_argument("--data", help="dataset root (per-video layout or W-TALC bundle)")
    source.add_argument("--features", metavar="VIDEO.npy", help="one video's (T, D) features")
    detect.add_argument("--split", help="subset of --data (default: the config's test subset)")
    detect.add_argument("--out", default="results.json", help="results JSON (results.json)")
    detect.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    detect.add_argument(
        "--fps",
        type=float,
        help="feature frame rate of videos without their own 'fps' (default: the config's)",
    )
    detect.add_argument(
        "--snippet-frames",
        type=float,
        help="frames per feature snippet, likewise (default: the config's)",
    )
    detect.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of the checkpoint's config, e.g. --set detect.temperature=0.1",
    )
    detect.add_argument("--quiet", action="store_true", help="no progress bar")
    detect.set_defaults(func=cmd_detect)


# ----------------------------------------------------------------------------- postprocess


_POSTPROCESS_FLAGS = {
    "fusion": "detect.fusion",
    "temperature": "detect.temperature",
    "overlap_threshold": "detect.overlap_threshold",
    "sigma": "detect.soft_nms_sigma",
}
"""Command-line flags of ``wtal postprocess`` and the config fields they set."""


def cmd_postprocess(args: argparse.Namespace) -> int:
    import warnings

    from wtal.cascache import load_predictions
    from wtal.config import Config, config_to_dict
    from wtal.configfile import config_from_dict
    from wtal.engine import score_results
    from wtal.evaluation import load_ground_truth, resolve_subset
    from wtal.inference import results_from_predictions
    from wtal.io import write_json

    cache = load_predictions(args.cache)
    overrides = list(args.set or [])
    for flag, key in _POSTPROCESS_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value!r}")
    cfg = config_from_dict(config_to_dict(cache.config or Config()), overrides)
    cache_path = Path(args.cache)
    stem = cache_path.name.removesuffix(".npz").removesuffix(".cas")
    out = (
        args.out
        if args.out is not None
        else cache_path.with_name(f"{stem}.{cfg.detect.fusion}.json")
    )
    out = check_output_file(out, "--out")
    metrics_path = _sidecar(out, ".metrics.json")
    ground_truth = subset = None
    if _given(args.gt, "--gt") is not None:  # every input is checked before the first write
        check_output_file(metrics_path, "--out")
        ground_truth = load_ground_truth(args.gt)
        subset = args.subset
        if subset is None:
            present = {v.get("subset") for v in ground_truth["database"].values()}
            subset = cache.split if cache.split in present else None
        subset = resolve_subset(ground_truth, subset, source=args.gt)
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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = score_results(results, ground_truth, subset, cfg, grid_by_video=grid)
        _report_warnings(caught)
    write_json(out, results)
    d = cfg.detect
    count = sum(len(v) for v in results["results"].values())
    print(
        f"fusion {d.fusion} (temperature {d.temperature}, overlap threshold "
        f"{d.overlap_threshold}, soft-NMS sigma {d.soft_nms_sigma}): wrote {out}: {count} "
        f"detections in {len(cache.predictions)} videos"
    )
    if metrics is not None:
        write_json(metrics_path, metrics)
        print(f"subset {subset!r}, mAP (%) by tIoU (metrics: {metrics_path}):")
        _print_metrics(metrics)
    return 0


def _add_postprocess_parser(sub: argparse._SubParsersAction) -> None:
    post = sub.add_parser(
        "postprocess",
        help="re-run proposals and fusion from a CAS cache (no model)",
        description="Detections from a CAS cache written by `wtal detect` or `wtal train` "
        "(cas_test.npz), for parameter sweeps. Every setting defaults to what the cache was "
        "made with, so with no options the detections equal those of `wtal detect`.",
    )
    post.add_argument("cache", help="CAS cache (.npz)")
    post.add_argument("--fusion", choices=["gaussian", "nms", "soft-nms", "none"])
    post.add_argument("--temperature", type=float, help="Gaussian fusion temperature")
    post.add_argument("--overlap-threshold", type=float, help="fusion / NMS overlap threshold")
    post.add_argument("--sigma", type=float, help="soft-NMS sigma")
    post.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override another field of the stored config, e.g. --set detect.class_threshold=0.2",
    )
    post.add_argument(
        "--out", help="results JSON (default: beside the cache, <cache stem>.<fusion>.json)"
    )
    post.add_argument("--gt", help="ground truth JSON: also evaluate (both protocols)")
    post.add_argument("--subset", help="GT subset (default: the cache's split, else automatic)")
    post.set_defaults(func=cmd_postprocess)


# ----------------------------------------------------------------------------- plot


def write_timelines(
    cache_path: str | Path,
    out: str | Path,
    *,
    videos: Sequence[str] | None = None,
    num: int = 5,
    results_path: str | Path | None = None,
    gt_path: str | Path | None = None,
) -> list[Path]:
    """One timeline PNG per video of a CAS cache (``OUT/<video_id>.png``, the id made a safe
    file name by :func:`wtal.plots.safe_file_names`); returns the paths.

    ``videos`` picks the videos (default: the first ``num``); detections come from
    ``results_path`` or are re-run from the cache; ground truth from ``gt_path`` if given.
    """
    from dataclasses import replace

    from wtal.cascache import load_predictions
    from wtal.config import Config
    from wtal.evaluation import load_ground_truth, load_results
    from wtal.inference import detect, results_from_predictions
    from wtal.plots import plot_video, safe_file_names
    from wtal.segments import snippets_to_seconds

    cache = load_predictions(cache_path)
    cfg = cache.config or Config()
    by_id = {p.video_id: p for p in cache.predictions}
    if videos:
        ids = list(videos)
        unknown = [v for v in ids if v not in by_id]
        if unknown:
            raise InputError(cache_path, f"no video {unknown[0]!r} in the cache")
    else:
        if num < 1:
            raise InputError(None, f"--num: expected a number >= 1, got {num}")
        ids = list(by_id)[:num]
    if results_path:
        results = load_results(results_path)["results"]
    else:
        chosen = [by_id[v] for v in ids]
        results = results_from_predictions(chosen, cache.class_names, cfg.detect)["results"]
    database = load_ground_truth(gt_path)["database"] if gt_path else {}
    files = safe_file_names(out, ids)  # ids come from the cache: never trusted as paths
    paths = []
    for vid in ids:
        pred = by_id[vid]
        found = detect(pred, replace(cfg.detect, fusion="none"))  # the proposals, unfused
        segments = snippets_to_seconds(found.segments.numpy(), pred.fps, pred.snippet_frames)
        paths.append(files[vid])
        plot_video(
            paths[-1],
            pred,
            cache.class_names,
            detections=results.get(vid, []),
            ground_truth=database[vid]["annotations"] if vid in database else None,
            proposals=(segments, found.labels.numpy()),
        )
    return paths


def cmd_plot(args: argparse.Namespace) -> int:
    videos = None
    if args.videos is not None:
        videos = [v.strip() for v in args.videos.split(",") if v.strip()]
        if not videos:
            raise InputError(
                None, f"--videos: expected comma-separated video ids, got {args.videos!r}"
            )
    check_output_folder(args.out, "--out")
    paths = write_timelines(
        args.cache,
        args.out,
        videos=videos,
        num=args.num,
        results_path=args.results,
        gt_path=args.gt,
    )
    print(f"wrote {len(paths)} plots to {args.out}")
    return 0


def _add_plot_parser(sub: argparse._SubParsersAction) -> None:
    plot = sub.add_parser(
        "plot",
        help="PNG timelines of CAS, attention, proposals, detections and ground truth",
        description="One PNG per video (OUT/<video_id>.png) from a CAS cache: attention, the "
        "CAS of the ground-truth and top predicted classes, proposals, fused detections and "
        "ground-truth segments.",
    )
    plot.add_argument("cache", help="CAS cache (.npz) from `wtal detect` or `wtal train`")
    plot.add_argument("--results", help="detections to draw (default: made from the cache)")
    plot.add_argument("--gt", help="ground truth JSON (draws the GT segments)")
    which = plot.add_mutually_exclusive_group()
    which.add_argument("--videos", help="comma-separated video ids")
    which.add_argument("--num", type=int, default=5, help="the first N videos (default 5)")
    plot.add_argument("--out", required=True, help="output folder")
    plot.set_defaults(func=cmd_plot)


# ----------------------------------------------------------------------------- demo


def _metrics_table(columns: dict[str, dict]) -> str:
    """One row per tIoU, one column per run, for a protocol's metrics dicts."""
    first = next(iter(columns.values()))
    names = list(columns)
    lines = [f"{'tIoU':>8}" + "".join(f"{n:>14}" for n in names)]
    for key in first["mAP"]:
        lines.append(f"{key:>8}" + "".join(f"{columns[n]['mAP'][key]:14.2f}" for n in names))
    for key in first["averages"]:
        lines.append(f"{key:>8}" + "".join(f"{columns[n]['averages'][key]:14.2f}" for n in names))
    return "\n".join(lines)


def _fresh_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that is absent or empty.

    The demo never deletes a folder: an earlier run (or whatever else is there) is kept.
    """
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def cmd_demo(args: argparse.Namespace) -> int:
    from wtal.configfile import load_config
    from wtal.data import check_dataset
    from wtal.engine import fit
    from wtal.synth import PRESETS, write_synthetic

    # Every argument is checked before the first file is written: a bad --set, --seed or
    # --plots must not leave a synthetic dataset behind.
    out = check_output_folder(args.out, "--out")
    if args.plots < 0:
        raise InputError(None, f"--plots: expected a number >= 0, got {args.plots}")
    data = out / f"synth-thumos-seed{args.seed}"
    config = Path(__file__).resolve().parent / "configs" / "demo.yaml"
    data_path = os.path.abspath(data)  # stored in the run's config: resumable from anywhere
    overrides = [f"data.path={data_path!r}", f"train.seed={args.seed}", *(args.set or [])]
    cfg = load_config(config, overrides)  # also refuses a seed outside [0, 2^64)
    run_dir = _fresh_folder(out / f"run-seed{args.seed}")
    if (data / "synth_spec.json").is_file():
        print(f"[1/3] synthetic benchmark: cached in {data}")
    else:
        if data.exists():  # a user's folder of that name: never written into
            raise InputError(data, "exists but holds no synthetic benchmark; choose another --out")
        print(f"[1/3] synthesizing the `thumos` benchmark into {data} ...")
        counts = write_synthetic(data, PRESETS["thumos"], seed=args.seed)
        print(f"      {counts['videos']} videos, {counts['instances']} instances")
    problems, summary = check_dataset(data)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise InputError(data, f"synthetic data failed its check: {errors[0]}")
    print(
        f"[2/3] training the full method ({cfg.train.epochs} epochs: base stage, then "
        f"pseudo-label rounds at epochs {list(cfg.pseudo.regen_epochs)}) into {run_dir}"
    )
    metrics = fit(cfg, run_dir, progress=not args.quiet)
    base = json.loads((run_dir / "metrics_base.json").read_text())
    print(
        "[3/3] test-set mAP (%) of the base stage (epoch "
        f"{cfg.pseudo.regen_epochs[0]}) and the full method (epoch {cfg.train.epochs})"
    )
    tables = []
    for protocol, title in (
        ("official", "official ActivityNet protocol"),
        ("wtalc", "legacy W-TALC protocol"),
    ):
        columns = {"base stage": base[protocol], "full method": metrics[protocol]}
        tables.append(f"{title}:\n{_metrics_table(columns)}")
    tables.append(f"video classification mAP: {metrics['classification_map']:.2f}")
    report = "\n\n".join(tables)
    print("\n" + report)
    with atomic_path(run_dir / "metrics_table.txt") as tmp:
        tmp.write_text(report + "\n")
    plots = _demo_plots(run_dir, data, base, metrics, args.plots)
    print(f"\nrun folder: {run_dir}")
    print(
        "  config.yaml, log.jsonl, last.pt, detections_test.json, cas_test.npz, "
        "metrics.json, metrics_base.json, metrics_table.txt"
    )
    print(f"  {', '.join(str(p.relative_to(run_dir)) for p in plots)}")
    return 0


def _demo_plots(run_dir: Path, data: Path, base: dict, full: dict, num_videos: int) -> list[Path]:
    """mAP vs tIoU (base stage vs full method), a few test-video timelines, and the pseudo
    labels of a few training videos at every regeneration (none with ``num_videos`` 0)."""
    from wtal.plots import plot_map_vs_tiou

    out = run_dir / "plots"
    curves = {
        name: ([float(t) for t in m["official"]["mAP"]], list(m["official"]["mAP"].values()))
        for name, m in (("base stage", base), ("full method", full))
    }
    plot_map_vs_tiou(curves, out / "map_vs_tiou.png", title="test mAP, official protocol")
    paths = [out / "map_vs_tiou.png"]
    if num_videos == 0:  # --plots 0: the curve only
        return paths
    paths += write_timelines(
        run_dir / "cas_test.npz",
        out / "timelines",
        num=num_videos,
        results_path=run_dir / "detections_test.json",
        gt_path=data / "annotations.json",
    )
    paths += write_pseudo_plots(run_dir, out / "pseudo", num_videos=num_videos, data=str(data))
    return paths


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="synthesize a benchmark, train, detect and evaluate")
    demo.add_argument("--out", default="runs/demo", help="folder for data and run")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    demo.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of the demo config (repeatable)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument(
        "--plots",
        type=int,
        default=4,
        metavar="N",
        help="test videos to draw timelines of (0: none)",
    )
    demo.set_defaults(func=cmd_demo)


# ----------------------------------------------------------------------------- pseudo labels


def _pseudo_rounds(run_dir: Path) -> tuple[dict, list[tuple[int, dict]]]:
    """The checkpoint of a run folder (metadata checked, config under ``"cfg"``) and its
    stored regenerations ``[(epoch, inputs)]``."""
    from wtal.checkpoint import checkpoint_config, load_checkpoint

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


def _pick_round(rounds: list[tuple[int, dict]], epoch: int | None, where: Path) -> tuple[int, dict]:
    if epoch is None:
        return rounds[-1]
    for e, inputs in rounds:
        if e == epoch:
            return e, inputs
    raise InputError(where, f"no regeneration at epoch {epoch} (stored: {[e for e, _ in rounds]})")


def cmd_export_pseudo(args: argparse.Namespace) -> int:
    from wtal.io import write_json
    from wtal.pseudo import pseudo_annotations

    out = check_output_file(args.out, "--out")
    run_dir = Path(args.run_dir)
    state, rounds = _pseudo_rounds(run_dir)
    epoch, inputs = _pick_round(rounds, args.epoch, run_dir)
    subset = state["cfg"].data.train_subset
    annotations = pseudo_annotations(
        inputs["segments"],
        inputs["timing"],
        state["class_names"],
        subset,
        version=f"wtal {__version__} pseudo labels, epoch {epoch}, {run_dir.name}",
    )
    write_json(out, annotations)
    count = sum(len(v["annotations"]) for v in annotations["database"].values())
    print(
        f"wrote {out}: {count} pseudo segments on {len(annotations['database'])} "
        f"{subset} videos (regeneration at epoch {epoch}, {args.format} format)"
    )
    return 0


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
    import numpy as np

    from wtal.lp import solve_pseudo_labels_batch
    from wtal.plots import plot_pseudo_evolution, safe_file_names

    run_dir = Path(run_dir)
    state, rounds = _pseudo_rounds(run_dir)
    timing = rounds[-1][1]["timing"]
    if not videos and num_videos < 1:  # a negative N would slice off the last videos instead
        raise InputError(None, f"--num-videos: expected a number >= 1, got {num_videos}")
    videos = list(videos or list(timing)[:num_videos])
    unknown = [v for v in videos if v not in timing]
    if unknown:
        raise InputError(run_dir, f"--videos: not training videos of this run: {unknown[:3]}")
    gt = _training_ground_truth(state["cfg"], data, state)
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


def cmd_plot_pseudo(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")
    paths = write_pseudo_plots(
        args.run_dir, args.out, videos=args.videos, num_videos=args.num_videos, data=args.data
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def _training_ground_truth(cfg, data: str | None, state: dict) -> dict:
    """{video: (segments_s (M, 2), labels (M,))} of the run's training subset; empty (with a
    warning) when the run's dataset cannot be read any more, so that plots still show the
    labels. A ``--data`` the user names must be readable: an error otherwise."""
    from wtal.engine import open_split, report_warnings

    try:
        dataset = open_split(
            cfg, cfg.data.train_subset, path=data, class_names=state["class_names"]
        )
    except InputError as exc:
        if data is not None:
            raise
        print(f"warning: no ground truth overlay ({exc})", file=sys.stderr)
        return {}
    report_warnings(dataset)
    return dataset.segments_by_video()


def _add_pseudo_parsers(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export-pseudo",
        help="write a run's pseudo segments as an annotation file",
        description="The fused segments of the last (or --epoch) pseudo-label regeneration "
        "on the training videos, in seconds, as an ActionFormer-style annotation file "
        '({"database": {video: {"subset", "duration", "fps", "annotations": [{"segment", '
        '"label", "label_id", "score"}]}}}).',
    )
    export.add_argument("run_dir", help="run folder (or its last.pt)")
    export.add_argument("--format", choices=["actionformer"], default="actionformer")
    export.add_argument("--out", required=True, help="JSON file to write")
    export.add_argument("--epoch", type=int, help="regeneration epoch (default: the last)")
    export.set_defaults(func=cmd_export_pseudo)

    plot = sub.add_parser(
        "plot-pseudo",
        help="plot how pseudo labels evolve over the regenerations",
        description="One PNG per video: a row per regeneration, label mass per class over "
        "time, ground truth shaded. Labels are recomputed from the stored LP inputs.",
    )
    plot.add_argument("run_dir", help="run folder (or its last.pt)")
    plot.add_argument("--out", required=True, help="folder for pseudo_<video>.png")
    plot.add_argument("--videos", nargs="+", metavar="VIDEO", help="training videos to plot")
    plot.add_argument(
        "--num-videos", type=int, default=4, help="without --videos: the first N (default 4)"
    )
    plot.add_argument("--data", help="dataset root for the GT overlay (default: the run's)")
    plot.set_defaults(func=cmd_plot_pseudo)


# ----------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from wtal.bench import format_bench, run_seeds, summarize_seeds, write_bench
    from wtal.configfile import load_config

    items = [s.strip() for s in args.seeds.split(",") if s.strip()]
    if not all(s.isascii() and s.isdigit() for s in items):  # int() would take "1_0" as 10
        what = f"expected non-negative integers like 0,1,2, got {args.seeds!r}"
        raise InputError(None, f"--seeds: {what}")
    seeds = [int(s) for s in items]
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(None, f"--seeds: expected distinct integers, got {args.seeds!r}")
    overrides = list(args.set or [])
    if _given(args.data, "--data") is not None:
        overrides.append(f"data.path={args.data!r}")
    cfg = _absolute_data_path(load_config(args.config, overrides), args.config)
    given = _given(args.out, "--out")
    out = Path(given) if given is not None else Path("runs") / f"bench-{Path(args.config).stem}"
    check_output_folder(out, "--out")
    runs = run_seeds(cfg, seeds, out, progress=not args.quiet)
    summary = summarize_seeds(runs, seeds)
    json_path, md_path = write_bench(summary, out)
    print(format_bench(summary))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="train and evaluate one config under several seeds; mean +- std",
        description="Each seed trains into OUT/seed<k> (finished runs are reused, "
        "interrupted ones resumed); prints mean +- std per tIoU of the base stage and the "
        "full method under both protocols (on the test split, and on the validation split "
        "when data.val_fraction > 0), and writes OUT/bench.json and OUT/bench.md.",
    )
    bench.add_argument("config", help="YAML config (only what differs from defaults)")
    bench.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    bench.add_argument("--data", help="dataset root (sets data.path)")
    bench.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=10 (repeatable)",
    )
    bench.add_argument("--out", help="bench folder (default runs/bench-<config>)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)


# ----------------------------------------------------------------------------- main


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit status 2, like every other
    bad input (argparse's own prints the usage block first). Subcommands inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wtal",
        description="Weakly supervised temporal action localization.",
    )
    parser.add_argument("--version", action="version", version=f"wtal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_parser(sub)
    _add_score_parser(sub)
    _add_train_parser(sub)
    _add_detect_parser(sub)
    _add_postprocess_parser(sub)
    _add_plot_parser(sub)
    _add_demo_parser(sub)
    _add_pseudo_parsers(sub)
    _add_bench_parser(sub)
    return parser


class _StderrHandler(logging.Handler):
    """``warning: <message>`` lines on the current ``sys.stderr`` (looked up at each record,
    so redirected or captured streams get them)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _show_warnings() -> None:
    """Route the package's log warnings (data problems the loaders found) to stderr, once."""
    logger = logging.getLogger("wtal")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(logging.WARNING)
        logger.addHandler(handler)
        logger.propagate = False  # printed here; not a second time by a root handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_warnings()
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the commands did not anticipate: still one line
        print(f"error: {os_error(exc) if exc.filename is not None else exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
