"""The RSKP base network (paper.md §1.2): features in, scores and snippet logits out.

One module computes tensors and nothing else: no losses, no thresholds, no file I/O.

* embedding ``x = Dropout(ReLU(W F + b))`` of every valid snippet;
* a cosine classifier against class centres (``C + 1`` columns, background last) and a
  foreground centre whose sigmoid is the class-agnostic attention (prediction module, PM);
* EM over ``K`` intra-video bases, then a random walk that propagates the bases into the
  snippet features (closed form, one linear solve; both in :mod:`wtal.memory`);
* three branches: ``o = PM(x)``, ``m = PM(RW(x, bases))`` and, with the inter-video memory,
  ``r = PM(RW(x, memory prototypes))``.

Every operation is batched over padded videos. ``mask`` (B, T) marks the valid snippets; all
sums over time, softmaxes, EM steps, random-walk matrices and the prototype sets respect it, so
a padded batch computes the same numbers as the videos one at a time, and padded positions
hold zeros.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.config import RANDOM_WALK_METHODS, ModelConfig
from wtal.memory import (
    ClassMemory,
    em_bases,
    inverse_norm,
    l2_normalize,
    random_walk,
)

_DEFAULT = ModelConfig()
"""Where :class:`WTALModel`'s keyword defaults come from (``model.*``, declared once)."""
ATTENTION_EPS = 1e-5
"""Added to the attention (class-wise weight) sums over time before pooling by them."""


class BranchOutput(NamedTuple):
    """What the prediction module returns for one branch (padded positions are 0)."""

    video_ca: Tensor
    """(B, C+1) video class probabilities pooled with the class-agnostic attention."""
    video_cw: Tensor
    """(B, C+1) video class probabilities pooled with class-wise snippet weights."""
    attention: Tensor
    """(B, T) class-agnostic attention in [0, 1]."""
    logits: Tensor
    """(B, T, C+1) snippet class logits (scaled cosine similarities)."""


class ModelOutput(NamedTuple):
    """All tensors of one forward pass."""

    o: BranchOutput
    """Original-feature branch."""
    m: BranchOutput
    """Intra-video branch: features propagated from the video's own EM bases."""
    r: BranchOutput | None
    """Inter-video branch (memory prototypes of the labelled classes); None without memory."""
    embedded: Tensor
    """(B, T, E) embedded snippet features (after dropout in training mode)."""
    bases: Tensor
    """(B, K, E) EM bases of each video."""
    basis_scores: Tensor
    """(B, K, C+1) class probabilities of every basis (what the memory ranks them by)."""
    propagated: Tensor
    """(B, T, E) random-walk features of the m branch."""


def _xavier_uniform(shape: tuple[int, int], generator: torch.Generator | None) -> Tensor:
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))  # Glorot & Bengio (2010), gain 1
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class WTALModel(nn.Module):
    """RSKP base network with o / m / r branches (paper.md §1.2).

    The keyword arguments are the fields of :class:`wtal.config.ModelConfig`, with its
    defaults (``WTALModel(feat_dim, num_classes, **vars(cfg.model))``).

    Args:
        feat_dim: D, input feature size (THUMOS14 I3D: 2048).
        num_classes: C, action classes without background; outputs have C + 1 columns.
        embed_dim: E, embedding size.
        dropout: dropout probability after the embedding (training mode only).
        scale: s, multiplier of every cosine similarity fed to a softmax / sigmoid.
        num_bases: K, EM bases.
        em_iters: EM iterations.
        em_sharpness: multiplier of the cosine similarity in the EM softmax.
        walk_sharpness: multiplier of the cosine similarity in the random-walk softmax.
        walk_weight: w, random-walk propagation weight.
        walk_method: ``"woodbury"`` (K x K solve) or ``"dense"`` (T x T solve), same result.
        queue_len: memory slots per class.
        memory_index_bug: reproduce the reference's class-0 memory indexing (§7 Q1).
        memory_mask_empty: mask never-written memory slots instead of using zero vectors.
        generator: RNG for the initial weights (None: torch's global RNG).
    """

    def __init__(
        self,
        feat_dim: int,
        num_classes: int,
        *,
        embed_dim: int = _DEFAULT.embed_dim,
        dropout: float = _DEFAULT.dropout,
        scale: float = _DEFAULT.scale,
        num_bases: int = _DEFAULT.num_bases,
        em_iters: int = _DEFAULT.em_iters,
        em_sharpness: float = _DEFAULT.em_sharpness,
        walk_sharpness: float = _DEFAULT.walk_sharpness,
        walk_weight: float = _DEFAULT.walk_weight,
        walk_method: str = _DEFAULT.walk_method,
        queue_len: int = _DEFAULT.queue_len,
        memory_index_bug: bool = _DEFAULT.memory_index_bug,
        memory_mask_empty: bool = _DEFAULT.memory_mask_empty,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if walk_method not in RANDOM_WALK_METHODS:
            raise ValueError(f"walk_method must be one of {RANDOM_WALK_METHODS}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.feat_dim, self.embed_dim = feat_dim, embed_dim
        self.scale, self.em_iters, self.em_sharpness = scale, em_iters, em_sharpness
        self.walk_sharpness, self.walk_weight, self.walk_method = (
            walk_sharpness,
            walk_weight,
            walk_method,
        )

        # Xavier-uniform weights, zero bias; the foreground centre starts as minus the
        # background centre (main_branch.py:87-101).
        self.embedding = nn.Linear(feat_dim, embed_dim)
        self.class_centers = nn.Parameter(_xavier_uniform((num_classes + 1, embed_dim), generator))
        self.foreground_center = nn.Parameter(-self.class_centers.detach()[-1:].clone())
        self.basis_init = nn.Parameter(_xavier_uniform((num_bases, embed_dim), generator))
        with torch.no_grad():
            self.embedding.weight.copy_(_xavier_uniform((embed_dim, feat_dim), generator))
            self.embedding.bias.zero_()
        self.dropout = float(dropout)
        self.memory = ClassMemory(
            num_classes,
            queue_len,
            embed_dim,
            index_bug=memory_index_bug,
            mask_empty=memory_mask_empty,
        )

    def _walk(
        self,
        x: Tensor,
        x_inv_norm: Tensor,
        prototypes: Tensor,
        mask: Tensor,
        proto_mask: Tensor | None,
    ) -> Tensor:
        return random_walk(
            x,
            prototypes,
            mask,
            proto_mask,
            weight=self.walk_weight,
            sharpness=self.walk_sharpness,
            method=self.walk_method,
            x_inv_norm=x_inv_norm,
        )

    def _predict(self, x: Tensor, mask: Tensor, x_inv_norm: Tensor | None = None) -> BranchOutput:
        """Prediction module PM (main_branch.py:154-206) on (B, T, E) features."""
        valid = mask.to(x.dtype)  # (B, T)
        if x_inv_norm is None:
            x_inv_norm = inverse_norm(x)
        x_scale = self.scale * x_inv_norm * valid  # (B, T), 0 when padded
        centers = l2_normalize(self.class_centers)  # (C+1, E)
        foreground = l2_normalize(self.foreground_center)  # (1, E)
        # One (B, T, C+2) product for the class and the foreground scores.
        scores = (x @ torch.cat([centers, foreground]).T) * x_scale[..., None]  # (B, T, C+2)
        logits = scores[..., :-1]  # (B, T, C+1)
        attention = torch.sigmoid(scores[..., -1]) * valid  # (B, T)
        weights_cw = torch.sigmoid(logits) * valid[..., None]  # (B, T, C+1)
        weights_ca = attention / (attention.sum(1, keepdim=True) + ATTENTION_EPS)
        weights_cw = weights_cw / (weights_cw.sum(1, keepdim=True) + ATTENTION_EPS)
        video_ca = torch.einsum("bt,bte->be", weights_ca, x)  # (B, E)
        video_cw = torch.einsum("btc,bte->bce", weights_cw, x)  # (B, C+1, E)
        scores_ca = self.scale * (l2_normalize(video_ca) @ centers.T)
        scores_cw = self.scale * (l2_normalize(video_cw) * centers).sum(-1)
        return BranchOutput(
            torch.softmax(scores_ca, -1), torch.softmax(scores_cw, -1), attention, logits
        )

    def forward(
        self,
        features: Tensor,
        mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        use_memory: bool = False,
    ) -> ModelOutput:
        """Run all branches on a padded batch.

        Args:
            features: (B, T, D) snippet features, any values at padded positions.
            mask: (B, T) bool, valid snippets; None means all valid.
            labels: (B, C) multi-hot video labels; needed only with ``use_memory``.
            use_memory: also run the inter-video branch r on the memory prototypes of each
                video's labelled classes (read without gradient).

        Returns:
            :class:`ModelOutput`; padded positions of every (B, T, ...) tensor are 0.
        """
        batch, length, dim = features.shape
        if dim != self.feat_dim:
            raise ValueError(f"features have {dim} channels, the model expects {self.feat_dim}")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=features.device)
        mask = mask.bool()
        # Embed only the valid snippets: the (D x E) product dominates the cost, and padded
        # rows would otherwise carry ReLU(b) instead of 0.
        hidden = F.relu(self.embedding(features[mask]))  # (N_valid, E)
        if self.training and self.dropout > 0:
            # nn.Dropout's mask from uniform draws: the same distribution, drawn several times
            # faster on a CPU than with bernoulli_ (which cost ~10% of a training step).
            keep = torch.rand_like(hidden) >= self.dropout
            hidden = hidden * keep * (1.0 / (1.0 - self.dropout))
        embedded = hidden.new_zeros(batch, length, self.embed_dim).index_put((mask,), hidden)
        # Shared by EM, both random walks and the o branch: one norm (and one backward).
        inv_norm = inverse_norm(embedded)  # (B, T)

        bases = em_bases(
            embedded,
            mask,
            self.basis_init,
            iters=self.em_iters,
            sharpness=self.em_sharpness,
            x_inv_norm=inv_norm,
        )  # (B, K, E)
        propagated = self._walk(embedded, inv_norm, bases, mask, None)  # (B, T, E)
        o = self._predict(embedded, mask, inv_norm)
        m = self._predict(propagated, mask)
        centers = l2_normalize(self.class_centers)
        basis_scores = torch.softmax(
            self.scale * (l2_normalize(bases) @ centers.T), -1
        )  # (B, K, C+1)

        r = None
        if use_memory:
            if labels is None:
                raise ValueError("use_memory=True needs the video labels")
            prototypes, proto_mask = self.memory.read(labels)  # (B, P, E), (B, P)
            walked = self._walk(embedded, inv_norm, prototypes, mask, proto_mask)  # (B, T, E)
            r = self._predict(walked, mask)
        return ModelOutput(o, m, r, embedded, bases, basis_scores, propagated)
