"""What features a run was trained on: the dataset's ``features_meta.json``, copied into the run
folder, and the extractor record every checkpoint carries (``state["extractor"]``).

``wtal features`` writes ``features_meta.json`` beside ``features/`` when it extracts a
dataset; datasets of features extracted elsewhere have none, and their runs record
``None``. ``wtal infer`` reads the record back to extract new videos the same way.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from wtal.extract import META_FILE as FEATURES_META_FILE
from wtal.io import InputError, atomic_path, read_json

log = logging.getLogger("wtal")

EXTRACTOR_KEYS = (
    "name",
    "dim",
    "weights_sha256",
    "fps",
    "snippet_frames",
    "stride",
    "weights_files",
    "preprocess",
)
"""What a checkpoint records of the extractor: its name and output dimension, the sha256 of
each stream's weights (``{"rgb": ..., "flow": ...}``, ``"random"`` for ``--weights none``),
the frame rate videos are sampled at, the frames of one snippet and the frames between
consecutive snippets; then, to extract new videos the same way, the weights files
(``{stream: path}``) and the preprocessing (``resize_short``, ``crop``, ``flow_clip``)."""


def read_features_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A ``features_meta.json`` file (as :mod:`wtal.extract` writes it), with the entries
    :func:`extractor_record` reads checked.

    Raises:
        InputError: unreadable JSON, or a missing or ill-typed entry.
    """
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise InputError(path, "expected a JSON object (as `wtal features` writes it)")
    if not isinstance(meta.get("extractor"), str):
        raise InputError(path, "entry 'extractor': expected the extractor's name")
    for key in ("feat_dim", "fps", "snippet_frames", "stride"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InputError(path, f"entry {key!r} = {value!r}: expected a number > 0")
    streams = meta.get("streams")
    if not (
        isinstance(streams, list)
        and streams
        and all(isinstance(s, dict) and {"name", "sha256"} <= set(s) for s in streams)
    ):
        raise InputError(path, "entry 'streams': expected a list of {name, dim, sha256}")
    return meta


def extractor_record(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's extractor record (:data:`EXTRACTOR_KEYS`) of a features meta dict."""
    preprocess = meta.get("preprocess") or {}
    return {
        "name": meta["extractor"],
        "dim": int(meta["feat_dim"]),
        "weights_sha256": {s["name"]: s["sha256"] for s in meta["streams"]},
        "fps": float(meta["fps"]),
        "snippet_frames": int(meta["snippet_frames"]),
        "stride": int(meta["stride"]),
        "weights_files": dict(meta.get("weights_files") or {}),
        "preprocess": {
            "resize_short": preprocess.get("resize_short"),
            "crop": preprocess.get("crop"),
            "flow_clip": (meta.get("flow") or {}).get("clip"),
        },
    }


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
