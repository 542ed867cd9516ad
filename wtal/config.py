"""Typed, frozen configuration.

Every tunable value of the method is a field here, with its reference value as the default
and a docstring under it saying what it does and where the value comes from (paper.md
section or the authors' ``file:line``). YAML files hold only what differs from these
defaults; unknown keys and values of the wrong type are errors; ``--set a.b=v`` overrides
any field; the fully resolved config is saved with every run.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wtal.io import InputError, atomic_path
from wtal.segments import REFERENCE_OUTER_BAND


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric config field (of every element of a tuple field)."""

    low: float | None = None
    """Smallest allowed value (None: no lower bound)."""
    high: float | None = None
    """Largest allowed value (None: no upper bound)."""
    low_open: bool = False
    """Exclude ``low`` itself."""
    high_open: bool = False
    """Exclude ``high`` itself."""

    def __contains__(self, x: float) -> bool:
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def describe(self, kind: str) -> str:
        """``"an integer >= 1"``, ``"a number in [0, 1)"``, ... for error messages."""
        low, high = (v if isinstance(v, int | None) else f"{v:g}" for v in (self.low, self.high))
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {high}"
        return kind


INT64_LIMIT = 2**63
"""Integer fields without an upper bound of their own must stay below this (int64)."""

_COUNT = Range(1)
_NON_NEGATIVE = Range(0)
_POSITIVE = Range(0, low_open=True)
_UNIT = Range(0, 1)
_UNIT_OPEN = Range(0, 1, high_open=True)
_ANY = Range()

RANGES: dict[str, Range] = {
    "data.fps": _POSITIVE,
    "data.snippet_frames": _POSITIVE,
    "data.num_segments": _NON_NEGATIVE,
    "data.val_fraction": _UNIT_OPEN,
    "data.val_seed": Range(0, 2**64, high_open=True),
    "data.max_abs_feature": _NON_NEGATIVE,
    "model.embed_dim": _COUNT,
    "model.dropout": _UNIT_OPEN,
    "model.scale": _POSITIVE,
    "model.num_bases": _COUNT,
    "model.em_iters": _COUNT,
    "model.em_sharpness": _POSITIVE,
    "model.walk_sharpness": _POSITIVE,
    "model.walk_weight": _UNIT_OPEN,  # (I - w^2 P) is singular at w = 1
    "model.queue_len": _COUNT,
    "loss.fore_weight": _NON_NEGATIVE,
    "loss.back_weight": _NON_NEGATIVE,
    "loss.att_weight": _NON_NEGATIVE,
    "loss.att_topk_divisor": _COUNT,
    "loss.memory_branch_weight": _NON_NEGATIVE,
    "loss.spl_temperature": _POSITIVE,
    "loss.spl_memory_mix": _UNIT,
    "loss.spl_milestones": _NON_NEGATIVE,
    "loss.spl_weights": _NON_NEGATIVE,
    "train.epochs": _COUNT,
    "train.lr_milestones": _NON_NEGATIVE,
    "train.lr_values": _NON_NEGATIVE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.betas": _UNIT_OPEN,
    "train.videos_per_step": _COUNT,
    "train.batch_size": _COUNT,
    "train.max_padding": _NON_NEGATIVE,
    "train.warmup_epoch": _NON_NEGATIVE,
    "train.seed": Range(0, 2**64, high_open=True),  # what torch and numpy seeding accept
    "train.checkpoint_every": _NON_NEGATIVE,
    "train.eval_every": _NON_NEGATIVE,
    "detect.video_mix": _UNIT,
    "detect.cas_mix": _UNIT,
    "detect.class_threshold": _UNIT,
    "detect.thresholds": _NON_NEGATIVE,
    "detect.min_length": _COUNT,
    "detect.outer_scale": _NON_NEGATIVE,
    "detect.outer_power": _NON_NEGATIVE,
    "detect.temperature": _POSITIVE,
    "detect.overlap_threshold": _UNIT,
    "detect.soft_nms_sigma": _POSITIVE,
    "pseudo.regen_epochs": _NON_NEGATIVE,
    "pseudo.temperatures": _POSITIVE,
    "pseudo.cas_mix": _UNIT,
    "pseudo.delta_start": _NON_NEGATIVE,
    "pseudo.delta_coefficients": _NON_NEGATIVE,
    "pseudo.delta_switch": _NON_NEGATIVE,
    "pseudo.delta_clamp_min": _ANY,
    "pseudo.history_length": _COUNT,
    "pseudo.dist_weight": _NON_NEGATIVE,
    "pseudo.dist_growth": _POSITIVE,
    "pseudo.dist_max": _NON_NEGATIVE,
}
"""Allowed values of every numeric field (``section.key``), declared once: checked when a
config section is built, and the tests derive their bad values from it. Every float must also
be finite. Cross-field rules live in the ``__post_init__`` methods. Schedule points (lr and
L_spl milestones, later regenerations, delta epochs) at or after ``train.epochs`` are allowed
and never reached; only the first regeneration must come before it (see :class:`Config`)."""


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """Dataset root: a per-video layout folder (annotations JSON + features/) or a W-TALC bundle."""
    layout: str = "auto"
    """``auto``, ``pervideo`` or ``wtalc`` (the latter unpickles the bundle: trusted files only)."""
    train_subset: str = "validation"
    """Subset used for training. W-TALC THUMOS14 trains on ``validation`` (paper.md §5.1)."""
    test_subset: str = "test"
    """Subset used for evaluation."""
    fps: float = 25.0
    """Frame rate the features were extracted at (THUMOS14 I3D: 25, paper.md §5.1); a video's
    own ``"fps"`` in the annotations wins (a different one is warned about)."""
    snippet_frames: float = 16.0
    """Frames per feature snippet (THUMOS14 I3D: 16 non-overlapping frames); a video's own
    ``"snippet_frames"`` in the annotations wins, likewise."""
    num_segments: int = 0
    """Fixed-length resampling to this many snippets per video; 0 keeps the native length
    (THUMOS14 feeds whole videos; ActivityNet recipes sample 75, paper.md §5.2)."""
    val_fraction: float = 0.0
    """Share of the training subset's videos held out as a validation split (0: none): left
    out of training, pseudo labels and the memory, and scored like the test split, so that
    settings can be chosen without the test split. Class-stratified (per class, by each video's
    rarest label: round(fraction x n) videos, at least one of a class with >= 2 videos); a
    fraction that leaves no training video, or none of some class, is refused."""
    val_seed: int = 0
    """Seed of the validation split: the same data and seed give the same split whatever
    ``train.seed`` is and in whatever order the videos are listed."""
    max_abs_feature: float = 1.0e4
    """Features beyond this absolute value are warned about (I3D features are O(1)-O(10):
    larger ones are unnormalised or corrupt); 0 turns the warning off."""

    def __post_init__(self) -> None:
        _check_fields(self, "data")
        _check(
            self.layout in ("auto", "pervideo", "wtalc"),
            "data.layout",
            self.layout,
            "one of auto, pervideo, wtalc",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Keyword arguments of :class:`wtal.model.WTALModel` (paper.md §1.2, §2)."""

    embed_dim: int = 2048
    """Width of the embedding layer (``--out-feat-num``, options.py:33)."""
    dropout: float = 0.6
    """Embedding dropout (options.py:45; ActivityNet 0.7)."""
    scale: float = 20.0
    """Cosine-classifier logit scale s (options.py:35; ActivityNet 10)."""
    num_bases: int = 8
    """EM bases per video (``--mu-num``)."""
    em_iters: int = 2
    """EM iterations (``--em-iter``)."""
    em_sharpness: float = 5.0
    """Softmax sharpness of the EM affinities (main_branch.py:113)."""
    walk_sharpness: float = 5.0
    """Softmax sharpness of the random-walk affinities (main_branch.py:29)."""
    walk_weight: float = 0.5
    """Random-walk propagation weight w (``--w``)."""
    walk_method: str = "woodbury"
    """``woodbury`` solves the random walk's (I - w^2 P) system through a K x K system (exact,
    O(T K^2)); ``dense`` solves the T x T system literally."""
    queue_len: int = 5
    """Memory slots per class (``--mu-queue-len``)."""
    memory_index_bug: bool = False
    """Reproduce the reference's memory indexing bug that always uses class 0's queue
    (paper.md §7 Q1). Off: each class reads and writes its own queue."""
    memory_mask_empty: bool = False
    """Leave never-written memory slots out of the walk; the reference uses them as zeros."""

    def __post_init__(self) -> None:
        _check_fields(self, "model")
        _check(
            self.walk_method in ("woodbury", "dense"),
            "model.walk_method",
            self.walk_method,
            "woodbury or dense",
        )


@dataclass(frozen=True)
class LossConfig:
    """Weights of the base-model losses (paper.md §1.3, §1.8)."""

    fore_weight: float = 1.0
    """Weight of the foreground normalized cross-entropy L_fore."""
    back_weight: float = 0.2
    """Weight of the background normalized cross-entropy L_back."""
    att_weight: float = 0.1
    """Weight of the attention loss L_att."""
    att_topk_divisor: int = 8
    """Top/bottom-k of the attention loss uses k = max(T // divisor, 1) (method.py:54)."""
    memory_branch_weight: float = 0.5
    """Factor of the inter-video (r) branch terms in L_fore and L_back (method.py:294-296)."""
    spl_temperature: float = 0.2
    """Temperature of the snippet-level distillation L_spl (``--T``)."""
    spl_memory_mix: float = 0.2
    """Share of the r branch in the L_spl target once memory is on (0.2 S_r + 0.8 S_m)."""
    spl_milestones: tuple[int, ...] = (101, 201)
    """0-based epochs at which the next value of ``spl_weights`` starts (method.py:233-259)."""
    spl_weights: tuple[float, ...] = (1.0, 0.5, 0.5)
    """λ_spl: 1.0 for e <= 100, 0.5 after. The authors raise it back to 1.0 after e = 200
    (``(1.0, 0.5, 1.0)``, configs/thumos14_reference.yaml); chosen on a validation split (README,
    *Results*): that jump alone costs 5-6 validation mAP within 10 epochs, with or without
    pseudo labels, and the low learning rate after e = 245 never wins it back."""

    def __post_init__(self) -> None:
        _check_fields(self, "loss")
        _check_increasing(self.spl_milestones, "loss.spl_milestones")
        _check(
            len(self.spl_weights) == len(self.spl_milestones) + 1,
            "loss.spl_weights",
            self.spl_weights,
            "one more value than loss.spl_milestones",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and schedule of training (paper.md §1.8)."""

    epochs: int = 350
    """Total epochs (``--max-epoch``). Epochs 0-199 are the RSKP base stage."""
    lr_milestones: tuple[int, ...] = (80, 200, 245, 260)
    """0-based epochs at which the next learning rate of ``lr_values`` starts (method.py:354-368,
    ``Step_change_lr`` with current_epoch = e + 1)."""
    lr_values: tuple[float, ...] = (5e-5, 4e-5, 2.048e-5, 5.12e-7, 2.56e-7)
    """Piecewise-constant learning rates (``changeLR_value``; 5.12e-8 is never reached, §7 Q7)."""
    weight_decay: float = 5e-4
    """Adam's coupled L2 weight decay."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (method.py:101-103)."""
    videos_per_step: int = 10
    """Videos whose summed (not averaged) losses make one optimizer step (``--batch-size``)."""
    batch_size: int = 10
    """Videos loaded together (at most this many per forward pass, padded and masked); must
    divide ``videos_per_step``."""
    max_padding: float = 1.5
    """Videos of a batch are sorted by length and split into forward passes whose padded size
    (longest video x count) is at most this many times their real snippets; 0 runs the whole
    batch as one pass. Padding is work: on a 2-core CPU with THUMOS14's lengths, one padded
    pass of 10 takes 1.9-2.6x as long per epoch as one video per pass, passes by length 0.7-1.1x
    (benchmarks/bench_train.py). The optimizer steps are the same either way."""
    warmup_epoch: int = 100
    """The inter-video memory branch is used for e > warmup_epoch; the memory is initialised
    after epoch ``warmup_epoch`` (method.py:288-298, 330-334)."""
    seed: int = 2
    """Seed of every random draw: initialisation, shuffling, dropout (main.py:18 uses 2)."""
    checkpoint_every: int = 5
    """Also keep ``epoch_XXX.pt`` every this many epochs (0: only ``last.pt``)."""
    eval_every: int = 0
    """Evaluate every this many epochs (0: only at the end): the validation split when
    ``data.val_fraction`` > 0, else the test subset. Results are logged, never used to select a
    checkpoint (paper.md §7 Q15)."""
    eval_test: bool = False
    """With a validation split, ``eval_every`` also scores the test subset (the final
    ``metrics.json`` always does)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    tensorboard: bool = True
    """Also write TensorBoard event files to ``RUN_DIR/tensorboard`` when the ``tensorboard``
    package is installed (it is optional); ``log.jsonl`` is written either way."""

    def __post_init__(self) -> None:
        _check_fields(self, "train")
        _check_increasing(self.lr_milestones, "train.lr_milestones")
        _check(
            len(self.lr_values) == len(self.lr_milestones) + 1,
            "train.lr_values",
            self.lr_values,
            "one more value than train.lr_milestones",
        )
        _check(
            self.videos_per_step % self.batch_size == 0,
            "train.batch_size",
            self.batch_size,
            "a divisor of train.videos_per_step",
        )
        _check(
            self.max_padding == 0 or self.max_padding >= 1,
            "train.max_padding",
            self.max_padding,
            "0 (one pass per batch) or a ratio >= 1",
        )
        _check(
            self.device in ("auto", "cpu", "cuda"),
            "train.device",
            self.device,
            "one of auto, cpu, cuda",
        )


@dataclass(frozen=True)
class DetectConfig:
    """Scores, proposals and fusion at test time (paper.md §1.4-1.5)."""

    video_mix: float = 0.6
    """Video score = video_mix * p_o + (1 - video_mix) * p_m (eval.py:69)."""
    cas_mix: float = 0.85
    """CAS = (cas_mix * softmax(S_o) + (1 - cas_mix) * softmax(S_m)) * attention (``frm_coef``)."""
    class_threshold: float = 0.16
    """Classes with video score below this get no proposals (``--class-threshold``)."""
    thresholds: tuple[float, float, float] = (0.001, 0.04, 0.002)
    """CAS thresholds as ``np.arange(start, stop, step)``: 20 values 0.001 ... 0.039."""
    min_length: int = 2
    """Shortest run kept as a proposal, in snippets."""
    outer_scale: float = REFERENCE_OUTER_BAND[0]
    """Outer band of the outer-inner score: outer_scale * L ** outer_power snippets per side
    (detectionMAP.py:130; the textbook form is 0.25 * L ** 1)."""
    outer_power: float = REFERENCE_OUTER_BAND[1]
    """Exponent of the outer band (see ``outer_scale``)."""
    inclusive_end: bool = True
    """Reproduce the reference's proposals that include one snippet past the run (paper.md E3)."""
    fusion: str = "gaussian"
    """``gaussian`` (weighted fusion), ``nms``, ``soft-nms`` or ``none``."""
    temperature: float = 0.2
    """Fusion temperature T of the weights exp(inner / T) (``--eval_temperature``)."""
    overlap_threshold: float = 0.25
    """Proposals overlapping the top one by more than this are fused or suppressed."""
    overlap: str = "ratio"
    """``ratio``: intersection over the lower-ranked proposal's length with inclusive +1
    arithmetic, as the reference (detectionMAP.py:157-245); ``iou``: textbook tIoU."""
    float32_means: bool = False
    """Average the CAS in float32 like the reference's numpy code (bit-level parity, ~2x
    slower); the float64 default differs by about 1e-6."""
    soft_nms_sigma: float = 0.5
    """Gaussian soft-NMS decay sigma (ablation only)."""

    def __post_init__(self) -> None:
        _check_fields(self, "detect")
        start, stop, step = self.thresholds
        _check(
            step > 0 and start < stop,
            "detect.thresholds",
            self.thresholds,
            "(start, stop, step) with step > 0 and start < stop",
        )
        _check(
            self.fusion in ("gaussian", "nms", "soft-nms", "none"),
            "detect.fusion",
            self.fusion,
            "one of gaussian, nms, soft-nms, none",
        )
        _check(self.overlap in ("ratio", "iou"), "detect.overlap", self.overlap, "ratio or iou")


@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo labels from fused detections on training videos (paper.md §1.6-1.8)."""

    enabled: bool = True
    """Train with LP pseudo labels after the base stage (False: base model only)."""
    regen_epochs: tuple[int, ...] = (200, 230, 245, 260, 275, 300)
    """0-based epochs before whose first batch pseudo labels are regenerated (``dist_epoch``)."""
    temperatures: tuple[float, ...] = (0.02, 0.02, 0.02, 0.002, 0.002, 0.0016)
    """Fusion temperature of each regeneration: 0.02 x [1, 1, 1, 0.1, 0.1, 0.08] (method.py:177)."""
    cas_mix: float = 0.8
    """CAS mix of o and m for pseudo labels, and the o/m weights of L_dist (``frm_coef_pseudo``)."""
    teacher_dropout: bool = True
    """Run the teacher copy in train mode, dropout on, as the reference does (paper.md §7 Q3)."""
    gt_classes_only: bool = False
    """Restrict pseudo labels to the GT video classes plus background (reference: predicted
    classes, §7 Q4)."""
    delta: bool = True
    """Use delta pseudo labels alpha * (Y_latest - Y_previous) in the last phase (§1.7)."""
    delta_start: int = 251
    """First 0-based epoch trained on delta pseudo labels."""
    delta_coefficients: tuple[float, float] = (2.0, 2.15)
    """alpha before / from ``delta_switch`` (method.py:252,258)."""
    delta_switch: int = 301
    """First epoch of the second delta coefficient."""
    delta_clamp_min: float | None = None
    """Clamp delta labels from below (e.g. 0.0); None keeps the reference's negative targets,
    which push a class whose label fell down (paper.md §7 Q6)."""
    history_length: int = 3
    """Pseudo-label sets kept (method.py:178-181); delta labels need at least 2."""
    dist_weight: float = 10.0
    """λ_dist at the first regeneration epoch (``--dist_loss``)."""
    dist_growth: float = 1.035
    """Per-epoch growth of λ_dist (``--dist_loss_increase``)."""
    dist_max: float = 50.0
    """Cap on λ_dist (``--max_dist_weight``)."""
    reset_memory: bool = False
    """Zero the inter-video memory at every regeneration, as the authors do (method.py:173;
    configs/thumos14_reference.yaml). Off by default, chosen on a validation split (README,
    *Results*): keeping the memory gained 1.3-2.0 validation mAP on each of 3 training seeds."""
    fusion: str | None = None
    """Fusion of the pseudo-label detections (same choices as ``detect.fusion``); None uses
    ``detect.fusion``. E.g. ``nms`` pseudo labels while the test detections keep Gaussian
    fusion; both still go through the one ``detect()`` path."""

    def __post_init__(self) -> None:
        _check_fields(self, "pseudo")
        _check_increasing(self.regen_epochs, "pseudo.regen_epochs")
        _check(
            len(self.temperatures) == len(self.regen_epochs),
            "pseudo.temperatures",
            self.temperatures,
            "one temperature per entry of pseudo.regen_epochs",
        )
        _check(
            self.fusion in (None, "gaussian", "nms", "soft-nms", "none"),
            "pseudo.fusion",
            self.fusion,
            "null (as detect.fusion) or one of gaussian, nms, soft-nms, none",
        )
        if not self.enabled:
            return
        _check(
            len(self.regen_epochs) >= 1,
            "pseudo.regen_epochs",
            self.regen_epochs,
            "at least one epoch while pseudo.enabled is true",
        )
        if self.delta:
            _check(
                self.history_length >= 2,
                "pseudo.history_length",
                self.history_length,
                ">= 2 while pseudo.delta is true (delta labels need two label sets)",
            )
            _check(
                self.delta_start <= self.delta_switch,
                "pseudo.delta_switch",
                self.delta_switch,
                f"an epoch >= pseudo.delta_start = {self.delta_start}",
            )


@dataclass(frozen=True)
class EvalConfig:
    """How detections are scored (paper.md §4)."""

    preset: str = "thumos"
    """tIoU thresholds: ``thumos`` (0.1:0.1:0.7) or ``anet`` (0.5:0.05:0.95)."""
    protocol: str = "official"
    """Headline protocol: ``official`` ActivityNet semantics or the legacy ``wtalc`` one.
    Both are always computed and saved."""
    ambiguous_filter: bool = False
    """Legacy protocol only: drop predictions overlapping an ambiguous segment."""

    def __post_init__(self) -> None:
        _check(self.preset in ("thumos", "anet"), "eval.preset", self.preset, "thumos or anet")
        _check(
            self.protocol in ("official", "wtalc"),
            "eval.protocol",
            self.protocol,
            "official or wtalc",
        )


@dataclass(frozen=True)
class Config:
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        epochs = self.train.epochs
        if self.pseudo.enabled:
            # otherwise the run silently ends before its pseudo-label stage
            _check(
                self.pseudo.regen_epochs[0] < epochs,
                "pseudo.regen_epochs",
                self.pseudo.regen_epochs,
                f"a first regeneration before train.epochs = {epochs} "
                "(or pseudo.enabled = false for the base stage only)",
            )


class ConfigError(InputError):
    """A config file or override that does not fit the dataclasses."""


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(None, f"{key} = {value!r}: expected {expected}")


def _check_fields(section: Any, name: str) -> None:
    """Every number of a config section (each element of a tuple) is finite and inside the
    field's :data:`RANGES` entry; the message names ``name.field`` and the allowed values."""
    for f in dataclasses.fields(section):
        key = f"{name}.{f.name}"
        value = getattr(section, f.name)
        items = enumerate(value) if isinstance(value, tuple) else [(None, value)]
        for i, x in items:
            if isinstance(x, bool) or not isinstance(x, int | float):
                continue
            where = key if i is None else f"{key}[{i}]"
            kind = "an integer" if isinstance(x, int) else "a number"
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(None, f"{where} = {x!r}: expected a finite number")
            allowed = RANGES.get(key, Range())
            if x not in allowed:
                raise ConfigError(None, f"{where} = {x!r}: expected {allowed.describe(kind)}")
            # Integers go into numpy and torch as int64: a larger one would overflow there
            # (after the run folder exists) instead of being refused here.
            if isinstance(x, int) and allowed.high is None and not abs(x) < INT64_LIMIT:
                raise ConfigError(None, f"{where} = {x!r}: expected an integer < 2^63")


def _check_increasing(values: tuple[int, ...], key: str) -> None:
    """Schedule epochs are listed once each, in increasing order."""
    ok = all(a < b for a, b in zip(values, values[1:], strict=False))
    _check(ok, key, values, "strictly increasing epochs")


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        raise ConfigError(source, f"{key} = {value!r}: expected {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(source, f"{key} = {value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(source, f"{key} = {value!r}: expected a list of {len(args)} values")
        return tuple(
            _coerce(v, a, f"{key}[{i}]", source)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(source, f"{key} = {value!r}: expected {getattr(tp, '__name__', tp)}")


def from_dict(cls: type, data: dict[str, Any], source: str | None = None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(source, f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(source, f"unknown config key {name!r} (known here: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, source, f"{name}.")
        else:
            kwargs[key] = _coerce(value, tp, name, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(source, exc.what) from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(None, f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        # YAML spellings as in the config files (`false`, `null`), else a bare string such as
        # `--set train.device=cpu`
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
    return key.strip().split("."), value


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Defaults, updated by the YAML file at ``path`` (if any), then by ``section.key=value``
    overrides."""
    data: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        try:
            text = Path(path).expanduser().read_text()
            data = yaml.safe_load(text) or {}
        except FileNotFoundError:
            raise ConfigError(path, "config file not found") from None
        except OSError as exc:  # a folder, no permission
            raise ConfigError(path, f"cannot read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(path, "cannot read: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise ConfigError(path, f"malformed YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(path, "expected a mapping of sections at the top level")
        if duplicate := _duplicate_key(text):
            raise ConfigError(path, duplicate)
    return config_from_dict(data, overrides, source)


def _duplicate_key(text: str) -> str | None:
    """``"line N: key 'k' given twice"`` for the first mapping of the YAML ``text`` that
    repeats a key (``safe_load`` keeps the last value silently), else None.

    Reads the node graph (``yaml.compose``: no object is constructed), each node once, so
    aliases cannot blow up the walk.
    """
    stack, seen = [yaml.compose(text, Loader=yaml.SafeLoader)], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        return f"line {key.start_mark.line + 1}: key {key.value!r} given twice"
                    keys.add(key.value)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return None


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, source: str | None = None
) -> Config:
    """A :class:`Config` from a nested dict (as :func:`config_to_dict` writes it, e.g. the
    ``config`` entry of a checkpoint), updated by ``section.key=value`` overrides.

    ``data`` is not modified. ``source`` names the dict's origin in error messages.
    """
    data = copy.deepcopy(data)
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(source, f"--set {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return from_dict(Config, data, source)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists instead of tuples), for YAML, JSON and checkpoints."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, tuple | list):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
