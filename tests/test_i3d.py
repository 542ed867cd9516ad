"""The I3D network (wtal.i3d) and the extractors built on it (wtal.extractors).

Small spatial sizes keep the network fast on one CPU thread: the final pool is adaptive, so
any input size runs; the published 16 x 224 x 224 geometry is checked once.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from wtal.extractors import WEIGHT_FILES, build_extractor, resolve_weights, tvl1_flow
from wtal.i3d import I3D, _same_pad, load_i3d, sha256_file
from wtal.io import InputError
from wtal.video import FeatureSpec

# Names and shapes of the standard PyTorch I3D checkpoints (rgb_imagenet.pt; flow_imagenet.pt
# differs only in the first convolution's 2 input channels).
EXPECTED_KEYS = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.weight": (64,),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_3c.b2b.bn.running_mean": (96,),
    "Mixed_4b.b1a.conv3d.weight": (96, 480, 1, 1, 1),
    "Mixed_4e.b1b.conv3d.weight": (288, 144, 3, 3, 3),
    "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
    "Mixed_5b.b2a.bn.bias": (32,),
    "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
    "Mixed_5c.b3b.bn.weight": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}
UNITS = 3 + 9 * 6
"""Convolution + BatchNorm units: the stem's three and six per Inception block."""


def test_state_dict_names_and_shapes():
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        state, flow, bn = I3D(3).state_dict(), I3D(2).state_dict(), I3D().Conv3d_1a_7x7.bn
    for key, shape in EXPECTED_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    # each unit: conv weight + 4 BatchNorm tensors; plus the classifier's weight and bias
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == UNITS * 5 + 2
    assert not any(k.endswith(".bias") and "conv3d" in k and "logits" not in k for k in state)
    assert tuple(flow["Conv3d_1a_7x7.conv3d.weight"].shape) == (64, 2, 7, 7, 7)
    assert bn.eps == 1e-3


def test_published_geometry():
    """16 x 224 x 224 leaves 2 x 7 x 7 after Mixed_5c (the published average pool)."""
    model = I3D().eval()
    seen = {}
    model.Mixed_5c.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 16, 224, 224))
    assert seen["shape"] == (1, 1024, 2, 7, 7) and tuple(out.shape) == (1, 1024)


@pytest.mark.parametrize("size, kernel, stride", [(7, 3, 1), (224, 7, 2), (9, 3, 2), (1, 3, 2)])
def test_same_padding_gives_ceil_output(size, kernel, stride):
    x = torch.zeros(1, 1, size, size, size)
    padded = _same_pad(x, (kernel,) * 3, (stride,) * 3)
    out = (padded.shape[2] - kernel) // stride + 1
    assert out == -(-size // stride)
    before = (padded.shape[2] - size) // 2  # TensorFlow puts the odd pixel after
    assert padded.shape[2] - size - before >= before


def _random_state(in_channels: int, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict like an old checkpoint: no num_batches_tracked, random statistics."""
    torch.manual_seed(seed)
    model = I3D(in_channels)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for key in state:
        if key.endswith("running_var"):
            state[key] = torch.rand_like(state[key]) + 0.5
        elif key.endswith("running_mean"):
            state[key] = torch.randn_like(state[key]) * 0.1
    return state


def test_checkpoint_round_trip_strict(tmp_path):
    state = _random_state(3, seed=3)
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(state, path)
    model = load_i3d(path, in_channels=3).eval()
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    reference = I3D(3).eval()
    reference.load_state_dict(state, strict=False)  # num_batches_tracked stays at its default
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x))
    assert len(sha256_file(path)) == 64


def test_bad_checkpoints_name_the_file(tmp_path):
    torch.save(_random_state(2, seed=0), tmp_path / "flow.pt")
    with pytest.raises(InputError, match="flow.pt: Conv3d_1a_7x7.conv3d.weight: shape"):
        load_i3d(tmp_path / "flow.pt", in_channels=3)
    state = _random_state(3, seed=0)
    del state["Mixed_4c.b0.bn.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="missing key 'Mixed_4c.b0.bn.weight'"):
        load_i3d(tmp_path / "partial.pt", in_channels=3)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt: not a PyTorch checkpoint"):
        load_i3d(tmp_path / "junk.pt", in_channels=3)


def test_weights_resolution(tmp_path):
    assert resolve_weights("none", ["rgb"]) is None
    with pytest.raises(InputError, match="not found"):
        resolve_weights(tmp_path / "nope.pt", ["rgb"])
    (tmp_path / WEIGHT_FILES["rgb"]).write_bytes(b"x")
    with pytest.raises(InputError, match="needs a folder holding"):
        resolve_weights(tmp_path / WEIGHT_FILES["rgb"], ["rgb", "flow"])
    with pytest.raises(InputError, match="no flow_imagenet.pt"):
        resolve_weights(tmp_path, ["rgb", "flow"])
    assert resolve_weights(tmp_path, ["rgb"]) == {"rgb": tmp_path / "rgb_imagenet.pt"}


def test_rgb_extractor_shapes_determinism_and_batching():
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the CLI prints these as `warning:` lines
    logging.getLogger("wtal.extractors").addHandler(handler)
    try:
        extractor = build_extractor("i3d-rgb", "none", "cpu")
    finally:
        logging.getLogger("wtal.extractors").removeHandler(handler)
    assert any("randomly initialised" in r.getMessage() for r in records)
    assert (extractor.name, extractor.dim, extractor.clip_frames) == ("i3d-rgb", 1024, 16)
    assert extractor.weights == {"rgb": {"path": "none", "sha256": "random"}}
    clips = torch.rand(3, 16, 3, 32, 32) * 2 - 1
    features = extractor(clips)
    assert features.shape == (3, 1024) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std() > 0
    one_by_one = np.concatenate([extractor(clips[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(one_by_one, features, rtol=1e-4, atol=1e-5)
    again = build_extractor("i3d-rgb", "none", "cpu")(clips)  # seeded: the same network
    np.testing.assert_array_equal(again, features)
    with pytest.raises(ValueError, match="clips: expected"):
        extractor(clips[:, :8])
    with pytest.raises(InputError, match="--extractor"):
        build_extractor("c3d", "none")


def test_moving_square_flow_points_the_right_way():
    pytest.importorskip("cv2", reason="opencv-contrib (the video extra) is not installed")
    frames = np.zeros((3, 64, 64), dtype=np.uint8)
    for t in range(3):  # a bright square moving 2 px right and 1 px down per frame
        frames[t, 20 + t : 36 + t, 16 + 2 * t : 32 + 2 * t] = 200
    flow = tvl1_flow(frames, clip=20.0)  # (2, 2, 64, 64)
    assert flow.shape == (2, 2, 64, 64) and flow.dtype == np.float32
    inside = flow[:, :, 24:32, 22:30]  # the square's interior at both frames
    assert inside[:, 0].mean() * 20 == pytest.approx(2.0, abs=0.5)  # x: right
    assert inside[:, 1].mean() * 20 == pytest.approx(1.0, abs=0.5)  # y: down
    assert np.abs(flow).max() <= 1.0


def test_two_stream_extractor():
    pytest.importorskip("cv2", reason="opencv-contrib (the video extra) is not installed")
    spec = FeatureSpec(snippet_frames=4, stride=4)
    extractor = build_extractor("i3d-two-stream", "none", "cpu", spec)
    assert (extractor.dim, extractor.clip_frames) == (2048, 5)  # 4 flow fields need 5 frames
    assert list(extractor.streams) == ["rgb", "flow"]
    clips = torch.rand(2, 5, 3, 32, 32) * 2 - 1
    features = extractor(clips)
    assert features.shape == (2, 2048)
    rgb_only = build_extractor("i3d-rgb", "none", "cpu", spec)(clips[:, :4])
    np.testing.assert_allclose(features[:, :1024], rgb_only, rtol=1e-5, atol=1e-6)  # RGB first
    assert not np.allclose(features[:, 1024:], features[:, :1024])
