"""``wtal features``: a folder of videos -> the per-video feature layout of :mod:`wtal.data`.

Output folder ``OUT``:

* ``features/<video_id>.npy``: (T, D) float32, one row per snippet (written atomically).
* ``features_meta.json``: the extraction settings (extractor, weights and their sha256,
  sampling, snippets, time formula, preprocessing, flow, library versions) and one entry
  per finished video (source frame rate, frames, duration, samples, snippets, padding).
* ``annotations.json`` (with ``--subset``): a skeleton of the per-video layout, one entry
  per video with its subset, duration, fps and snippet_frames and no labels yet.

Each finished video is recorded at once (under a file lock, so shards running at the same
time can share ``OUT``), so a rerun skips what is done and an interrupted extraction resumes.
A rerun with other settings is refused rather than mixing features. A video that cannot be
decoded is reported and skipped; the run ends with an error listing all of them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wtal import __version__
from wtal.annotations import video_id_problem
from wtal.data.layouts import ANNOTATION_FILE, FEATURES_DIR
from wtal.extractors import RANDOM_WARNING, RANDOM_WEIGHTS, Extractor, build_extractor
from wtal.io import InputError, atomic_path, check_output_folder, read_json, write_json
from wtal.video import (
    VIDEO_EXTENSIONS,
    FeatureSpec,
    VideoSampler,
    iter_clips,
    iter_preprocessed,
    library_versions,
    num_snippets,
    tail_padding,
)

try:
    import fcntl
except ImportError:  # not POSIX: shards sharing OUT are not guarded
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

META_FILE = "features_meta.json"
"""Name of the metadata file in the output folder."""
LOCK_FILE = ".features.lock"
"""Lock file in the output folder, held while the metadata is updated."""
LIST_SUFFIXES = (".txt", ".lst")
"""A VIDEOS argument with one of these endings is a text list: one video path per line
(relative paths are relative to the list's folder; blank lines and ``#`` lines ignored)."""
DEFAULT_BATCH_SIZE = 8
"""Clips per extractor call (``--batch-size``)."""
META_FORMAT = 1
"""Version of the ``features_meta.json`` layout."""


# ----------------------------------------------------------------------------- one video


def extract_video(
    path: str | os.PathLike,
    extractor: Extractor,
    spec: FeatureSpec,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of one video.

    Args:
        path: the video file.
        extractor: from :func:`wtal.extractors.build_extractor`.
        spec: sampling, snippet and preprocessing settings.
        batch_size: clips per extractor call (the result does not depend on it).
        progress: show a progress bar (snippets) on stderr.

    Returns:
        ``(features, info)``: (T, D) float32 with ``T = ceil(samples / stride)``, and
        ``source_fps``, ``source_frames``, ``dropped_frames``, ``duration_s``, ``samples``,
        ``snippets`` and ``padding`` (repeated frames in the last snippet).

    Raises:
        InputError: naming the file when it cannot be decoded or has no frames.
    """
    sampler = VideoSampler(path, spec.fps)
    estimate = sampler.estimated_samples() if progress else None
    total = num_snippets(estimate, spec.stride) if estimate else None
    frames = iter_preprocessed(sampler, spec)
    rows: list[np.ndarray] = []
    batch: list[torch.Tensor] = []
    bar = tqdm(total=total, desc=Path(path).name, unit="snippet", leave=False, disable=not progress)
    with bar:
        for clip, _ in iter_clips(frames, extractor.clip_frames, spec.stride):
            batch.append(clip)
            if len(batch) == batch_size:
                rows.append(extractor(torch.stack(batch)))  # (B, D)
                bar.update(len(batch))
                batch = []
        if batch:
            rows.append(extractor(torch.stack(batch)))
            bar.update(len(batch))
    features = np.concatenate(rows).astype(np.float32, copy=False)  # (T, D)
    samples = sampler.info["samples"]
    assert len(features) == num_snippets(samples, spec.stride), "snippet count"
    info = dict(sampler.info)
    info["snippets"] = len(features)
    info["padding"] = tail_padding(samples, spec.snippet_frames, spec.stride)
    return features, info


# ----------------------------------------------------------------------------- inputs


def list_videos(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """``(video_id, path)`` of every video named by ``inputs``, sorted by id.

    Each input is a folder (its files ending in :data:`VIDEO_EXTENSIONS`, not recursive), a
    text list (:data:`LIST_SUFFIXES`) or a video file. The id is the file name without its
    extension.

    Raises:
        InputError: a missing input or listed file, an id that cannot name a feature file,
            two videos with the same id, or no video at all.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            paths += _read_list(path)
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(path, "VIDEOS: not found (expected a folder, video file or list)")
    seen: dict[str, Path] = {}
    for path in paths:
        video_id = path.stem
        if problem := video_id_problem(
            video_id
        ):  # named by repr: a newline must not split the line
            raise InputError(path.parent, f"video file {path.name!r}: {problem}")
        if video_id in seen:
            raise InputError(path, f"same video id {video_id!r} as {seen[video_id]}")
        seen[video_id] = path
    if not seen:
        what = f"no videos found (extensions: {' '.join(VIDEO_EXTENSIONS)})"
        raise InputError(", ".join(map(str, inputs)), what)
    return sorted(seen.items())


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the video list ({exc.__class__.__name__})") from None
    found = []
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        video = (path.parent / line).expanduser()
        if not video.is_file():
            raise InputError(path, f"line {lineno}: video file {line!r} not found")
        found.append(video)
    return found


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N; None -> this process's rank and world size under
    ``torchrun`` (its ``RANK``/``WORLD_SIZE``), else (0, 1)."""
    if text is None:
        if all(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        raise InputError(None, f"--shard: expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return k, n


def select_shard(videos: list[tuple[str, Path]], k: int, n: int) -> list[tuple[str, Path]]:
    """Shard ``k`` of ``n``: every n-th video by sorted id, from the k-th (disjoint, covering)."""
    return sorted(videos)[k::n]


# ----------------------------------------------------------------------------- metadata


def extraction_settings(extractor: Extractor, spec: FeatureSpec) -> dict[str, Any]:
    """What determines the features: a rerun must match these to reuse earlier videos."""
    flow = None
    if "flow" in extractor.streams:
        flow = {
            "method": "TV-L1, OpenCV cv2.optflow.DualTVL1OpticalFlow_create() defaults",
            "input": "consecutive samples, grey (BT.601 luma) after resize and crop",
            "fields_per_snippet": spec.snippet_frames,
            "clip": spec.flow_clip,
            "normalisation": "clip(flow, -clip, clip) / clip: [-1, 1]",
        }
    return {
        "extractor": extractor.name,
        "feat_dim": extractor.dim,
        "streams": [
            {"name": name, "dim": dim, "sha256": extractor.weights[name]["sha256"]}
            for name, dim in extractor.streams.items()
        ],
        "fps": spec.fps,
        "snippet_frames": spec.snippet_frames,
        "stride": spec.stride,
        "clip_frames": extractor.clip_frames,
        "sampling": "the source frame nearest to k / fps s by pts x time_base, earlier on a tie",
        "snippets": "ceil(samples / stride); the last snippet padded by repeating the last sample",
        "time": "snippet i starts at i * stride / fps s and lasts snippet_frames / fps s "
        "(wtal.segments.snippets_to_seconds(i, fps, stride))",
        "preprocess": {
            "channels": "RGB",
            "resize_short": spec.resize_short,
            "interpolation": "bilinear, antialiased (torch.nn.functional.interpolate)",
            "crop": spec.crop,
            "crop_position": "centre",
            "normalisation": "x / 127.5 - 1: [0, 255] -> [-1, 1]",
        },
        "flow": flow,
    }


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold the output folder's lock (blocking): one process at a time edits its metadata."""
    if fcntl is None:
        yield
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_meta(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The existing metadata (None if none), refused when written with other settings."""
    path = out / META_FILE
    if not path.exists():
        return None
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise InputError(path, 'expected an object with a "videos" object')
    for key, value in settings.items():
        if json.loads(json.dumps(value)) != meta.get(key):  # compare as stored (tuples: lists)
            here, there = json.dumps(value), json.dumps(meta.get(key))
            what = f"written with other settings ({key}: {there} there, {here} now); "
            raise InputError(path, what + "use the same options or a new OUT")
    return meta


def _read_skeleton(out: Path) -> dict[str, Any] | None:
    path = out / ANNOTATION_FILE
    if not path.exists():
        return None
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("database"), dict):
        raise InputError(path, 'expected an object with a "database" object of videos')
    return doc


def _is_done(out: Path, meta: dict[str, Any] | None, video_id: str, path: Path, dim: int) -> bool:
    """The video is in the metadata, from a file of the same size, with its features file."""
    entry = (meta or {}).get("videos", {}).get(video_id)
    if not isinstance(entry, dict) or entry.get("source_bytes") != path.stat().st_size:
        return False
    try:
        shape = np.load(out / FEATURES_DIR / f"{video_id}.npy", mmap_mode="r").shape
    except (OSError, ValueError):
        return False
    return shape == (entry.get("snippets"), dim)


def _record(
    out: Path,
    net: Extractor,
    settings: dict[str, Any],
    versions: dict[str, str],
    video_id: str,
    info: dict[str, Any],
    subset: str | None,
) -> None:
    """Add one finished video to the metadata (and the annotation skeleton), atomically."""
    with _locked(out):
        meta = _read_meta(out, settings)
        if meta is None:
            meta = {"format": META_FORMAT, "wtal": __version__, **settings}
            meta["weights_files"] = {name: w["path"] for name, w in net.weights.items()}
            if any(w["sha256"] == RANDOM_WEIGHTS for w in net.weights.values()):
                meta["warning"] = RANDOM_WARNING
            meta["libraries"] = {**versions, "torch": torch.__version__}
            meta["videos"] = {}
        meta["videos"][video_id] = info
        write_json(out / META_FILE, meta)
        if subset is not None:
            _add_to_skeleton(out, settings, video_id, info, subset)


def _add_to_skeleton(
    out: Path, settings: dict[str, Any], video_id: str, info: dict[str, Any], subset: str
) -> None:
    """An ``annotations.json`` entry for the video unless it has one (maybe labelled)."""
    doc = _read_skeleton(out) or {"version": f"wtal features {__version__}", "database": {}}
    if video_id in doc["database"]:
        return
    doc["database"][video_id] = {
        "subset": subset,
        "duration": info["duration_s"],
        "fps": settings["fps"],
        "snippet_frames": settings["stride"],  # the time step of one feature row
        "annotations": [],  # no "labels": video labels then follow the segments
    }
    write_json(out / ANNOTATION_FILE, doc)


# ----------------------------------------------------------------------------- many videos


def extract_videos(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    extractor: str = "i3d-rgb",
    weights: str | os.PathLike = "none",
    spec: FeatureSpec | None = None,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    subset: str | None = None,
    shard: str | None = None,
    progress: bool = False,
) -> dict[str, list[str]]:
    """Extract the features of every video of ``inputs`` (this shard's) into ``out``.

    Everything is validated before the first video (inputs, shard, output folder, weights,
    settings of an earlier run into ``out``).

    Returns:
        ``{"extracted": ids, "skipped": ids already done}``.

    Raises:
        InputError: bad input; or, after all the other videos are done, the list of the
            videos that could not be decoded.
    """
    spec = spec or FeatureSpec()
    if batch_size < 1:
        raise InputError(None, f"--batch-size: expected an integer >= 1, got {batch_size}")
    if subset is not None and (not subset.strip() or video_id_problem(subset)):
        raise InputError(None, f"--subset: expected a plain name, got {subset!r}")
    videos = list_videos(inputs)
    k, n = parse_shard(shard)
    videos = select_shard(videos, k, n)
    out = check_output_folder(out, "OUT")
    versions = library_versions()  # PyAV missing: refused here, before any work
    if device == "cuda" and n > 1 and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    net = build_extractor(extractor, weights, device, spec)
    settings = extraction_settings(net, spec)
    meta = _read_meta(out, settings)
    _read_skeleton(out)  # unreadable: refused now, not after the first video
    (out / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    done: dict[str, list[str]] = {"extracted": [], "skipped": []}
    failed: list[str] = []
    for video_id, path in videos:
        if _is_done(out, meta, video_id, path, net.dim):
            if subset is not None:  # extracted earlier without --subset (or another one)
                with _locked(out):
                    _add_to_skeleton(out, settings, video_id, meta["videos"][video_id], subset)
            done["skipped"].append(video_id)
            continue
        try:
            features, info = extract_video(path, net, spec, batch_size, progress)
        except InputError as exc:
            log.warning(f"skipped: {exc}")
            failed.append(f"{path.name} ({exc.what})")
            continue
        with atomic_path(out / FEATURES_DIR / f"{video_id}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, features, allow_pickle=False)
        info = {"source": str(path.resolve()), "source_bytes": path.stat().st_size, **info}
        _record(out, net, settings, versions, video_id, info, subset)
        done["extracted"].append(video_id)
    if failed:
        what = f"{len(failed)} of {len(videos)} videos could not be read: " + "; ".join(failed)
        raise InputError(None, what)
    return done
