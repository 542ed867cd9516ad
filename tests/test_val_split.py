"""The validation split: deterministic, stratified, and kept out of training and pseudo labels."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import tiny_overrides

import wtal.engine as engine
from wtal.bench import format_bench, summarize_seeds
from wtal.checkpoint import load_checkpoint
from wtal.cli import main
from wtal.configfile import load_config
from wtal.data.split import held_out_count, open_datasets, open_validation, validation_split
from wtal.engine import fit
from wtal.io import InputError
from wtal.synth import THUMOS, write_synthetic

TINY = tiny_overrides(
    **{
        "model.embed_dim": 32,
        "train.epochs": 3,
        "train.lr_milestones": [2],
        "train.batch_size": 5,
        "train.videos_per_step": 10,
        "train.checkpoint_every": 0,
        "train.eval_every": 1,
        "train.tensorboard": False,
        "pseudo.regen_epochs": [1, 2],
        "pseudo.temperatures": [0.02, 0.002],
        "data.val_fraction": 0.3,
    }
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    spec = replace(
        THUMOS,
        train_videos=12,
        test_videos=4,
        feat_dim=16,
        num_classes=3,
        min_snippets=30,
        median_snippets=40,
        max_snippets=60,
    )
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, spec, seed=1)
    return out


def _cfg(data: Path, *extra: str):
    return load_config(None, [*TINY, f"data.path={str(data)!r}", *extra])


# ----------------------------------------------------------------------------- the split


def _labels() -> dict[str, list[str]]:
    """40 videos: class a 20, b 12, c 6 single-label, 2 videos of {a, d} (d is rarest)."""
    labels = {f"a{i:02d}": ["a"] for i in range(20)}
    labels |= {f"b{i:02d}": ["b"] for i in range(12)}
    labels |= {f"c{i:02d}": ["c"] for i in range(6)}
    labels |= {"ad0": ["a", "d"], "ad1": ["d", "a"]}
    return labels


def test_held_out_count_rounds_and_keeps_one_of_two():
    assert [held_out_count(0.2, n) for n in (1, 2, 3, 5, 10, 12)] == [0, 1, 1, 1, 2, 2]
    assert held_out_count(0.25, 2) == 1 and held_out_count(0.25, 10) == 3  # 2.5 rounds up
    assert held_out_count(0.0, 50) == 0 and held_out_count(0.5, 1) == 1


def test_split_is_stratified_by_the_rarest_label():
    labels = _labels()
    train, val = validation_split(labels, 0.2, seed=0)
    assert sorted(train + val) == sorted(labels) and not set(train) & set(val)
    # Strata: a (20 single-label videos), b 12, c 6, d 2 (the multi-label videos).
    per_stratum = Counter(v[0] if not v.startswith("ad") else "d" for v in val)
    assert per_stratum == {"a": 4, "b": 2, "c": 1, "d": 1}


def test_split_is_deterministic_and_independent_of_listing_order():
    labels = _labels()
    first = validation_split(labels, 0.25, seed=7)
    shuffled = dict(reversed(list(labels.items())))
    assert validation_split(shuffled, 0.25, seed=7) == first
    assert validation_split(labels, 0.25, seed=8) != first  # the seed draws the split
    assert validation_split(labels, 0.0, seed=7) == (sorted(labels), [])


def test_split_does_not_depend_on_the_training_seed(data):
    ids = [open_validation(_cfg(data, f"train.seed={s}")).video_ids for s in (0, 1, 2)]
    assert ids[0] == ids[1] == ids[2] and ids[0]
    other = open_validation(_cfg(data, "data.val_seed=5")).video_ids
    assert other != ids[0]


def test_a_fraction_leaving_no_training_video_is_refused(data, tmp_path, capsys):
    with pytest.raises(InputError, match="data.val_fraction = 0.95 leaves no training video"):
        open_datasets(_cfg(data, "data.val_fraction=0.95"))
    run = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  val_fraction: 0.95\n")
    args = ["train", str(config), "--data", str(data), "--run-dir", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.val_fraction = 0.95") and err.count("\n") == 1
    assert not run.exists()


def test_val_fraction_must_be_below_one(data):
    with pytest.raises(InputError, match=r"data.val_fraction = 1.0: expected a number in \[0, 1\)"):
        _cfg(data, "data.val_fraction=1.0")


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def val_run(data, tmp_path_factory):
    """A run with a validation split; records which videos training, the memory and the
    pseudo labels saw."""
    seen: dict[str, set[str]] = {"train": set(), "memory": set(), "pseudo": set()}
    train_one_epoch, init_memory = engine.train_one_epoch, engine.init_memory
    generate = engine.generate_pseudo_labels

    def spy_train(model, loader, *args, **kwargs):
        batches = list(loader)
        seen["train"].update(v for b in batches for v in b.video_ids)
        return train_one_epoch(model, batches, *args, **kwargs)

    def spy_memory(model, loader, *args, **kwargs):
        batches = list(loader)
        seen["memory"].update(v for b in batches for v in b.video_ids)
        return init_memory(model, batches, *args, **kwargs)

    def spy_pseudo(model, dataset, *args, **kwargs):
        seen["pseudo"].update(dataset.video_ids)
        return generate(model, dataset, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "train_one_epoch", spy_train)
        mp.setattr(engine, "init_memory", spy_memory)
        mp.setattr(engine, "generate_pseudo_labels", spy_pseudo)
        run = tmp_path_factory.mktemp("runs") / "val"
        fit(_cfg(data), run, progress=False)
    return run, seen


def test_validation_videos_never_reach_training_or_pseudo_labels(data, val_run):
    run, seen = val_run
    val_ids = set(open_validation(_cfg(data)).video_ids)
    all_train = {v for v in json.loads((data / "annotations.json").read_text())["database"]}
    all_train = {v for v in all_train if "validation" in v}
    assert 0 < len(val_ids) < len(all_train)
    train_ids = all_train - val_ids
    assert seen["train"] == train_ids and seen["memory"] == train_ids
    assert seen["pseudo"] == train_ids
    state = load_checkpoint(run / "last.pt")
    for labels in state["pseudo"]:
        assert set(labels) == train_ids


def test_validation_map_is_logged_and_reported(data, val_run):
    run, _ = val_run
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in log if "eval" in r]
    assert len(evals) == 2  # after epochs 0 and 1 (the final one is metrics.json)
    assert all(set(e) == {"val", "val_detail"} for e in evals)  # no test mAP unless asked
    assert set(evals[0]["val_detail"]) == {"classification_map", "floors", "signal"}
    files = {}
    for name in ("metrics.json", "metrics_base.json", "metrics_val.json", "metrics_val_base.json"):
        files[name] = metrics = json.loads((run / name).read_text())
        assert set(metrics) >= {"official", "wtalc", "headline"}, name
    # Epoch 0 is the last of the base stage: its validation mAP is the base stage's.
    val_base = files["metrics_val_base.json"]["headline"]
    assert evals[0]["val"] == val_base
    for key in ("classification_map", "floors", "signal"):  # the same evaluation, logged
        assert evals[0]["val_detail"][key] == files["metrics_val_base.json"][key]
    assert log[1]["eval_base"] == {
        "average_mAP": files["metrics_base.json"]["headline"],
        "val": val_base,
    }
    val_gt = json.loads((run / "metrics_val.json").read_text())["official"]
    test_gt = json.loads((run / "metrics.json").read_text())["official"]
    assert val_gt != test_gt
    summary = summarize_seeds([run], [2])
    assert list(summary["stages"]) == ["base", "full", "base_val", "full_val"]
    table = format_bench(summary)
    assert "full method (val)" in table and "base stage (val)" in table


def test_eval_test_adds_the_test_map(data, tmp_path):
    run = tmp_path / "run"
    fit(_cfg(data, "train.eval_test=True", "train.epochs=2"), run, progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert set(log[0]["eval"]) == {"val", "val_detail", "average_mAP", "detail"}


def test_without_a_split_eval_every_scores_the_test_split(data, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(data, "data.val_fraction=0.0", "train.epochs=2", "pseudo.enabled=False")
    fit(cfg, run, progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert set(log[0]["eval"]) == {"average_mAP", "detail"}
    assert not (run / "metrics_val.json").exists()
