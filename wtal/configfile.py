"""Config files: read YAML, apply ``--set`` overrides, check types, save the resolved config.

YAML files hold only what differs from the defaults of :mod:`wtal.config`. Unknown keys,
values of the wrong type and keys given twice are errors (:class:`~wtal.configcheck.ConfigError`,
naming the file and the key); ``--set section.key=value`` overrides any field; the fully
resolved config is saved with every run.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from wtal.config import Config, config_to_dict
from wtal.configcheck import ConfigError
from wtal.io import atomic_path


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
    """A :class:`Config` from a nested dict (as :func:`~wtal.config.config_to_dict` writes it,
    e.g. the ``config`` entry of a checkpoint), updated by ``section.key=value`` overrides.

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


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
