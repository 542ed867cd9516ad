"""The configuration reference: generated from the config dataclasses, and the copy in
docs/configuration.md is current."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

from tools.config_docs import END, PAGE, START, config_markdown, main
from wtal.config import Config

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_hold_the_generated_reference():
    text = PAGE.read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    embedded = text.split(START)[1].split(END)[0]
    assert embedded.strip() == config_markdown().strip(), (
        "docs/configuration.md's config reference is stale: run `python -m tools.config_docs`"
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
    assert "| `pseudo.fusion` | `str \\| None` | `null` |" in text  # escaped pipe, None as null
    assert "\n### `model`\n\nKeyword arguments of `wtal.model.WTALModel`" in text
    assert "(`wtal.config`)" in text  # names the module that defines the dataclasses


def test_module_rewrites_only_the_block_in_place(tmp_path):
    page = tmp_path / "configuration.md"
    before, after = "# Configuration\n\nText before.\n\n", "\n\nText after.\n"
    page.write_text(f"{before}{START}\nstale rows\n{END}{after}")
    assert main([str(page), "--check"]) == 1
    assert "stale rows" in page.read_text()  # --check writes nothing
    result = subprocess.run(  # the `python -m` entry, from the repository root
        [sys.executable, "-m", "tools.config_docs", str(page)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert page.read_text() == f"{before}{START}\n{config_markdown()}{END}{after}"
    assert main([str(page), "--check"]) == 0
    unchanged = page.stat().st_mtime_ns
    assert main([str(page)]) == 0
    assert page.stat().st_mtime_ns == unchanged  # a current page is not rewritten


def test_module_refuses_a_page_without_one_pair_of_markers(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    text = f"{START}\n{END}\n{START}\n{END}\n"
    page.write_text(text)
    assert main([str(page)]) == 2
    assert capsys.readouterr().err == (
        f"error: {page}: expected one {START} line followed by one {END} line\n"
    )
    assert page.read_text() == text
