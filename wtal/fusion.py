"""Proposal fusion: Gaussian weighted fusion (paper.md §1.5), plus hard NMS and soft-NMS.

Gaussian weighted fusion replaces NMS in GauFuse. Per class, greedily by score: the best
remaining proposal ``i`` and every remaining proposal ``j`` that overlaps it by more than
``overlap_threshold`` form a cluster, and the cluster becomes ONE segment whose start, end
and score are means weighted by ``exp(inner_j / temperature)`` (a softmax over the inner
CAS means: a precision-weighted mean of Gaussian boundary estimates). Reference:
``evaluation/detectionMAP.py`` (test) and ``utils/utils.py`` (pseudo labels), paper.md §1.5.

Batching. Proposals that share no positive overlap never interact (threshold >= 0), so each
class is split into connected components of overlapping proposals and the greedy runs on all
components of all classes at once: every round picks the best remaining proposal of every
component, one vectorized step. The number of rounds is the largest number of clusters in
one component, not the number of proposals. Computing the anchor's overlap with the
remaining proposals of its component each round costs O(N) per round and needs no
(N, N) matrix.

The kernels take every setting as an explicit argument; their values are declared once, in
:class:`wtal.config.DetectConfig`, and :func:`wtal.inference.detect_segments` (the one path
from a CAS to final segments, for test-time detection and pseudo labels alike) passes them.
Units: snippets throughout; :func:`wtal.segments.snippets_to_seconds` converts to seconds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wtal.proposals import Segments
from wtal.segments import segment_tiou

OVERLAP_MEASURES: tuple[str, ...] = ("ratio", "iou")
"""``"ratio"``: the reference's ``max(0, min(e) - max(s) + 1) / (e_j - s_j + 1)``, the
intersection over the length of the LOWER-ranked segment ``j`` with inclusive (+1) snippet
arithmetic (asymmetric: a short segment inside the anchor is always absorbed).
``"iou"``: the continuous temporal IoU of ``[start, end)`` segments."""


def segment_overlap(anchors: Tensor, others: Tensor, measure: str) -> Tensor:
    """Overlap of ``others[k]`` with ``anchors[k]``, elementwise.

    Args:
        anchors: (N, 2) float, snippet units, ``[start, end)``: the higher-ranked segments.
        others: (N, 2) float, the segments tested against them.
        measure: ``"ratio"`` (reference: inclusive intersection over the inclusive length of
            ``others``) or ``"iou"`` (continuous tIoU). See :data:`OVERLAP_MEASURES`.

    Returns:
        (N,) float64 overlap, ``>= 0``; ``"iou"`` gives 0 where the union is 0.
    """
    return _overlap(anchors[:, 0], anchors[:, 1], others[:, 0], others[:, 1], measure)


def _overlap(a_s: Tensor, a_e: Tensor, o_s: Tensor, o_e: Tensor, measure: str) -> Tensor:
    """:func:`segment_overlap` on separate (N,) start and end tensors."""
    if measure == "ratio":
        inter = torch.clamp(torch.minimum(a_e, o_e) - torch.maximum(a_s, o_s) + 1, min=0)
        return inter / (o_e - o_s + 1)
    if measure == "iou":
        return segment_tiou(a_s, a_e, o_s, o_e)
    raise ValueError(f"overlap measure must be one of {OVERLAP_MEASURES}, got {measure!r}")


def _check(proposals: Segments, overlap_threshold: float, measure: str) -> None:
    if measure not in OVERLAP_MEASURES:
        raise ValueError(f"overlap measure must be one of {OVERLAP_MEASURES}, got {measure!r}")
    if not overlap_threshold >= 0:
        # Components rely on disjoint proposals never being absorbed (overlap 0 > threshold).
        raise ValueError(f"overlap_threshold must be >= 0, got {overlap_threshold}")
    segments = proposals.segments
    if segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError(f"segments must be (N, 2), got {tuple(segments.shape)}")


def _components(segments: Tensor, labels: Tensor, measure: str) -> Tensor:
    """Connected components of positive overlap within each class.

    Sorted by (class, start), a proposal opens a new component when it starts at or after
    the furthest end seen so far in its class, plus 1 for the ``"ratio"`` measure (whose +1
    arithmetic gives a positive overlap to segments less than one snippet apart). The
    classes are laid side by side on one axis (torchvision's coordinate offset trick) so
    that one ``cummax`` serves all of them.

    Args:
        segments: (N, 2) float64 snippet units.
        labels: (N,) int64.
        measure: the overlap measure (sets the slack).

    Returns:
        (N,) int64 component id, ascending with (class, start).
    """
    slack = 1.0 if measure == "ratio" else 0.0
    start, end = segments[:, 0], torch.maximum(segments[:, 0], segments[:, 1])
    span = float(end.max() - start.min()) + 2 * slack + 1  # classes never touch
    offset = labels.to(segments.dtype) * span
    # One sort on the offset starts orders by (class, start); the order among equal starts
    # does not matter (a tie can only merge components that share no positive overlap,
    # which is harmless: components only have to be unions of the true ones).
    order = torch.sort(start + offset).indices
    s_sorted, e_sorted = (start + offset)[order], (end + offset)[order]
    reach = torch.cummax(e_sorted, dim=0).values  # furthest end so far
    new = torch.ones_like(s_sorted, dtype=torch.bool)
    new[1:] = s_sorted[1:] >= reach[:-1] + slack
    component = torch.empty_like(order)
    component[order] = torch.cumsum(new, dim=0) - 1
    return component


def greedy_clusters(proposals: Segments, *, overlap_threshold: float, overlap: str) -> Tensor:
    """Greedy clustering shared by Gaussian fusion and hard NMS, batched over classes.

    Per class: the best remaining proposal (highest score; ties go to the lower index) is
    an anchor; it and every remaining proposal whose overlap with it is strictly greater
    than ``overlap_threshold`` leave the pool as its cluster. Repeat until the pool is empty.

    Args:
        proposals: :class:`Segments` with N proposals (any classes).
        overlap_threshold: overlap above which a proposal joins the anchor (reference 0.25).
        overlap: overlap measure, see :data:`OVERLAP_MEASURES`.

    Returns:
        (N,) int64: for each proposal, the index of its cluster's anchor (anchors point to
        themselves).
    """
    _check(proposals, overlap_threshold, overlap)
    segments, scores = proposals.segments.to(torch.float64), proposals.scores
    n = scores.shape[0]
    owner = torch.full((n,), -1, dtype=torch.long, device=scores.device)
    if n == 0:
        return owner
    component = _components(segments, proposals.labels, overlap)
    order = torch.sort(scores, descending=True, stable=True).indices
    active = order[torch.sort(component[order], stable=True).indices]  # (component, rank)
    # The pool as one (4, A) float64 table [index, component, start, end] kept in
    # (component, rank) order: one index_select per round keeps all of it in sync
    # (indices and ids are exact in float64 up to 2**53).
    pool = torch.stack(
        [active.to(torch.float64), component[active].to(torch.float64), *segments[active].T]
    )
    positions = torch.arange(n, device=scores.device)
    while pool.shape[1] > 0:
        index, group = pool[0].long(), pool[1]
        head = torch.ones_like(group, dtype=torch.bool)  # best remaining of each component
        torch.ne(group[1:], group[:-1], out=head[1:])
        anchor_pos = torch.where(head, positions[: len(group)], 0).cummax(0).values  # (A,)
        anchor = pool[2:].index_select(1, anchor_pos)  # (2, A) anchor start, end
        ov = _overlap(anchor[0], anchor[1], pool[2], pool[3], overlap)
        member = head | (ov > overlap_threshold)
        owner[index[member]] = index[anchor_pos[member]]
        pool = pool.index_select(1, torch.nonzero(~member).flatten())
    return owner


def sort_segments(out: Segments) -> Segments:
    """The order of every fusion output: classes ascending, scores descending within a
    class; ties keep the input order."""
    order = torch.sort(out.scores, descending=True, stable=True).indices
    order = order[torch.sort(out.labels[order], stable=True).indices]
    return Segments(*(x[order] for x in out))


def gaussian_fuse(
    proposals: Segments,
    *,
    temperature: float,
    overlap_threshold: float,
    overlap: str,
    sign_denominator: bool = True,
) -> Segments:
    """Gaussian weighted fusion of proposals, paper.md §1.5 (replaces NMS).

    Clusters come from :func:`greedy_clusters`. Each cluster ``G`` becomes one segment:

        w_j = exp(inner_j / temperature)
        start = sum_G w_j s_j / D,  end = sum_G w_j e_j / D,  score = sum_G w_j phi_j / D,
        D = sum_G sign(inner_j) w_j       (reference; ``sign_denominator=False``: sum_G w_j)

    The weights are evaluated as ``exp((inner_j - max_G inner) / temperature)``, which leaves
    every ratio unchanged and cannot overflow (at the reference's smallest temperature
    0.0016, ``exp(inner / T)`` would reach ``exp(625)``; paper.md Q16). The proposals'
    ``inner`` is always > 0 (every CAS value of a run exceeds a threshold > 0), so the
    ``sign`` is +1 and both denominators agree; a non-positive ``D`` (possible only with
    non-positive inner scores) raises ``ValueError`` instead of returning inf or NaN.

    Args:
        proposals: :class:`Segments` (N proposals, any classes) from
            :func:`wtal.proposals.generate_proposals`.
        temperature: softmax temperature over inner scores (reference: 0.2 at test time;
            0.02 to 0.0016 when generating pseudo labels). Smaller -> closer to taking the
            boundaries of the cluster's highest-inner member.
        overlap_threshold: overlap above which a proposal joins the anchor (reference 0.25).
        overlap: overlap measure, see :data:`OVERLAP_MEASURES` (reference: ``"ratio"``).
        sign_denominator: use the reference's ``sum sign(inner) w`` denominator.

    Returns:
        :class:`Segments` with one fused segment per cluster (``inner`` fused with the same
        weights), classes ascending, scores descending within a class. Fused segments are
        not suppressed against each other and may overlap, as in the reference.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    owner = greedy_clusters(proposals, overlap_threshold=overlap_threshold, overlap=overlap)
    n = owner.shape[0]
    if n == 0:
        return Segments.empty(proposals.scores.device)
    anchors = torch.nonzero(owner == torch.arange(n, device=owner.device)).flatten()  # (K,)
    cluster = torch.empty_like(owner)
    cluster[anchors] = torch.arange(anchors.numel(), device=owner.device)
    cluster = cluster[owner]  # (N,) cluster index in 0..K-1
    k = anchors.numel()

    inner = proposals.inner.to(torch.float64)
    logits = inner / temperature  # (N,)
    peak = torch.full((k,), -torch.inf, dtype=torch.float64, device=owner.device)
    peak = peak.scatter_reduce(0, cluster, logits, reduce="amax")
    weight = torch.exp(logits - peak[cluster])  # (N,) in (0, 1]: log-sum-exp shift

    def cluster_sum(x: Tensor) -> Tensor:
        return torch.zeros(k, dtype=torch.float64, device=owner.device).index_add(0, cluster, x)

    denom = cluster_sum(torch.sign(inner) * weight if sign_denominator else weight)  # (K,)
    if not bool((denom > 0).all()):
        raise ValueError(
            "Gaussian fusion denominator sum(sign(inner) * w) is not positive for some "
            "cluster: inner scores must be > 0 (use CAS thresholds > 0)"
        )
    # Boundaries relative to the anchor: s_a * (W / D) + sum w (s - s_a) / D equals the
    # reference's sum w s / D, but is exactly s_a when all members share the anchor's
    # boundary (W and D are the same float sum when every sign is +1). The plain form leaves
    # 1-ulp errors such as 1103.9999999999998 that an int() truncation turns into a shift
    # of one snippet.
    segments = proposals.segments.to(torch.float64)
    anchor_segments = segments[anchors]  # (K, 2)
    relative = segments - anchor_segments[cluster]  # (N, 2)
    total = cluster_sum(weight)  # (K,) W
    fused_segments = (
        anchor_segments * (total / denom)[:, None]
        + torch.stack(
            [cluster_sum(weight * relative[:, 0]), cluster_sum(weight * relative[:, 1])], dim=1
        )
        / denom[:, None]
    )
    fused = Segments(
        segments=fused_segments,
        scores=cluster_sum(weight * proposals.scores.to(torch.float64)) / denom,
        inner=cluster_sum(weight * inner) / denom,
        labels=proposals.labels[anchors],
    )
    return sort_segments(fused)


def nms(proposals: Segments, *, overlap_threshold: float, overlap: str) -> Segments:
    """Hard NMS: keep each cluster's anchor unchanged (reference ``use_new_predictor=False``).

    Args:
        proposals: :class:`Segments` (N proposals, any classes).
        overlap_threshold: overlap above which a proposal is suppressed by a kept one
            (reference 0.25 with ``"ratio"``; classic NMS uses ``"iou"``).
        overlap: overlap measure, see :data:`OVERLAP_MEASURES`.

    Returns:
        :class:`Segments`, the kept proposals, classes ascending, scores descending.
    """
    owner = greedy_clusters(proposals, overlap_threshold=overlap_threshold, overlap=overlap)
    keep = torch.nonzero(owner == torch.arange(owner.shape[0], device=owner.device)).flatten()
    return sort_segments(Segments(*(x[keep] for x in proposals)))


def soft_nms(
    proposals: Segments,
    *,
    sigma: float,
    overlap: str,
    score_threshold: float | None = None,
) -> Segments:
    """Gaussian soft-NMS (Bodla et al. 2017) per class, batched over classes.

    Repeatedly take the remaining proposal with the highest current score (ties: lower
    index), output it with that score, and decay every remaining proposal of its class by
    ``exp(-overlap**2 / sigma)`` (overlap of the remaining one with the taken one).

    Args:
        proposals: :class:`Segments` (N proposals, any classes).
        sigma: Gaussian decay width (0.5 as in the soft-NMS paper).
        score_threshold: drop every proposal whose (decayed) score is below this, before
            the first pick and after each decay; None keeps every proposal. OIC scores can
            be <= 0 and decay moves negative scores up towards 0: soft-NMS is meant for
            ablations with positive scores.
        overlap: overlap measure, see :data:`OVERLAP_MEASURES`.

    Returns:
        :class:`Segments` with decayed scores, classes ascending, scores descending.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    _check(proposals, 0.0, overlap)
    segments = proposals.segments.to(torch.float64)
    current = proposals.scores.to(torch.float64).clone()
    n = current.shape[0]
    device = current.device
    if n == 0:
        return Segments.empty(device)
    component = _components(segments, proposals.labels, overlap)
    num_components = int(component.max()) + 1
    active = torch.sort(component, stable=True).indices  # (component, index)
    if score_threshold is not None:  # pruning also applies before the first pick
        active = active[current[active] >= score_threshold]
    taken, taken_scores = [], []
    while active.numel() > 0:
        group = component[active]
        best = torch.full((num_components,), -torch.inf, dtype=torch.float64, device=device)
        best = best.scatter_reduce(0, group, current[active], reduce="amax")
        position = torch.arange(active.numel(), device=device)
        candidate = torch.where(current[active] == best[group], position, active.numel())
        first = torch.full((num_components,), active.numel(), dtype=torch.long, device=device)
        first = first.scatter_reduce(0, group, candidate, reduce="amin")  # first best per group
        is_head = position == first[group]
        anchor = active[first[group]]  # (A,)
        taken.append(active[is_head])
        taken_scores.append(current[active[is_head]])
        ov = segment_overlap(segments[anchor], segments[active], overlap)
        rest = ~is_head
        active, ov = active[rest], ov[rest]
        current[active] = current[active] * torch.exp(-(ov**2) / sigma)
        if score_threshold is not None:
            active = active[current[active] >= score_threshold]
    keep = torch.cat(taken)
    scores = torch.cat(taken_scores)
    out = Segments(proposals.segments[keep], scores, proposals.inner[keep], proposals.labels[keep])
    return sort_segments(out)
