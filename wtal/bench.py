"""Multi-seed benchmark: train one config under several seeds, report mean +- std.

Each seed is a run folder ``OUT/seed<k>`` written by :func:`wtal.engine.fit`, so a bench is
resumable: finished runs (``metrics.json`` present) are reused, interrupted ones resumed,
and a folder holding a run of another config is an error rather than silently mixed in.
Both stages are reported: the base model right before the first pseudo-label round
(``metrics_base.json``) and the full method (``metrics.json``), under both protocols, on the
test split and, when the config holds out one (``data.val_fraction``), the validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wtal.config import PROTOCOLS, Config
from wtal.configfile import load_config
from wtal.floors import FLOORS
from wtal.io import InputError, atomic_path, check_output_folder, read_json, write_json
from wtal.tables import format_metrics_table

STAGES = {
    "base": "metrics_base.json",
    "full": "metrics.json",
    "base_val": "metrics_val_base.json",
    "full_val": "metrics_val.json",
}
"""Stage name -> metrics file of a run folder; the ``*_val`` stages score the validation
split (``data.val_fraction`` > 0) and are left out of runs without one."""


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct non-negative integers.

    Raises:
        InputError: anything else (``1_0``, which ``int()`` takes as 10, included).
    """
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not all(s.isascii() and s.isdigit() for s in items):
        what = f"expected non-negative integers like 0,1,2, got {text!r}"
        raise InputError(None, f"--seeds: {what}")
    seeds = [int(s) for s in items]
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(None, f"--seeds: expected distinct integers, got {text!r}")
    return seeds


def run_seeds(
    cfg: Config,
    seeds: Sequence[int],
    out: str | Path,
    *,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Train ``cfg`` once per seed (``train.seed`` replaced) into ``out/seed<k>``.

    Returns:
        The run folders, in the order of ``seeds``.

    Raises:
        InputError: a seed folder holds a run of a different config.
    """
    from wtal.engine import fit  # torch is only needed when something is trained

    out = Path(out)
    runs = [out / f"seed{seed}" for seed in seeds]
    configs = [replace(cfg, train=replace(cfg.train, seed=int(seed))) for seed in seeds]
    for seed, run_dir, run_cfg in zip(seeds, runs, configs, strict=True):  # all before training
        saved = run_dir / "config.yaml"
        if saved.is_file() and load_config(saved) != run_cfg:
            raise InputError(saved, f"seed {seed}: a run of a different config; use another --out")
    for seed, run_dir, run_cfg in zip(seeds, runs, configs, strict=True):
        if (run_dir / "metrics.json").is_file():
            say(f"seed {seed}: finished run reused ({run_dir})")
            continue
        resume = (run_dir / "last.pt").is_file()
        say(f"seed {seed}: {'resuming' if resume else 'training'} into {run_dir}")
        fit(run_cfg, run_dir, resume=resume, progress=progress)
    return runs


def summarize_seeds(runs: Sequence[str | Path], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every mAP and average, per stage/protocol.

    The standard deviation is the sample one (``ddof=1``; 0 for a single seed).

    Returns:
        ``{"seeds", "runs", "stages": {stage: {protocol: {"mAP": {tiou: {"mean", "std",
        "values"}}, "averages": {name: {...}}}}}}``; a stage whose metrics file is missing
        in some run (e.g. no pseudo-label stage) is left out.

    Raises:
        InputError: a run's metrics disagree with the others' tIoU thresholds.
    """
    summary: dict[str, Any] = {"seeds": list(seeds), "runs": [str(r) for r in runs], "stages": {}}
    for stage, name in STAGES.items():
        paths = [Path(r) / name for r in runs]
        if not all(p.is_file() for p in paths):
            continue
        metrics = [read_json(p) for p in paths]
        summary["stages"][stage] = {}
        for protocol in PROTOCOLS:
            table = {}
            for part in ("mAP", "averages"):
                for path, m in zip(paths, metrics, strict=True):
                    if not isinstance(m.get(protocol), dict) or part not in m[protocol]:
                        raise InputError(path, f"expected a '{protocol}' entry with '{part}'")
                keys = list(metrics[0][protocol][part])
                for path, m in zip(paths, metrics, strict=True):
                    if list(m[protocol][part]) != keys:
                        raise InputError(path, f"{protocol} {part}: keys differ from {paths[0]}")
                table[part] = {k: _stats([m[protocol][part][k] for m in metrics]) for k in keys}
            summary["stages"][stage][protocol] = table
        if all(isinstance(m.get("floors"), dict) for m in metrics):
            floors = {f: [m["floors"].get(f) for m in metrics] for f in FLOORS}
            summary.setdefault("floors", {})[stage] = {
                f: _stats(v) for f, v in floors.items() if None not in v
            }
    return summary


def _stats(values: Sequence[float]) -> dict[str, Any]:
    x = np.asarray(values, np.float64)
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "std": std, "values": x.tolist()}


def run_bench(
    cfg: Config,
    seeds: Sequence[int],
    out: str | Path,
    *,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, Any], Path, Path]:
    """Train every seed (:func:`run_seeds`), summarize them and write the bench files.

    Returns:
        ``(summary, bench.json, bench.md)``.

    Raises:
        InputError: ``out`` is not a usable folder, or holds runs of another config.
    """
    out = check_output_folder(out, "--out")
    runs = run_seeds(cfg, seeds, out, progress=progress, say=say)
    summary = summarize_seeds(runs, seeds)
    return summary, *write_bench(summary, out)


def format_bench(summary: dict[str, Any]) -> str:
    """Markdown tables (one per protocol): rows = tIoU and averages, columns = stages."""
    stages = list(summary["stages"])
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = [f"mAP (%) over seeds {seeds}: mean +- sample std", ""]
    if not stages:
        return "\n".join([*lines, "(no metrics found)"])
    titles = {
        "base": "base stage",
        "full": "full method",
        "base_val": "base stage (val)",
        "full_val": "full method (val)",
    }
    for protocol in PROTOCOLS:
        columns = {titles.get(s, s): summary["stages"][s][protocol] for s in stages}
        table = format_metrics_table(columns, _mean_std, markdown=True)
        lines += [f"### {protocol} protocol", "", table, ""]
    if summary.get("floors"):
        lines += ["### floors (headline average mAP; see wtal/floors.py)", ""]
        lines += _floors_table(summary["floors"], titles)
    return "\n".join(lines)


def _floors_table(floors: dict[str, dict[str, Any]], titles: dict[str, str]) -> list[str]:
    """Markdown rows: one per floor, a column per stage that reports it."""
    stages = list(floors)
    lines = ["| floor | " + " | ".join(titles.get(s, s) for s in stages) + " |"]
    lines.append("|---" * (len(stages) + 1) + "|")
    for floor in FLOORS:
        cells = [_mean_std(floors[s][floor]) if floor in floors[s] else "" for s in stages]
        lines.append(f"| {floor.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _mean_std(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.2f} +- {stats['std']:.2f}"


def write_bench(summary: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out`` (atomically)."""
    out = Path(out)
    write_json(out / "bench.json", summary)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text("# Multi-seed benchmark\n\n" + format_bench(summary) + "\n")
    return out / "bench.json", out / "bench.md"
