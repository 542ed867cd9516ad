"""What features a run was trained on: the dataset's ``features_meta.json``, copied into the run
folder, and the extractor record every checkpoint carries (``state["extractor"]``).

``wtal features`` writes ``features_meta.json`` beside ``features/`` when it extracts a
dataset; datasets of features extracted elsewhere have none, and their runs record
``None``. ``wtal infer`` reads the record back to extract new videos the same way.
Standard library only: :mod:`wtal.checkpoint` imports this module.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from wtal.io import InputError, atomic_path, read_json

log = logging.getLogger("wtal")

FEATURES_META_FILE = "features_meta.json"
"""File beside a dataset's ``features/`` (and copied into its runs) describing the extractor."""
EXTRACTOR_KEYS = ("name", "dim", "weights_sha256", "fps", "snippet_frames", "stride")
"""What a checkpoint records of the extractor: its name and output dimension, the sha256 of
its weights file (None for random weights), the frame rate videos are decoded at, the frames
of one snippet (the network's clip) and the frames between consecutive snippets."""


def read_features_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A ``features_meta.json`` file, checked to name the extractor's record keys.

    Raises:
        InputError: unreadable JSON, or a missing/ill-typed extractor entry.
    """
    meta = read_json(path)
    extractor = meta.get("extractor") if isinstance(meta, dict) else None
    if not isinstance(extractor, dict):
        raise InputError(path, "expected an 'extractor' mapping (as `wtal features` writes)")
    missing = [k for k in EXTRACTOR_KEYS if k not in extractor]
    if missing:
        raise InputError(path, f"extractor: no {', '.join(repr(k) for k in missing)} entries")
    for key in ("fps", "snippet_frames", "stride", "dim"):
        value = extractor[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InputError(path, f"extractor.{key} = {value!r}: expected a number > 0")
    return meta


def extractor_record(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's extractor record (:data:`EXTRACTOR_KEYS`) of a features meta dict."""
    return {key: meta["extractor"][key] for key in EXTRACTOR_KEYS}


def copy_features_meta(data_path: str | os.PathLike, run_dir: str | os.PathLike) -> Path | None:
    """Copy the dataset's ``features_meta.json`` (if it has one) into the run folder.

    Called once when a training run creates its folder, so that the run remembers how its
    features were made even if the dataset moves. A W-TALC bundle (a file path) or a dataset
    without the file copies nothing.

    A file that does not read as a features meta file is not copied (a warning says so):
    training does not need it, and the run folder already exists when this runs.

    Returns:
        The copy's path, or None.
    """
    source = Path(data_path).expanduser() / FEATURES_META_FILE
    if not source.is_file():
        return None
    try:
        read_features_meta(source)
    except InputError as exc:
        log.warning("%s; the run does not record its feature extractor", exc)
        return None
    target = Path(run_dir) / FEATURES_META_FILE
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def checkpoint_extractor(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The extractor record of a run folder's ``features_meta.json`` (None without one).

    :func:`wtal.checkpoint.save_checkpoint` stores this under ``"extractor"`` in every
    checkpoint; checkpoints written before that have no such entry, which reads as None.
    """
    path = Path(run_dir) / FEATURES_META_FILE
    if not path.is_file():
        return None
    return extractor_record(read_features_meta(path))


def recorded_extractor(state: dict[str, Any], checkpoint: Path) -> dict[str, Any] | None:
    """The extractor a checkpoint's run was trained with: the checkpoint's own record, else
    its run folder's ``features_meta.json``, else None (external features, or an old run).

    Raises:
        InputError: a record that is not a mapping of :data:`EXTRACTOR_KEYS`.
    """
    record = state.get("extractor")
    if record is None:
        return checkpoint_extractor(checkpoint.parent)
    if not isinstance(record, dict) or any(k not in record for k in EXTRACTOR_KEYS):
        raise InputError(checkpoint, f"entry 'extractor': expected a mapping of {EXTRACTOR_KEYS}")
    return record


def describe(record: dict[str, Any]) -> str:
    """One-line summary of an extractor record, for messages."""
    weights = record["weights_sha256"]
    weights = f"weights sha256 {weights[:12]}" if weights else "random weights"
    return (
        f"{record['name']} ({record['dim']}-d, {weights}, {record['fps']:g} fps, "
        f"{record['snippet_frames']:g}-frame snippets every {record['stride']:g} frames)"
    )
