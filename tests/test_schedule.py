"""Tests for wtal.schedule: the reference's epoch table and the pseudo-label target rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wtal.configfile import load_config
from wtal.schedule import (
    dist_weight,
    in_pseudo_stage,
    is_delta_target,
    learning_rate,
    piecewise,
    regeneration_temperature,
    select_pseudo_target,
    spl_weight,
)

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "thumos14_reference.yaml"


def test_piecewise_counts_the_milestones_reached():
    values = ("a", "b", "c")
    assert [piecewise(e, (2, 4), values) for e in range(6)] == list("aabbcc")
    assert piecewise(7, (), ("only",)) == "only"


def test_schedule_matches_the_reference_table():
    cfg = load_config(REFERENCE)
    lr = {e: learning_rate(e, cfg) for e in range(350)}
    assert lr[0] == lr[79] == 5e-5 and lr[80] == lr[199] == 4e-5
    assert lr[200] == lr[244] == 2.048e-5 and lr[245] == lr[259] == 5.12e-7
    assert lr[260] == lr[349] == 2.56e-7
    spl = {e: spl_weight(e, cfg) for e in range(350)}
    assert spl[100] == 1.0 and spl[101] == spl[200] == 0.5 and spl[201] == 1.0
    assert dist_weight(200, cfg) == 10.0
    assert dist_weight(230, cfg) == pytest.approx(28.07, abs=0.01)
    assert dist_weight(245, cfg) == pytest.approx(47.02, abs=0.01)
    assert dist_weight(247, cfg) == 50.0


def test_regenerations_follow_the_configured_epochs():
    cfg = load_config(None, ["pseudo.regen_epochs=[3, 5]", "pseudo.temperatures=[0.02, 0.002]"])
    temperatures = {e: regeneration_temperature(e, cfg) for e in range(7)}
    assert temperatures == {0: None, 1: None, 2: None, 3: 0.02, 4: None, 5: 0.002, 6: None}
    assert [in_pseudo_stage(e, cfg) for e in range(5)] == [False, False, False, True, True]
    off = load_config(None, ["pseudo.enabled=False"])
    assert regeneration_temperature(200, off) is None and not in_pseudo_stage(300, off)


def test_pseudo_target_follows_the_history():
    cfg = load_config()
    y = {e: {"v": torch.full((3, 2), float(e))} for e in (200, 230, 245, 260)}
    hist = [(e, y[e]) for e in (200, 230, 245)]
    assert select_pseudo_target(200, hist[:1], cfg) is None
    assert torch.equal(select_pseudo_target(231, hist[:2], cfg)["v"], y[230]["v"])
    assert not is_delta_target(231, cfg)
    delta = select_pseudo_target(251, hist, cfg)["v"]
    assert torch.allclose(delta, torch.full((3, 2), 2.0 * (245 - 230)))
    assert is_delta_target(251, cfg)
