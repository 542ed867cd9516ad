"""The rules a config value must meet, and the one-line error that names the rule it broke.

Each field of the dataclasses in :mod:`wtal.config` declares its allowed values next to its
default (:func:`allowed`: a numeric :class:`Range` or a tuple of choices); every section's
``__post_init__`` runs :func:`check_fields` on itself, then its cross-field rules, so a config
is checked however it is built (YAML, ``--set``, a checkpoint, or Python).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from wtal.io import InputError


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


class ConfigError(InputError):
    """A config file or override that does not fit the dataclasses."""


def allowed(default: Any, values: Range | tuple[Any, ...]) -> Any:
    """A dataclass field with ``default`` whose values must be in ``values``: a :class:`Range`
    (numbers, each element of a tuple) or a tuple of choices (checked by :func:`check_fields`)."""
    key = "range" if isinstance(values, Range) else "choices"
    return dataclasses.field(default=default, metadata={key: values})


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise ``key = value: expected ...`` unless ``ok``."""
    if not ok:
        raise ConfigError(None, f"{key} = {value!r}: expected {expected}")


def check_fields(section: Any, name: str) -> None:
    """Every number of a config section (each element of a tuple) is finite and inside the
    field's declared :class:`Range`, then every field with choices holds one of them; the
    message names ``name.field`` and the allowed values."""
    fields = dataclasses.fields(section)
    for f in fields:
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
            bounds = f.metadata.get("range", Range())
            if x not in bounds:
                raise ConfigError(None, f"{where} = {x!r}: expected {bounds.describe(kind)}")
            # Integers go into numpy and torch as int64: a larger one would overflow there
            # (after the run folder exists) instead of being refused here.
            if isinstance(x, int) and bounds.high is None and not abs(x) < INT64_LIMIT:
                raise ConfigError(None, f"{where} = {x!r}: expected an integer < 2^63")
    for f in fields:
        choices = f.metadata.get("choices")
        if choices is not None:
            value = getattr(section, f.name)
            expected = " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"
            check(value in choices, f"{name}.{f.name}", value, expected)


def check_increasing(values: tuple[int, ...], key: str) -> None:
    """Schedule epochs are listed once each, in increasing order."""
    ok = all(a < b for a, b in zip(values, values[1:], strict=False))
    check(ok, key, values, "strictly increasing epochs")
