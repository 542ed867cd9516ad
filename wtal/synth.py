"""A synthetic WTAL benchmark that is hard in the ways real WTAL is hard.

Every snippet feature is ``ReLU`` of a mixture of unit-variance-per-dimension prototypes plus
temporally correlated noise, so features are non-negative and I3D-like. What makes it hard:

* **incompleteness**: an action's class signal follows a bump that is strongest in its core
  and only ``edge_strength`` of that at its boundaries;
* **context confusion**: each class has a context prototype (its "scene") that is present,
  decaying, just outside its actions and weakly throughout its videos; a classifier trained
  from video labels cannot tell it from the action;
* **confusable classes**: classes come in families whose prototypes and contexts share a
  component (``family_similarity``); multi-label videos often mix a family;
* **clutter**: class-free "motion" bursts that share the actionness direction of all
  actions, weak distractor bursts of classes absent from the video, and background shots;
* THUMOS-like statistics: many instances per video with high variance, widely varying video
  and action lengths; test videos also carry ambiguous instances (weakened, not GT).

Ground truth is exact: instances are whole snippets ``[start, end)`` converted with
:func:`wtal.segments.snippets_to_seconds`. :func:`write_synthetic` writes both layouts::

    OUT/annotations.json, OUT/features/<video_id>.npy     per-video layout
    OUT/wtalc/<name>-I3D-JOINTFeatures.npy, OUT/wtalc/*.npy, OUT/wtalc/Ambiguous_test.txt
    OUT/synth_spec.json                                   the spec and seed used
"""

from __future__ import annotations

import ast
import os
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from scipy.signal import lfilter

from wtal.annotations import VideoAnnotation
from wtal.data.layouts import atomic_dir, write_pervideo, write_wtalc
from wtal.io import InputError, write_json
from wtal.segments import snippets_to_seconds


@dataclass(frozen=True)
class SynthSpec:
    """Every knob of the generator. Amplitudes are in units of the noise std per dimension."""

    num_classes: int = 20
    """Number of action classes."""
    feat_dim: int = 128
    """Feature dimension D (real I3D: 2048; kept small so CPU training is quick)."""
    train_videos: int = 200
    """Videos in the training subset."""
    test_videos: int = 212
    """Videos in the test subset."""
    train_subset: str = "validation"
    """Name of the training subset (W-TALC THUMOS14 trains on "validation")."""
    test_subset: str = "test"
    """Name of the test subset."""
    fps: float = 25.0
    """Frame rate the snippets are cut at (recorded in the annotations)."""
    snippet_frames: float = 16.0
    """Frames per snippet."""
    median_snippets: float = 260.0
    """Median video length in snippets (log-normal lengths)."""
    snippets_log_std: float = 0.7
    """Std of log video length."""
    min_snippets: int = 30
    """Shortest video, snippets."""
    max_snippets: int = 700
    """Longest video, snippets (caps memory and CPU time)."""
    mean_instances: float = 20.0
    """Mean instances per video before space limits (1 + negative binomial)."""
    instances_dispersion: float = 1.2
    """Negative-binomial shape r of the extra instances (variance m + m^2 / r)."""
    median_action_snippets: float = 5.0
    """Median action length in snippets (log-normal lengths)."""
    action_log_std: float = 0.8
    """Std of log action length."""
    min_action_snippets: int = 1
    """Shortest action, snippets."""
    max_coverage: float = 0.75
    """Largest fraction of a video covered by actions; extra instances are dropped."""
    min_gap_snippets: int = 1
    """Background snippets at least between two instances."""
    multi_label_prob: float = 0.15
    """Probability that a video has a second class."""
    same_family_prob: float = 0.6
    """Probability that the second class is from the first one's family."""
    family_size: int = 2
    """Classes per family of confusable classes."""
    family_similarity: float = 0.5
    """Share of variance that prototypes of one family have in common, in [0, 1)."""
    action_amplitude: float = 0.35
    """Class-signal amplitude at an action's core."""
    amplitude_log_std: float = 0.35
    """Std of the log amplitude per instance (some instances are faint)."""
    edge_strength: float = 0.2
    """Class signal at an action's boundary relative to its core (incompleteness)."""
    core_sharpness: float = 2.0
    """Exponent of the sine bump between boundary and core; larger: narrower core."""
    actionness_amplitude: float = 0.25
    """Amplitude of the class-free motion direction shared by all actions and clutter."""
    context_amplitude: float = 0.25
    """Class context (scene) amplitude inside and next to the class's actions."""
    context_snippets: float = 4.0
    """Decay length (snippets) of the context outside an action."""
    scene_amplitude: float = 0.08
    """Class context present throughout a video of that class."""
    num_scenes: int = 8
    """Background scene prototypes; a video is a sequence of shots of random scenes."""
    background_amplitude: float = 0.5
    """Amplitude of the background scene of a shot."""
    mean_shot_snippets: float = 60.0
    """Mean shot length in snippets."""
    clutter_rate: float = 0.02
    """Class-free motion bursts per snippet."""
    clutter_snippets: float = 5.0
    """Mean length of a clutter or distractor burst, snippets."""
    distractor_rate: float = 0.01
    """Bursts per snippet of a class absent from the video."""
    distractor_amplitude: float = 0.15
    """Core amplitude of a distractor burst."""
    noise_std: float = 1.0
    """Per-dimension noise std."""
    noise_correlation: float = 0.6
    """AR(1) coefficient of the noise along time (I3D features are smooth)."""
    ambiguous_prob: float = 0.04
    """Probability that a test instance is ambiguous (weakened, listed, not GT)."""
    ambiguous_amplitude: float = 0.5
    """Amplitude factor of an ambiguous instance."""
    name: str = "Synth"
    """Dataset name of the W-TALC bundle (``<name>-I3D-JOINTFeatures.npy``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.family_similarity < 1 or not 0 <= self.noise_correlation < 1:
            raise ValueError("family_similarity and noise_correlation must be in [0, 1)")
        if self.min_snippets < 2 or self.max_snippets < self.min_snippets:
            raise ValueError("need 2 <= min_snippets <= max_snippets")
        if self.num_classes < 2 or self.feat_dim < 1 or self.family_size < 1:
            raise ValueError("need num_classes >= 2, feat_dim >= 1, family_size >= 1")
        if self.train_videos < 1 or self.test_videos < 1 or not 0 < self.max_coverage < 1:
            raise ValueError("need >= 1 video per subset and max_coverage in (0, 1)")


THUMOS = SynthSpec()
"""THUMOS14-like: 20 classes, 200 + 212 videos, ~15 short instances per video (few to 60)."""
ANET = SynthSpec(
    num_classes=50,
    train_videos=600,
    test_videos=300,
    train_subset="training",
    test_subset="validation",
    median_snippets=120.0,
    snippets_log_std=0.5,
    min_snippets=40,
    max_snippets=300,
    mean_instances=1.5,
    instances_dispersion=50.0,
    median_action_snippets=45.0,
    action_log_std=0.6,
    min_action_snippets=4,
    max_coverage=0.9,
    min_gap_snippets=2,
    multi_label_prob=0.05,
    clutter_rate=0.01,
    distractor_rate=0.005,
    ambiguous_prob=0.0,
)
"""ActivityNet-like: 50 classes, 600 + 300 videos, 1-2 long instances per video."""
PRESETS = {"thumos": THUMOS, "anet": ANET}


def _unit_rows(rng: np.random.Generator, num: int, dim: int) -> np.ndarray:
    """(num, dim) Gaussian rows rescaled to unit variance per dimension."""
    rows = rng.standard_normal((num, dim))
    return rows * np.sqrt(dim) / np.linalg.norm(rows, axis=1, keepdims=True)


def _bumps(num_snippets: int, starts: np.ndarray, ends: np.ndarray, edge: float, sharp: float):
    """(K, T) bump of each span [start, end): ``edge`` at the boundary, 1 at the core."""
    centers = np.arange(num_snippets) + 0.5  # (T,)
    rel = (centers[None, :] - starts[:, None]) / (ends - starts)[:, None]  # (K, T)
    inside = (rel >= 0) & (rel < 1)
    core = np.sin(np.pi * np.clip(rel, 0, 1)) ** sharp
    return np.where(inside, edge + (1 - edge) * core, 0.0), centers


def _place(rng: np.random.Generator, spec: SynthSpec, num_snippets: int) -> np.ndarray:
    """(N, 2) int64 non-overlapping instance spans [start, end) in snippets, N >= 1."""
    count = 1 + rng.negative_binomial(
        spec.instances_dispersion,
        spec.instances_dispersion / (spec.instances_dispersion + spec.mean_instances - 1),
    )
    lengths = np.exp(rng.normal(np.log(spec.median_action_snippets), spec.action_log_std, count))
    budget = spec.max_coverage * num_snippets
    lengths = np.clip(np.round(lengths), spec.min_action_snippets, budget).astype(np.int64)
    fits = np.cumsum(lengths + spec.min_gap_snippets) <= budget + spec.min_gap_snippets
    lengths = lengths[: max(1, int(fits.sum()))]  # drop the instances that do not fit
    free = num_snippets - lengths.sum() - spec.min_gap_snippets * (len(lengths) - 1)
    gaps = np.floor(rng.dirichlet(np.ones(len(lengths) + 1)) * free).astype(np.int64)
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0], np.cumsum(lengths[:-1])])
    starts += spec.min_gap_snippets * np.arange(len(lengths))
    return np.stack([starts, starts + lengths], axis=1)


class _Prototypes:
    """Directions of the mixture, shared by all videos of one seed."""

    def __init__(self, rng: np.random.Generator, spec: SynthSpec):
        c, d, rho = spec.num_classes, spec.feat_dim, spec.family_similarity
        family = np.arange(c) // spec.family_size  # (C,)
        shared = _unit_rows(rng, 2 * (family.max() + 1), d)
        own = _unit_rows(rng, 2 * c, d)
        mix = (
            np.sqrt(1 - rho) * own
            + np.sqrt(rho) * shared[np.concatenate([family, family + family.max() + 1])]
        )
        self.family = family
        self.action, self.context = mix[:c], mix[c:]  # (C, D) each
        self.actionness = _unit_rows(rng, 1, d)[0]  # (D,)
        self.scenes = _unit_rows(rng, spec.num_scenes, d)  # (S, D)


def _video_classes(rng: np.random.Generator, spec: SynthSpec, family: np.ndarray) -> np.ndarray:
    """Class indices of one video: one, or two (often from one family)."""
    first = int(rng.integers(spec.num_classes))
    if rng.random() >= spec.multi_label_prob:
        return np.array([first])
    others = np.delete(np.arange(spec.num_classes), first)
    mates = others[family[others] == family[first]]
    pool = mates if len(mates) and rng.random() < spec.same_family_prob else others
    return np.array([first, int(rng.choice(pool))])


def _bursts(rng: np.random.Generator, spec: SynthSpec, num_snippets: int, rate: float):
    """(K, T) bumps of K ~ Poisson(rate * T) short bursts at random places."""
    count = rng.poisson(rate * num_snippets)
    starts = rng.integers(0, num_snippets, count).astype(np.float64)
    lengths = 1 + rng.poisson(spec.clutter_snippets - 1, count)
    return _bumps(num_snippets, starts, starts + lengths, spec.edge_strength, spec.core_sharpness)[
        0
    ]


def _generate_video(
    rng: np.random.Generator, spec: SynthSpec, protos: _Prototypes, num_snippets: int, test: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One video: features (T, D) float32, spans (N, 2) snippets, classes (N,), ambiguous (N,)."""
    eye = np.eye(spec.num_classes)
    spans = _place(rng, spec, num_snippets)
    num = len(spans)
    video_classes = _video_classes(rng, spec, protos.family)[:num]
    classes = rng.choice(video_classes, size=num)
    classes[: len(video_classes)] = video_classes  # every video class has an instance
    rng.shuffle(classes)
    amplitude = spec.action_amplitude * np.exp(rng.normal(0, spec.amplitude_log_std, num))
    ambiguous = test & (rng.random(num) < spec.ambiguous_prob)
    ambiguous[rng.integers(num)] = False  # at least one ground-truth instance
    amplitude[ambiguous] *= spec.ambiguous_amplitude
    bump, centers = _bumps(
        num_snippets, spans[:, 0], spans[:, 1], spec.edge_strength, spec.core_sharpness
    )  # (N, T)
    action = (bump * amplitude[:, None]).T @ eye[classes]  # (T, C)
    # Context: 1 inside the action, decaying outside; max over a class's instances.
    outside = np.maximum(spans[:, :1] - centers, centers - spans[:, 1:])  # (N, T)
    near = np.exp(-np.clip(outside, 0, None) / spec.context_snippets)  # (N, T)
    context = (near[:, :, None] * eye[classes][:, None, :]).max(axis=0) * spec.context_amplitude
    context[:, video_classes] += spec.scene_amplitude  # (T, C)
    # Class-free motion: in every action and in clutter bursts.
    clutter = _bursts(rng, spec, num_snippets, spec.clutter_rate)  # (K, T)
    actionness = spec.actionness_amplitude * (bump.sum(0) + clutter.sum(0))  # (T,)
    absent = np.setdiff1d(np.arange(spec.num_classes), video_classes)
    distractors = _bursts(rng, spec, num_snippets, spec.distractor_rate)  # (K', T)
    distractor_classes = rng.choice(absent, size=len(distractors))
    action += spec.distractor_amplitude * distractors.T @ eye[distractor_classes]
    shot = np.cumsum(rng.random(num_snippets) < 1.0 / spec.mean_shot_snippets)  # (T,)
    scenes = rng.integers(spec.num_scenes, size=shot[-1] + 1)[shot]  # (T,)
    rho = spec.noise_correlation
    noise = lfilter(
        [np.sqrt(1 - rho**2)],
        [1.0, -rho],
        rng.standard_normal((num_snippets, spec.feat_dim)),
        axis=0,
    )
    mixture = (
        action @ protos.action
        + context @ protos.context
        + actionness[:, None] * protos.actionness
        + spec.background_amplitude * protos.scenes[scenes]
        + spec.noise_std * noise
    )  # (T, D)
    features = np.maximum(mixture, 0).astype(np.float32)
    return features, spans, classes, ambiguous


def class_names(spec: SynthSpec) -> list[str]:
    """``action_000``, ``action_001``, ...: sorted order equals index order."""
    return [f"action_{c:03d}" for c in range(spec.num_classes)]


def generate_synthetic(
    spec: SynthSpec, seed: int = 0
) -> tuple[list[VideoAnnotation], list[np.ndarray], list[str]]:
    """Generate the benchmark in memory; the same ``(spec, seed)`` gives the same arrays.

    Returns:
        Annotations (training videos first), (T_i, D) float32 features per video, and the
        class names.
    """
    rng = np.random.default_rng(seed)
    protos = _Prototypes(rng, spec)
    names = class_names(spec)
    records, features = [], []
    splits = [
        (spec.train_subset, spec.train_videos, False),
        (spec.test_subset, spec.test_videos, True),
    ]
    for split_id, (subset, count, test) in enumerate(splits):
        for i in range(count):
            vrng = np.random.default_rng([seed, split_id, i])  # videos independent of each other
            log_len = vrng.normal(np.log(spec.median_snippets), spec.snippets_log_std)
            num_snippets = int(
                np.clip(round(np.exp(log_len)), spec.min_snippets, spec.max_snippets)
            )
            feats, spans, classes, ambiguous = _generate_video(
                vrng, spec, protos, num_snippets, test
            )
            seconds = snippets_to_seconds(spans, spec.fps, spec.snippet_frames)  # (N, 2)
            gt_names = [names[c] for c in classes[~ambiguous]]
            records.append(
                VideoAnnotation(
                    video_id=f"video_{subset}_{i:07d}",
                    subset=subset,
                    duration_s=float(
                        snippets_to_seconds(num_snippets, spec.fps, spec.snippet_frames)
                    ),
                    segments_s=seconds[~ambiguous],
                    segment_labels=gt_names,
                    labels=sorted(set(gt_names)),
                    ambiguous_s=seconds[ambiguous],
                    fps=spec.fps,
                )
            )
            features.append(feats)
    return records, features, names


def write_synthetic(out: str | os.PathLike, spec: SynthSpec, seed: int = 0) -> dict[str, int]:
    """Generate and write the benchmark in both layouts (module docstring), atomically.

    Returns:
        Counts: ``videos``, ``instances``, ``snippets``, ``classes``.
    """
    records, features, names = generate_synthetic(spec, seed)
    with atomic_dir(out) as tmp:
        write_pervideo(tmp, records, features, names, version=f"wtal synthetic, seed {seed}")
        write_wtalc(tmp / "wtalc", spec.name, records, features, names)
        write_json(tmp / "synth_spec.json", {"seed": seed, "spec": asdict(spec)})
    return {
        "videos": len(records),
        "instances": sum(len(r.segment_labels) for r in records),
        "snippets": sum(len(f) for f in features),
        "classes": len(names),
    }


def apply_overrides(spec: SynthSpec, overrides: list[str]) -> SynthSpec:
    """Apply ``field=value`` strings (Python literals) to a spec.

    Raises:
        InputError: on an unknown field, a value of the wrong type or an invalid spec.
    """
    types = {f.name: type(getattr(spec, f.name)) for f in fields(spec)}
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in types:
            raise InputError(
                None, f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}"
            )
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word is a string
        if types[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not types[key]:
            raise InputError(None, f"--set {key}: expected {types[key].__name__}, got {text!r}")
        changes[key] = value
    try:
        return replace(spec, **changes)
    except ValueError as exc:
        raise InputError(None, f"--set: {exc}") from None
