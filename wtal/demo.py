"""The demo (``wtal demo``): synthesize the ``thumos`` benchmark, train the full method with
``wtal/configs/demo.yaml``, and report the test mAP of the base stage and the full method as
tables and plots in the run folder.

The demo never deletes a folder: the synthetic data is reused when present, and each training
goes into a fresh run folder (``run-seed<k>``, ``run-seed<k>-2``, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wtal import engine
from wtal.configfile import load_config
from wtal.data import check_dataset
from wtal.io import InputError, atomic_path, check_output_folder
from wtal.plots import plot_map_vs_tiou, write_timelines
from wtal.pseudo_export import write_pseudo_plots
from wtal.synth import PRESETS, write_synthetic
from wtal.tables import format_metrics_table

CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
"""The demo's training config (the defaults with a compressed schedule)."""
RUN_FILES = (
    "config.yaml, log.jsonl, last.pt, detections_test.json, cas_test.npz, "
    "metrics.json, metrics_base.json, metrics_table.txt"
)
"""The files of the demo's run folder that its last lines list."""


def run_demo(
    out: str | Path,
    *,
    seed: int = 0,
    overrides: Sequence[str] = (),
    num_plots: int = 4,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Path:
    """Synthesize (or reuse) ``OUT/synth-thumos-seed<seed>``, train into a fresh
    ``OUT/run-seed<seed>``, write its report (``metrics_table.txt``, ``plots/``) and tell
    ``say`` each step and the report.

    Args:
        out: folder for the data and the run.
        seed: seed of the synthetic data and of the training.
        overrides: ``section.key=value`` changes to the demo config.
        num_plots: test videos to draw timelines of (0: the mAP curve only).
        progress: progress bars while training.
        say: where the steps and the report go.

    Returns:
        The run folder.

    Raises:
        InputError: a bad argument (before any file is written) or an unusable ``out``.
    """
    # Every argument is checked before the first file is written: a bad --set, --seed or
    # --plots must not leave a synthetic dataset behind.
    out = check_output_folder(out, "--out")
    if num_plots < 0:
        raise InputError(None, f"--plots: expected a number >= 0, got {num_plots}")
    data = out / f"synth-thumos-seed{seed}"
    data_path = os.path.abspath(data)  # stored in the run's config: resumable from anywhere
    overrides = [f"data.path={data_path!r}", f"train.seed={seed}", *overrides]
    cfg = load_config(CONFIG, overrides)  # also refuses a seed outside [0, 2^64)
    run_dir = fresh_folder(out / f"run-seed{seed}")
    if (data / "synth_spec.json").is_file():
        say(f"[1/3] synthetic benchmark: cached in {data}")
    else:
        if data.exists():  # a user's folder of that name: never written into
            raise InputError(data, "exists but holds no synthetic benchmark; choose another --out")
        say(f"[1/3] synthesizing the `thumos` benchmark into {data} ...")
        counts = write_synthetic(data, PRESETS["thumos"], seed=seed)
        say(f"      {counts['videos']} videos, {counts['instances']} instances")
    problems, _ = check_dataset(data)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise InputError(data, f"synthetic data failed its check: {errors[0]}")
    say(
        f"[2/3] training the full method ({cfg.train.epochs} epochs: base stage, then "
        f"pseudo-label rounds at epochs {list(cfg.pseudo.regen_epochs)}) into {run_dir}"
    )
    metrics = engine.fit(cfg, run_dir, progress=progress)
    base = json.loads((run_dir / "metrics_base.json").read_text())
    say(
        "[3/3] test-set mAP (%) of the base stage (epoch "
        f"{cfg.pseudo.regen_epochs[0]}) and the full method (epoch {cfg.train.epochs})"
    )
    report = format_demo_report(base, metrics)
    say("\n" + report)
    with atomic_path(run_dir / "metrics_table.txt") as tmp:
        tmp.write_text(report + "\n")
    plots = demo_plots(run_dir, data, base, metrics, num_plots)
    say(f"\nrun folder: {run_dir}")
    say(f"  {RUN_FILES}")
    say(f"  {', '.join(str(p.relative_to(run_dir)) for p in plots)}")
    return run_dir


def format_demo_report(base: dict[str, Any], full: dict[str, Any]) -> str:
    """The base stage against the full method under both protocols, then the full method's
    video classification mAP."""
    tables = []
    for protocol, title in (
        ("official", "official ActivityNet protocol"),
        ("wtalc", "legacy W-TALC protocol"),
    ):
        columns = {"base stage": base[protocol], "full method": full[protocol]}
        tables.append(f"{title}:\n{format_metrics_table(columns)}")
    tables.append(f"video classification mAP: {full['classification_map']:.2f}")
    return "\n\n".join(tables)


def fresh_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that is absent or empty.

    The demo never deletes a folder: an earlier run (or whatever else is there) is kept.
    """
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def demo_plots(run_dir: Path, data: Path, base: dict, full: dict, num_videos: int) -> list[Path]:
    """mAP vs tIoU (base stage vs full method), a few test-video timelines, and the pseudo
    labels of a few training videos at every regeneration (none with ``num_videos`` 0)."""
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
