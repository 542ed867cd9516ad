"""Knowledge propagation of the RSKP network (paper.md §1.2): EM bases, random walk, memory.

* :func:`em_bases`: ``K`` intra-video bases by EM over a video's valid snippets;
* :func:`random_walk`: prototypes (bases or memory slots) propagated into the snippet features
  in closed form, one linear solve;
* :class:`ClassMemory`: the inter-video memory, the best bases seen so far for each class.

Everything is batched over padded videos and respects the (B, T) ``mask`` of valid snippets.
:class:`wtal.model.WTALModel` composes these, and the cosine helpers :func:`l2_normalize` and
:func:`inverse_norm`, into its o / m / r branches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wtal.config import RANDOM_WALK_METHODS, ModelConfig

_DEFAULT = ModelConfig()
"""Where the keyword defaults below come from (``model.*``): each value is declared once."""

NORM_EPS = 1e-9
"""Added to every L2 norm before dividing by it."""
ASSIGN_EPS = 1e-9
"""Added to each basis' (prototype's) assignment sum over time before normalising by it."""


def l2_normalize(x: Tensor) -> Tensor:
    """``x / (||x||_2 + NORM_EPS)`` along the last dim (the reference calls it an L1 norm, Q13)."""
    return x / (x.norm(dim=-1, keepdim=True) + NORM_EPS)


def inverse_norm(x: Tensor) -> Tensor:
    """``1 / (||x||_2 + NORM_EPS)`` along the last dim, shape ``x.shape[:-1]``.

    Cosine scores of snippet features are computed as ``(x @ c.T) * inverse_norm(x)``: the
    same numbers as normalising ``x`` first, without another (B, T, E) tensor and its backward.
    """
    return 1.0 / (x.norm(dim=-1) + NORM_EPS)


def em_bases(
    x: Tensor,
    mask: Tensor,
    init: Tensor,
    *,
    iters: int,
    sharpness: float,
    x_inv_norm: Tensor | None = None,
) -> Tensor:
    """Video-specific bases by EM over the valid snippets (main_branch.py:107-118).

    Args:
        x: (B, T, E) snippet features.
        mask: (B, T) bool, valid snippets.
        init: (K, E) initial bases shared by all videos.
        iters: EM iterations.
        sharpness: multiplier of the cosine similarity inside the softmax over bases.
        x_inv_norm: (B, T) ``inverse_norm(x)`` when the caller already has it.

    Returns:
        (B, K, E) bases; each is a responsibility-weighted mean of valid snippets.
    """
    # Cosine similarity with the snippet norm folded into the (K, T) product; padded
    # columns are zeroed with the mask.
    if x_inv_norm is None:
        x_inv_norm = inverse_norm(x)
    x_scale = (x_inv_norm * mask.to(x.dtype))[:, None, :]  # (B, 1, T)
    mu = init.expand(x.shape[0], -1, -1)  # (B, K, E)
    for _ in range(iters):
        sim = (l2_normalize(mu) @ x.transpose(1, 2)) * x_scale  # (B, K, T)
        z = torch.softmax(sharpness * sim, dim=1) * mask[:, None, :]  # (B, K, T), padded cols 0
        z_bar = z / (z.sum(-1, keepdim=True) + ASSIGN_EPS)  # normalised over time
        mu = z_bar @ x  # (B, K, E)
    return mu


def random_walk(
    x: Tensor,
    prototypes: Tensor,
    mask: Tensor,
    prototype_mask: Tensor | None = None,
    *,
    weight: float = _DEFAULT.walk_weight,
    sharpness: float = _DEFAULT.walk_sharpness,
    method: str = _DEFAULT.walk_method,
    x_inv_norm: Tensor | None = None,
) -> Tensor:
    """Propagate prototypes into snippets: ``(1-w) (I - w^2 P)^-1 (w z^T y + x)``.

    ``z = softmax_k(sharpness * cos(y_k, x_t))`` (K, T), ``P = z^T z_bar`` (T, T) with
    ``z_bar`` normalised over time (main_branch.py:24-37). ``P`` has rank <= K, so the default
    ``"woodbury"`` solves the (K, K) system ``I - w^2 z_bar z^T`` instead of the (T, T) one:
    ``(I - w^2 z^T z_bar)^-1 = I + w^2 z^T (I - w^2 z_bar z^T)^-1 z_bar``, exact and
    O(T K^2) instead of O(T^3). ``"dense"`` solves the (T, T) system as written. Neither
    forms an explicit inverse.

    Args:
        x: (B, T, E) snippet features; padded rows must be 0.
        prototypes: (B, K, E) prototypes y.
        mask: (B, T) bool, valid snippets.
        prototype_mask: (B, K) bool, valid prototypes; None means all are valid.
        weight: w in (0, 1), the propagation weight.
        sharpness: multiplier of the cosine similarity inside the softmax over prototypes.
        method: ``"woodbury"`` or ``"dense"``.
        x_inv_norm: (B, T) ``inverse_norm(x)`` when the caller already has it.

    Returns:
        (B, T, E) propagated features, 0 at padded snippets. A video without any valid
        prototype gets ``(1 - w) x``.
    """
    if method not in RANDOM_WALK_METHODS:
        raise ValueError(f"random walk method must be one of {RANDOM_WALK_METHODS}, not {method!r}")
    if x_inv_norm is None:
        x_inv_norm = inverse_norm(x)
    x_scale = x_inv_norm[:, None, :]  # (B, 1, T)
    logits = sharpness * (l2_normalize(prototypes) @ x.transpose(1, 2)) * x_scale
    if prototype_mask is not None:
        # A masked-out prototype gets no probability; a video with none at all gets z = 0.
        logits = logits.masked_fill(~prototype_mask[:, :, None], torch.finfo(x.dtype).min)
    z = torch.softmax(logits, dim=1) * mask[:, None, :].to(x.dtype)  # (B, K, T)
    if prototype_mask is not None:
        z = z * prototype_mask[:, :, None].to(x.dtype)
    z_bar = z / (z.sum(-1, keepdim=True) + ASSIGN_EPS)  # (B, K, T)
    zt = z.transpose(1, 2)  # (B, T, K)
    w2 = weight**2
    if method == "dense":
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        rhs = torch.baddbmm(x, zt, prototypes, alpha=weight)  # (B, T, E) w z^T y + x
        return (1.0 - weight) * torch.linalg.solve(eye - w2 * (zt @ z_bar), rhs)
    eye = torch.eye(z.shape[1], dtype=x.dtype, device=x.device)
    small = eye - w2 * (z_bar @ zt)  # (B, K, K); identity rows for masked prototypes
    # z_bar @ rhs without forming rhs: z_bar x + w (z_bar z^T) y, all (B, K, E).
    projected = torch.baddbmm(z_bar @ x, z_bar @ zt, prototypes, alpha=weight)
    solved = torch.linalg.solve(small, projected)  # (B, K, E)
    # (1 - w) (rhs + w^2 z^T solved) = (1 - w) x + z^T [(1 - w)(w y + w^2 solved)]
    lifted = (1.0 - weight) * (weight * prototypes + w2 * solved)  # (B, K, E)
    return torch.baddbmm(x, zt, lifted, beta=1.0 - weight)  # (B, T, E)


class ClassMemory(nn.Module):
    """Inter-video memory: for each class, the ``queue_len`` best bases seen so far.

    A basis enters class c's queue when its class-c probability is among the top
    ``queue_len`` of (queue ∪ the video's bases) (memory.py:19-49). Slots never written hold
    zero vectors, as in the reference; ``num_filled`` counts the written slots per class.

    Args:
        num_classes: C, action classes without background.
        queue_len: slots per class.
        embed_dim: E.
        index_bug: reproduce the reference's indexing bug (paper.md §7 Q1): every labelled
            class reads and writes class 0's queue (scored by column 0).
        mask_empty: mask never-written slots out of :meth:`read`. False (reference): their
            zero vectors take part in the random walk.
    """

    def __init__(
        self,
        num_classes: int,
        queue_len: int,
        embed_dim: int,
        *,
        index_bug: bool = _DEFAULT.memory_index_bug,
        mask_empty: bool = _DEFAULT.memory_mask_empty,
    ) -> None:
        super().__init__()
        self.index_bug = index_bug
        self.mask_empty = mask_empty
        self.register_buffer("queues", torch.zeros(num_classes, queue_len, embed_dim))
        self.register_buffer("scores", torch.zeros(num_classes, queue_len))
        self.register_buffer("num_filled", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def reset(self) -> None:
        """Empty every queue (the reference does this at each pseudo-label regeneration)."""
        self.queues.zero_()
        self.scores.zero_()
        self.num_filled.zero_()

    def _class_ids(self, positive: Tensor) -> tuple[Tensor, Tensor]:
        """(B, P) queue index per labelled class in ascending class order, and its validity."""
        num_pos = positive.sum(1)  # (B,)
        max_pos = int(num_pos.max()) if positive.numel() else 0
        order = torch.argsort((~positive).to(torch.int8), dim=1, stable=True)[:, :max_pos]
        valid = torch.arange(max_pos, device=positive.device)[None, :] < num_pos[:, None]
        if self.index_bug:
            order = torch.zeros_like(order)
        return order, valid

    @torch.no_grad()
    def read(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Prototypes of each video's labelled classes, concatenated in class order.

        Args:
            labels: (B, C) multi-hot video labels (> 0.5 is positive).

        Returns:
            prototypes (B, P, E) with P = queue_len * (most labelled classes in the batch),
            zero where masked; prototype_mask (B, P) bool.
        """
        class_ids, valid = self._class_ids(labels > 0.5)  # (B, P_c)
        batch, queue_len = class_ids.shape[0], self.queues.shape[1]
        slot_mask = valid[:, :, None].expand(-1, -1, queue_len)  # (B, P_c, Q)
        if self.mask_empty:
            written = (
                torch.arange(queue_len, device=labels.device) < self.num_filled[class_ids, None]
            )
            slot_mask = slot_mask & written
        prototypes = self.queues[class_ids] * slot_mask[..., None]  # (B, P_c, Q, E)
        return prototypes.reshape(batch, -1, self.queues.shape[2]), slot_mask.reshape(batch, -1)

    @torch.no_grad()
    def update(self, bases: Tensor, basis_scores: Tensor, labels: Tensor) -> None:
        """Merge each video's bases into its labelled classes' queues, video by video in order.

        Args:
            bases: (B, K, E) EM bases (:attr:`ModelOutput.bases`).
            basis_scores: (B, K, C+1) their class probabilities.
            labels: (B, C) multi-hot video labels.
        """
        for b in range(bases.shape[0]):
            classes = torch.nonzero(labels[b] > 0.5).flatten()  # (n,)
            if self.index_bug:  # class 0's queue, scored by column 0, once per labelled class
                for _ in range(classes.numel()):
                    self._merge(classes.new_zeros(1), bases[b], basis_scores[b, :, :1])
            elif classes.numel():
                self._merge(classes, bases[b], basis_scores[b][:, classes])

    def _merge(self, classes: Tensor, bases: Tensor, scores: Tensor) -> None:
        """Top-``queue_len`` of queue ∪ bases for distinct ``classes`` (n,); scores (K, n)."""
        queue_len, (num_bases, dim) = self.queues.shape[1], bases.shape
        written = torch.arange(queue_len, device=bases.device) < self.num_filled[classes, None]
        old_scores = self.scores[classes].masked_fill(~written, -math.inf)  # (n, Q)
        cand_scores = torch.cat([old_scores, scores.T.to(old_scores.dtype)], 1)  # (n, Q+K)
        cand = torch.cat([self.queues[classes], bases.expand(len(classes), num_bases, dim)], 1)
        top_scores, idx = cand_scores.sort(dim=1, descending=True, stable=True)
        top_scores, idx = top_scores[:, :queue_len], idx[:, :queue_len]  # (n, Q)
        keep = torch.isfinite(top_scores)
        top = torch.gather(cand, 1, idx[..., None].expand(-1, -1, dim))  # (n, Q, E)
        self.queues[classes] = top * keep[..., None]
        self.scores[classes] = torch.where(keep, top_scores, torch.zeros_like(top_scores))
        self.num_filled[classes] = keep.sum(1)
