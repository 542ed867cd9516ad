"""Feature extractors: preprocessed clips -> one feature vector per clip.

Each extractor has a ``name``, an output ``dim``, the ``clip_frames`` it needs per snippet
and is called on a batch of clips ``(N, clip_frames, 3, H, W)`` (RGB in [-1, 1], see
:mod:`wtal.video`), returning ``(N, dim)`` float32. Two exist (:data:`EXTRACTORS`):

* ``i3d-rgb``: I3D on the RGB frames, 1024-d.
* ``i3d-two-stream``: RGB then flow, 2048-d, the layout of the THUMOS14 W-TALC features.
  Flow is TV-L1 (OpenCV's ``DualTVL1OpticalFlow``, default settings, from the
  ``opencv-contrib`` package of the ``video`` extra) between consecutive samples on the
  cropped grey frames, clipped to +-``flow_clip`` pixels and divided by it. A snippet of 16
  samples has 16 flow fields, the last one to the next snippet's first frame, so the clip
  holds ``snippet_frames + 1`` frames. TV-L1 runs on the CPU (about 0.1-0.5 s per field at
  224 x 224) and is not bit-identical to the flow behind the released features.

Weights (``--weights``): a checkpoint file (RGB) or a folder holding ``rgb_imagenet.pt`` and
``flow_imagenet.pt``; ``none`` gives randomly initialised networks (seeded), for tests and
pipelines only, with a warning. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from wtal.i3d import FEATURE_DIM, I3D, load_i3d, sha256_file
from wtal.io import InputError
from wtal.video import FeatureSpec

log = logging.getLogger(__name__)

WEIGHT_FILES = {"rgb": "rgb_imagenet.pt", "flow": "flow_imagenet.pt"}
"""File names of the standard I3D checkpoints inside a ``--weights`` folder, per stream."""
RANDOM_WEIGHTS = "random"
"""What the metadata records instead of a sha256 for ``--weights none``."""
RANDOM_SEED = 0
"""Seed of the random initialisation under ``--weights none`` (same features every run)."""
RANDOM_WARNING = (
    "--weights none: the I3D networks are randomly initialised; the features are useless for "
    "training a real model (pass --weights with the standard rgb_imagenet.pt/flow_imagenet.pt)"
)


class Extractor(Protocol):
    """Clips -> features. ``clips``: (N, clip_frames, 3, H, W) float32 in [-1, 1]."""

    name: str
    dim: int
    clip_frames: int
    streams: dict[str, int]  # stream name -> its dims, in output order
    weights: dict[str, dict[str, str]]  # stream name -> {"path", "sha256"} (or "random")

    def __call__(self, clips: Tensor) -> np.ndarray: ...


def _import_cv2() -> Any:
    """OpenCV with its contrib modules (TV-L1 lives in ``cv2.optflow``)."""
    try:
        import cv2
    except ImportError:
        msg = 'i3d-two-stream needs OpenCV for TV-L1 flow: pip install "wtal[video]"'
        raise InputError(None, msg) from None
    if not hasattr(cv2, "optflow"):
        msg = "TV-L1 flow needs cv2.optflow: pip install opencv-contrib-python-headless"
        raise InputError(None, msg)
    return cv2


def tvl1_flow(gray: np.ndarray, clip: float) -> np.ndarray:
    """TV-L1 optical flow between consecutive grey frames, clipped and scaled to [-1, 1].

    Args:
        gray: (L, H, W) uint8 frames.
        clip: flow is clipped to ``+-clip`` pixels per frame, then divided by ``clip``.

    Returns:
        (L - 1, 2, H, W) float32: channel 0 the horizontal (x, right +), 1 the vertical
        (y, down +) displacement from frame ``t`` to ``t + 1``.
    """
    tvl1 = _import_cv2().optflow.DualTVL1OpticalFlow_create()
    flows = [tvl1.calc(gray[t], gray[t + 1], None) for t in range(len(gray) - 1)]  # (H, W, 2)
    flow = np.stack(flows).transpose(0, 3, 1, 2) if flows else np.zeros((0, 2, *gray.shape[1:]))
    return (np.clip(flow, -clip, clip) / clip).astype(np.float32)


def to_gray_uint8(clip: Tensor) -> np.ndarray:
    """(L, 3, H, W) RGB in [-1, 1] -> (L, H, W) uint8 grey (ITU-R BT.601 luma, as OpenCV)."""
    rgb = (clip.float().cpu() + 1.0) * 127.5  # (L, 3, H, W) in [0, 255]
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]  # (L, H, W)
    return luma.round().clamp(0, 255).to(torch.uint8).numpy()


class I3DExtractor:
    """I3D RGB (and optionally flow) features of clips; see the module docstring.

    Args:
        rgb: the RGB network (3 input channels).
        flow: the flow network (2 input channels), or None for RGB only.
        weights: provenance per stream, for the metadata.
        snippet_frames: frames per snippet (the flow stream needs one more per clip).
        flow_clip: flow clipping range in pixels (:attr:`FeatureSpec.flow_clip`).
        device: where the networks run.
    """

    def __init__(
        self,
        rgb: I3D,
        flow: I3D | None,
        weights: dict[str, dict[str, str]],
        snippet_frames: int,
        flow_clip: float,
        device: torch.device,
    ) -> None:
        self.device = device
        self.rgb = rgb.to(device).eval()
        self.flow = flow.to(device).eval() if flow is not None else None
        self.name = "i3d-rgb" if flow is None else "i3d-two-stream"
        self.streams = {"rgb": FEATURE_DIM} | ({"flow": FEATURE_DIM} if flow is not None else {})
        self.dim = sum(self.streams.values())
        self.snippet_frames = snippet_frames
        self.clip_frames = snippet_frames + (flow is not None)
        self.flow_clip = flow_clip
        self.weights = weights

    @torch.inference_mode()
    def __call__(self, clips: Tensor) -> np.ndarray:
        if clips.ndim != 5 or clips.shape[1] != self.clip_frames or clips.shape[2] != 3:
            expected = f"(N, {self.clip_frames}, 3, H, W)"
            raise ValueError(f"clips: expected {expected}, got {tuple(clips.shape)}")
        rgb = clips[:, : self.snippet_frames].transpose(1, 2)  # (N, 3, L, H, W)
        outputs = [self.rgb(rgb.to(self.device, torch.float32))]  # (N, 1024)
        if self.flow is not None:
            flows = [tvl1_flow(to_gray_uint8(clip), self.flow_clip) for clip in clips]
            flow = torch.from_numpy(np.stack(flows)).transpose(1, 2)  # (N, 2, L, H, W)
            outputs.append(self.flow(flow.to(self.device)))  # (N, 1024)
        return torch.cat(outputs, dim=1).float().cpu().numpy()  # (N, dim)


def _random_i3d(in_channels: int, seed: int) -> I3D:
    """An I3D initialised from a fixed seed, leaving the global random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return I3D(in_channels)


def resolve_weights(weights: str | os.PathLike, streams: list[str]) -> dict[str, Path] | None:
    """The checkpoint file of each stream named by ``--weights``; None for ``none``.

    A file serves the RGB stream alone; a folder must hold :data:`WEIGHT_FILES` of every
    stream.

    Raises:
        InputError: naming the path when it is missing, or a file where a folder is needed.
    """
    if str(weights) == "none":
        return None
    path = Path(weights).expanduser()
    if path.is_dir():
        found = {stream: path / WEIGHT_FILES[stream] for stream in streams}
        for stream, file in found.items():
            if not file.is_file():
                raise InputError(path, f"--weights folder has no {file.name} ({stream} stream)")
        return found
    if not path.exists():
        raise InputError(path, "--weights: file or folder not found")
    if streams != ["rgb"]:
        names = " and ".join(WEIGHT_FILES[s] for s in streams)
        raise InputError(path, f"--weights: this extractor needs a folder holding {names}")
    return {"rgb": path}


def _build_i3d(streams: list[str], weights: str | os.PathLike) -> tuple[list[I3D], dict]:
    files = resolve_weights(weights, streams)
    channels = {"rgb": 3, "flow": 2}
    if files is None:
        log.warning(RANDOM_WARNING)
        nets = [_random_i3d(channels[s], RANDOM_SEED + i) for i, s in enumerate(streams)]
        return nets, {s: {"path": "none", "sha256": RANDOM_WEIGHTS} for s in streams}
    nets = [load_i3d(files[s], channels[s]) for s in streams]
    provenance = {s: {"path": str(p.resolve()), "sha256": sha256_file(p)} for s, p in files.items()}
    return nets, provenance


def build_i3d_rgb(
    weights: str | os.PathLike, device: torch.device, spec: FeatureSpec
) -> I3DExtractor:
    (rgb,), provenance = _build_i3d(["rgb"], weights)
    return I3DExtractor(rgb, None, provenance, spec.snippet_frames, spec.flow_clip, device)


def build_i3d_two_stream(
    weights: str | os.PathLike, device: torch.device, spec: FeatureSpec
) -> I3DExtractor:
    _import_cv2()  # missing: refused now, not as a failure of every video
    (rgb, flow), provenance = _build_i3d(["rgb", "flow"], weights)
    return I3DExtractor(rgb, flow, provenance, spec.snippet_frames, spec.flow_clip, device)


EXTRACTORS: dict[str, Callable[[str | os.PathLike, torch.device, FeatureSpec], Any]] = {
    "i3d-rgb": build_i3d_rgb,
    "i3d-two-stream": build_i3d_two_stream,
}
"""Extractor name -> builder ``(weights, device, spec) -> Extractor``; the first is the default."""


def build_extractor(
    name: str,
    weights: str | os.PathLike,
    device: str | torch.device = "cpu",
    spec: FeatureSpec | None = None,
) -> Extractor:
    """The extractor ``name`` (:data:`EXTRACTORS`) with its weights, on ``device``.

    Args:
        name: ``i3d-rgb`` or ``i3d-two-stream``.
        weights: checkpoint file, folder of checkpoints, or ``"none"`` (random, warned).
        device: ``cpu``, ``cuda``, ``cuda:1``, ... (``auto``: CUDA when available).
        spec: snippet and flow settings (default :class:`FeatureSpec`).

    Raises:
        InputError: an unknown name or device, or unusable weights.
    """
    if name not in EXTRACTORS:
        raise InputError(
            None, f"--extractor: expected one of {', '.join(EXTRACTORS)}, got {name!r}"
        )
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise InputError(None, f"--device: expected cpu, cuda or cuda:N, got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available")
    return EXTRACTORS[name](weights, device, spec or FeatureSpec())
