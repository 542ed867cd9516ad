"""The configuration reference: generated from config.py, and the README's copy is current."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

from wtal.config import Config, config_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-docs:start -->", "<!-- config-docs:end -->"


def test_readme_holds_the_generated_reference():
    text = README.read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    embedded = text.split(START)[1].split(END)[0]
    assert embedded.strip() == config_markdown().strip(), (
        "README's config reference is stale: paste the output of "
        "`python -m wtal.config --markdown` between the config-docs markers"
    )


def test_every_field_has_a_row_with_type_default_and_description():
    text = config_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    sections = typing.get_type_hints(Config)
    expected = [
        f"{section}.{f.name}" for section, cls in sections.items() for f in dataclasses.fields(cls)
    ]
    assert [row.split("`")[1] for row in rows] == expected
    for row in rows:
        cells = row.strip("|").split(" | ")
        assert len(cells) == 4 and cells[3].strip(), row  # a description for every field


def test_rows_carry_the_docstring_and_the_default():
    text = config_markdown()
    assert (
        '| `detect.fusion` | `str` | `"gaussian"` | `gaussian` (weighted fusion), `nms`, '
        "`soft-nms` or `none`. |"
    ) in text
    assert "| `train.lr_milestones` | `tuple[int, ...]` | `[80, 200, 245, 260]` |" in text
    assert "| `pseudo.delta_clamp_min` | `float \\| None` | `null` |" in text  # escaped pipe
    assert "#### `model`\n\nKeyword arguments of `wtal.model.WTALModel`" in text


def test_module_prints_it():
    out = subprocess.run(
        [sys.executable, "-m", "wtal.config", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == config_markdown()
