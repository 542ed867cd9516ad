"""The ``wtal`` command line: argparse subcommands mapped to plain functions.

Each ``cmd_*`` function takes the parsed arguments and returns an exit status. Modules are
imported inside the commands so that ``wtal score`` never pays for importing torch.
Every :class:`~wtal.io.InputError` ends in one line ``error: ...`` on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    raise InputError(None, "wtal score is not available yet")


def _add_score_parser(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser("score", help="evaluate a detections file against ground truth")
    score.add_argument("gt", help="ground truth JSON (ActivityNet format)")
    score.add_argument("results", help="detections JSON (ActivityNet results format)")
    score.set_defaults(func=cmd_score)


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
