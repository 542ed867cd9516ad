"""One writer per run folder, and run folders that resume from any directory.

A second, real process holds the run folder's lock; ``wtal train`` (new run or ``--resume``)
must then refuse in one line naming the folder and that process's pid, and change nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BASE_ONLY, tiny_config

from wtal.cli import main
from wtal.configfile import load_config, save_config
from wtal.io import InputError
from wtal.runlock import LOCK_FILE, RunLock
from wtal.synth import THUMOS, write_synthetic

REPO = Path(__file__).resolve().parents[1]
SPEC = replace(
    THUMOS,
    train_videos=3,
    test_videos=2,
    feat_dim=8,
    num_classes=2,
    min_snippets=20,
    median_snippets=25,
    max_snippets=30,
)
TINY = tiny_config(
    **BASE_ONLY,
    **{
        "model.embed_dim": 8,
        "train.lr_values": [1e-4],
        "train.videos_per_step": 3,
    },
)
HOLD = (
    "import sys, time\n"
    "from wtal.runlock import RunLock\n"
    "lock = RunLock(sys.argv[1])\n"
    "lock.acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock") / "data"
    write_synthetic(root, SPEC, seed=0)
    return root


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


@pytest.fixture
def holder(tmp_path):
    """Start a process that locks a folder; yields ``start(folder) -> Popen``."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error(capsys, rc: int) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_resume_while_another_process_trains_is_refused(data, config, tmp_path, holder, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(config, [f"data.path={str(data)!r}"]), run / "config.yaml")
    proc = holder(run)
    before = _snapshot(run)
    line = _one_error(capsys, main(["train", "--resume", str(run), "--quiet"]))
    assert str(run) in line and f"pid {proc.pid}" in line and "in use by another" in line
    assert _snapshot(run) == before


def test_new_run_into_a_locked_folder_is_refused(data, config, tmp_path, holder, capsys):
    run = tmp_path / "run"
    run.mkdir()
    proc = holder(run)
    argv = ["train", str(config), "--data", str(data), "--run-dir", str(run), "--quiet"]
    line = _one_error(capsys, main(argv))
    assert f"pid {proc.pid}" in line
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing else written


def test_lock_dies_with_its_holder(tmp_path, holder):
    proc = holder(tmp_path)
    with pytest.raises(InputError, match=f"pid {proc.pid}"):
        RunLock(tmp_path).acquire()
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
    proc.wait()
    with RunLock(tmp_path) as lock:
        assert lock._fd is not None
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    RunLock(tmp_path).acquire()  # released on leaving the block


def test_relative_data_is_stored_absolute_and_resumes_elsewhere(
    data, config, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(data.parent)
    run = tmp_path / "run"
    argv = ["train", str(config), "--data", data.name, "--run-dir", str(run), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["path"] == str(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert (run / "metrics.json").is_file()


def test_resume_of_a_run_saved_before_a_field_existed(data, config, tmp_path, capsys):
    """A checkpoint whose config lacks a field added later (here data.max_abs_feature)
    resumes when the field has its default."""
    run = tmp_path / "run"
    argv = ["train", str(config), "--data", str(data), "--run-dir", str(run), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    state = torch.load(run / "last.pt", weights_only=True)
    del state["config"]["data"]["max_abs_feature"]
    torch.save(state, run / "last.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0, capsys.readouterr().err


def test_a_refused_resume_leaves_the_lock_file_as_it_was(data, config, tmp_path):
    """Another process (another pid) whose resume is refused restores the lock file's bytes, and
    removes a lock file it created itself: the run folder is byte for byte unchanged."""
    run = tmp_path / "run"
    main(["train", str(config), "--data", str(data), "--run-dir", str(run), "--quiet"])
    text = (run / "config.yaml").read_text().replace("embed_dim: 8", "embed_dim: 16")
    assert text != (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text)  # now differs from last.pt: resume is refused
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "wtal", "train", "--resume", str(run), "--quiet"]
    for lock_file_there in (True, False):
        if not lock_file_there:
            (run / LOCK_FILE).unlink()
        before = _snapshot(run)
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert done.returncode == 2 and "differs from the checkpoint" in done.stderr
        assert _snapshot(run) == before
