"""Starting a training run: its folder (new or resumed), the config it stores, and
:func:`wtal.engine.fit` under a ``torchrun`` process group.

What ``wtal train`` and ``wtal bench`` share: a run folder never overwrites another run's files,
and the stored config holds an absolute ``data.path``, so ``--resume`` from another directory
finds the same data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wtal.config import Config
from wtal.configfile import load_config
from wtal.io import InputError, check_output_folder


def default_run_dir(config_path: str | None) -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>`` (``run`` without a config file)."""
    stem = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def absolute_data_path(cfg: Config, config_path: str | os.PathLike | None) -> Config:
    """``cfg`` with ``data.path`` made absolute (``~`` expanded), as the run folder stores it:
    ``--resume`` from another directory must find the same data."""
    if not cfg.data.path:
        raise InputError(config_path, "data.path is empty: pass --data PATH")
    path = os.path.abspath(os.path.expanduser(cfg.data.path))
    return replace(cfg, data=replace(cfg.data, path=path))


def load_run_config(config_path: str, overrides: Sequence[str]) -> Config:
    """The config of a new run: the YAML file, ``overrides``, an absolute ``data.path``."""
    return absolute_data_path(load_config(config_path, list(overrides)), config_path)


def prepare_run(
    config_path: str | None,
    overrides: Sequence[str],
    *,
    resume: str | None = None,
    init_from: str | None = None,
    run_dir: str | None = None,
) -> tuple[Config, Path]:
    """The config and folder of a run to train, checked before anything is written.

    Args:
        config_path: YAML config of a new run (``None`` with ``resume``).
        overrides: ``section.key=value`` changes to it (none with ``resume``).
        resume: a run folder to continue exactly as it was configured.
        init_from: a checkpoint a new run starts from (not with ``resume``).
        run_dir: the new run's folder (default :func:`default_run_dir`).

    Raises:
        InputError: conflicting options, no config, a folder that is not a run (``resume``)
            or that already holds one (a new run).
    """
    if resume and init_from:
        raise InputError(None, "--resume continues a run; --init-from starts a new one: pick one")
    if resume:
        folder = Path(resume).expanduser()
        if not (folder / "config.yaml").is_file():
            raise InputError(folder, "not a run folder (no config.yaml)")
        if config_path or overrides:
            raise InputError(folder, "--resume continues a run as configured; drop CONFIG/--set")
        return load_config(folder / "config.yaml"), folder
    if not config_path:
        raise InputError(None, "wtal train needs CONFIG (a YAML file) or --resume RUN_DIR")
    cfg = load_run_config(config_path, overrides)
    folder = Path(run_dir).expanduser() if run_dir is not None else default_run_dir(config_path)
    check_output_folder(folder, "--run-dir")
    if (folder / "config.yaml").exists():  # never overwrite another run's files
        raise InputError(folder, "already holds a run: continue it with --resume RUN_DIR")
    return cfg, folder


def launch_run(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    init_from: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train ``cfg`` into ``run_dir`` (:func:`wtal.engine.fit`), in one process group when
    started by ``torchrun`` (a no-op otherwise); only the main process reports.

    Returns:
        The final metrics on the main process, ``None`` on the others.
    """
    from wtal import distributed  # torch is only needed when something is trained
    from wtal.distributed import resolve_device
    from wtal.engine import fit

    with distributed.process_group(resolve_device(cfg.train.device)) as world:
        run_dir = distributed.broadcast_object(run_dir)  # rank 0's timestamp names the run
        main = distributed.is_main()
        if main:
            say(f"run folder: {run_dir}" + (f" ({world} processes)" if world > 1 else ""))
        metrics = fit(cfg, run_dir, resume=resume, init_from=init_from, progress=progress and main)
    return metrics if main else None
