"""Tests of wtal.memory: EM and random walk against slow references, the class memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wtal.memory import ClassMemory, em_bases, random_walk

FEAT_DIM, NUM_CLASSES = 16, 4


def pad(videos: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_i, D) list -> (B, T_max, D) zero-padded and a (B, T_max) mask."""
    t_max = max(v.shape[0] for v in videos)
    feats = torch.zeros(len(videos), t_max, videos[0].shape[1])
    mask = torch.zeros(len(videos), t_max, dtype=torch.bool)
    for i, v in enumerate(videos):
        feats[i, : len(v)], mask[i, : len(v)] = v, True
    return feats, mask


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


def test_em_matches_reference_and_ignores_padding():
    gen = torch.Generator().manual_seed(3)
    videos = [torch.rand(t, FEAT_DIM, generator=gen) * 2 for t in (7, 19, 12)]
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
        feats, mask = pad(videos)
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
    assert (right.num_filled > 0).tolist() == [False, False, True, False]
    assert right.queues[2, :, 0].tolist() == [2.0, 3.0]  # ranked by the class-2 scores
    assert right.scores[2].tolist() == pytest.approx([0.5, 0.3])
    protos, pmask = right.read(labels)
    assert protos[0, :, 0].tolist() == [2.0, 3.0] and pmask.all()

    buggy = ClassMemory(NUM_CLASSES, 2, 2, index_bug=True)
    buggy.update(bases, scores, labels)
    assert (buggy.num_filled > 0).tolist() == [True, False, False, False]  # always class 0's queue
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
    assert not mem.num_filled.any() and mem.queues.abs().sum() == 0
    assert not mem.read(labels)[1].any()  # empty slots masked ...
    mem.mask_empty = False
    assert mem.read(labels)[1].all()  # ... or kept as zero vectors, as in the reference
