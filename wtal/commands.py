"""What each ``wtal`` subcommand does: one plain function per command.

Each ``cmd_*`` function takes the parsed arguments of :func:`wtal.cli.build_parser`, calls the
library and prints; it returns an exit status. Modules are imported inside the commands so
that ``wtal score`` never pays for importing torch. Bad input raises
:class:`~wtal.io.InputError`, which :func:`wtal.cli.main` turns into one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wtal.io import InputError, check_output_folder


def _given(value: str | None, flag: str) -> str | None:
    """``value`` of the option ``flag`` unless it is blank: an empty ``--data ""`` or
    ``--run-dir ""`` must not fall back silently to the default as if it were absent."""
    if value is not None and not value.strip():
        raise InputError(None, f"{flag}: expected a value, got {value!r}")
    return value


def _overrides(sets: list[str] | None, fields: dict[str, Any]) -> list[str]:
    """The ``--set`` items, then ``field=value`` for each option given: a dedicated option
    (``--data``, ``--fps``, ...) wins over a ``--set`` of the same field."""
    given = [f"{key}={value!r}" for key, value in fields.items() if value is not None]
    return [*(sets or []), *given]


def _write_new_folder(out: str, write: Callable[[], Any]) -> Any:
    """``write()`` into the folder ``out``, refused if it exists (before any work); an
    ``OSError`` (disk full, permissions) is one line, and the writers leave nothing behind."""
    check_output_folder(out, "OUT")
    if Path(out).exists():
        raise InputError(out, "already exists; choose a new output folder")
    try:
        return write()
    except OSError as exc:
        raise InputError(exc.filename or out, f"cannot write ({exc.strerror})") from None


def cmd_data_synth(args: argparse.Namespace) -> int:
    from wtal.synth import PRESETS, apply_overrides, write_synthetic

    spec = apply_overrides(PRESETS[args.preset], args.set or [])
    if args.seed < 0:  # numpy's generators take non-negative seeds only
        raise InputError(None, f"--seed: expected an integer >= 0, got {args.seed}")
    counts = _write_new_folder(args.out, lambda: write_synthetic(args.out, spec, seed=args.seed))
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
    print(f"{errors} errors, {len(problems) - errors} warnings")
    return 2 if errors else 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from wtal.annotations import is_positive_finite
    from wtal.data import convert_wtalc

    if not is_positive_finite(args.fps):
        raise InputError(None, f"--fps: expected a frame rate > 0, got {args.fps}")
    num_videos = _write_new_folder(
        args.out, lambda: convert_wtalc(args.src, args.out, fps=args.fps)
    )
    print(f"wrote {num_videos} videos to {args.out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from wtal.results import score_file

    metrics = score_file(
        args.gt, args.results, args.tiou if args.tiou is not None else args.preset,
        subset=args.subset, protocol=args.protocol, fps=args.fps,
        snippet_frames=args.snippet_frames, ambiguous_filter=args.ambiguous_filter,
        compat=args.compat, strict=args.strict,
    )  # fmt: skip
    if args.json:
        print(json.dumps(metrics.as_dict(), indent=1))
    else:
        print(metrics.format_table(per_class=args.per_class))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wtal.launch import launch_run, prepare_run

    data = _given(args.data, "--data")
    overrides = _overrides(args.set, {"data.path": data, "train.device": args.device})
    cfg, run_dir = prepare_run(
        args.config, overrides, resume=args.resume, init_from=args.init_from,
        run_dir=None if args.resume else _given(args.run_dir, "--run-dir"),
    )  # fmt: skip
    metrics = launch_run(
        cfg, run_dir, resume=bool(args.resume), init_from=args.init_from, progress=not args.quiet
    )
    if metrics is not None:  # the main process
        floors = {"floors": metrics["floors"]} if "floors" in metrics else {}
        print(json.dumps({"average_map": metrics["headline"], **floors}, indent=None))
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from wtal.results import detect_to_file, format_written

    fields = {"data.fps": args.fps, "data.snippet_frames": args.snippet_frames}
    written = detect_to_file(
        args.checkpoint, args.out, data=args.data, features=args.features,
        split=_given(args.split, "--split") if args.features is None else None,
        device=args.device, overrides=_overrides(args.set, fields), progress=not args.quiet,
    )  # fmt: skip
    print(format_written(written))
    return 0


def cmd_postprocess(args: argparse.Namespace) -> int:
    from wtal.results import format_written, postprocess_cache

    fields = {
        "detect.fusion": args.fusion,
        "detect.temperature": args.temperature,
        "detect.overlap_threshold": args.overlap_threshold,
        "detect.soft_nms_sigma": args.sigma,
    }
    written = postprocess_cache(
        args.cache, out=args.out, gt=_given(args.gt, "--gt"), subset=args.subset,
        overrides=_overrides(args.set, fields),
    )  # fmt: skip
    print(format_written(written))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from wtal.plots import write_timelines

    videos = None
    if args.videos is not None:
        videos = [v.strip() for v in args.videos.split(",") if v.strip()]
        if not videos:
            what = f"expected comma-separated video ids, got {args.videos!r}"
            raise InputError(None, f"--videos: {what}")
    check_output_folder(args.out, "--out")
    paths = write_timelines(
        args.cache, args.out, videos=videos, num=args.num, results_path=args.results,
        gt_path=args.gt,
    )  # fmt: skip
    print(f"wrote {len(paths)} plots to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from wtal.demo import run_demo

    run_demo(
        args.out, seed=args.seed, overrides=args.set or [], num_plots=args.plots,
        progress=not args.quiet,
    )  # fmt: skip
    return 0


def cmd_export_pseudo(args: argparse.Namespace) -> int:
    from wtal.pseudo_export import export_pseudo

    e = export_pseudo(args.run_dir, args.out, epoch=args.epoch)
    print(
        f"wrote {e.path}: {e.num_segments} pseudo segments on {e.num_videos} {e.subset} "
        f"videos (regeneration at epoch {e.epoch}, {args.format} format)"
    )
    return 0


def cmd_plot_pseudo(args: argparse.Namespace) -> int:
    from wtal.pseudo_export import write_pseudo_plots

    check_output_folder(args.out, "--out")
    paths = write_pseudo_plots(
        args.run_dir, args.out, videos=args.videos, num_videos=args.num_videos, data=args.data
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from wtal.bench import format_bench, parse_seeds, run_bench
    from wtal.launch import load_run_config

    seeds = parse_seeds(args.seeds)
    overrides = _overrides(args.set, {"data.path": _given(args.data, "--data")})
    out = _given(args.out, "--out") or Path("runs") / f"bench-{Path(args.config).stem}"
    cfg = load_run_config(args.config, overrides)
    summary, json_path, md_path = run_bench(cfg, seeds, out, progress=not args.quiet)
    print(format_bench(summary))
    print(f"wrote {json_path} and {md_path}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from wtal.extract import extract_videos
    from wtal.video import FeatureSpec

    given = {"fps": args.fps, "snippet_frames": args.snippet_frames, "stride": args.stride}
    spec = FeatureSpec(**{k: v for k, v in given.items() if v is not None})
    done = extract_videos(
        args.videos, args.out, extractor=args.extractor, weights=args.weights, spec=spec,
        device=args.device, batch_size=args.batch_size, subset=args.subset, shard=args.shard,
        progress=not args.quiet,
    )  # fmt: skip
    print(f"{len(done['extracted'])} videos extracted, {len(done['skipped'])} already done")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from wtal.infer import run_inference

    written = run_inference(
        args.videos, args.features or [], args.run, args.out, extractor=args.extractor,
        weights=args.weights, device=args.device, max_snippets=args.max_snippets,
    )  # fmt: skip
    for vid, (paths, count) in written.items():
        print(f"{vid}: {count} detections -> {', '.join(str(p) for p in paths)}")
    return 0
