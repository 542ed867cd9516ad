"""Operating-system errors and output paths through the CLI: one line, exit 2, nothing written.

Unreadable or non-text config files, output paths that are folders, empty, under a file or
on a full disk, a ``--run-dir`` that is a file, cut CAS caches, and checkpoints whose
metadata has the wrong type. Every command reads and checks all of its inputs before it
writes its first output, so each case also checks that no output (and no temporary file)
exists afterwards, or that an existing folder is byte-for-byte unchanged. Tests run as root
here, so permissions are simulated with folders, missing files or a patched ``os.replace``.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import wtal.evaluation
from wtal.cli import main
from wtal.configfile import load_config, save_config
from wtal.engine import fit

TINY = tiny_config(**{"train.checkpoint_every": 0, "train.tensorboard": False})


@dataclass
class Base:
    """Shared, never-modified inputs: a dataset, its config and a finished 2-epoch run."""

    data: Path
    config: Path
    run: Path  # last.pt (one regeneration stored), cas_test.npz, detections_test.json


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_run) -> Base:
    root = tmp_path_factory.mktemp("bad_os")
    return Base(*tiny_run(root, TINY, test_videos=3, median_snippets=25, max_snippets=30))


@dataclass
class Case:
    argv: list[str]
    expect: list[str]  # substrings of the one error line
    absent: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)  # folders or files


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _train(base: Base, tmp: Path, config: Path, expect: list[str]) -> Case:
    run = tmp / "run"
    argv = ["train", str(config), "--data", str(base.data), "--run-dir", str(run), "--quiet"]
    return Case(argv, expect, absent=[run])


def _cache(base: Base, tmp: Path) -> Path:
    return Path(shutil.copy(base.run / "cas_test.npz", tmp / "cas_test.npz"))


def _checkpoint(base: Base, tmp: Path, **changes) -> Path:
    state = torch.load(base.run / "last.pt", weights_only=True)
    state.update(changes)
    torch.save(state, tmp / "edited.pt")
    return tmp / "edited.pt"


# ----------------------------------------------------------------------------- config files


def case_config_is_a_folder(base: Base, tmp: Path) -> Case:
    (tmp / "folder.yaml").mkdir()
    return _train(base, tmp, tmp / "folder.yaml", ["folder.yaml", "cannot read", "directory"])


def case_config_not_utf8(base: Base, tmp: Path) -> Case:
    (tmp / "latin1.yaml").write_bytes("model: {embed_dim: 16}  # d\xe9j\xe0\n".encode("latin-1"))
    return _train(base, tmp, tmp / "latin1.yaml", ["latin1.yaml", "not UTF-8"])


def case_config_missing(base: Base, tmp: Path) -> Case:
    return _train(base, tmp, tmp / "gone.yaml", ["gone.yaml", "not found"])


# ----------------------------------------------------------------------------- output paths


def case_run_dir_is_a_file(base: Base, tmp: Path) -> Case:
    (tmp / "run").write_text("notes\n")
    argv = ["train", str(base.config), "--data", str(base.data), "--run-dir", str(tmp / "run")]
    return Case([*argv, "--quiet"], ["run", "is a file; expected a folder"], [], [tmp / "run"])


def case_run_dir_under_a_file(base: Base, tmp: Path) -> Case:
    (tmp / "notes").write_text("notes\n")
    run = tmp / "notes" / "run"
    argv = ["train", str(base.config), "--data", str(base.data), "--run-dir", str(run)]
    return Case([*argv, "--quiet"], ["notes", "is a file, not a folder"], [], [tmp / "notes"])


def case_detect_out_is_a_folder(base: Base, tmp: Path) -> Case:
    (tmp / "results.json").mkdir()
    argv = ["detect", str(base.run), "--data", str(base.data), "--out", str(tmp / "results.json")]
    return Case(
        [*argv, "--quiet"],
        ["results.json", "is a folder"],
        absent=[tmp / "results.cas.npz", tmp / "results.metrics.json"],
    )


def case_detect_out_empty(base: Base, tmp: Path) -> Case:
    argv = ["detect", str(base.run), "--data", str(base.data), "--out", "", "--quiet"]
    return Case(argv, ["--out: expected a file path, got ''"], unchanged=[tmp])


def case_detect_sidecar_is_a_folder(base: Base, tmp: Path) -> Case:
    (tmp / "results.cas.npz").mkdir()
    out = tmp / "results.json"
    argv = ["detect", str(base.run), "--data", str(base.data), "--out", str(out), "--quiet"]
    return Case(argv, ["results.cas.npz", "is a folder"], absent=[out])


def case_postprocess_out_under_a_file(base: Base, tmp: Path) -> Case:
    cache = _cache(base, tmp)
    out = tmp / "cas_test.npz" / "sweep.json"
    return Case(["postprocess", str(cache), "--out", str(out)], ["cas_test.npz", "is a file"])


def case_plot_out_is_a_file(base: Base, tmp: Path) -> Case:
    cache = _cache(base, tmp)
    (tmp / "plots").write_text("")
    argv = ["plot", str(cache), "--out", str(tmp / "plots")]
    return Case(argv, ["plots", "is a file; expected a folder"], unchanged=[tmp / "plots"])


def case_export_pseudo_out_empty(base: Base, tmp: Path) -> Case:
    return Case(["export-pseudo", str(base.run), "--out", ""], ["--out", "expected a file path"])


def case_plot_pseudo_out_is_a_file(base: Base, tmp: Path) -> Case:
    (tmp / "pseudo").write_text("")
    argv = ["plot-pseudo", str(base.run), "--out", str(tmp / "pseudo")]
    return Case(argv, ["pseudo", "is a file"], unchanged=[tmp / "pseudo"])


def case_bench_out_is_a_file(base: Base, tmp: Path) -> Case:
    (tmp / "bench").write_text("")
    argv = ["bench", str(base.config), "--data", str(base.data), "--out", str(tmp / "bench")]
    return Case([*argv, "--quiet"], ["bench", "is a file"], unchanged=[tmp / "bench"])


def case_bench_later_seed_holds_another_config(base: Base, tmp: Path) -> Case:
    data = f"data.path={str(base.data)!r}"
    other = load_config(base.config, [data, "train.epochs=3", "train.seed=1"])
    save_config(other, tmp / "bench" / "seed1" / "config.yaml")
    argv = ["bench", str(base.config), "--data", str(base.data), "--seeds", "0,1"]
    expect = ["seed1", "config.yaml", "a run of a different config"]
    return Case([*argv, "--out", str(tmp / "bench"), "--quiet"], expect, [tmp / "bench" / "seed0"])


def case_synth_out_under_a_file(base: Base, tmp: Path) -> Case:
    (tmp / "notes").write_text("")
    argv = ["data", "synth", str(tmp / "notes" / "synth")]
    return Case(argv, ["notes", "is a file, not a folder"], unchanged=[tmp / "notes"])


# ----------------------------------------------------------------------------- caches


def case_postprocess_cut_cache(base: Base, tmp: Path) -> Case:
    cache = _cache(base, tmp)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    out = tmp / "cas_test.gaussian.json"
    return Case(["postprocess", str(cache)], ["cas_test.npz", "BadZipFile"], absent=[out])


def case_plot_cut_cache(base: Base, tmp: Path) -> Case:
    cache = _cache(base, tmp)
    cache.write_bytes(cache.read_bytes()[:-30])
    out = tmp / "plots"
    return Case(["plot", str(cache), "--out", str(out)], ["cas_test.npz", "npz"], absent=[out])


def case_postprocess_cache_is_a_folder(base: Base, tmp: Path) -> Case:
    (tmp / "cas.npz").mkdir()
    return Case(["postprocess", str(tmp / "cas.npz")], ["cas.npz", "cannot read", "directory"])


# ----------------------------------------------------------------------------- check, then write


def case_postprocess_gt_missing(base: Base, tmp: Path) -> Case:
    cache = _cache(base, tmp)
    argv = ["postprocess", str(cache), "--gt", str(tmp / "missing.json")]
    absent = [tmp / "cas_test.gaussian.json", tmp / "cas_test.gaussian.metrics.json"]
    return Case(argv, ["missing.json", "not found"], absent=absent)


def case_postprocess_unknown_subset(base: Base, tmp: Path) -> Case:
    cache = _cache(base, tmp)
    gt = base.data / "annotations.json"
    argv = ["postprocess", str(cache), "--gt", str(gt), "--subset", "nope"]
    return Case(argv, ["nope"], absent=[tmp / "cas_test.gaussian.json"])


def case_postprocess_bad_temperature(base: Base, tmp: Path) -> Case:
    cache = _cache(base, tmp)
    argv = ["postprocess", str(cache), "--temperature", "-1"]
    expect = ["detect.temperature = -1.0", "> 0"]
    return Case(argv, expect, absent=[tmp / "cas_test.gaussian.json"])


def case_detect_feat_dim_wrong_type(base: Base, tmp: Path) -> Case:
    ckpt = _checkpoint(base, tmp, feat_dim="8")
    out = tmp / "results.json"
    argv = ["detect", str(ckpt), "--data", str(base.data), "--out", str(out), "--quiet"]
    return Case(argv, ["edited.pt", "'feat_dim'", "integer"], absent=[out])


def case_export_class_names_wrong_type(base: Base, tmp: Path) -> Case:
    ckpt = _checkpoint(base, tmp, class_names="ABC")
    out = tmp / "pseudo.json"
    return Case(["export-pseudo", str(ckpt), "--out", str(out)], ["'class_names'"], [out])


def case_export_pseudo_rounds_mismatched(base: Base, tmp: Path) -> Case:
    ckpt = _checkpoint(base, tmp, pseudo_segment_epochs=[1, 2])
    out = tmp / "pseudo.json"
    return Case(["export-pseudo", str(ckpt), "--out", str(out)], ["pseudo_segments"], [out])


def case_export_stored_config_invalid(base: Base, tmp: Path) -> Case:
    state = torch.load(base.run / "last.pt", weights_only=True)
    ckpt = _checkpoint(base, tmp, config={**state["config"], "model": {"dropout": 1.5}})
    out = tmp / "pseudo.json"
    argv = ["export-pseudo", str(ckpt), "--out", str(out)]
    return Case(argv, ["edited.pt", "model.dropout = 1.5"], [out])


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def _check(case: Case, rc: int, out: str, err: str, before: dict) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for text in case.expect:
        assert text in lines[0], (text, lines[0])
    for path in case.absent:
        assert not path.exists(), f"{path} was written"
    for path in case.unchanged:
        assert _snapshot(path) == before[path], f"{path} changed"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_os_input(name, base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default outputs (runs/, results.json) would land here
    case = CASES[name](base, tmp_path)
    before = {path: _snapshot(path) for path in case.unchanged}
    run_before = _snapshot(base.run)
    capsys.readouterr()
    rc = main(case.argv)
    out, err = capsys.readouterr()
    _check(case, rc, out, err, before)
    assert not list(tmp_path.rglob(".*.tmp")), "temporary files left"
    assert not (tmp_path / "runs").exists()
    assert _snapshot(base.run) == run_before


# ----------------------------------------------------------------------------- full disk


def _disk_full(monkeypatch) -> list[str]:
    """Make every rename fail as on a full disk; returns the renames attempted."""
    attempts: list[str] = []

    def full(src, dst, **kwargs):
        attempts.append(str(dst))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", full)
    return attempts


@pytest.mark.parametrize("command", ["postprocess", "detect", "export-pseudo", "train"])
def test_full_disk_is_one_line_and_leaves_nothing(command, base, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.json"
    argv = {
        "postprocess": ["postprocess", str(_cache(base, tmp_path)), "--out", str(out)],
        "detect": ["detect", str(base.run), "--data", str(base.data), "--out", str(out)],
        "export-pseudo": ["export-pseudo", str(base.run), "--out", str(out)],
        "train": [
            "train", str(base.config), "--data", str(base.data), "--run-dir", str(out), "--quiet"
        ],
    }[command]  # fmt: skip
    if command == "detect":
        argv.append("--quiet")
    attempts = _disk_full(monkeypatch)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert attempts, "no write was attempted"
    target = attempts[0]
    assert lines[0] == f"error: {target}: cannot write (No space left on device)", lines[0]
    assert not Path(target).exists()
    assert not list(tmp_path.rglob(".*.tmp")), "temporary files left"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(("mode", "name"), [("wb", "last.pt"), ("a", "log.jsonl")])
def test_training_on_a_full_disk(mode, name, base, tmp_path, monkeypatch, capsys):
    """Checkpoint or log bytes go to /dev/full, which fails every write with ENOSPC."""
    import builtins

    import wtal.cascache
    import wtal.checkpoint
    import wtal.runlog

    def full_for_binary_writes(file, mode_="r", *args, **kwargs):
        target = "/dev/full" if mode_ == mode else file
        return builtins.open(target, mode_, *args, **kwargs)

    for module in (wtal.cascache, wtal.checkpoint, wtal.runlog):
        monkeypatch.setattr(module, "open", full_for_binary_writes, raising=False)
    run = tmp_path / "run"
    argv = ["train", str(base.config), "--data", str(base.data), "--run-dir", str(run)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run / name}: cannot write (No space left on device)\n"
    assert not (run / "last.pt").exists() and not list(run.glob(".*.tmp"))


def test_write_error_without_a_filename_names_the_output(base, tmp_path, monkeypatch, capsys):
    """A full disk while writing (``write`` has no filename) still names the output file."""
    cache = _cache(base, tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out.json"
    assert main(["postprocess", str(cache), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: cannot write (No space left on device)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cas_test.npz"]


def test_unexpected_os_error_is_still_one_line(base, tmp_path, monkeypatch, capsys):
    """An OSError no command anticipated: the dispatcher prints it as one line with its path."""

    def refused(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(wtal.evaluation, "load_results", refused)
    det = base.run / "detections_test.json"
    rc = main(["score", str(base.data / "annotations.json"), str(det)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"error: {det}: cannot access (Permission denied)\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(base, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        rc = main(["postprocess", str(_cache(base, tmp_path)), "--out", str(folder / "o.json")])
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {folder / 'o.json'}: cannot write into")
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_config_file(base, tmp_path, capsys):
    config = Path(shutil.copy(base.config, tmp_path / "secret.yaml"))
    config.chmod(0)
    try:
        rc = main(
            ["train", str(config), "--data", str(base.data), "--run-dir", str(tmp_path / "r")]
        )
    finally:
        config.chmod(0o644)
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {config}: cannot read (Permission denied)\n"
    assert not (tmp_path / "r").exists()


def test_largest_seed_trains(base, tmp_path):
    """Every seed the config accepts (< 2**64) runs: derived seeds wrap to 64 bits."""
    short = ["train.epochs=1", "pseudo.enabled=False", f"train.seed={2**64 - 1}"]
    cfg = load_config(base.config, [f"data.path={str(base.data)!r}", *short])
    metrics = fit(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "last.pt").is_file() and "headline" in metrics
