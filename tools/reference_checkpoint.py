"""The authors' checkpoints (class ``WSTAL``) as :class:`wtal.model.WTALModel` weights.

Used by the parity tests, which load the reference network's weights into ours.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from wtal.io import InputError
from wtal.model import WTALModel

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
