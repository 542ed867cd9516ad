"""The RSKP base network (paper.md §1.2): features in, scores and snippet logits out.

One module computes tensors and nothing else: no losses, no thresholds, no file I/O.

* embedding ``x = Dropout(ReLU(W F + b))`` of every valid snippet;
* a cosine classifier against class centres (``C + 1`` columns, background last) and a
  foreground centre whose sigmoid is the class-agnostic attention (prediction module, PM);
* EM over ``K`` intra-video bases, then a random walk that propagates the bases into the
  snippet features (closed form, one linear solve);
* three branches: ``o = PM(x)``, ``m = PM(RW(x, bases))`` and, with the inter-video memory,
  ``r = PM(RW(x, memory prototypes))``.

Every operation is batched over padded videos. ``mask`` (B, T) marks the valid snippets; all
sums over time, softmaxes, EM steps, random-walk matrices and the prototype sets respect it, so
a padded batch computes the same numbers as the videos one at a time, and padded positions
hold zeros.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.io import InputError

RANDOM_WALK_METHODS = ("woodbury", "dense")


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


def l2_normalize(x: Tensor, eps: float = 1e-9) -> Tensor:
    """``x / (||x||_2 + eps)`` along the last dim (the reference calls it an L1 norm, Q13)."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def inverse_norm(x: Tensor, eps: float = 1e-9) -> Tensor:
    """``1 / (||x||_2 + eps)`` along the last dim, shape ``x.shape[:-1]``.

    Cosine scores of snippet features are computed as ``(x @ c.T) * inverse_norm(x)``: the
    same numbers as normalising ``x`` first, without another (B, T, E) tensor and its backward.
    """
    return 1.0 / (x.norm(dim=-1) + eps)


def em_bases(
    x: Tensor,
    mask: Tensor,
    init: Tensor,
    *,
    iters: int = 2,
    sharpness: float = 5.0,
    eps: float = 1e-9,
    norm_eps: float = 1e-9,
    x_inv_norm: Tensor | None = None,
) -> Tensor:
    """Video-specific bases by EM over the valid snippets (main_branch.py:107-118).

    Args:
        x: (B, T, E) snippet features.
        mask: (B, T) bool, valid snippets.
        init: (K, E) initial bases shared by all videos.
        iters: EM iterations.
        sharpness: multiplier of the cosine similarity inside the softmax over bases.
        eps: added to the per-basis responsibility sum before normalising over time.
        norm_eps: epsilon of the L2 normalisation.
        x_inv_norm: (B, T) ``inverse_norm(x, norm_eps)`` when the caller already has it.

    Returns:
        (B, K, E) bases; each is a responsibility-weighted mean of valid snippets.
    """
    # Cosine similarity with the snippet norm folded into the (K, T) product; padded
    # columns are zeroed with the mask.
    if x_inv_norm is None:
        x_inv_norm = inverse_norm(x, norm_eps)
    x_scale = (x_inv_norm * mask.to(x.dtype))[:, None, :]  # (B, 1, T)
    mu = init.expand(x.shape[0], -1, -1)  # (B, K, E)
    for _ in range(iters):
        sim = (l2_normalize(mu, norm_eps) @ x.transpose(1, 2)) * x_scale  # (B, K, T)
        z = torch.softmax(sharpness * sim, dim=1) * mask[:, None, :]  # (B, K, T), padded cols 0
        z_bar = z / (z.sum(-1, keepdim=True) + eps)  # normalised over time
        mu = z_bar @ x  # (B, K, E)
    return mu


def random_walk(
    x: Tensor,
    prototypes: Tensor,
    mask: Tensor,
    prototype_mask: Tensor | None = None,
    *,
    weight: float = 0.5,
    sharpness: float = 5.0,
    eps: float = 1e-9,
    norm_eps: float = 1e-9,
    method: str = "woodbury",
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
        eps: added to each prototype's assignment sum over time.
        norm_eps: epsilon of the L2 normalisation.
        method: ``"woodbury"`` or ``"dense"``.
        x_inv_norm: (B, T) ``inverse_norm(x, norm_eps)`` when the caller already has it.

    Returns:
        (B, T, E) propagated features, 0 at padded snippets. A video without any valid
        prototype gets ``(1 - w) x``.
    """
    if method not in RANDOM_WALK_METHODS:
        raise ValueError(f"random walk method must be one of {RANDOM_WALK_METHODS}, not {method!r}")
    if x_inv_norm is None:
        x_inv_norm = inverse_norm(x, norm_eps)
    x_scale = x_inv_norm[:, None, :]  # (B, 1, T)
    logits = sharpness * (l2_normalize(prototypes, norm_eps) @ x.transpose(1, 2)) * x_scale
    if prototype_mask is not None:
        # A masked-out prototype gets no probability; a video with none at all gets z = 0.
        logits = logits.masked_fill(~prototype_mask[:, :, None], torch.finfo(x.dtype).min)
    z = torch.softmax(logits, dim=1) * mask[:, None, :].to(x.dtype)  # (B, K, T)
    if prototype_mask is not None:
        z = z * prototype_mask[:, :, None].to(x.dtype)
    z_bar = z / (z.sum(-1, keepdim=True) + eps)  # (B, K, T)
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
        index_bug: bool = False,
        mask_empty: bool = False,
    ) -> None:
        super().__init__()
        self.index_bug = index_bug
        self.mask_empty = mask_empty
        self.register_buffer("queues", torch.zeros(num_classes, queue_len, embed_dim))
        self.register_buffer("scores", torch.zeros(num_classes, queue_len))
        self.register_buffer("num_filled", torch.zeros(num_classes, dtype=torch.long))

    @property
    def filled(self) -> Tensor:
        """(C,) bool: the class's queue has been written since the last reset."""
        return self.num_filled > 0

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


def _xavier_uniform(shape: tuple[int, int], generator: torch.Generator | None) -> Tensor:
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))  # Glorot & Bengio (2010), gain 1
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class WTALModel(nn.Module):
    """RSKP base network with o / m / r branches (paper.md §1.2).

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
        norm_eps: epsilon of every L2 normalisation.
        attention_eps: added to attention sums before pooling over time.
        em_eps: added to assignment sums over time in EM and the random walk.
        generator: RNG for the initial weights (None: torch's global RNG).
    """

    def __init__(
        self,
        feat_dim: int,
        num_classes: int,
        *,
        embed_dim: int = 2048,
        dropout: float = 0.6,
        scale: float = 20.0,
        num_bases: int = 8,
        em_iters: int = 2,
        em_sharpness: float = 5.0,
        walk_sharpness: float = 5.0,
        walk_weight: float = 0.5,
        walk_method: str = "woodbury",
        queue_len: int = 5,
        memory_index_bug: bool = False,
        memory_mask_empty: bool = False,
        norm_eps: float = 1e-9,
        attention_eps: float = 1e-5,
        em_eps: float = 1e-9,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if walk_method not in RANDOM_WALK_METHODS:
            raise ValueError(f"walk_method must be one of {RANDOM_WALK_METHODS}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.feat_dim, self.num_classes, self.embed_dim = feat_dim, num_classes, embed_dim
        self.scale, self.em_iters, self.em_sharpness = scale, em_iters, em_sharpness
        self.walk_sharpness, self.walk_weight, self.walk_method = (
            walk_sharpness,
            walk_weight,
            walk_method,
        )
        self.norm_eps, self.attention_eps, self.em_eps = norm_eps, attention_eps, em_eps

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
            eps=self.em_eps,
            norm_eps=self.norm_eps,
            method=self.walk_method,
            x_inv_norm=x_inv_norm,
        )

    def _predict(self, x: Tensor, mask: Tensor, x_inv_norm: Tensor | None = None) -> BranchOutput:
        """Prediction module PM (main_branch.py:154-206) on (B, T, E) features."""
        valid = mask.to(x.dtype)  # (B, T)
        if x_inv_norm is None:
            x_inv_norm = inverse_norm(x, self.norm_eps)
        x_scale = self.scale * x_inv_norm * valid  # (B, T), 0 when padded
        centers = l2_normalize(self.class_centers, self.norm_eps)  # (C+1, E)
        foreground = l2_normalize(self.foreground_center, self.norm_eps)  # (1, E)
        # One (B, T, C+2) product for the class and the foreground scores.
        scores = (x @ torch.cat([centers, foreground]).T) * x_scale[..., None]  # (B, T, C+2)
        logits = scores[..., :-1]  # (B, T, C+1)
        attention = torch.sigmoid(scores[..., -1]) * valid  # (B, T)
        weights_cw = torch.sigmoid(logits) * valid[..., None]  # (B, T, C+1)
        weights_ca = attention / (attention.sum(1, keepdim=True) + self.attention_eps)
        weights_cw = weights_cw / (weights_cw.sum(1, keepdim=True) + self.attention_eps)
        video_ca = torch.einsum("bt,bte->be", weights_ca, x)  # (B, E)
        video_cw = torch.einsum("btc,bte->bce", weights_cw, x)  # (B, C+1, E)
        scores_ca = self.scale * (l2_normalize(video_ca, self.norm_eps) @ centers.T)
        scores_cw = self.scale * (l2_normalize(video_cw, self.norm_eps) * centers).sum(-1)
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
        inv_norm = inverse_norm(embedded, self.norm_eps)  # (B, T)

        bases = em_bases(
            embedded,
            mask,
            self.basis_init,
            iters=self.em_iters,
            sharpness=self.em_sharpness,
            eps=self.em_eps,
            norm_eps=self.norm_eps,
            x_inv_norm=inv_norm,
        )  # (B, K, E)
        propagated = self._walk(embedded, inv_norm, bases, mask, None)  # (B, T, E)
        o = self._predict(embedded, mask, inv_norm)
        m = self._predict(propagated, mask)
        centers = l2_normalize(self.class_centers, self.norm_eps)
        basis_scores = torch.softmax(
            self.scale * (l2_normalize(bases, self.norm_eps) @ centers.T), -1
        )  # (B, K, C+1)

        r = None
        if use_memory:
            if labels is None:
                raise ValueError("use_memory=True needs the video labels")
            prototypes, proto_mask = self.memory.read(labels)  # (B, P, E), (B, P)
            walked = self._walk(embedded, inv_norm, prototypes, mask, proto_mask)  # (B, T, E)
            r = self._predict(walked, mask)
        return ModelOutput(o, m, r, embedded, bases, basis_scores, propagated)


# Names in the authors' checkpoints (class ``WSTAL``) -> ours.
REFERENCE_KEYS = {
    "mu": "basis_init",
    "ac_center": "class_centers",
    "fg_center": "foreground_center",
    "feature_embedding.0.weight": "embedding.weight",
    "feature_embedding.0.bias": "embedding.bias",
}


def convert_reference_state_dict(
    state_dict: Mapping[str, Tensor | np.ndarray],
) -> dict[str, Tensor]:
    """Rename the authors' parameters to ours.

    Args:
        state_dict: the reference ``WSTAL`` state dict (a ``module.`` prefix from
            ``DataParallel`` is accepted); tensors or numpy arrays.

    Returns:
        dict with our parameter names (no memory buffers: the reference saves none).

    Raises:
        InputError: on a key that is not one of the reference parameters, or a missing one.
    """
    converted = {}
    for key, value in state_dict.items():
        name = key.removeprefix("module.")
        if name not in REFERENCE_KEYS:
            raise InputError(None, f"reference state dict: unexpected key {key!r}")
        tensor = value.detach() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
        converted[REFERENCE_KEYS[name]] = tensor.clone()
    missing = sorted(set(REFERENCE_KEYS.values()) - set(converted))
    if missing:
        raise InputError(None, f"reference state dict: missing {missing}")
    return converted


def load_reference_state_dict(
    model: WTALModel, state_dict: Mapping[str, Tensor | np.ndarray]
) -> None:
    """Load an authors' checkpoint into ``model``; the memory is left as it is.

    Raises:
        InputError: on unknown / missing keys or shapes that do not match the model.
    """
    converted = convert_reference_state_dict(state_dict)
    own = model.state_dict()
    for name, value in converted.items():
        if own[name].shape != value.shape:
            what = f"reference state dict: {name} has shape {tuple(value.shape)}"
            raise InputError(None, f"{what}, the model expects {tuple(own[name].shape)}")
    model.load_state_dict(converted, strict=False)
