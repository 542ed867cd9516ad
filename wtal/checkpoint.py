"""Checkpoints: writing and reading ``.pt`` files, resuming a run and branching a new one.

A checkpoint is a ``torch.save`` dict marked ``format: wtal`` and ``version``
(:data:`CHECKPOINT_VERSION`; a newer one is refused), read back with ``weights_only=True``
only: a file that would run pickled code is refused, naming the global it references
(:func:`pickled_globals` reads the opcodes without executing them).
:func:`resume_state` checks ``last.pt`` of a run folder against the config and the data
before ``fit(..., resume=True)`` continues it; :func:`branch_state` checks a checkpoint a new
run starts from (``--init-from``); :func:`restore` loads either into the model and optimizer.
Writes are atomic, and :func:`fault_point` lets tests kill the process mid-write.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import pickle
import pickletools
import signal
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wtal import distributed
from wtal.config import Config, config_to_dict, with_choice
from wtal.configfile import config_from_dict
from wtal.data import FeatureDataset
from wtal.featmeta import checkpoint_extractor
from wtal.io import InputError, atomic_path, read_json
from wtal.model import WTALModel

log = logging.getLogger("wtal")

CHECKPOINT_VERSION = 1
"""Layout version of the checkpoints written here; readers refuse newer ones (a checkpoint
without the entry is read as version 1)."""

FAULT_ENV = "WTAL_FAULT"
"""Testing hook: ``WTAL_FAULT=<point>:<epoch>`` makes :func:`fault_point` kill the process."""
RESUME_KEYS = ("config", "model", "optimizer", "epoch", "pseudo_epochs", "pseudo", "rng")
"""Checkpoint entries that ``fit(..., resume=True)`` needs."""


def fault_point(point: str, epoch: int) -> None:
    """Testing hook for crash safety: SIGKILL this process at a named point of an epoch.

    With ``WTAL_FAULT=<point>:<epoch>`` in the environment the process kills itself, without
    any cleanup, when it reaches ``point`` in 0-based ``epoch``. Points: ``epoch`` (after the
    first batch of the epoch), ``pseudo`` (pseudo labels computed, not yet used),
    ``checkpoint`` (``last.pt`` fully written to its temporary file, not yet renamed). Unset,
    this is a no-op; tests use it to check that ``--resume`` recovers from a crash anywhere.
    """
    if os.environ.get(FAULT_ENV) == f"{point}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash never leaves a partial file under ``path``)."""
    state = {"extractor": checkpoint_extractor(path.parent), **state}  # featmeta.EXTRACTOR_KEYS
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: a full disk is an OSError, not torch's own
            torch.save(state, f)
        if path.name == "last.pt":  # the state after 0-based epoch e stores epoch = e + 1
            fault_point("checkpoint", int(state["epoch"]) - 1)


TORCH_GLOBALS = ("torch.", "collections.OrderedDict")
"""Globals every wtal checkpoint references (tensor rebuilds, state dicts): anything else in a
file that ``weights_only`` refused is named as the code it would have run."""


def pickled_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a checkpoint's pickles reference, read without unpickling.

    Opcodes are only parsed (:func:`pickletools.genops`), never executed. A zip checkpoint
    holds its pickle in ``*/data.pkl``; a legacy one is several pickles in a row. Unparsable
    bytes end the scan.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    stream, found, strings = io.BytesIO(data), [], []
    try:
        while stream.tell() < len(data):
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - any parse error: what was read so far is the answer
        pass
    return found


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code is ever executed).

    Raises:
        InputError: a missing, unreadable or foreign file, pickled code, or a checkpoint
            version newer than :data:`CHECKPOINT_VERSION`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we refuse below
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch words this differently from version to version (and by what was refused),
        # so the file itself says whether it is a refused object or garbage bytes
        code = [name for name in pickled_globals(path) if not name.startswith(TORCH_GLOBALS)]
        if not code:
            raise InputError(path, "not a readable wtal checkpoint (UnpicklingError)") from None
        what = f"refused: it would run pickled code ({code[0]}); checkpoints load weights_only"
        raise InputError(path, what) from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise InputError(
            path, f"not a readable wtal checkpoint ({exc.__class__.__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "wtal" or "model" not in state:
        raise InputError(path, "not a wtal checkpoint (no 'format: wtal' entry)")
    version = state.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError(path, f"entry 'version' = {version!r}: expected an integer")
    if version > CHECKPOINT_VERSION:
        raise InputError(path, f"checkpoint version {version} is newer than {CHECKPOINT_VERSION}")
    return state


def checkpoint_config(
    state: dict[str, Any], path: str | Path, overrides: list[str] | None = None
) -> Config:
    """The config stored in a checkpoint, after checking the metadata commands rely on.

    A run that chose its proposal thresholds on validation (``detect.threshold_scales``)
    stored its last choice (:func:`stored_choice_of`) as ``thresholds`` (and ``temperature``, with
    ``detect.temperature_scales``): it replaces ``detect.thresholds`` (and
    ``detect.temperature``) before the ``overrides``, and the scales are dropped, as the
    choice is made.

    Raises:
        InputError: a missing ``config``, ``feat_dim`` or ``class_names`` entry, one of the
            wrong type (``feat_dim`` an integer >= 1, ``class_names`` a non-empty list of
            strings), or a stored config that does not load.
    """
    for key in ("config", "feat_dim", "class_names"):
        if key not in state:
            raise InputError(path, f"checkpoint has no {key!r} entry")
    feat_dim, names = state["feat_dim"], state["class_names"]
    if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
        raise InputError(path, f"entry 'feat_dim' = {feat_dim!r}: expected an integer >= 1")
    if not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
        raise InputError(path, "entry 'class_names': expected a non-empty list of strings")
    if not isinstance(state["config"], dict):
        raise InputError(path, "entry 'config': expected a mapping of config sections")
    stored = state["config"]
    choice = stored_choice_of(state, path)
    if choice is not None:  # chosen on validation by the run (wtal.calibration)
        cfg = with_choice(config_from_dict(stored, source=str(path)), *choice)
        stored = config_to_dict(cfg)
    return config_from_dict(stored, overrides, source=str(path))


def stored_choice_of(
    state: dict[str, Any], path: str | Path
) -> tuple[list[float], float | None] | None:
    """The detection choice a run stored in a checkpoint (wtal.calibration): ``(thresholds,
    temperature)``, the temperature None when the run chose none; None when it stored no choice.

    Raises:
        InputError: ``thresholds`` not three finite numbers ``start < stop``, ``step > 0``,
            none negative, or ``temperature`` not a finite number > 0.
    """
    if "thresholds" not in state:
        return None
    thresholds, temperature = state["thresholds"], state.get("temperature")
    ok = isinstance(thresholds, list) and len(thresholds) == 3 and all(map(_finite, thresholds))
    if not (ok and min(thresholds) >= 0 and thresholds[2] > 0 and thresholds[0] < thresholds[1]):
        what = "expected [start, stop, step], finite, none negative, start < stop, step > 0"
        raise InputError(path, f"entry 'thresholds' = {thresholds!r}: {what}")
    if temperature is not None and not (_finite(temperature) and temperature > 0):
        raise InputError(path, f"entry 'temperature' = {temperature!r}: expected a number > 0")
    return [float(x) for x in thresholds], None if temperature is None else float(temperature)


def _finite(x: Any) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float range
        return False


def rng_state() -> dict[str, Any]:
    """The torch (and CUDA) random state, stored in checkpoints so a resume continues it."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key whose values differ between two nested dicts (None if equal)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None if a == b else (prefix.rstrip("."), a, b)
    for key in sorted(set(a) | set(b), key=str):
        found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
        if found is not None:
            return found
    return None


def _check_state(path: Path, state: dict[str, Any], train_set: FeatureDataset, verb: str) -> None:
    """What resuming and branching both need: every entry, and the data's features and classes."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise InputError(path, f"cannot {verb} from it: no {', '.join(missing)} entries")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InputError(path, f"'epoch' = {epoch!r}: expected an integer >= 0")
    for key, kind in (("config", dict), ("pseudo", list), ("pseudo_epochs", list)):
        if not isinstance(state[key], kind):
            what = f"'{key}' is a {type(state[key]).__name__}, expected a {kind.__name__}"
            raise InputError(path, f"cannot {verb} from it: {what}")
    if state.get("feat_dim") != train_set.feat_dim:
        dims = f"{state.get('feat_dim')}-d features; the data has {train_set.feat_dim}-d"
        raise InputError(path, f"trained on {dims}")
    if state.get("class_names") != list(train_set.class_names):
        raise InputError(path, f"trained on other classes than {train_set.source.root} now has")


def resume_state(run_dir: Path, cfg: Config, train_set: FeatureDataset) -> dict[str, Any] | None:
    """``run_dir/last.pt``, checked against the config and the data; None when the run
    stopped before its first checkpoint (it then starts again from epoch 0, or from its
    ``init_from.json`` checkpoint).

    Leftover temporary files of writes cut by a crash (``.<name>.*.tmp``) are removed.
    """
    for stale in run_dir.glob(".*.tmp"):
        if stale.is_file():
            stale.unlink()
    path = run_dir / "last.pt"
    if path.is_dir():  # load_checkpoint would read it as a run folder: last.pt/last.pt
        raise InputError(path, "is a folder; expected the run's checkpoint file")
    if not path.exists():
        periodic = sorted(run_dir.glob("epoch_*.pt"))
        if periodic:  # a checkpoint went missing: do not silently start over
            raise InputError(path, f"not found; copy {periodic[-1].name} to last.pt to resume")
        log.info("no checkpoint in %s yet: starting from the beginning", run_dir)
        return None
    state = load_checkpoint(path)
    _check_state(path, state, train_set, "resume")
    # the stored config through the loader: fields added since the run started take their
    # defaults there as they did in config.yaml, so they are no difference
    stored = config_to_dict(config_from_dict(state["config"], source=str(path)))
    diff = _first_difference(config_to_dict(cfg), stored)
    if diff is not None:
        key, here, there = diff
        what = f"differs from the checkpoint's config ({key}: {here!r} here, {there!r} in last.pt)"
        raise InputError(run_dir / "config.yaml", what)
    video_ids = set(train_set.video_ids)
    for labels in state["pseudo"]:
        if set(labels) != video_ids:
            raise InputError(path, "pseudo labels for other training videos than the data's")
    return state


INIT_FROM_FILE = "init_from.json"
"""File of a branched run folder naming the checkpoint it started from (path, sha256, epoch)."""
TRAINING_SET_KEYS = ("path", "train_subset", "val_fraction", "val_seed")
"""``data`` fields that decide which videos a run trains on."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def branch_state(
    path: Path, cfg: Config, train_set: FeatureDataset, sha256: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint to start a new run from (``--init-from``), checked against ``cfg`` and
    the data, and the ``{"path", "sha256", "epoch"}`` record of where the run came from.

    Unlike a resume, the config may differ; the model must still fit it (checked when the
    weights are loaded), the epoch must leave something to train, and the pseudo-label
    history must hold every training video and the regenerations the schedule still reads.
    A checkpoint trained on other videos (``data`` path, subset or validation split) is
    allowed with a warning.
    """
    path = Path(path).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    state = load_checkpoint(path)
    _check_state(path, state, train_set, "branch")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise InputError(path, f"changed since this run branched from it (sha256 {sha256[:12]})")
    epoch = int(state["epoch"])
    if epoch >= cfg.train.epochs:
        what = f"is at epoch {epoch}; train.epochs = {cfg.train.epochs} leaves nothing to train"
        raise InputError(path, what)
    data_then = state["config"].get("data", {})
    data_now = config_to_dict(cfg)["data"]
    changed = [k for k in TRAINING_SET_KEYS if data_then.get(k, data_now[k]) != data_now[k]]
    if changed:
        warnings.warn(
            f"{path}: trained on another training set (data.{', data.'.join(changed)} differ)",
            stacklevel=3,
        )
    video_ids = set(train_set.video_ids)
    if cfg.pseudo.enabled and state["pseudo"]:
        missing = video_ids - set(state["pseudo"][-1])
        if missing:
            what = f"has no pseudo labels of training video {sorted(missing)[0]!r}"
            raise InputError(path, f"cannot branch from it: it {what}")
        done = [r for r in cfg.pseudo.regen_epochs if r < epoch][-2:]
        absent = [r for r in done if r not in state["pseudo_epochs"]]
        if absent:
            what = f"no pseudo labels of regeneration epoch {absent[-1]} (pseudo.regen_epochs)"
            raise InputError(path, f"cannot branch from it: {what}")
    return state, {"path": str(path.resolve()), "sha256": digest, "epoch": epoch}


def restore(
    state: dict[str, Any],
    path: Path,
    model: WTALModel,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    train_ids: Sequence[str],
) -> tuple[list[tuple[int, dict[str, Tensor]]], list[tuple[int, dict[str, Any]]], int]:
    """Load a checkpoint's weights (memory included), optimizer state, pseudo-label history
    and random state; returns ``(history, fused, start_epoch)``.

    The optimizer keeps its moments, but takes its hyper-parameters from ``cfg`` (Adam's
    ``load_state_dict`` would restore the stored ones), so a branch may change them. Pseudo
    labels of videos that are not training videos here are dropped.
    """
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        what = f"does not fit this config's model ({str(exc).strip().splitlines()[0]})"
        raise InputError(path, what) from None
    for group in optimizer.param_groups:
        group["betas"], group["weight_decay"] = cfg.train.betas, cfg.train.weight_decay
    keep = set(train_ids)

    def only(per_video: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in per_video.items() if k in keep}

    history = [
        (int(e), only(labels))
        for e, labels in zip(state["pseudo_epochs"], state["pseudo"], strict=True)
    ]
    fused = [
        (int(e), {"segments": only(x["segments"]), "timing": only(x["timing"])})
        for e, x in zip(
            state.get("pseudo_segment_epochs", []), state.get("pseudo_segments", []), strict=True
        )
    ]
    world = distributed.world_size()
    rng_ranks = state.get("rng_ranks", [])
    if world == 1:
        _set_rng_state(state["rng"])
    elif len(rng_ranks) == world:
        _set_rng_state(rng_ranks[distributed.rank()])
    elif distributed.is_main():
        saved = len(rng_ranks) or 1
        log.warning("checkpoint of %d process(es), run of %d: new dropout seeds", saved, world)
    return history, fused, int(state["epoch"])


def starting_checkpoint(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    init_from: str | Path | None,
    train_set: FeatureDataset,
) -> tuple[dict[str, Any] | None, Path | None, dict[str, Any] | None]:
    """``(state, source, branch)``: the checkpoint a run continues from (None for a fresh
    start), the path it was read from, and the ``init_from.json`` record of a branched run.

    A resumed run continues ``run_dir/last.pt``; a branch that stopped before its first
    checkpoint starts again from the checkpoint its ``init_from.json`` names, which must
    still have the sha256 recorded there.
    """
    state, source, branch = None, None, None
    expected_sha = None
    if resume:
        state = resume_state(run_dir, cfg, train_set)
        source = run_dir / "last.pt"
        if state is not None:
            branch = state.get("init_from")
        elif (run_dir / INIT_FROM_FILE).is_file():  # a branch that crashed before epoch 1
            saved = read_json(run_dir / INIT_FROM_FILE)
            init_from, expected_sha = saved["path"], saved["sha256"]
    if init_from is not None:
        source = Path(init_from).expanduser()
        state, branch = branch_state(source, cfg, train_set, expected_sha)
    return state, source, branch
