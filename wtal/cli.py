"""The ``wtal`` command line: argparse subcommands mapped to plain functions.

Each ``cmd_*`` function takes the parsed arguments and returns an exit status. Modules are
imported inside the commands so that ``wtal score`` never pays for importing torch.
Every :class:`~wtal.io.InputError` ends in one line ``error: ...`` on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wtal import __version__
from wtal.io import InputError

# ----------------------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from wtal.synth import PRESETS, apply_overrides, write_synthetic

    spec = apply_overrides(PRESETS[args.preset], args.set or [])
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
        if not value > 0:
            raise InputError(None, f"{flag}: expected a number > 0, got {value}")
    ground_truth = evaluation.load_ground_truth(args.gt)
    results = evaluation.load_results(args.results)
    subset = evaluation.resolve_subset(ground_truth, args.subset, source=args.gt)
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
    score.add_argument("--per-class", action="store_true", help="print per-class AP")
    score.add_argument("--json", action="store_true", help="print the metrics as JSON")
    score.set_defaults(func=cmd_score)


# ----------------------------------------------------------------------------- train


def _run_dir_for(config_path: str | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from wtal.config import load_config
    from wtal.engine import fit

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={args.data!r}")
    if args.device:
        overrides.append(f"train.device={args.device!r}")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise InputError(run_dir, "not a run folder (no config.yaml)")
        if args.config or overrides:
            raise InputError(run_dir, "--resume continues a run as configured; drop CONFIG/--set")
        cfg = load_config(run_dir / "config.yaml")
    else:
        if not args.config:
            raise InputError(None, "wtal train needs CONFIG (a YAML file) or --resume RUN_DIR")
        cfg = load_config(args.config, overrides)
        if not cfg.data.path:
            raise InputError(args.config, "data.path is empty: pass --data PATH")
        run_dir = Path(args.run_dir) if args.run_dir else _run_dir_for(args.config)
    print(f"run folder: {run_dir}")
    metrics = fit(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
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
    train.add_argument("--run-dir", help="run folder (default runs/<config>-<timestamp>)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="sets train.device")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)


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


def cmd_demo(args: argparse.Namespace) -> int:
    from wtal.config import load_config
    from wtal.data import check_dataset
    from wtal.engine import fit
    from wtal.synth import PRESETS, write_synthetic

    out = Path(args.out)
    data = out / f"synth-thumos-seed{args.seed}"
    if (data / "synth_spec.json").is_file():
        print(f"[1/3] synthetic benchmark: cached in {data}")
    else:
        print(f"[1/3] synthesizing the `thumos` benchmark into {data} ...")
        counts = write_synthetic(data, PRESETS["thumos"], seed=args.seed)
        print(f"      {counts['videos']} videos, {counts['instances']} instances")
    problems, summary = check_dataset(data)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise InputError(data, f"synthetic data failed its check: {errors[0]}")
    config = Path(__file__).resolve().parent / "configs" / "demo.yaml"
    overrides = [f"data.path={str(data)!r}", f"train.seed={args.seed}", *(args.set or [])]
    cfg = load_config(config, overrides)
    run_dir = out / f"run-seed{args.seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
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
    for protocol, title in (
        ("official", "official ActivityNet protocol"),
        ("wtalc", "legacy W-TALC protocol"),
    ):
        print(f"\n{title}:")
        print(_metrics_table({"base stage": base[protocol], "full method": metrics[protocol]}))
    print(f"\nvideo classification mAP: {metrics['classification_map']:.2f}")
    print(
        f"run folder: {run_dir} (config.yaml, log.jsonl, last.pt, detections_test.json, "
        "metrics.json, metrics_base.json)"
    )
    return 0


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
    demo.set_defaults(func=cmd_demo)


# ----------------------------------------------------------------------------- pseudo labels


def _pseudo_rounds(run_dir: Path) -> tuple[dict, list[tuple[int, dict]]]:
    """The checkpoint of a run folder and its stored regenerations ``[(epoch, inputs)]``."""
    from wtal.engine import load_checkpoint

    state = load_checkpoint(run_dir)
    rounds = list(
        zip(state.get("pseudo_segment_epochs", []), state.get("pseudo_segments", []), strict=True)
    )
    if not rounds:
        where = run_dir / "last.pt" if run_dir.is_dir() else run_dir
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

    run_dir = Path(args.run_dir)
    state, rounds = _pseudo_rounds(run_dir)
    epoch, inputs = _pick_round(rounds, args.epoch, run_dir)
    subset = state["config"]["data"]["train_subset"]
    annotations = pseudo_annotations(
        inputs["segments"],
        inputs["timing"],
        state["class_names"],
        subset,
        version=f"wtal {__version__} pseudo labels, epoch {epoch}, {run_dir.name}",
    )
    write_json(args.out, annotations)
    count = sum(len(v["annotations"]) for v in annotations["database"].values())
    print(
        f"wrote {args.out}: {count} pseudo segments on {len(annotations['database'])} "
        f"{subset} videos (regeneration at epoch {epoch}, {args.format} format)"
    )
    return 0


def cmd_plot_pseudo(args: argparse.Namespace) -> int:
    import numpy as np

    from wtal.config import Config, from_dict
    from wtal.plots import plot_pseudo_evolution
    from wtal.pseudo import solve_pseudo_labels_batch

    run_dir = Path(args.run_dir)
    state, rounds = _pseudo_rounds(run_dir)
    timing = rounds[-1][1]["timing"]
    videos = args.videos or list(timing)[: args.num_videos]
    unknown = [v for v in videos if v not in timing]
    if unknown:
        raise InputError(run_dir, f"--videos: not training videos of this run: {unknown[:3]}")
    gt = _training_ground_truth(from_dict(Config, state["config"]), args.data, state)
    out = Path(args.out)
    class_names = state["class_names"]
    ncol = len(class_names) + 1
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
        path = out / f"pseudo_{vid}.png"
        plot_pseudo_evolution(
            path, vid, [e for e, _ in rounds], labels, fps=fps, snippet_frames=snippet_frames,
            class_names=class_names, gt_segments_s=seg_s, gt_labels=seg_labels,
        )  # fmt: skip
        print(f"wrote {path}")
    return 0


def _training_ground_truth(cfg, data: str | None, state: dict) -> dict:
    """{video: (segments_s (M, 2), labels (M,))} of the run's training subset; empty (with a
    warning) when the dataset cannot be read, so that plots still show the labels."""
    import numpy as np

    from wtal.data import FeatureDataset

    try:
        dataset = FeatureDataset(
            data or cfg.data.path,
            cfg.data.train_subset,
            layout=cfg.data.layout,
            fps=cfg.data.fps,
            snippet_frames=cfg.data.snippet_frames,
            class_names=state["class_names"],
        )
    except InputError as exc:
        print(f"warning: no ground truth overlay ({exc})", file=sys.stderr)
        return {}
    index = {name: i for i, name in enumerate(state["class_names"])}
    out = {}
    for vid, entry in dataset.ground_truth()["database"].items():
        anns = entry["annotations"]
        seg = np.array([a["segment"] for a in anns], np.float64).reshape(-1, 2)
        out[vid] = (seg, np.array([index[a["label"]] for a in anns], np.int64))
    return out


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
    from wtal.config import load_config

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(
            None, f"--seeds: expected integers like 0,1,2, got {args.seeds!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(None, f"--seeds: expected distinct integers, got {args.seeds!r}")
    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={args.data!r}")
    cfg = load_config(args.config, overrides)
    if not cfg.data.path:
        raise InputError(args.config, "data.path is empty: pass --data PATH")
    out = Path(args.out) if args.out else Path("runs") / f"bench-{Path(args.config).stem}"
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
        "full method under both protocols, and writes OUT/bench.json and OUT/bench.md.",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wtal",
        description="Weakly supervised temporal action localization.",
    )
    parser.add_argument("--version", action="version", version=f"wtal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_parser(sub)
    _add_score_parser(sub)
    _add_train_parser(sub)
    _add_demo_parser(sub)
    _add_pseudo_parsers(sub)
    _add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
