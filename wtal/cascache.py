"""The CAS cache: a run's per-video predictions in one ``.npz`` file (``cas.npz``).

Format: ``np.savez`` arrays only, marked ``format = "wtal-cas"`` and ``version``
(:data:`CAS_CACHE_VERSION`); videos are concatenated along time (layout in
:func:`save_predictions`), at full precision, with the class names, the resolved config
(JSON) and the split. Loading never unpickles (``allow_pickle=False``; an object entry is
refused) and checks the format mark, that the version is not newer, every entry's presence,
rank and dtype kind, the sizes against each other, finite values, unique video ids, positive
frame rates and the stored config; any failure is an :class:`~wtal.io.InputError` naming the
file and the entry.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wtal.config import Config, config_to_dict
from wtal.configfile import config_from_dict
from wtal.inference import Prediction
from wtal.io import InputError, atomic_path, os_error

CAS_CACHE_FORMAT = "wtal-cas"
"""Value of the ``format`` entry that marks a CAS cache."""
CAS_CACHE_VERSION = 1
"""Layout version of the CAS cache; readers refuse newer ones."""


class CasCache(NamedTuple):
    """The contents of a ``cas.npz`` cache (see :func:`save_predictions`).

    Attributes:
        predictions: one :class:`Prediction` per video, in the order written.
        class_names: (C,) class names of the CAS columns (background excluded).
        config: the config the predictions were made with (its ``detect`` and ``eval``
            sections give the post-processing defaults), or None if none was stored.
        split: the dataset subset the videos came from ("" when not a dataset split).
    """

    predictions: list[Prediction]
    class_names: list[str]
    config: Config | None
    split: str


def save_predictions(
    path: str | Path,
    preds: Sequence[Prediction],
    class_names: Sequence[str],
    cfg: Config | None = None,
    split: str = "",
) -> None:
    """Write predictions to a ``.npz`` cache atomically (``np.savez``, no pickled objects).

    Videos are concatenated along time: with N videos of T_i snippets and C classes the
    file holds ``cas`` (sum T_i, C+1) float64, ``attention`` (sum T_i,) float64,
    ``lengths`` (N,) int64, ``video_ids`` (N,) str, ``video_scores`` (N, C+1) float64,
    ``labels`` (N, C) float32, ``fps``/``snippet_frames``/``duration_s`` (N,) float64,
    ``class_names`` (C,) str, the resolved ``config`` as a JSON string ("" for none),
    ``split`` and the ``format``/``version`` marks. Values are stored at full precision,
    so post-processing the cache reproduces the detections made from the model.
    """
    num_columns = len(class_names) + 1
    for pred in preds:
        if pred.cas.ndim != 2 or pred.cas.shape[1] != num_columns:
            raise ValueError(
                f"video {pred.video_id!r}: cas {pred.cas.shape} does not fit "
                f"{len(class_names)} classes + background"
            )
    arrays = {
        "format": np.array(CAS_CACHE_FORMAT),
        "version": np.array(CAS_CACHE_VERSION, dtype=np.int64),
        "class_names": np.array(list(class_names), dtype=str).reshape(-1),
        "video_ids": np.array([p.video_id for p in preds], dtype=str).reshape(-1),
        "lengths": np.array([p.cas.shape[0] for p in preds], dtype=np.int64),
        "cas": np.concatenate([np.zeros((0, num_columns))] + [p.cas for p in preds]).astype(
            np.float64
        ),
        "attention": np.concatenate([np.zeros(0)] + [p.attention for p in preds]).astype(
            np.float64
        ),
        "video_scores": np.array([p.video_scores for p in preds], dtype=np.float64).reshape(
            -1, num_columns
        ),
        "labels": np.array([p.labels for p in preds], dtype=np.float32).reshape(
            -1, num_columns - 1
        ),
        "fps": np.array([p.fps for p in preds], dtype=np.float64),
        "snippet_frames": np.array([p.snippet_frames for p in preds], dtype=np.float64),
        "duration_s": np.array([p.duration_s for p in preds], dtype=np.float64),
        "config": np.array("" if cfg is None else json.dumps(config_to_dict(cfg))),
        "split": np.array(split),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: no ".npz" appended
        np.savez(f, **arrays)


_CACHE_SHAPES = {
    # entry: (rank, dtype kind); sizes are checked against each other in load_predictions
    "class_names": (1, "U"),
    "video_ids": (1, "U"),
    "lengths": (1, "i"),
    "cas": (2, "f"),
    "attention": (1, "f"),
    "video_scores": (2, "f"),
    "labels": (2, "f"),
    "fps": (1, "f"),
    "snippet_frames": (1, "f"),
    "duration_s": (1, "f"),
    "config": (0, "U"),
    "split": (0, "U"),
}


def _read_cache_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the cache, loaded without unpickling, with kinds and ranks checked."""
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:  # a folder, no permission
        raise os_error(exc, "cannot read", path) from None
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:  # unknown bytes, a cut archive
        raise InputError(path, f"not a readable .npz file ({exc.__class__.__name__})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(path, "not a CAS cache: a single array, expected an .npz archive")
    arrays = {}
    with npz:
        for name in ("format", "version", *_CACHE_SHAPES):
            if name not in npz.files:
                raise InputError(path, f"not a wtal CAS cache (no {name!r} entry)")
            try:
                arrays[name] = npz[name]
            except ValueError:  # an object array: refused without unpickling
                raise InputError(path, f"entry {name!r} holds pickled objects") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                what = f"entry {name!r} is unreadable ({exc.__class__.__name__})"
                raise InputError(path, what) from None
    if str(arrays["format"]) != CAS_CACHE_FORMAT:
        raise InputError(path, f"format {str(arrays['format'])!r}: expected {CAS_CACHE_FORMAT!r}")
    version = arrays["version"]
    if version.ndim != 0 or version.dtype.kind not in "iu":
        what = f"entry 'version': expected one integer, got {version.dtype}{version.shape}"
        raise InputError(path, what)
    if int(version) > CAS_CACHE_VERSION:
        raise InputError(
            path, f"cache version {int(arrays['version'])} is newer than {CAS_CACHE_VERSION}"
        )
    for name, (ndim, kind) in _CACHE_SHAPES.items():
        a = arrays[name]
        if a.ndim != ndim or a.dtype.kind != kind:
            raise InputError(
                path, f"entry {name!r}: expected a {ndim}-d {kind!r} array, got {a.dtype}{a.shape}"
            )
    return arrays


def load_predictions(path: str | Path) -> CasCache:
    """Read a cache written by :func:`save_predictions` (never unpickles).

    Raises:
        InputError: missing or unreadable file, missing entries, inconsistent shapes,
            non-finite values or a stored config that does not load; the message names the
            file and, where it applies, the entry.
    """
    path = Path(path).expanduser()
    a = _read_cache_arrays(path)
    num_videos = len(a["video_ids"])
    num_columns = len(a["class_names"]) + 1
    lengths = a["lengths"]
    expected = {
        "lengths": (num_videos,),
        "cas": (int(lengths.sum()), num_columns),
        "attention": (int(lengths.sum()),),
        "video_scores": (num_videos, num_columns),
        "labels": (num_videos, num_columns - 1),
        "fps": (num_videos,),
        "snippet_frames": (num_videos,),
        "duration_s": (num_videos,),
    }
    if (lengths < 0).any():
        raise InputError(path, "entry 'lengths': negative video length")
    for name, shape in expected.items():
        if a[name].shape != shape:
            raise InputError(path, f"entry {name!r}: shape {a[name].shape}, expected {shape}")
    for name in ("cas", "attention", "video_scores", "fps", "snippet_frames"):
        if not np.isfinite(a[name]).all():
            raise InputError(path, f"entry {name!r}: non-finite values")
    ids, counts = np.unique(a["video_ids"], return_counts=True)
    if (counts > 1).any():  # one video's rows would be read as another's
        raise InputError(path, f"entry 'video_ids': {str(ids[counts > 1][0])!r} is stored twice")
    if not ((a["fps"] > 0).all() and (a["snippet_frames"] > 0).all()):
        raise InputError(path, "entries 'fps'/'snippet_frames': expected positive numbers")
    cfg = None
    if str(a["config"]):
        try:
            cfg = config_from_dict(json.loads(str(a["config"])), source=str(path))
        except json.JSONDecodeError as exc:
            raise InputError(path, f"entry 'config': malformed JSON ({exc.msg})") from None
    bounds = np.cumsum(lengths)[:-1]
    cas, attention = np.split(a["cas"], bounds), np.split(a["attention"], bounds)
    preds = [
        Prediction(
            video_id=str(a["video_ids"][i]),
            video_scores=a["video_scores"][i],
            cas=cas[i],
            attention=attention[i],
            labels=a["labels"][i],
            fps=float(a["fps"][i]),
            snippet_frames=float(a["snippet_frames"][i]),
            duration_s=float(a["duration_s"][i]),
        )
        for i in range(num_videos)
    ]
    return CasCache(preds, [str(c) for c in a["class_names"]], cfg, str(a["split"]))
