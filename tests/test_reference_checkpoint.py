"""Tests of tools.reference_checkpoint: the authors' parameter names mapped onto ours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.reference_checkpoint import convert_reference_state_dict, load_reference_state_dict
from wtal.io import InputError
from wtal.model import WTALModel

FEAT_DIM, EMBED_DIM, NUM_CLASSES = 16, 24, 4


def test_reference_state_dict_conversion_and_errors():
    model = WTALModel(FEAT_DIM, NUM_CLASSES, embed_dim=EMBED_DIM)
    theirs = {
        "module.mu": torch.randn(8, EMBED_DIM),
        "ac_center": torch.randn(NUM_CLASSES + 1, EMBED_DIM),
        "fg_center": torch.randn(1, EMBED_DIM),
        "feature_embedding.0.weight": np.random.default_rng(0).normal(size=(EMBED_DIM, FEAT_DIM)),
        "feature_embedding.0.bias": torch.randn(EMBED_DIM),
    }
    converted = convert_reference_state_dict(theirs)
    assert set(converted) == {
        "basis_init",
        "class_centers",
        "foreground_center",
        "embedding.weight",
        "embedding.bias",
    }
    load_reference_state_dict(model, theirs)
    torch.testing.assert_close(model.class_centers.data, theirs["ac_center"])
    torch.testing.assert_close(model.basis_init.data, theirs["module.mu"])
    with pytest.raises(InputError, match="unexpected key 'extra'"):
        convert_reference_state_dict({**theirs, "extra": torch.zeros(1)})
    with pytest.raises(InputError, match="missing"):
        convert_reference_state_dict({k: v for k, v in theirs.items() if k != "fg_center"})
    with pytest.raises(InputError, match="shape"):
        load_reference_state_dict(model, {**theirs, "ac_center": torch.zeros(3, EMBED_DIM)})
