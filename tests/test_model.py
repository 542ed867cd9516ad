"""Tests of wtal.model: parity with the authors' network, masking, memory branch, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.reference_checkpoint import load_reference_state_dict
from wtal.model import WTALModel

FEAT_DIM, EMBED_DIM, NUM_CLASSES = 16, 24, 4
LENGTHS = (7, 19, 12)


def small_model(seed: int = 0, **kwargs) -> WTALModel:
    gen = torch.Generator().manual_seed(seed)
    kwargs = {"embed_dim": EMBED_DIM, "generator": gen, **kwargs}
    return WTALModel(FEAT_DIM, NUM_CLASSES, **kwargs)


def pad(videos: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_i, D) list -> (B, T_max, D) padded with ``fill`` and a (B, T_max) mask."""
    t_max = max(v.shape[0] for v in videos)
    feats = torch.full((len(videos), t_max, videos[0].shape[1]), fill)
    mask = torch.zeros(len(videos), t_max, dtype=torch.bool)
    for i, v in enumerate(videos):
        feats[i, : len(v)], mask[i, : len(v)] = v, True
    return feats, mask


def random_videos(seed: int = 0, lengths=LENGTHS) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(t, FEAT_DIM, generator=gen) * 2 for t in lengths]


def filled_memory(model: WTALModel, seed: int = 1) -> None:
    """Write random bases into the memory through its public update."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        bases = torch.randn(2, model.basis_init.shape[0], EMBED_DIM, generator=gen)
        scores = torch.softmax(torch.randn(2, bases.shape[1], NUM_CLASSES + 1, generator=gen), -1)
        model.memory.update(bases, scores, torch.ones(2, NUM_CLASSES))


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def parity(shared_data):
    path = shared_data / "reference_outputs" / "forward_parity.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = np.load(path)
    weights = {k.removeprefix("weight:"): data[k] for k in data.files if k.startswith("weight:")}
    return data, weights


PER_SNIPPET = {"o_att", "o_frm_scr", "m_att", "m_frm_scr", "em_embedded", "em_reallocated"}
REFERENCE_FIELDS = {  # stored name -> how to get it from our output for video i
    "o_vid_ca_pred": lambda out, i: out.o.video_ca[i],
    "o_vid_cw_pred": lambda out, i: out.o.video_cw[i],
    "o_att": lambda out, i: out.o.attention[i],
    "o_frm_scr": lambda out, i: out.o.logits[i],
    "m_vid_ca_pred": lambda out, i: out.m.video_ca[i],
    "m_vid_cw_pred": lambda out, i: out.m.video_cw[i],
    "m_att": lambda out, i: out.m.attention[i],
    "m_frm_scr": lambda out, i: out.m.logits[i],
    "em_embedded": lambda out, i: out.embedded[i],
    "em_mu": lambda out, i: out.bases[i],
    "em_mu_pred": lambda out, i: out.basis_scores[i],
    "em_reallocated": lambda out, i: out.propagated[i],
}


def assert_relative(ours: torch.Tensor, ref: np.ndarray, name: str, rtol: float = 1e-4) -> None:
    """|ours - ref| <= rtol * (|ref| + max|ref|): relative to the tensor's own scale, so values
    that cross zero (snippet logits) are not held to an impossible elementwise bound."""
    ref_t = torch.from_numpy(ref).to(ours.dtype)
    bound = rtol * (ref_t.abs() + ref_t.abs().max())
    err = (ours - ref_t).abs()
    assert bool((err <= bound).all()), (
        f"{name}: max error {err.max():.3g}, max |ref| {ref_t.abs().max():.3g}"
    )


@pytest.mark.parametrize("walk_method", ["woodbury", "dense"])
def test_parity_with_reference_network(parity, walk_method):
    data, weights = parity
    dim = weights["mu"].shape[1]
    model = WTALModel(
        dim, weights["ac_center"].shape[0] - 1, embed_dim=dim, walk_method=walk_method
    )
    load_reference_state_dict(model, weights)
    model.eval()
    videos = [torch.from_numpy(data[f"features_{i}"]) for i in range(3)]
    feats, mask = pad(videos, fill=7.0)
    with torch.no_grad():
        batched = model(feats, mask)
        for i, video in enumerate(videos):
            single = model(video[None])
            length = video.shape[0]
            for name, get in REFERENCE_FIELDS.items():
                ref = data[f"{name}_{i}"]
                assert_relative(get(single, 0), ref, f"{name}_{i} single")
                got = get(batched, i)
                got = got[:length] if name in PER_SNIPPET else got  # drop the padding
                assert_relative(got, ref, f"{name}_{i} batched")


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("use_memory", [False, True])
def test_output_shapes_and_padding_zeros(use_memory):
    model = small_model(num_bases=3).eval()
    feats, mask = pad(random_videos(), fill=float("nan"))  # garbage in padding must not leak
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    filled_memory(model)
    out = model(feats, mask, labels, use_memory=use_memory)
    b, t = mask.shape
    branches = [out.o, out.m] + ([out.r] if use_memory else [])
    assert (out.r is None) == (not use_memory)
    for br in branches:
        assert br.video_ca.shape == br.video_cw.shape == (b, NUM_CLASSES + 1)
        assert br.attention.shape == (b, t) and br.logits.shape == (b, t, NUM_CLASSES + 1)
        torch.testing.assert_close(br.video_ca.sum(-1), torch.ones(b))
        assert ((br.attention >= 0) & (br.attention <= 1)).all()
        assert (br.attention[~mask] == 0).all() and (br.logits[~mask] == 0).all()
    assert out.embedded.shape == out.propagated.shape == (b, t, EMBED_DIM)
    assert out.bases.shape == (b, 3, EMBED_DIM)
    assert out.basis_scores.shape == (b, 3, NUM_CLASSES + 1)
    assert (out.embedded[~mask] == 0).all() and (out.propagated[~mask] == 0).all()
    for tensor in [out.embedded, out.bases, out.propagated, *[x for br in branches for x in br]]:
        assert torch.isfinite(tensor).all()


def test_padded_batch_equals_single_videos_with_memory_and_multilabel():
    model = small_model(seed=2).eval()
    filled_memory(model)
    videos = random_videos(7)
    labels = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 0, 0, 1]], dtype=torch.float32)
    feats, mask = pad(videos, fill=-3.0)
    with torch.no_grad():
        batched = model(feats, mask, labels, use_memory=True)
        for i, v in enumerate(videos):
            single = model(v[None], None, labels[i : i + 1], use_memory=True)
            t = len(v)
            for br_b, br_s in zip(batched[:3], single[:3], strict=True):
                torch.testing.assert_close(br_b.video_ca[i], br_s.video_ca[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(br_b.video_cw[i], br_s.video_cw[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(
                    br_b.attention[i, :t], br_s.attention[0], atol=1e-5, rtol=1e-5
                )
                torch.testing.assert_close(br_b.logits[i, :t], br_s.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.bases[i], single.bases[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                batched.propagated[i, :t], single.propagated[0], atol=1e-5, rtol=1e-5
            )


def test_gradients_finite_with_padding():
    model = small_model(seed=3).train()
    filled_memory(model)
    feats, mask = pad(random_videos(9), fill=float("nan"))
    labels = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    out = model(feats, mask, labels, use_memory=True)
    loss = sum(br.video_ca.log().sum() + br.logits.sum() + br.attention.sum() for br in out[:3])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_determinism_same_seed_same_init_and_outputs():
    a, b, c = small_model(seed=11), small_model(seed=11), small_model(seed=12)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.class_centers, c.class_centers)
    torch.testing.assert_close(a.foreground_center.data, -a.class_centers.data[-1:])
    feats, mask = pad(random_videos(1))
    outs = []
    for model in (a, b):
        torch.manual_seed(5)  # dropout in training mode draws from the global RNG
        outs.append(model.train()(feats, mask))
    for x, y in zip(outs[0].o, outs[1].o, strict=True):
        assert torch.equal(x, y)


def test_dropout_drops_with_its_probability_and_keeps_the_mean():
    model = WTALModel(8, 3, embed_dim=64, dropout=0.6)
    with torch.no_grad():  # a positive embedding: every zero is a dropped unit
        model.embedding.weight.fill_(0.1)
        model.embedding.bias.fill_(1.0)
    feats = torch.rand(4, 500, 8)
    model.eval()
    clean = model(feats).embedded
    torch.manual_seed(0)
    dropped = model.train()(feats).embedded
    assert torch.all(clean > 0)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.4) < 0.01  # 128,000 draws: sd 0.0014
    torch.testing.assert_close(dropped[kept], clean[kept] / 0.4)  # inverted dropout
    torch.manual_seed(0)
    assert torch.equal(model(feats).embedded, dropped)  # the global RNG decides
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout"):
            WTALModel(8, 3, dropout=bad)


def test_forward_input_errors():
    model = small_model()
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 5, FEAT_DIM + 1))
    with pytest.raises(ValueError, match="labels"):
        model(torch.zeros(1, 5, FEAT_DIM), use_memory=True)
    with pytest.raises(ValueError, match="walk_method"):
        small_model(walk_method="inverse")


def test_memory_branch_without_labelled_classes_equals_o_branch():
    # No prototype at all: the walk gives (1 - w) x, and cosine scores ignore the scale.
    model = small_model(seed=4).eval()
    feats, mask = pad(random_videos(2))
    out = model(feats, mask, torch.zeros(len(LENGTHS), NUM_CLASSES), use_memory=True)
    for got, want in zip(out.r, out.o, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
