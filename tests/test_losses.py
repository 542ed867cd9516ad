"""Tests of wtal.losses: hand-computed values, masking, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from wtal.configfile import load_config
from wtal.losses import (
    attention_loss,
    base_losses,
    compute_losses,
    normalized_ce,
    pseudo_label_loss,
    snippet_distillation_loss,
    video_targets,
)
from wtal.model import WTALModel

LN2, LN3 = math.log(2.0), math.log(3.0)

BASE = {
    "memory_weight": 0.5,
    "memory_target_weight": 0.2,
    "spl_temperature": 0.2,
    "topk_divisor": 8,
}
"""The reference's weights of the base losses (method.py:273-300), written out on purpose."""


def test_video_targets():
    fg, bg = video_targets(torch.tensor([[1.0, 0.0, 1.0]]))
    assert fg.tolist() == [[1.0, 0.0, 1.0, 0.0]] and bg.tolist() == [[1.0, 0.0, 1.0, 1.0]]


def test_normalized_ce_hand_values():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    target = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    got = normalized_ce(probs, target)
    # Row 0: -(1/2 ln 0.5 + 1/2 ln 0.25) = 1.5 ln 2; row 1: empty target -> 0.
    torch.testing.assert_close(got, torch.tensor([1.5 * LN2, 0.0]))
    # A probability that underflowed to 0 stays finite (the reference would give inf).
    assert torch.isfinite(normalized_ce(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])))


def test_attention_loss_hand_values_and_padding():
    long = torch.arange(16, dtype=torch.float32) / 15  # k = 16 // 8 = 2
    short = torch.tensor([0.2, 0.9, 0.5, 0.1, 0.3, 0.4, 0.6])  # k = max(7 // 8, 1) = 1
    att = torch.full((2, 16), 5.0)  # out-of-range padding must be ignored
    att[0], att[1, :7] = long, short
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0], mask[1, :7] = True, True
    got = attention_loss(att, mask, topk_divisor=8)
    want = torch.tensor([(0 + 1 / 15) / 2 - (1 + 14 / 15) / 2, 0.1 - 0.9])
    torch.testing.assert_close(got, want)
    # The divisor is a parameter: k = 16 // 4 = 4 for the first video.
    top4, bottom4 = (15 + 14 + 13 + 12) / 60, (0 + 1 + 2 + 3) / 60
    torch.testing.assert_close(
        attention_loss(att, mask, topk_divisor=4)[0], torch.tensor(bottom4 - top4)
    )


def reference_spl(logits, target, temperature):
    """L_spl for one unpadded video, written with math on Python floats."""
    total = 0.0
    for s_row, t_row in zip(logits.tolist(), target.tolist(), strict=True):
        t_exp = [math.exp(v / temperature) for v in t_row]
        s_exp = [math.exp(v / temperature) for v in s_row]
        q = [e / sum(t_exp) for e in t_exp]
        total -= sum(qc * math.log(e / sum(s_exp)) for qc, e in zip(q, s_exp, strict=True))
    return total / len(logits)


def test_snippet_distillation_hand_values_mask_and_detach():
    # A uniform student gives ln(C+1) whatever the target.
    got = snippet_distillation_loss(
        torch.zeros(1, 4, 3), torch.randn(1, 4, 3), torch.ones(1, 4, dtype=bool), temperature=0.2
    )
    torch.testing.assert_close(got, torch.tensor([LN3]))

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=gen, requires_grad=True)
    target = torch.randn(2, 5, 3, generator=gen, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    got = snippet_distillation_loss(logits, target, mask, temperature=0.2)
    want = [
        reference_spl(logits[0], target[0], 0.2),
        reference_spl(logits[1, :2], target[1, :2], 0.2),
    ]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert target.grad is None  # the target is detached
    assert (logits.grad[1, 2:] == 0).all() and logits.grad[1, :2].abs().sum() > 0


def test_pseudo_label_loss_hand_values_negative_and_mask():
    mask = torch.tensor([[True, True, False]])
    zeros = torch.zeros(1, 3, 2)  # log softmax = -ln 2 everywhere
    labels = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [9.0, 9.0]]])  # padded row is garbage
    got = pseudo_label_loss(zeros, zeros, labels, mask, 0.8)
    torch.testing.assert_close(got, torch.tensor([LN2]))
    # Delta labels can be negative, and so can the loss.
    torch.testing.assert_close(
        pseudo_label_loss(zeros, zeros, -labels, mask, 0.8), torch.tensor([-LN2])
    )
    # 0.8 / 0.2 mix of the branches: o confident on the labelled class, m uniform.
    o = torch.tensor([[[math.log(3.0), 0.0]] * 3])  # softmax = (3/4, 1/4)
    one_hot = torch.tensor([[[1.0, 0.0]] * 3])
    want = 0.8 * -math.log(0.75) + 0.2 * LN2
    got = pseudo_label_loss(o, zeros, one_hot, mask, 0.8)
    torch.testing.assert_close(got, torch.tensor([want]))
    torch.testing.assert_close(
        pseudo_label_loss(o, zeros, one_hot, mask, o_weight=1.0), torch.tensor([-math.log(0.75)])
    )


def test_pseudo_label_loss_complement_negatives_against_loops():
    # Slow reference: per video, snippet and class, -y log p for y >= 0 and |y| * -log(1 - p)
    # for y < 0, time mean over valid snippets, o/m mix.
    gen = torch.Generator().manual_seed(3)
    o, m = torch.randn(2, 5, 4, generator=gen) * 3, torch.randn(2, 5, 4, generator=gen) * 3
    labels = torch.randn(2, 5, 4, generator=gen)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    got = pseudo_label_loss(o, m, labels, mask, 0.8, negative="complement")
    want = []
    for b in range(2):
        per_branch = []
        for logits in (o, m):
            p = torch.softmax(logits[b].double(), -1)
            rows = []
            for t in range(int(mask[b].sum())):
                s = 0.0
                for c in range(4):
                    y = float(labels[b, t, c])
                    s += -y * math.log(p[t, c]) if y >= 0 else -y * -math.log(1 - p[t, c])
                rows.append(s)
            per_branch.append(sum(rows) / len(rows))
        want.append(0.8 * per_branch[0] + 0.2 * per_branch[1])
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=1e-5, atol=1e-5)
    # Without negative entries the two forms are the same loss.
    pos = labels.abs()
    torch.testing.assert_close(
        pseudo_label_loss(o, m, pos, mask, 0.8, negative="complement"),
        pseudo_label_loss(o, m, pos, mask, 0.8),
    )
    # The push on a negative label fades as its class becomes unlikely: gradient |y| p, not
    # |y| (1 - p) as with the reference's -y log p.
    logits = torch.tensor([[[-12.0, 0.0]]], requires_grad=True)  # p(class 0) ~ 6e-6
    neg = torch.tensor([[[-1.0, 0.0]]])
    one = torch.tensor([[True]])
    pseudo_label_loss(logits, logits.detach(), neg, one, 1.0, negative="complement").backward()
    assert 0 < logits.grad[0, 0, 0] < 1e-5
    logits.grad = None
    pseudo_label_loss(logits, logits.detach(), neg, one, 1.0).backward()
    assert logits.grad[0, 0, 0] > 0.99
    with pytest.raises(ValueError, match="negative"):
        pseudo_label_loss(o, m, labels, mask, 0.8, negative="hinge")


def tiny_setup(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = WTALModel(8, 3, embed_dim=12, num_bases=3, dropout=0.0, generator=gen)
    lengths = (9, 4, 17)
    feats = torch.randn(3, max(lengths), 8, generator=gen)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    model.memory.update(
        torch.randn(3, 3, 12, generator=gen),
        torch.softmax(torch.randn(3, 3, 4, generator=gen), -1),
        torch.ones(3, 3),
    )
    return model, feats, mask, labels


@pytest.mark.parametrize("use_memory", [False, True])
def test_base_losses_padded_batch_equals_single_videos(use_memory):
    model, feats, mask, labels = tiny_setup()
    model.eval()
    with torch.no_grad():
        out = model(feats, mask, labels, use_memory=use_memory)
        batched = base_losses(out, labels, mask, **BASE)
        for i in range(3):
            t = int(mask[i].sum())
            single_out = model(feats[i : i + 1, :t], None, labels[i : i + 1], use_memory=use_memory)
            single = base_losses(
                single_out, labels[i : i + 1], torch.ones(1, t, dtype=torch.bool), **BASE
            )
            for name, value in batched.items():
                assert value.shape == (3,)
                torch.testing.assert_close(value[i : i + 1], single[name], atol=1e-5, rtol=1e-5)


def test_base_losses_composition_with_memory_branch():
    model, feats, mask, labels = tiny_setup(1)
    out = model.eval()(feats, mask, labels, use_memory=True)
    fg, bg = video_targets(labels)
    got = base_losses(out, labels, mask, **BASE)
    nce = normalized_ce
    want_fore = nce(out.o.video_ca, fg) + nce(out.m.video_ca, fg) + 0.5 * nce(out.r.video_ca, fg)
    want_back = nce(out.o.video_cw, bg) + nce(out.m.video_cw, bg) + 0.5 * nce(out.r.video_cw, bg)
    target = 0.2 * out.r.logits + 0.8 * out.m.logits
    torch.testing.assert_close(got["fore"], want_fore)
    torch.testing.assert_close(got["back"], want_back)
    spl = snippet_distillation_loss(out.o.logits, target, mask, 0.2)
    torch.testing.assert_close(got["spl"], spl)
    torch.testing.assert_close(got["att"], attention_loss(out.o.attention, mask, 8))
    without = base_losses(out._replace(r=None), labels, mask, **BASE)
    assert (got["fore"] > without["fore"]).all()


def test_gradient_steps_decrease_total_loss():
    model, feats, mask, labels = tiny_setup(2)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pseudo = torch.rand(3, feats.shape[1], 4, generator=torch.Generator().manual_seed(3))

    def total() -> torch.Tensor:
        out = model(feats, mask, labels, use_memory=True)
        parts = base_losses(out, labels, mask, **BASE)
        dist = pseudo_label_loss(out.o.logits, out.m.logits, pseudo, mask, 0.8)
        loss = parts["fore"] + 0.2 * parts["back"] + 0.1 * parts["att"] + parts["spl"] + dist
        return loss.sum()

    first = total()
    for _ in range(10):
        optimizer.zero_grad()
        loss = total()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
    assert total().item() < first.item() - 0.1


def test_compute_losses_weights_the_terms_as_configured():
    model, feats, mask, labels = tiny_setup(4)
    out = model.eval()(feats, mask, labels, use_memory=True)
    cfg = load_config(
        None,
        [
            "loss.fore_weight=0.7",
            "loss.back_weight=0.3",
            "loss.att_weight=0.2",
            "loss.spl_milestones=[5]",
            "loss.spl_weights=[1.0, 0.25]",
            "loss.spl_temperature=0.5",
            "loss.att_topk_divisor=4",
            "loss.memory_branch_weight=0.4",
            "loss.spl_memory_mix=0.3",
            "pseudo.cas_mix=0.6",
            "pseudo.regen_epochs=[5]",
            "pseudo.temperatures=[0.02]",
            "pseudo.delta=False",
            "pseudo.dist_weight=2.0",
            "pseudo.dist_growth=1.5",
            "pseudo.dist_max=100.0",
        ],
    )
    settings = {"memory_weight": 0.4, "memory_target_weight": 0.3}
    parts = base_losses(out, labels, mask, **settings, spl_temperature=0.5, topk_divisor=4)
    weighted = 0.7 * parts["fore"] + 0.3 * parts["back"] + 0.2 * parts["att"]
    before = compute_losses(out, labels, mask, None, cfg, epoch=4)
    torch.testing.assert_close(before["total"], weighted + 1.0 * parts["spl"])
    assert "dist" not in before
    pseudo = torch.rand(3, feats.shape[1], 4, generator=torch.Generator().manual_seed(5))
    after = compute_losses(out, labels, mask, pseudo, cfg, epoch=6)
    dist = pseudo_label_loss(out.o.logits, out.m.logits, pseudo, mask, 0.6)
    torch.testing.assert_close(after["dist"], dist)
    # λ_dist(6) = 2.0 * 1.5 ** (6 - 5); λ_spl(6) = 0.25
    torch.testing.assert_close(after["total"], weighted + 0.25 * parts["spl"] + 3.0 * dist)
    # Negative (delta) targets follow pseudo.delta_negative: the reference's -Y log p by
    # default, or the bounded form.
    signed = pseudo - 0.5
    default = compute_losses(out, labels, mask, signed, cfg, epoch=6)["dist"]
    torch.testing.assert_close(
        default, pseudo_label_loss(out.o.logits, out.m.logits, signed, mask, 0.6)
    )
    comp_cfg = load_config(None, ["pseudo.delta_negative=complement"])
    comp = compute_losses(out, labels, mask, signed, comp_cfg, epoch=300)["dist"]
    want = pseudo_label_loss(out.o.logits, out.m.logits, signed, mask, 0.8, negative="complement")
    torch.testing.assert_close(comp, want)
    assert not torch.allclose(
        comp, pseudo_label_loss(out.o.logits, out.m.logits, signed, mask, 0.8)
    )
