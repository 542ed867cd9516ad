"""Tests of wtal.checkpoint: the format and version marks a checkpoint is read by."""

from __future__ import annotations

import pytest
import torch

from wtal.checkpoint import CHECKPOINT_VERSION, load_checkpoint
from wtal.cli import main
from wtal.io import InputError


def _save(path, **entries):
    torch.save({"format": "wtal", "model": {"w": torch.ones(2)}, **entries}, path)
    return path


def test_current_and_unmarked_versions_load(tmp_path):
    state = load_checkpoint(_save(tmp_path / "now.pt", version=CHECKPOINT_VERSION))
    assert state["version"] == CHECKPOINT_VERSION
    assert torch.equal(state["model"]["w"], torch.ones(2))
    assert "version" not in load_checkpoint(_save(tmp_path / "unmarked.pt"))


@pytest.mark.parametrize(
    ("version", "expect"),
    [
        (CHECKPOINT_VERSION + 1, f"is newer than {CHECKPOINT_VERSION}"),
        ("1", "entry 'version' = '1': expected an integer"),
        (True, "entry 'version' = True: expected an integer"),
    ],
)
def test_newer_or_malformed_version_is_refused_naming_the_file(tmp_path, version, expect):
    path = _save(tmp_path / "future.pt", version=version)
    with pytest.raises(InputError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}: ") and expect in str(exc.value)


def test_newer_version_through_the_cli_is_one_line_and_writes_nothing(tmp_path, capsys):
    path = _save(tmp_path / "future.pt", version=CHECKPOINT_VERSION + 1)
    out = tmp_path / "results.json"
    rc = main(["detect", str(path), "--data", str(tmp_path), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    want = f"error: {path}: checkpoint version {CHECKPOINT_VERSION + 1} is newer than"
    assert lines[0].startswith(want), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.pt"]
