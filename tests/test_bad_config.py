"""Config values out of range: refused when the config is built, one line naming the field.

The bad values are derived from the dataclasses and :data:`wtal.config.RANGES`, not listed by
hand: every numeric field (int, float, tuples of them, optional floats) of every section gets
NaN, infinity and a value just outside each declared bound. A field added without a declared
range fails ``test_every_numeric_field_declares_its_range``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml

from wtal.cli import main
from wtal.config import RANGES, Config, config_to_dict
from wtal.configcheck import ConfigError, Range
from wtal.configfile import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
SECTIONS = typing.get_type_hints(Config)
DEFAULTS = Config()


def _numeric_fields() -> list[tuple[str, str, typing.Any]]:
    """``(section, field, annotation)`` of every field holding numbers."""
    found = []
    for section in dataclasses.fields(Config):
        cls = SECTIONS[section.name]
        for f, tp in typing.get_type_hints(cls).items():
            args = set(typing.get_args(tp)) - {Ellipsis, type(None)}
            if tp in (int, float) or (args and args <= {int, float}):
                found.append((section.name, f, tp))
    return found


NUMERIC = _numeric_fields()


def _outside(allowed: Range, integer: bool) -> list[float]:
    """Values just outside each finite bound of ``allowed``."""
    step = 1 if integer else 0.5
    values = []
    if allowed.low is not None:
        values.append(allowed.low if allowed.low_open else allowed.low - step)
    if allowed.high is not None:
        values.append(allowed.high if allowed.high_open else allowed.high + step)
    return values


def _with_value(section: str, name: str, value: float) -> dict:
    """A config dict that sets ``section.name`` (its first element, for a tuple) to ``value``."""
    default = getattr(getattr(DEFAULTS, section), name)
    if isinstance(default, tuple):
        value = [value, *default[1:]]
    return {section: {name: value}}


def _bad_values() -> list[tuple[str, str, float]]:
    cases = []
    for section, name, tp in NUMERIC:
        integer = tp is int or int in typing.get_args(tp)
        allowed = RANGES.get(f"{section}.{name}", Range())
        for value in (math.nan, math.inf, -math.inf, *_outside(allowed, integer)):
            cases.append((section, name, value))
    return cases


def test_every_numeric_field_declares_its_range():
    declared = {f"{section}.{name}" for section, name, _ in NUMERIC}
    assert len(declared) > 40
    assert declared == set(RANGES), "declare each numeric field with allowed(default, Range)"


CHOICES = {
    f"{section}.{f.name}": f.metadata["choices"]
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
    if "choices" in f.metadata
}


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_field_with_choices_refuses_others_and_lists_them(key):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as exc:
        config_from_dict({section: {name: "bogus"}}, source="cfg.yaml")
    message = str(exc.value)
    assert message.startswith(f"cfg.yaml: {key} = 'bogus': expected "), message
    assert all(choice in message for choice in CHOICES[key]), message
    for choice in CHOICES[key]:
        assert (
            getattr(getattr(config_from_dict({section: {name: choice}}), section), name) == choice
        )


@pytest.mark.parametrize(
    ("section", "name", "value"), _bad_values(), ids=lambda x: str(x) if x is not None else ""
)
def test_refused_value_names_the_field(section, name, value):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(_with_value(section, name, value), source="cfg.yaml")
    message = str(exc.value)
    assert message.startswith("cfg.yaml: ")
    assert f"{section}.{name}" in message and "expected" in message, message
    assert "\n" not in message


def test_bound_values_themselves_are_accepted():
    """The declared ranges are not stricter than they say (closed bounds are allowed)."""
    accepted = {
        "model.dropout": 0.0,
        "model.walk_weight": 0.0,
        "loss.spl_memory_mix": 1.0,
        "train.seed": 2**64 - 1,
        "train.checkpoint_every": 0,
        "train.eval_every": 0,
        "train.betas": [0.0, 0.0],
        "train.lr_values": [0.0] * 5,
        "data.num_segments": 0,
        "detect.overlap_threshold": 1.0,
        "pseudo.delta_clamp_min": -1.0,
    }
    for key, value in accepted.items():
        section, name = key.split(".")
        cfg = config_from_dict({section: {name: value}})
        got = getattr(getattr(cfg, section), name)
        assert got == (tuple(value) if isinstance(value, list) else value), key


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_and_defaults_pass(path):
    """Every value the file states is taken as stated; every other field keeps its default."""
    expected = config_to_dict(DEFAULTS)
    for section, values in yaml.safe_load(path.read_text()).items():
        expected[section] |= values
    assert config_to_dict(load_config(path)) == expected


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        (["train.lr_milestones=[200, 80]"], ["train.lr_milestones", "increasing"]),
        (["loss.spl_milestones=[1, 1]"], ["loss.spl_milestones", "increasing"]),
        (["pseudo.regen_epochs=[230, 200]"], ["pseudo.regen_epochs", "increasing"]),
        (["train.lr_values=[1e-4]"], ["train.lr_values", "train.lr_milestones"]),
        (["loss.spl_weights=[1.0]"], ["loss.spl_weights", "loss.spl_milestones"]),
        (["pseudo.temperatures=[0.02]"], ["pseudo.temperatures", "pseudo.regen_epochs"]),
        (["train.epochs=150"], ["pseudo.regen_epochs", "train.epochs = 150"]),
        (["pseudo.regen_epochs=[]", "pseudo.temperatures=[]"], ["pseudo.regen_epochs"]),
        (["pseudo.history_length=1"], ["pseudo.history_length", "pseudo.delta"]),
        (["pseudo.delta_switch=250"], ["pseudo.delta_switch", "pseudo.delta_start"]),
        (["detect.thresholds=[0.04, 0.001, 0.002]"], ["detect.thresholds", "start < stop"]),
        (["detect.thresholds=[0.001, 0.04, 0.0]"], ["detect.thresholds", "step > 0"]),
        (["train.batch_size=3"], ["train.batch_size", "train.videos_per_step"]),
        (["model.walk_method='sparse'"], ["model.walk_method"]),
    ],
)
def test_cross_field_checks_name_the_fields(overrides, expect):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    for text in expect:
        assert text in str(exc.value), (text, str(exc.value))


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.epochs=1", "pseudo.enabled=False"],  # base stage only
        ["pseudo.history_length=1", "pseudo.delta=False"],
        ["train.epochs=201", "loss.spl_milestones=[500]", "loss.spl_weights=[1.0, 0.5]"],
    ],
)
def test_consistent_short_schedules_are_accepted(overrides):
    """Schedule points after the last epoch are simply never reached: kept as given."""
    cfg = config_to_dict(load_config(None, overrides))
    for item in overrides:
        key, value = item.split("=")
        section, name = key.split(".")
        assert cfg[section][name] == ast.literal_eval(value), key


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("train.epochs=0", "train.epochs = 0: expected an integer >= 1"),
        ("model.dropout=1e999", "model.dropout = inf: expected a finite number"),
        ("pseudo.temperatures=[.nan, 0.02, 0.02, 0.002, 0.002, 0.0016]", "pseudo.temperatures[0]"),
        ("train.seed=-1", f"train.seed = -1: expected an integer in [0, {2**64})"),
        ("train.betas=[0.9, 1.0]", "train.betas[1] = 1.0: expected a number in [0, 1)"),
    ],
)
def test_bad_set_through_the_cli(value, expect, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default run folder would go to ./runs
    config = tmp_path / "tiny.yaml"
    config.write_text("train: {device: cpu}\n")
    run = tmp_path / "run"
    argv = ["train", str(config), "--data", str(tmp_path), "--run-dir", str(run), "--quiet"]
    rc = main([*argv, "--set", value])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0] and str(config) in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no run folder
