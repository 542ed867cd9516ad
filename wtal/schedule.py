"""The training schedule as functions of the 0-based epoch (paper.md §1.8).

Learning rate, λ_spl, λ_dist, the pseudo-label regenerations and the pseudo-label target
each epoch trains on. The numbers are config fields (``train.lr_*``, ``loss.spl_*``,
``pseudo.*``); this module only reads them, so :func:`wtal.engine.fit` asks it rather than
repeating the rules.
"""

from __future__ import annotations

import bisect
from typing import Any

from torch import Tensor

from wtal.config import Config
from wtal.pseudo import pseudo_target


def piecewise(epoch: int, milestones: tuple[int, ...], values: tuple[Any, ...]) -> Any:
    """``values[i]`` where ``i`` counts the milestones that ``epoch`` (0-based) has reached."""
    return values[bisect.bisect_right(milestones, epoch)]


def learning_rate(epoch: int, cfg: Config) -> float:
    """The learning rate of ``epoch``: ``train.lr_values`` stepped at ``train.lr_milestones``."""
    return piecewise(epoch, cfg.train.lr_milestones, cfg.train.lr_values)


def spl_weight(epoch: int, cfg: Config) -> float:
    """λ_spl of ``epoch``: ``loss.spl_weights`` stepped at ``loss.spl_milestones``."""
    return piecewise(epoch, cfg.loss.spl_milestones, cfg.loss.spl_weights)


def dist_weight(epoch: int, cfg: Config) -> float:
    """λ_dist(e) = min(w0 * growth ** (e - first regeneration), cap) (paper.md §1.8)."""
    p = cfg.pseudo
    return min(p.dist_weight * p.dist_growth ** (epoch - p.regen_epochs[0]), p.dist_max)


def in_pseudo_stage(epoch: int, cfg: Config) -> bool:
    """Whether ``epoch`` comes at or after the first pseudo-label regeneration."""
    return cfg.pseudo.enabled and epoch >= cfg.pseudo.regen_epochs[0]


def regeneration_temperature(epoch: int, cfg: Config) -> float | None:
    """The fusion temperature of the pseudo labels regenerated before ``epoch``'s first
    batch, or None when ``epoch`` regenerates none."""
    p = cfg.pseudo
    if not p.enabled or epoch not in p.regen_epochs:
        return None
    return p.temperatures[p.regen_epochs.index(epoch)]


def target_schedule(cfg: Config) -> dict[str, Any]:
    """The schedule keywords of :func:`wtal.pseudo.pseudo_target` from ``pseudo.*`` (no Δ
    labels within ``train.epochs`` when ``pseudo.delta`` is off)."""
    p = cfg.pseudo
    return dict(
        regen_epochs=p.regen_epochs,
        zero_target_until=p.regen_epochs[0],
        delta_start=p.delta_start if p.delta else cfg.train.epochs,
        delta_coefficients=(
            (p.delta_start, p.delta_coefficients[0]),
            (p.delta_switch, p.delta_coefficients[1]),
        ),
        clamp_min=p.delta_clamp_min,
        anchor=p.delta_anchor,
    )


def select_pseudo_target(
    epoch: int, history: list[tuple[int, dict[str, Tensor]]], cfg: Config
) -> dict[str, Tensor] | None:
    """The pseudo-label target of every training video at ``epoch`` (the §1.8 table): None
    (zero target), the latest labels, or delta labels alpha * (latest - previous).

    Args:
        epoch: 0-based epoch.
        history: ``(regeneration epoch, {video: (T, C+1) labels})``, oldest first.
        cfg: the run's config (``pseudo.*`` and ``train.epochs``).
    """
    if not history:
        return None
    schedule = target_schedule(cfg)
    targets = {}
    for vid in history[-1][1]:
        target = pseudo_target(epoch, [(e, labels[vid]) for e, labels in history], **schedule)
        if target is None:
            return None
        targets[vid] = target
    return targets


def is_delta_target(epoch: int, cfg: Config) -> bool:
    """Whether :func:`select_pseudo_target` gives Δ labels at ``epoch`` (the rule of
    :func:`wtal.pseudo.pseudo_target`)."""
    p = cfg.pseudo
    done = [r for r in p.regen_epochs if r <= epoch]
    return p.delta and epoch > p.regen_epochs[0] and epoch >= p.delta_start and len(done) >= 2
