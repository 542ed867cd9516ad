"""Data-parallel training: sharding, and 2 CPU processes (gloo) == 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import tiny_config

from wtal import distributed
from wtal.checkpoint import load_checkpoint
from wtal.configfile import load_config
from wtal.data import FeatureDataset, collate
from wtal.engine import fit
from wtal.synth import THUMOS, write_synthetic

REPO = Path(__file__).resolve().parents[1]

# 9 training videos in global batches of 4: batches of 4, 4 and 1, so with 2 processes the
# last batch leaves rank 1 empty. Dropout is off: each process draws its own dropout masks,
# so only a dropout-free run can match the single process number for number. max_padding 1
# runs videos of unequal length in passes of their own, so a rank makes several passes per
# batch and only the last one all-reduces the gradients.
TINY = json.dumps(
    tiny_config(
        **{
            "model.embed_dim": 32,
            "model.dropout": 0.0,
            "train.epochs": 3,
            "train.lr_milestones": [2],
            "train.batch_size": 4,
            "train.videos_per_step": 4,
            "train.max_padding": 1.0,
            "train.checkpoint_every": 2,
            "pseudo.regen_epochs": [2],
            "pseudo.teacher_dropout": False,
            "pseudo.delta_start": 3,
            "pseudo.delta_switch": 4,
        }
    )
)  # JSON is YAML


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset folder, config file)."""
    root = tmp_path_factory.mktemp("ddp")
    spec = replace(
        THUMOS,
        train_videos=9,
        test_videos=4,
        feat_dim=16,
        num_classes=4,
        min_snippets=30,
        median_snippets=50,
        max_snippets=80,
    )
    write_synthetic(root / "data", spec, seed=0)
    (root / "tiny.yaml").write_text(TINY)
    return root / "data", root / "tiny.yaml"


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_split_sizes_cover_every_item_once(world):
    for n in range(12):
        sizes = distributed.split_sizes(n, world)
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
        ranges = [distributed.shard_range(n, r, world) for r in range(world)]
        assert [i for r in ranges for i in r] == list(range(n))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_of_a_shuffled_epoch_make_up_the_single_process_batches(tiny, world):
    dataset = FeatureDataset(tiny[0], "validation")
    single = torch.utils.data.DataLoader(
        dataset,
        batch_size=4,
        shuffle=True,
        generator=torch.Generator().manual_seed(7),
        collate_fn=collate,
    )
    expected = [b.video_ids for b in single]
    shards = [
        list(
            distributed.ShardedLoader(
                dataset, 4, generator=torch.Generator().manual_seed(7), rank_=r, world=world
            )
        )
        for r in range(world)
    ]
    assert all(len(s) == len(expected) for s in shards)
    for i, videos in enumerate(expected):
        parts = [s[i] for s in shards]
        union = [v for p in parts if not p.empty for v in p.batch.video_ids]
        assert union == videos  # same videos, same order
        assert all(p.global_size == len(videos) for p in parts)
        assert [0 if p.empty else len(p.batch.video_ids) for p in parts] == list(parts[0].counts)
    # 9 videos in batches of 4: the last batch has 1 video, so ranks >= 1 get a stand-in.
    assert [p[-1].empty for p in shards] == [False] + [True] * (world - 1)
    other = distributed.ShardedLoader(
        dataset, 4, generator=torch.Generator().manual_seed(8), rank_=0, world=1
    )
    assert [b.batch.video_ids for b in other] != expected


def test_helpers_are_the_identity_without_a_process_group(tiny, monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group(torch.device("cpu")) as world:
        assert world == 1 and not dist.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    dataset = FeatureDataset(tiny[0], "validation")
    assert distributed.shard_dataset(dataset) is dataset
    batch = collate([dataset[0], dataset[1]])
    x = torch.arange(6.0).reshape(2, 3)
    assert distributed.gather_rows(batch, x)[0] is x
    assert distributed.sum_over_ranks({"a": 1.5}) == {"a": 1.5}
    assert distributed.all_gather_objects("x") == ["x"] == distributed.gather_objects("x")


def test_batch_loader_without_a_process_group_is_a_data_loader(tiny, monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dataset = FeatureDataset(tiny[0], "validation")
    ordered = [b.video_ids for b in distributed.batch_loader(dataset, 4)]
    ids = dataset.video_ids
    assert ordered == [ids[0:4], ids[4:8], ids[8:9]]
    drawn = distributed.batch_loader(dataset, 4, torch.Generator().manual_seed(3))
    shuffled = [b.video_ids for b in drawn]
    assert shuffled != ordered and sorted(v for b in shuffled for v in b) == sorted(ids)
    # the global batches every rank of a process group would slice
    sharded = distributed.ShardedLoader(
        dataset, 4, generator=torch.Generator().manual_seed(3), rank_=0, world=1
    )
    assert [b.batch.video_ids for b in sharded] == shuffled


# ----------------------------------------------------------------------------- end to end


def _torchrun(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "wtal", "train", *args, "--quiet"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(tiny, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp_runs") / "two"
    _torchrun(str(tiny[1]), "--data", str(tiny[0]), "--run-dir", str(run))
    return run


def test_two_processes_train_the_single_process_model(tiny, ddp_run, tmp_path):
    """3 epochs (memory from epoch 1, pseudo labels at epoch 2) on 2 gloo processes give the
    weights, memory and pseudo labels of 1 process with the same global batches."""
    data, config = tiny
    single = tmp_path / "one"
    fit(load_config(config, [f"data.path={str(data)!r}"]), single, progress=False)
    a, b = load_checkpoint(single), load_checkpoint(ddp_run)
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-5, msg=key)
    assert int(a["model"]["memory.num_filled"].sum()) > 0  # the memory was in use
    assert b["pseudo_epochs"] == a["pseudo_epochs"] == [2]
    labels_a, labels_b = a["pseudo"][0], b["pseudo"][0]
    assert sorted(labels_b) == sorted(labels_a) and len(labels_a) == 9
    for vid, y in labels_a.items():
        torch.testing.assert_close(labels_b[vid], y, rtol=0, atol=1e-4, msg=vid)
    log_a = [json.loads(x) for x in (single / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (ddp_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_b] == [0, 1, 2]  # written once, by rank 0
    for ra, rb in zip(log_a, log_b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    assert log_b[2]["pseudo"]["segments"] == log_a[2]["pseudo"]["segments"]
    metrics_a = json.loads((single / "metrics.json").read_text())
    metrics_b = json.loads((ddp_run / "metrics.json").read_text())
    assert metrics_b["headline"] == pytest.approx(metrics_a["headline"], abs=1e-6)
    assert len(b["rng_ranks"]) == 2


def test_resume_under_ddp_is_bit_identical(ddp_run, tmp_path):
    """2 epochs + 2 processes resuming for 1 more == 3 epochs straight, bit for bit."""
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(ddp_run / "config.yaml", run / "config.yaml")
    shutil.copy(ddp_run / "epoch_002.pt", run / "last.pt")
    lines = (ddp_run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join(lines[:2]) + "\n")
    _torchrun("--resume", str(run))
    a, b = load_checkpoint(ddp_run)["model"], load_checkpoint(run)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    resumed = (run / "log.jsonl").read_text().splitlines()
    assert resumed[:2] == lines[:2] and [json.loads(x)["epoch"] for x in resumed] == [0, 1, 2]


def test_two_processes_choose_the_single_process_thresholds(tiny, tmp_path):
    """Thresholds and temperature chosen on a validation split (detect.threshold_scales,
    detect.temperature_scales): rank 0 chooses and sends its choice to rank 1 (whose pseudo
    labels use it), and chooses as one process does."""
    data, _ = tiny
    changes = [
        "data.val_fraction=0.25",
        "detect.threshold_scales=[0.25,1.0,4.0]",
        "detect.temperature_scales=[0.1,1.0]",
        "detect.class_threshold=0.0",
        "train.epochs=3",
    ]
    config = tmp_path / "calibrated.yaml"
    config.write_text(TINY)
    runs = {"one": tmp_path / "one", "two": tmp_path / "two"}
    fit(load_config(config, [f"data.path={str(data)!r}", *changes]), runs["one"], progress=False)
    _torchrun(str(config), "--data", str(data), "--run-dir", str(runs["two"]),
              *(x for c in changes for x in ("--set", c)))  # fmt: skip
    logs = {
        k: [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        for k, run in runs.items()
    }
    for key in ("calibration_start", "calibration"):
        chosen = [
            [(r[key]["scale"], r[key]["temperature"]) for r in log if key in r]
            for log in logs.values()
        ]
        assert chosen[0] == chosen[1] and chosen[0]  # made, and made alike
    a, b = (load_checkpoint(run) for run in runs.values())
    assert a["thresholds"] == b["thresholds"] and a["temperature"] == b["temperature"]
    assert sorted(b["pseudo"][0]) == sorted(a["pseudo"][0])  # both ranks' videos
    for vid, y in a["pseudo"][0].items():  # labelled at the levels rank 0 chose
        torch.testing.assert_close(b["pseudo"][0][vid], y, rtol=0, atol=1e-4, msg=vid)
    metrics = [json.loads((run / "metrics_val.json").read_text()) for run in runs.values()]
    assert metrics[1]["headline"] == pytest.approx(metrics[0]["headline"], abs=1e-6)


def test_two_processes_give_the_oracle_labels_of_one(tiny, tmp_path):
    """pseudo.oracle scores the ground truth with one constant over every rank's detections,
    so 2 processes give the pseudo labels of 1."""
    data, config = tiny
    changes = ["pseudo.oracle=True", "pseudo.background_gaps=True", "detect.class_threshold=0.0"]
    one, two = tmp_path / "one", tmp_path / "two"
    fit(load_config(config, [f"data.path={str(data)!r}", *changes]), one, progress=False)
    _torchrun(str(config), "--data", str(data), "--run-dir", str(two),
              *(x for c in changes for x in ("--set", c)))  # fmt: skip
    a, b = load_checkpoint(one)["pseudo"][0], load_checkpoint(two)["pseudo"][0]
    assert sorted(a) == sorted(b) and all(float(y.sum()) > 0 for y in a.values())
    for vid, y in a.items():
        torch.testing.assert_close(b[vid], y, rtol=0, atol=1e-5, msg=vid)
