"""The ``wtal`` command line: argparse subcommands mapped to the plain functions of
:mod:`wtal.commands`.

Every :class:`~wtal.io.InputError` ends in one line ``error: ...`` on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from wtal import __version__
from wtal.commands import (
    cmd_bench,
    cmd_data_check,
    cmd_data_convert,
    cmd_data_synth,
    cmd_demo,
    cmd_detect,
    cmd_export_pseudo,
    cmd_features,
    cmd_infer,
    cmd_plot,
    cmd_plot_pseudo,
    cmd_postprocess,
    cmd_score,
    cmd_train,
)
from wtal.config import DEVICES, FUSIONS, LAYOUTS, PROTOCOLS
from wtal.console import show_warnings
from wtal.io import InputError, os_error
from wtal.segments import DEFAULT_FPS, DEFAULT_SNIPPET_FRAMES


def _add_set(parser: argparse.ArgumentParser, help: str, metavar: str = "KEY=VALUE") -> None:
    """The repeatable ``--set`` option of every command that takes overrides."""
    parser.add_argument("--set", action="append", metavar=metavar, help=help)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line and exit status 2, like every other
    bad input (argparse's own prints the usage block first). Subcommands inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wtal", description="Weakly supervised temporal action localization.")
    parser.add_argument("--version", action="version", version=f"wtal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_set = "override a config field, e.g. --set train.epochs=10 (repeatable)"
    # wtal data {synth,check,convert}
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
    help = "override a SynthSpec field, e.g. --set train_videos=20 (repeatable)"
    _add_set(synth, help, metavar="FIELD=VALUE")
    synth.set_defaults(func=cmd_data_synth)
    check = data_sub.add_parser("check", help="validate a dataset and print a summary")
    check.add_argument("path", help="dataset folder (per-video layout or W-TALC bundle)")
    check.add_argument("--layout", choices=LAYOUTS, default="auto")
    check.set_defaults(func=cmd_data_check)
    convert = data_sub.add_parser("convert", help="W-TALC bundle -> per-video layout")
    convert.add_argument("src", help="W-TALC bundle folder (pickled files: trusted input only)")
    convert.add_argument("out", help="output folder (must not exist)")
    help = "frame rate of the features (default 25)"
    convert.add_argument("--fps", type=float, default=DEFAULT_FPS, help=help)
    convert.set_defaults(func=cmd_data_convert)
    # wtal score
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
    help = "thumos: 0.1:0.1:0.7; anet: 0.5:0.05:0.95"
    tiou.add_argument("--preset", choices=["thumos", "anet"], help=help)
    help = "official: ActivityNet evaluator on seconds; wtalc: W-TALC snippet grid"
    score.add_argument("--protocol", choices=PROTOCOLS, default="official", help=help)
    help = "drop predictions that overlap an ambiguous interval of their video"
    score.add_argument("--ambiguous-filter", action="store_true", help=help)
    help = "reference W-TALC rule: a class without predictions zeroes every mAP"
    score.add_argument("--compat", action="store_true", help=help)
    help = "feature frame rate for --protocol wtalc"
    score.add_argument("--fps", type=float, default=DEFAULT_FPS, help=help)
    help = "frames per feature snippet for --protocol wtalc"
    score.add_argument("--snippet-frames", type=float, default=DEFAULT_SNIPPET_FRAMES, help=help)
    help = "refuse zero-length or duplicate ground truth instead of warning"
    score.add_argument("--strict", action="store_true", help=help)
    score.add_argument("--per-class", action="store_true", help="print per-class AP")
    score.add_argument("--json", action="store_true", help="print the metrics as JSON")
    score.set_defaults(func=cmd_score)
    # wtal train
    train = sub.add_parser("train", help="train a model (base stage and pseudo-label rounds)")
    train.add_argument("config", nargs="?", help="YAML config (only what differs from defaults)")
    train.add_argument("--data", help="dataset root (sets data.path)")
    _add_set(train, config_set)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    help = (
        "start a new run from a checkpoint (RUN/epoch_200.pt): its epoch, weights, "
        "optimizer, memory, pseudo labels and random state, under CONFIG"
    )
    train.add_argument("--init-from", metavar="CHECKPOINT", help=help)
    train.add_argument("--run-dir", help="run folder (default runs/<config>-<timestamp>)")
    train.add_argument("--device", choices=DEVICES, help="sets train.device")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)
    # wtal detect
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
    detect.add_argument("--device", choices=DEVICES, default="auto")
    help = "feature frame rate of videos without their own 'fps' (default: the config's)"
    detect.add_argument("--fps", type=float, help=help)
    help = "frames per feature snippet, likewise (default: the config's)"
    detect.add_argument("--snippet-frames", type=float, help=help)
    help = "override a field of the checkpoint's config, e.g. --set detect.temperature=0.1"
    _add_set(detect, help)
    detect.add_argument("--quiet", action="store_true", help="no progress bar")
    detect.set_defaults(func=cmd_detect)
    # wtal postprocess
    post = sub.add_parser(
        "postprocess",
        help="re-run proposals and fusion from a CAS cache (no model)",
        description="Detections from a CAS cache written by `wtal detect` or `wtal train` "
        "(cas_test.npz), for parameter sweeps. Every setting defaults to what the cache was "
        "made with, so with no options the detections equal those of `wtal detect`.",
    )
    post.add_argument("cache", help="CAS cache (.npz)")
    post.add_argument("--fusion", choices=FUSIONS)
    post.add_argument("--temperature", type=float, help="Gaussian fusion temperature")
    post.add_argument("--overlap-threshold", type=float, help="fusion / NMS overlap threshold")
    post.add_argument("--sigma", type=float, help="soft-NMS sigma")
    help = "override another field of the stored config, e.g. --set detect.class_threshold=0.2"
    _add_set(post, help)
    help = "results JSON (default: beside the cache, <cache stem>.<fusion>.json)"
    post.add_argument("--out", help=help)
    post.add_argument("--gt", help="ground truth JSON: also evaluate (both protocols)")
    post.add_argument("--subset", help="GT subset (default: the cache's split, else automatic)")
    post.set_defaults(func=cmd_postprocess)
    # wtal plot
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
    # wtal demo
    demo = sub.add_parser("demo", help="synthesize a benchmark, train, detect and evaluate")
    demo.add_argument("--out", default="runs/demo", help="folder for data and run")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    _add_set(demo, "override a field of the demo config (repeatable)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    help = "test videos to draw timelines of (0: none)"
    demo.add_argument("--plots", type=int, default=4, metavar="N", help=help)
    demo.set_defaults(func=cmd_demo)
    # wtal export-pseudo, wtal plot-pseudo
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
    help = "without --videos: the first N (default 4)"
    plot.add_argument("--num-videos", type=int, default=4, help=help)
    plot.add_argument("--data", help="dataset root for the GT overlay (default: the run's)")
    plot.set_defaults(func=cmd_plot_pseudo)
    # wtal bench
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
    _add_set(bench, config_set)
    bench.add_argument("--out", help="bench folder (default runs/bench-<config>)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)
    # wtal features
    feats = sub.add_parser("features", help="extract I3D features from raw videos (docs/video.md)")
    feats.add_argument("videos", nargs="+", help="folder of videos, video files or a .txt list")
    feats.add_argument("out", help="output folder: features/<id>.npy + features_meta.json")
    feats.add_argument("--extractor", default="i3d-rgb", help="i3d-rgb or i3d-two-stream")
    feats.add_argument("--weights", required=True, help="checkpoint, folder of both, or none")
    feats.add_argument("--fps", type=float, help="sampling rate (default 25)")
    feats.add_argument("--snippet-frames", type=int, help="frames per snippet (default 16)")
    feats.add_argument("--stride", type=int, help="frames between snippets (default 16)")
    feats.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    feats.add_argument("--batch-size", type=int, default=8, help="clips per network call")
    feats.add_argument("--subset", help="also write an annotations.json skeleton, this subset")
    feats.add_argument("--shard", metavar="K/N", help="only shard K (0-based) of N")
    feats.add_argument("--quiet", action="store_true", help="no progress bars")
    feats.set_defaults(func=cmd_features)
    # wtal infer
    infer = sub.add_parser(
        "infer",
        help="detect actions in new videos with a trained run",
        description="Extract features with the run's recorded extractor, run the model, detect "
        "with the run's config, and write per video DIR/<id>.json (ActivityNet results, "
        "seconds), DIR/<id>.csv (start,end,label,score) and DIR/<id>.png (timeline).",
    )
    infer.add_argument("videos", nargs="*", metavar="VIDEO", help="video files")
    infer.add_argument("--run", required=True, metavar="RUN_DIR|CKPT", help="trained run")
    infer.add_argument("--out", required=True, metavar="DIR", help="output folder")
    infer.add_argument("--features", nargs="+", metavar="X.npy", help="(T, D) feature files")
    infer.add_argument("--extractor", help="extractor name (default: the run's recorded one)")
    infer.add_argument("--weights", help="extractor weights file, or none (default: recorded)")
    infer.add_argument("--device", choices=DEVICES, default="auto")
    help = "longer videos run in chunks, which changes their scores (default: ~9 h of video)"
    infer.add_argument("--max-snippets", type=int, metavar="N", help=help)
    infer.set_defaults(func=cmd_infer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_warnings()
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
