"""Losses of the base model (paper.md §1.3) and the pseudo-label loss (§1.8).

Pure functions on the tensors of :class:`wtal.model.ModelOutput`. Every loss returns one value
per video, shape (B,), and averages over the *valid* snippets of each video only (``mask``);
:func:`compute_losses` weights and sums them as the run's config and schedule say. Padded
positions never contribute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wtal.config import DELTA_NEGATIVES, Config
from wtal.model import ModelOutput
from wtal.schedule import dist_weight, spl_weight


def _log(probs: Tensor) -> Tensor:
    # log of probabilities that may underflow to exactly 0 in float32: the reference takes
    # log(p) and would give -inf (and a NaN gradient); clamping to the smallest normal number
    # changes nothing else.
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def _masked_time_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, T) -> (B,) mean over the valid snippets of each video."""
    valid = mask.to(x.dtype)
    return (x * valid).sum(1) / valid.sum(1).clamp_min(1.0)


def video_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Foreground and background video targets from action labels (method.py:225-226).

    Args:
        labels: (B, C) multi-hot action labels.

    Returns:
        foreground (B, C+1) ``[y, 0]`` and background (B, C+1) ``[y, 1]``.
    """
    zeros = labels.new_zeros(labels.shape[0], 1)
    return torch.cat([labels, zeros], 1), torch.cat([labels, zeros + 1], 1)


def normalized_ce(probs: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Cross-entropy against a target normalised to sum 1: ``-sum_c q_c / sum(q) log p_c``.

    Args:
        probs: (B, N) probabilities.
        target: (B, N) non-negative target weights (multi-hot).
        eps: added to the target sum (a zero target gives loss 0).

    Returns:
        (B,) loss per video.
    """
    weights = target / (target.sum(1, keepdim=True) + eps)
    return -(weights * _log(probs)).sum(1)


def attention_loss(attention: Tensor, mask: Tensor, topk_divisor: int) -> Tensor:
    """Mean of the k lowest minus mean of the k highest attention values, per video.

    ``k = max(T_i // topk_divisor, 1)`` with T_i the video's valid length (losses.py:31-45).

    Args:
        attention: (B, T) attention in [0, 1].
        mask: (B, T) bool, valid snippets (each video needs at least one).
        topk_divisor: k is the valid length divided by this (floor), at least 1.

    Returns:
        (B,) loss in [-1, 1].
    """
    lengths = mask.sum(1)  # (B,)
    k = torch.clamp(lengths // topk_divisor, min=1)  # (B,)
    rank = torch.arange(attention.shape[1], device=attention.device)[None, :]  # (1, T)
    in_topk = rank < k[:, None]  # (B, T): the first k of a sorted row
    high = attention.masked_fill(~mask, -torch.inf).sort(1, descending=True).values
    low = attention.masked_fill(~mask, torch.inf).sort(1).values
    zero = attention.new_zeros(())
    top_mean = torch.where(in_topk, high, zero).sum(1) / k
    bottom_mean = torch.where(in_topk, low, zero).sum(1) / k
    return bottom_mean - top_mean


def snippet_distillation_loss(
    logits: Tensor, target_logits: Tensor, mask: Tensor, temperature: float
) -> Tensor:
    """L_spl: snippet-level cross-entropy to a detached, tempered target distribution.

    ``mean_t -sum_c softmax(target_t / tau)_c log softmax(logits_t / tau)_c`` (losses.py:18-28).

    Args:
        logits: (B, T, C+1) student snippet logits (the o branch).
        target_logits: (B, T, C+1) teacher logits (m branch, or 0.2 r + 0.8 m); detached here.
        mask: (B, T) bool, valid snippets.
        temperature: tau applied to both sides.

    Returns:
        (B,) loss per video.
    """
    target = torch.softmax(target_logits.detach() / temperature, -1)
    per_snippet = -(target * F.log_softmax(logits / temperature, -1)).sum(-1)  # (B, T)
    return _masked_time_mean(per_snippet, mask)


def pseudo_label_loss(
    o_logits: Tensor,
    m_logits: Tensor,
    pseudo_labels: Tensor,
    mask: Tensor,
    o_weight: float,
    negative: str = "reference",
) -> Tensor:
    """L_dist: cross-entropy of both branches' snippet softmax to pseudo labels (§1.8).

    ``o_weight * mean_t -sum_c Y log softmax(S_o) + (1 - o_weight) * (same for S_m)``, with no
    temperature and Y not normalised (utils.py:397-403). Delta pseudo labels may be negative,
    and so may the loss.

    A negative entry ``Y < 0`` enters as ``-Y log p`` with ``negative="reference"``: it pushes
    ``log p`` down without bound, with a gradient that stays at ``|Y|`` as ``p -> 0`` (§7 Q6).
    With ``negative="complement"`` it enters as ``|Y| * -log(1 - p)`` (a negative-learning
    term): its gradient on the class's own logit is ``|Y| p`` instead of ``|Y| (1 - p)``, so it
    pushes a confident class down and fades once the class is unlikely. Positive entries are
    the reference's in both.

    Args:
        o_logits: (B, T, C+1) snippet logits of the o branch.
        m_logits: (B, T, C+1) snippet logits of the m branch.
        pseudo_labels: (B, T, C+1) pseudo labels Y (or delta labels); padded rows ignored.
        mask: (B, T) bool, valid snippets.
        o_weight: weight of the o branch (``frm_coef_pseudo``); the m branch gets the rest.

    Returns:
        (B,) loss per video.
    """
    target = pseudo_labels.detach()
    ce_o = _label_ce(target, F.log_softmax(o_logits, -1), negative)  # (B, T)
    ce_m = _label_ce(target, F.log_softmax(m_logits, -1), negative)
    return o_weight * _masked_time_mean(ce_o, mask) + (1 - o_weight) * _masked_time_mean(ce_m, mask)


def _label_ce(target: Tensor, log_probs: Tensor, negative: str) -> Tensor:
    """(B, T) ``-sum_c Y log p``, negative entries per :func:`pseudo_label_loss`."""
    if negative not in DELTA_NEGATIVES:
        raise ValueError(f"negative must be one of {', '.join(DELTA_NEGATIVES)}, got {negative!r}")
    if negative == "reference":
        return -(target * log_probs).sum(-1)
    pos, neg = target.clamp_min(0), (-target).clamp_min(0)
    log_not = _log(-torch.expm1(log_probs))  # log(1 - p), stable for p near 0 and 1
    return -(pos * log_probs).sum(-1) - (neg * log_not).sum(-1)


def base_losses(
    output: ModelOutput,
    labels: Tensor,
    mask: Tensor,
    *,
    memory_weight: float,
    memory_target_weight: float,
    spl_temperature: float,
    topk_divisor: int,
) -> dict[str, Tensor]:
    """The unweighted RSKP losses of one forward pass (method.py:273-300), each (B,).

    With the r branch present: ``fore``/``back`` add ``memory_weight`` times its terms, and
    the L_spl target becomes ``memory_target_weight * S_r + (1 - memory_target_weight) * S_m``.

    Args:
        output: the model output (``output.r`` is used when not None).
        labels: (B, C) multi-hot action labels.
        mask: (B, T) bool, valid snippets.
        memory_weight: factor of the r-branch video losses.
        memory_target_weight: share of the r-branch logits in the L_spl target.
        spl_temperature: temperature of L_spl.
        topk_divisor: see :func:`attention_loss`.

    Returns:
        ``{"fore", "back", "att", "spl"}``, each (B,).
    """
    fg, bg = video_targets(labels.to(output.o.video_ca.dtype))
    fore = normalized_ce(output.o.video_ca, fg) + normalized_ce(output.m.video_ca, fg)
    back = normalized_ce(output.o.video_cw, bg) + normalized_ce(output.m.video_cw, bg)
    target_logits = output.m.logits
    if output.r is not None:
        fore = fore + memory_weight * normalized_ce(output.r.video_ca, fg)
        back = back + memory_weight * normalized_ce(output.r.video_cw, bg)
        share = memory_target_weight
        target_logits = share * output.r.logits + (1 - share) * output.m.logits
    return {
        "fore": fore,
        "back": back,
        "att": attention_loss(output.o.attention, mask, topk_divisor),
        "spl": snippet_distillation_loss(output.o.logits, target_logits, mask, spl_temperature),
    }


def compute_losses(
    out: ModelOutput,
    labels: Tensor,
    mask: Tensor,
    pseudo: Tensor | None,
    cfg: Config,
    epoch: int,
) -> dict[str, Tensor]:
    """Per-video loss terms (each (B,)) and their weighted sum ``total`` (paper.md §1.3, §1.8).

    Args:
        out: the model output of a training forward pass.
        labels: (B, C) multi-hot video labels.
        mask: (B, T) bool, True on real snippets.
        pseudo: (B, T, C+1) pseudo-label targets (may be negative for delta labels) or None.
        cfg: the run's config.
        epoch: 0-based epoch, selects the scheduled weights (:mod:`wtal.schedule`).
    """
    lc = cfg.loss
    terms = base_losses(
        out,
        labels,
        mask,
        memory_weight=lc.memory_branch_weight,
        memory_target_weight=lc.spl_memory_mix,
        spl_temperature=lc.spl_temperature,
        topk_divisor=lc.att_topk_divisor,
    )
    total = (
        lc.fore_weight * terms["fore"]
        + lc.back_weight * terms["back"]
        + lc.att_weight * terms["att"]
        + spl_weight(epoch, cfg) * terms["spl"]
    )
    if pseudo is not None:
        terms["dist"] = pseudo_label_loss(
            out.o.logits,
            out.m.logits,
            pseudo,
            mask,
            o_weight=cfg.pseudo.cas_mix,
            negative=cfg.pseudo.delta_negative,
        )
        total = total + dist_weight(epoch, cfg) * terms["dist"]
    terms["total"] = total
    return terms
