"""Tests of wtal.pseudo: Δ pseudo labels, the §1.8 schedule, quality metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wtal.config import Config
from wtal.pseudo import (
    delta_pseudo_labels,
    pseudo_label_quality,
    pseudo_target,
    summarize_quality,
    update_history,
)
from wtal.schedule import target_schedule


def test_delta_pseudo_labels():
    rng = np.random.default_rng(0)
    y = rng.random((7, 3))
    assert not delta_pseudo_labels(y, y.copy(), 2.0).any()
    prev = rng.random((7, 3))
    np.testing.assert_allclose(delta_pseudo_labels(y, prev, 2.15), 2.15 * (y - prev))
    clamped = delta_pseudo_labels(y, prev, 2.0, clamp_min=0.0)
    np.testing.assert_allclose(clamped, np.maximum(2.0 * (y - prev), 0.0))
    t = delta_pseudo_labels(torch.tensor(y), torch.tensor(prev), 2.0, clamp_min=-0.1)
    np.testing.assert_allclose(t.numpy(), np.maximum(2.0 * (y - prev), -0.1))
    anchored = delta_pseudo_labels(y, prev, 2.0, clamp_min=0.0, anchor=True)
    np.testing.assert_allclose(anchored, y + np.maximum(2.0 * (y - prev), 0.0))
    with pytest.raises(ValueError):
        delta_pseudo_labels(y, prev[:3], 2.0)


def test_anchored_delta_target_through_the_schedule():
    """``pseudo.delta_anchor`` reaches the Δ phase's targets and nothing before it."""
    from wtal.config import Config, PseudoConfig
    from wtal.schedule import select_pseudo_target

    rng = np.random.default_rng(1)
    history = [(e, {"v": torch.tensor(rng.random((5, 3)))}) for e in (230, 245)]
    plain = Config()
    anchored = Config(pseudo=PseudoConfig(delta_anchor=True))
    for epoch in (246, 251):
        a = select_pseudo_target(epoch, history, plain)["v"]
        b = select_pseudo_target(epoch, history, anchored)["v"]
        if epoch < 251:  # plain-label phase: the latest labels either way
            torch.testing.assert_close(a, b)
        else:
            torch.testing.assert_close(b, history[-1][1]["v"] + a)


def test_schedule_reproduces_table():
    """Every row of paper.md §1.8 (PL target column)."""
    Y = {r: np.full((2, 2), float(r)) for r in (200, 230, 245, 260, 275, 300)}
    history: list = []
    expected = {
        **{e: None for e in (0, 79, 100, 150, 199, 200)},
        **{e: ("Y", 200) for e in (201, 215, 229)},
        **{e: ("Y", 230) for e in (230, 244)},
        **{e: ("Y", 245) for e in (245, 250)},
        **{e: (2.0, 245, 230) for e in (251, 259)},
        **{e: (2.0, 260, 245) for e in (260, 274)},
        **{e: (2.0, 275, 260) for e in (275, 299)},
        300: (2.0, 300, 275),
        **{e: (2.15, 300, 275) for e in (301, 330, 349)},
    }
    for epoch in range(350):
        if epoch in Y:
            history = update_history(history, epoch, Y[epoch], Config().pseudo.history_length)
            assert len(history) <= 3
        got = pseudo_target(epoch, history, **target_schedule(Config()))
        if epoch not in expected:
            continue
        want = expected[epoch]
        if want is None:
            assert got is None, epoch
        elif want[0] == "Y":
            np.testing.assert_array_equal(got, Y[want[1]], err_msg=str(epoch))
        else:
            np.testing.assert_allclose(got, want[0] * (Y[want[1]] - Y[want[2]]), err_msg=str(epoch))
    with pytest.raises(KeyError):
        pseudo_target(260, {245: Y[245]}, **target_schedule(Config()))


def test_pseudo_label_quality_hand_case():
    T = 10
    pseudo = np.zeros((T, 3))
    pseudo[2:5, 0] = 0.5  # 1.5 mass, 1.0 of it inside GT [3, 6) of class 0
    pseudo[8, 1] = 0.25  # class 1 has no GT: all outside
    pseudo[4, 2] = 0.1  # background inside an action: the wrong place
    pseudo[0, 2] = 0.3  # background outside every action: the right place
    q = pseudo_label_quality(
        pseudo,
        np.array([[3.0, 6.0]]),
        np.array([0]),
        pseudo_segments=np.array([[3.0, 5.0], [7.0, 9.0], [0.0, 2.0]]),
        pseudo_segment_labels=np.array([0, 0, 2]),  # the background segment is left out
    )
    np.testing.assert_allclose(q["mass_inside"], [1.0, 0.0, 0.3])
    np.testing.assert_allclose(q["mass_outside"], [0.5, 0.25, 0.1])
    assert q["inside_fraction"] == pytest.approx(1.0 / 1.75)
    assert q["background_outside_fraction"] == pytest.approx(0.75)
    assert q["precision"] == 0.5 and q["recall"] == 1.0
    assert q["n_pseudo"] == 2 and q["n_hits"] == 1 and q["n_gt"] == 1 and q["n_found"] == 1
    assert q["mean_best_tiou"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert q["mean_gt_best_tiou"] == pytest.approx(2 / 3)


def test_summarize_quality_pools_counts_not_rates():
    """Micro averages: a video with many segments weighs more than one with few."""
    gt = np.array([[0.0, 4.0]])
    a = np.zeros((8, 2))
    a[0:4, 0] = 1.0  # all inside
    b = np.zeros((8, 2))
    b[4:8, 0] = 0.5  # all outside
    qa = pseudo_label_quality(a, gt, [0], pseudo_segments=[[0.0, 4.0]], pseudo_segment_labels=[0])
    qb = pseudo_label_quality(
        b, gt, [0], pseudo_segments=[[4.0, 8.0], [5.0, 8.0], [0.0, 4.0]],
        pseudo_segment_labels=[0, 0, 0],
    )  # fmt: skip
    s = summarize_quality([qa, qb])
    assert s["precision"] == pytest.approx(2 / 4)  # not the mean of 1 and 1/3
    assert s["recall"] == 1.0 and s["n_pseudo"] == 4 and s["n_gt"] == 2 and s["videos"] == 2
    assert s["inside_fraction"] == pytest.approx(4.0 / 6.0)
    assert s["background_outside_fraction"] is None  # no background mass at all
    assert summarize_quality([]) == {"videos": 0}
