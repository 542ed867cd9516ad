"""The authors' checkpoints (class ``WSTAL``) as :class:`wtal.model.WTALModel` weights.

Used by the parity tests, which load the reference network's weights into ours, and to start
wtal's pseudo-label stage from the authors' own base-stage weights (docs/results.md, "The
authors' code beside wtal")::

    python -m tools.reference_checkpoint THEIRS/200.pkl --like RUN/epoch_200.pt --out theirs_200.pt
    wtal train CONFIG --data DATA --init-from theirs_200.pt ...

``--like`` is any wtal checkpoint trained on the same data (same classes and feature width): it
supplies the config, class names and random state; the weights are the authors', the memory is
empty (their code empties it at every regeneration and saves none), the optimizer state is fresh
(their checkpoints hold none) and there is no pseudo-label history.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wtal.checkpoint import load_checkpoint
from wtal.io import InputError, atomic_path
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
    converted = _fitting(state_dict, model.state_dict(), "the model expects")
    model.load_state_dict(converted, strict=False)


def _fitting(
    state_dict: Mapping[str, Tensor | np.ndarray], own: Mapping[str, Tensor], expects: str
) -> dict[str, Tensor]:
    """:func:`convert_reference_state_dict`, each tensor checked against ``own``'s shape.

    Raises:
        InputError: ``reference state dict: <name> has shape (..), <expects> (..)``.
    """
    converted = convert_reference_state_dict(state_dict)
    for name, value in converted.items():
        shape = tuple(own[name].shape) if name in own else "no such tensor"
        if shape != tuple(value.shape):
            what = f"reference state dict: {name} has shape {tuple(value.shape)}"
            raise InputError(None, f"{what}, {expects} {shape}")
    return converted


def read_reference_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The authors' ``.pkl`` checkpoint (a plain state dict), read with ``weights_only=True``.

    Raises:
        InputError: a missing file, one that is not a state dict of tensors, or pickled code.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(path, "reference checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(path, "refused: not a plain state dict of tensors") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        what = f"not a readable reference checkpoint ({exc.__class__.__name__})"
        raise InputError(path, what) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(path, "expected a state dict of tensors (the authors' WSTAL)")
    return dict(state)


def reference_branch_state(
    reference: Mapping[str, Tensor | np.ndarray], like: dict[str, Any], epoch: int
) -> dict[str, Any]:
    """A wtal checkpoint at ``epoch`` holding the authors' weights, to branch a run from.

    Args:
        reference: the authors' ``WSTAL`` state dict.
        like: a wtal checkpoint (:func:`wtal.checkpoint.load_checkpoint`) of the same data:
            its config, class names, feature width and random state are kept.
        epoch: the number of epochs the authors' weights were trained for (>= 0).

    Returns:
        the checkpoint dict: every ``memory.*`` buffer zeroed, an optimizer with the same
        parameter groups and no state, empty pseudo-label history.

    Raises:
        InputError: unknown / missing keys, shapes that do not fit ``like``'s model, or a
            negative epoch.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InputError(None, f"epoch {epoch!r}: expected an integer >= 0")
    converted = _fitting(reference, like["model"], "the --like checkpoint has")
    model = {k: v.clone() for k, v in like["model"].items()}
    for name, value in converted.items():
        model[name] = value.to(model[name].dtype)
    for name in model:
        if name.startswith("memory."):
            model[name] = torch.zeros_like(model[name])
    groups = like["optimizer"]["param_groups"]
    state = {k: v for k, v in like.items() if k != "init_from"}
    state.update(
        model=model,
        optimizer={"state": {}, "param_groups": groups},
        epoch=epoch,
        pseudo_epochs=[],
        pseudo=[],
        pseudo_segment_epochs=[],
        pseudo_segments=[],
    )
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.reference_checkpoint",
        description="The authors' N.pkl as a wtal checkpoint at epoch N, for --init-from.",
    )
    parser.add_argument("reference", help="the authors' checkpoint, e.g. ckpt/.../200.pkl")
    parser.add_argument("--like", required=True, help="a wtal checkpoint of the same data")
    parser.add_argument("--epoch", type=int, help="epochs trained (default: the .pkl's stem)")
    parser.add_argument("--out", required=True, help="the wtal checkpoint to write (new file)")
    args = parser.parse_args(argv)
    try:
        out = Path(args.out).expanduser()
        if out.exists():
            raise InputError(out, "exists; choose a new file")
        reference = read_reference_state_dict(args.reference)
        epoch = args.epoch
        if epoch is None:
            stem = Path(args.reference).stem
            if not stem.isdigit():
                raise InputError(args.reference, "name is not '<epoch>.pkl': give --epoch")
            epoch = int(stem)
        like = load_checkpoint(args.like)
        missing = [k for k in ("config", "model", "optimizer", "rng") if k not in like]
        if missing:
            raise InputError(args.like, f"no {', '.join(missing)} entries to branch with")
        state = reference_branch_state(reference, like, epoch)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (epoch {epoch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
