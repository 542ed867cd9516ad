"""Cheap per-epoch diagnostics of the pseudo-label stage, for ``log.jsonl``.

The pseudo-label stage trains at learning rates 40-200x below the base stage's, on targets
that may be negative (Δ labels, paper.md §7 Q6). Whether an epoch moves the weights at all,
and how much of the target pushes classes down, tells which setting does what.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


@torch.no_grad()
def parameter_snapshot(model: nn.Module) -> list[Tensor]:
    """Copies of the model's parameters (buffers such as the memory are left out)."""
    return [p.detach().clone() for p in model.parameters()]


@torch.no_grad()
def parameter_change(before: list[Tensor], model: nn.Module) -> dict[str, float]:
    """How far the parameters moved since ``before`` (:func:`parameter_snapshot`).

    Returns:
        ``update_norm``: the L2 norm of the change of all parameters as one vector, and
        ``relative_update``: that norm over the L2 norm of ``before`` (0 when it is 0).
    """
    params = list(model.parameters())
    if len(params) != len(before):
        raise ValueError(f"{len(before)} snapshot tensors for {len(params)} parameters")
    change = torch.stack([(p - b).double().norm() for p, b in zip(params, before, strict=True)])
    size = torch.stack([b.double().norm() for b in before])
    update, norm = float(change.norm()), float(size.norm())
    return {"update_norm": update, "relative_update": update / norm if norm > 0 else 0.0}


def negative_share(targets: Mapping[str, Tensor]) -> dict[str, float]:
    """The share of negative entries, and of the absolute mass, in pseudo-label targets.

    Args:
        targets: per video, a (T, C+1) target (Δ labels may be negative).

    Returns:
        ``negative_entries``: negative entries / all entries; ``negative_mass``: sum of
        ``|y|`` over negative entries / sum of ``|y|`` (0 for an all-zero target).
    """
    if not targets:
        return {"negative_entries": 0.0, "negative_mass": 0.0}
    y = torch.cat([t.reshape(-1).double() for t in targets.values()])
    negative = y < 0
    total = float(y.abs().sum())
    mass = float(-y[negative].sum()) / total if total > 0 else 0.0
    return {"negative_entries": float(negative.double().mean()), "negative_mass": mass}
