"""The reference config, the table of differing defaults in docs/differences.md and the
defaults agree."""

from __future__ import annotations

import json
from pathlib import Path

from wtal.config import Config, config_to_dict
from wtal.configfile import load_config

REPO = Path(__file__).resolve().parents[1]
HEADER = "| field | wtal default | authors' value | why |"


def _table() -> dict[str, tuple[object, object]]:
    """``{field: (wtal default, authors' value)}`` from the docs table, values as JSON."""
    lines = (REPO / "docs" / "differences.md").read_text().splitlines()
    assert lines.count(HEADER) == 1
    rows = {}
    for line in lines[lines.index(HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 4 and cells[3], line
        field, default, authors = (c.strip("`") for c in cells[:3])
        assert field not in rows, field
        rows[field] = (json.loads(default), json.loads(authors))
    return rows


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_reference_config_differs_from_the_defaults_exactly_at_the_table_fields():
    table = _table()
    assert len(table) >= 5
    defaults = _flat(config_to_dict(Config()))
    reference = _flat(config_to_dict(load_config(REPO / "configs" / "thumos14_reference.yaml")))
    differing = {k for k in defaults if defaults[k] != reference[k]}
    assert differing == set(table)
    for field, (default, authors) in table.items():
        assert defaults[field] == default, field
        assert reference[field] == authors, field


def test_thumos14_config_keeps_the_defaults():
    defaults = _flat(config_to_dict(Config()))
    thumos = _flat(config_to_dict(load_config(REPO / "configs" / "thumos14.yaml")))
    assert {k for k in defaults if defaults[k] != thumos[k]} == set()
