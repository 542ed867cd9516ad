"""Tests of wtal.model: parity with the authors' network, masking, memory, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wtal.io import InputError
from wtal.model import (
    ClassMemory,
    WTALModel,
    convert_reference_state_dict,
    em_bases,
    load_reference_state_dict,
    random_walk,
)

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


# --------------------------------------------------------------------------- slow references


def reference_em(x: np.ndarray, init: np.ndarray, iters: int, sharpness: float) -> np.ndarray:
    """EM of paper.md §1.2 for one unpadded video, float64, written out term by term."""
    x_hat = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    mu = init.copy()
    for _ in range(iters):
        mu_hat = mu / (np.linalg.norm(mu, axis=1, keepdims=True) + 1e-9)
        logits = sharpness * mu_hat @ x_hat.T  # (K, T)
        z = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
        z_bar = z / (z.sum(1, keepdims=True) + 1e-9)
        mu = z_bar @ x
    return mu


def reference_walk(x: np.ndarray, y: np.ndarray, w: float, sharpness: float) -> np.ndarray:
    """Random walk of paper.md §1.2 for one video, float64, with the explicit (T, T) inverse."""
    x_hat = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    y_hat = y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-9)
    logits = sharpness * y_hat @ x_hat.T
    z = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)  # (K, T)
    z_bar = z / (z.sum(1, keepdims=True) + 1e-9)
    inverse = np.linalg.inv(np.eye(x.shape[0]) - w**2 * z.T @ z_bar)
    return (1 - w) * inverse @ (w * z.T @ y + x)


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


def test_reference_state_dict_conversion_and_errors():
    model = small_model()
    theirs = {
        "module.mu": torch.randn(8, EMBED_DIM),
        "ac_center": torch.randn(NUM_CLASSES + 1, EMBED_DIM),
        "fg_center": torch.randn(1, EMBED_DIM),
        "feature_embedding.0.weight": np.random.default_rng(0).normal(size=(EMBED_DIM, FEAT_DIM)),
        "feature_embedding.0.bias": torch.randn(EMBED_DIM),
    }
    converted = convert_reference_state_dict(theirs)
    assert set(converted) == {
        "basis_init",
        "class_centers",
        "foreground_center",
        "embedding.weight",
        "embedding.bias",
    }
    load_reference_state_dict(model, theirs)
    torch.testing.assert_close(model.class_centers.data, theirs["ac_center"])
    torch.testing.assert_close(model.basis_init.data, theirs["module.mu"])
    with pytest.raises(InputError, match="unexpected key 'extra'"):
        convert_reference_state_dict({**theirs, "extra": torch.zeros(1)})
    with pytest.raises(InputError, match="missing"):
        convert_reference_state_dict({k: v for k, v in theirs.items() if k != "fg_center"})
    with pytest.raises(InputError, match="shape"):
        load_reference_state_dict(model, {**theirs, "ac_center": torch.zeros(3, EMBED_DIM)})


# --------------------------------------------------------------------------- kernels


def test_em_matches_reference_and_ignores_padding():
    videos = random_videos(3)
    feats, mask = pad(videos)
    init = torch.randn(5, FEAT_DIM, generator=torch.Generator().manual_seed(4))
    got = em_bases(feats.double(), mask, init.double(), iters=3, sharpness=5.0)
    for i, v in enumerate(videos):
        want = reference_em(v.double().numpy(), init.double().numpy(), 3, 5.0)
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["woodbury", "dense"])
def test_random_walk_matches_explicit_inverse(method):
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        videos = [torch.rand(t, 6, generator=gen) for t in (5, 11, 3)]
        feats, mask = pad(videos, fill=0.0)
        protos = torch.randn(3, 4, 6, generator=gen)
        got = random_walk(feats.double(), protos.double(), mask, method=method)
        for i, v in enumerate(videos):
            want = reference_walk(v.double().numpy(), protos[i].double().numpy(), 0.5, 5.0)
            np.testing.assert_allclose(got[i, : len(v)].numpy(), want, rtol=1e-9, atol=1e-12)
            assert (got[i, len(v) :] == 0).all()


def test_random_walk_prototype_mask_equals_dropping_prototypes():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 9, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    protos = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)
    proto_mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    got = random_walk(x, protos, mask, proto_mask)
    want0 = random_walk(x[:1], protos[:1, :4], mask[:1])
    torch.testing.assert_close(got[:1], want0)
    # No valid prototype at all: the walk degenerates to (1 - w) x, and stays finite.
    none = random_walk(x, protos, mask, torch.zeros(2, 6, dtype=torch.bool))
    torch.testing.assert_close(none, 0.5 * x)


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


# --------------------------------------------------------------------------- memory


def one_hot_scores(num_bases: int, best: dict[int, list[float]]) -> torch.Tensor:
    """(1, K, C+1) basis scores: column c gets ``best[c]``, the rest a small constant."""
    scores = torch.full((1, num_bases, NUM_CLASSES + 1), 0.01)
    for c, values in best.items():
        scores[0, :, c] = torch.tensor(values)
    return scores


def test_memory_per_class_indexing_vs_reference_bug():
    bases = torch.arange(3, dtype=torch.float32)[None, :, None].expand(1, 3, 2) + 1  # 1, 2, 3
    scores = one_hot_scores(3, {0: [0.9, 0.8, 0.7], 2: [0.1, 0.5, 0.3]})
    labels = torch.tensor([[0.0, 0.0, 1.0, 0.0]])

    right = ClassMemory(NUM_CLASSES, 2, 2)
    right.update(bases, scores, labels)
    assert right.filled.tolist() == [False, False, True, False]
    assert right.queues[2, :, 0].tolist() == [2.0, 3.0]  # ranked by the class-2 scores
    assert right.scores[2].tolist() == pytest.approx([0.5, 0.3])
    protos, pmask = right.read(labels)
    assert protos[0, :, 0].tolist() == [2.0, 3.0] and pmask.all()

    buggy = ClassMemory(NUM_CLASSES, 2, 2, index_bug=True)
    buggy.update(bases, scores, labels)
    assert buggy.filled.tolist() == [True, False, False, False]  # always class 0's queue
    assert buggy.queues[0, :, 0].tolist() == [1.0, 2.0]  # ranked by column 0
    protos, _ = buggy.read(labels)
    assert protos[0, :, 0].tolist() == [1.0, 2.0]

    # Two labelled classes: the bug merges the same bases twice into class 0 (duplicates).
    two = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    buggy.reset()
    buggy.update(bases, scores, two)
    assert buggy.queues[0, :, 0].tolist() == [1.0, 1.0]
    protos, pmask = buggy.read(two)
    assert protos.shape == (1, 4, 2) and protos[0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_memory_read_pads_videos_with_fewer_classes():
    mem = ClassMemory(NUM_CLASSES, 2, 3)
    gen = torch.Generator().manual_seed(0)
    for c in range(NUM_CLASSES):
        bases = torch.randn(1, 4, 3, generator=gen)
        labels = torch.zeros(1, NUM_CLASSES)
        labels[0, c] = 1
        mem.update(bases, torch.rand(1, 4, NUM_CLASSES + 1, generator=gen), labels)
    labels = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)
    protos, pmask = mem.read(labels)
    assert protos.shape == (3, 4, 3)
    assert pmask.tolist() == [[True] * 4, [True, True, False, False], [False] * 4]
    torch.testing.assert_close(protos[0], torch.cat([mem.queues[1], mem.queues[3]]))
    torch.testing.assert_close(protos[1, :2], mem.queues[2])
    assert (protos[~pmask] == 0).all()


def test_memory_batched_update_equals_one_video_at_a_time():
    gen = torch.Generator().manual_seed(3)
    bases = torch.randn(4, 6, 5, generator=gen)
    scores = torch.softmax(torch.randn(4, 6, NUM_CLASSES + 1, generator=gen), -1)
    labels = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]).float()
    for bug in (False, True):
        batched = ClassMemory(NUM_CLASSES, 4, 5, index_bug=bug)
        sequential = ClassMemory(NUM_CLASSES, 4, 5, index_bug=bug)
        batched.update(bases, scores, labels)
        for i in range(4):
            sequential.update(bases[i : i + 1], scores[i : i + 1], labels[i : i + 1])
        for name, buf in batched.named_buffers():
            assert torch.equal(buf, dict(sequential.named_buffers())[name]), (bug, name)
    # The queue of class 0 holds the best 4 class-0 scores over videos 0, 1, 3 (correct index).
    want = torch.cat([scores[0, :, 0], scores[1, :, 0], scores[3, :, 0]]).sort(descending=True)
    torch.testing.assert_close(batched.scores[0], sequential.scores[0])
    mem = ClassMemory(NUM_CLASSES, 4, 5)
    mem.update(bases, scores, labels)
    torch.testing.assert_close(mem.scores[0], want.values[:4])


def test_memory_partial_fill_reset_and_mask_empty():
    mem = ClassMemory(NUM_CLASSES, 5, 2, mask_empty=True)
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    mem.update(torch.ones(1, 3, 2), torch.full((1, 3, NUM_CLASSES + 1), 0.2), labels)
    assert mem.num_filled.tolist() == [0, 3, 0, 0]
    _, pmask = mem.read(labels)
    assert pmask.tolist() == [[True, True, True, False, False]]
    mem.update(torch.ones(1, 3, 2), torch.full((1, 3, NUM_CLASSES + 1), 0.2), labels)
    assert mem.num_filled.tolist() == [0, 5, 0, 0]
    mem.reset()
    assert not mem.filled.any() and mem.queues.abs().sum() == 0
    assert not mem.read(labels)[1].any()  # empty slots masked ...
    mem.mask_empty = False
    assert mem.read(labels)[1].all()  # ... or kept as zero vectors, as in the reference


def test_memory_branch_without_labelled_classes_equals_o_branch():
    # No prototype at all: the walk gives (1 - w) x, and cosine scores ignore the scale.
    model = small_model(seed=4).eval()
    feats, mask = pad(random_videos(2))
    out = model(feats, mask, torch.zeros(len(LENGTHS), NUM_CLASSES), use_memory=True)
    for got, want in zip(out.r, out.o, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
