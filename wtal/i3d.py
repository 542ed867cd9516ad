"""I3D: Inception-v1 inflated to 3-D (Carreira & Zisserman, "Quo Vadis, Action Recognition?",
CVPR 2017), as the feature extractor of raw videos (``wtal features``).

Written from the published architecture: the GoogLeNet (Inception-v1) stem and nine
Inception blocks with 3-D kernels, TensorFlow-style "same" padding (computed from the input
size at run time, the extra pixel going after), BatchNorm with eps 1e-3 and no convolution
bias, and an average pool over what the last block leaves. :meth:`I3D.forward` returns that
pooled 1024-d vector per clip; the 400-way Kinetics classifier (``logits``) is built only so
that the standard PyTorch checkpoints (``rgb_imagenet.pt``, ``flow_imagenet.pt``) load with
``strict=True``: parameter names and shapes follow them exactly.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.io import InputError

FEATURE_DIM = 1024
"""Width of the pooled ``Mixed_5c`` output: one stream's feature dimension."""
KINETICS_CLASSES = 400
"""Outputs of the checkpoints' classifier (Kinetics-400), kept so that they load strictly."""
BN_EPS = 1e-3
"""BatchNorm epsilon of the published model (TensorFlow's Sonnet default)."""
BN_MOMENTUM = 0.01
"""BatchNorm running-average momentum (PyTorch convention; only matters when fine-tuning)."""

# Inception-v1 block widths (GoogLeNet, Table 1): input channels, then the 1x1 branch, the
# 1x1 -> 3x3 branch (reduce, out), the second 1x1 -> 3x3 branch (reduce, out) and the pool
# projection. The block's output is the concatenation: b0 + b1b + b2b + b3b channels.
_INCEPTION_WIDTHS: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _same_pad(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    """Zero-pad ``x`` (N, C, T, H, W) like TensorFlow's ``padding="SAME"``.

    The output length is ``ceil(size / stride)``; the total padding that needs is split with
    the smaller half before and the larger after (TensorFlow's rule, which the released
    weights were trained with).
    """
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]  # F.pad wants (W_before, W_after, H..., T...)
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """3-D convolution with "same" padding, then BatchNorm and ReLU (or a plain biased
    convolution, for the classifier). Parameter names: ``conv3d.*``, ``bn.*``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        classifier: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.classifier = kernel, stride, classifier
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=classifier)
        if not classifier:  # BatchNorm's shift replaces the bias
            self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.classifier else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max pooling with "same" padding. Zero padding equals TensorFlow's (which ignores the
    padded cells) here because every pool follows a ReLU: its inputs are >= 0."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    """One Inception block inflated to 3-D: four parallel branches, concatenated."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1_reduce, w1, w2_reduce, w2, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1_reduce)
        self.b1b = Unit3D(w1_reduce, w1, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2_reduce)
        self.b2b = Unit3D(w2_reduce, w2, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1 + w2 + w3

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


class I3D(nn.Module):
    """Inception-v1 I3D: clips (N, C, T, H, W) -> features (N, 1024).

    Args:
        in_channels: 3 for RGB in [-1, 1], 2 for optical flow (x, y) in [-1, 1].
        num_classes: outputs of the (unused) classifier; 400 to load the standard checkpoints.

    Any T, H, W >= 1 work: the final average pool covers whatever the blocks leave (with the
    standard 16 x 224 x 224 input that is 2 x 7 x 7, the published pool).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = KINETICS_CLASSES) -> None:
        super().__init__()
        self.in_channels = in_channels
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),  # no early time pooling
            ("Conv3d_2b_1x1", Unit3D(64, 64)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        pools = {"Mixed_4b": ("MaxPool3d_4a_3x3", 3), "Mixed_5b": ("MaxPool3d_5a_2x2", 2)}
        for name, (channels, widths) in _INCEPTION_WIDTHS.items():
            if name in pools:
                pool_name, k = pools[name]
                layers.append((pool_name, MaxPool3dSame((k, k, k), (2, 2, 2))))
            layers.append((name, Inception(channels, widths)))
        for name, layer in layers:  # the checkpoints' names are the attribute names
            self.add_module(name, layer)
        self.layer_names = [name for name, _ in layers]
        self.logits = Unit3D(FEATURE_DIM, num_classes, classifier=True)

    def forward(self, x: Tensor) -> Tensor:
        for name in self.layer_names:
            x = getattr(self, name)(x)  # (N, C', T', H', W')
        return x.mean(dim=(2, 3, 4))  # (N, 1024)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints are hundreds of MB... or 50)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_i3d(path: str | os.PathLike, in_channels: int) -> I3D:
    """An :class:`I3D` with the weights of a standard PyTorch checkpoint, loaded strictly.

    Raises:
        InputError: naming the file when it cannot be read or does not hold an I3D state
            dict for ``in_channels`` input channels (the first missing, unexpected or
            mis-shaped key).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: many exception types, one message
        raise InputError(path, f"not a PyTorch checkpoint ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "expected a state dict of I3D weights")
    model = I3D(in_channels)
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise InputError(path, f"unexpected key {key!r}: not an I3D state dict")
        if tuple(value.shape) != tuple(expected[key].shape):
            what = f"{key}: shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            raise InputError(path, what + f" (I3D with {in_channels} input channels)")
    # num_batches_tracked is absent from checkpoints saved before PyTorch 0.4.1; BatchNorm
    # fills it in itself on loading, so only the other keys must all be there
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise InputError(path, f"missing key {missing[0]!r} ({len(missing)} missing)")
    model.load_state_dict(state, strict=True)
    return model
