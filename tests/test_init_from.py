"""Branching a run from a checkpoint (``wtal train CONFIG --init-from RUN/epoch_XXX.pt``)
and the diagnostics logged in the pseudo-label stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides

from tools.reference_checkpoint import REFERENCE_KEYS
from tools.reference_checkpoint import main as reference_main
from wtal.checkpoint import file_sha256, load_checkpoint
from wtal.cli import main
from wtal.configfile import load_config
from wtal.data.split import open_datasets
from wtal.diagnostics import negative_share, parameter_change, parameter_snapshot
from wtal.engine import fit
from wtal.io import InputError
from wtal.synth import THUMOS, write_synthetic

# 4 epochs, regenerations before epochs 2 and 3, Δ labels from epoch 3: a branch at epoch 2
# starts right at the first regeneration, and its epoch 3 reads the pseudo-label history.
TINY = tiny_overrides(
    **{
        "model.embed_dim": 32,
        "train.epochs": 4,
        "train.lr_milestones": [3],
        "train.batch_size": 5,
        "train.videos_per_step": 10,
        "train.checkpoint_every": 1,
        "train.tensorboard": False,
        "pseudo.regen_epochs": [2, 3],
        "pseudo.temperatures": [0.02, 0.002],
        "pseudo.delta_start": 3,
        "pseudo.delta_switch": 4,
    }
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    spec = replace(
        THUMOS,
        train_videos=10,
        test_videos=4,
        feat_dim=16,
        num_classes=4,
        min_snippets=30,
        median_snippets=50,
        max_snippets=80,
    )
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, spec, seed=0)
    return out


def _cfg(data: Path, *extra: str):
    return load_config(None, [*TINY, f"data.path={str(data)!r}", *extra])


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "straight"
    fit(_cfg(data), run, progress=False)
    return run


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_branch_with_the_same_config_is_the_straight_run(straight, data, tmp_path):
    source = straight / "epoch_002.pt"
    branch = tmp_path / "branch"
    fit(_cfg(data), branch, init_from=source, progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(branch / "last.pt")
    _assert_same_tensors(a["model"], b["model"])  # weights and the memory (a buffer)
    assert a["pseudo_epochs"] == b["pseudo_epochs"] == [2, 3]
    for labels_a, labels_b in zip(a["pseudo"], b["pseudo"], strict=True):
        _assert_same_tensors(labels_a, labels_b)
    straight_log, branch_log = _log(straight), _log(branch)
    assert [r["epoch"] for r in branch_log] == [2, 3]
    for r, q in zip(straight_log[2:], branch_log, strict=True):
        assert r["loss"] == q["loss"] and r["pseudo"]["segments"] == q["pseudo"]["segments"]
    # Where it came from: in its own file, the first log record and every checkpoint.
    recorded = json.loads((branch / "init_from.json").read_text())
    assert recorded == {
        "path": str(source.resolve()),
        "sha256": file_sha256(source),
        "epoch": 2,
    }
    assert branch_log[0]["init_from"] == recorded and "init_from" not in branch_log[1]
    assert b["init_from"] == recorded
    assert yaml.safe_load((branch / "config.yaml").read_text())["train"]["epochs"] == 4
    assert json.loads((branch / "metrics.json").read_text()) == json.loads(
        (straight / "metrics.json").read_text()
    )


def test_branch_with_other_pseudo_settings_runs_and_differs(straight, data, tmp_path):
    branch = tmp_path / "nms"
    cfg = _cfg(data, "pseudo.fusion='nms'", "pseudo.dist_weight=50.0")
    fit(cfg, branch, init_from=straight / "epoch_002.pt", progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(branch / "last.pt")
    assert b["epoch"] == 4 and b["config"]["pseudo"]["fusion"] == "nms"
    assert not torch.equal(a["model"]["embedding.weight"], b["model"]["embedding.weight"])
    # The branch regenerated its own labels at epochs 2 and 3 with NMS: other labels.
    assert any(
        not torch.equal(a["pseudo"][-1][vid], b["pseudo"][-1][vid]) for vid in a["pseudo"][-1]
    )


def test_branch_takes_the_new_optimizer_settings(straight, data, tmp_path):
    branch = tmp_path / "wd"
    cfg = _cfg(data, "train.weight_decay=0.0", "train.epochs=3")
    fit(cfg, branch, init_from=straight / "epoch_002.pt", progress=False)
    groups = load_checkpoint(branch / "last.pt")["optimizer"]["param_groups"]
    assert all(g["weight_decay"] == 0.0 for g in groups)


def test_branch_warns_when_the_training_set_differs(straight, data, tmp_path):
    cfg = _cfg(data, "data.val_fraction=0.2", "train.epochs=3")
    with pytest.warns(UserWarning, match=r"another training set \(data.val_fraction differ"):
        fit(cfg, tmp_path / "val", init_from=straight / "epoch_002.pt", progress=False)
    state = load_checkpoint(tmp_path / "val" / "last.pt")
    train_ids = open_datasets(cfg)[0].video_ids
    assert 0 < len(train_ids) < 10 and set(state["pseudo"][-1]) == set(train_ids)


def test_resume_of_a_branch_that_stopped_before_its_first_checkpoint(straight, data, tmp_path):
    branch = tmp_path / "branch"
    cfg = _cfg(data)
    fit(cfg, branch, init_from=straight / "epoch_002.pt", progress=False)
    for name in ("last.pt", "epoch_003.pt", "epoch_004.pt", "log.jsonl"):
        (branch / name).unlink()
    fit(cfg, branch, resume=True, progress=False)  # branches again from init_from.json
    _assert_same_tensors(
        load_checkpoint(straight / "last.pt")["model"], load_checkpoint(branch / "last.pt")["model"]
    )


def test_cli_branches_into_a_new_run_folder(straight, data, tmp_path, capsys):
    run = tmp_path / "cli"
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  seed: 2\n")
    args = ["train", str(config), "--data", str(data), "--run-dir", str(run), "--quiet"]
    args += ["--init-from", str(straight), *(x for item in TINY for x in ("--set", item))]
    assert main(args) == 2  # a run folder means its last.pt: epoch 4 of 4, nothing to train
    assert "straight/last.pt: is at epoch 4" in capsys.readouterr().err and not run.exists()
    args[args.index("--init-from") + 1] = str(straight / "epoch_003.pt")
    assert main(args) == 0
    assert json.loads((run / "init_from.json").read_text())["epoch"] == 3
    assert [r["epoch"] for r in _log(run)] == [3]
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()


def _refused(capsys, tmp_path, data, source, *extra: str) -> str:
    run = tmp_path / "refused"
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  seed: 2\n")
    args = ["train", str(config), "--data", str(data), "--run-dir", str(run)]
    args += ["--init-from", str(source)]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not run.exists()  # nothing written
    return err


def test_refuses_a_checkpoint_at_or_past_the_last_epoch(straight, data, tmp_path, capsys):
    err = _refused(capsys, tmp_path, data, straight / "epoch_004.pt")
    assert "epoch_004.pt: is at epoch 4; train.epochs = 4 leaves nothing to train" in err


def test_refuses_a_checkpoint_whose_model_does_not_fit(straight, data, tmp_path, capsys):
    err = _refused(capsys, tmp_path, data, straight / "epoch_002.pt", "model.embed_dim=16")
    assert "epoch_002.pt: does not fit this config's model" in err


def test_refuses_a_file_that_is_not_a_wtal_checkpoint(data, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    err = _refused(capsys, tmp_path, data, other)
    assert "other.pt: not a wtal checkpoint" in err


def test_refuses_a_history_without_the_regenerations_the_schedule_reads(
    straight, data, tmp_path, capsys
):
    # Regenerations at 1 and 2 in the branch: its epoch 3 would need labels of epoch 1.
    err = _refused(
        capsys,
        tmp_path,
        data,
        straight / "epoch_003.pt",
        "pseudo.regen_epochs=[1, 2]",
        "pseudo.delta_start=2",
        "pseudo.delta_switch=3",
        "loss.spl_milestones=[1, 2]",
    )
    assert "no pseudo labels of regeneration epoch 1" in err


def test_resume_and_init_from_together_are_refused(straight, tmp_path, capsys):
    args = ["train", "--resume", str(straight), "--init-from", str(straight / "epoch_002.pt")]
    assert main(args) == 2
    assert "pick one" in capsys.readouterr().err
    with pytest.raises(InputError, match="--init-from starts a new one"):
        fit(load_config(), tmp_path, resume=True, init_from=straight / "epoch_002.pt")


# ----------------------------------------------------------------------------- diagnostics


def test_branch_from_the_authors_weights(straight, data, tmp_path, capsys):
    """The authors' ``N.pkl`` as a wtal checkpoint at epoch N (tools.reference_checkpoint):
    their weights, an empty memory, a fresh optimizer, no pseudo labels; --init-from runs it."""
    like = straight / "epoch_002.pt"
    ours = load_checkpoint(like)["model"]
    theirs = {ref: ours[name] + 0.25 for ref, name in REFERENCE_KEYS.items()}
    pkl, out = tmp_path / "2.pkl", tmp_path / "theirs_2.pt"
    torch.save(theirs, pkl)
    assert reference_main([str(pkl), "--like", str(like), "--out", str(out)]) == 0
    state = load_checkpoint(out)
    assert state["epoch"] == 2 and state["pseudo"] == [] and state["optimizer"]["state"] == {}
    for ref, name in REFERENCE_KEYS.items():
        assert torch.equal(state["model"][name], theirs[ref]), name
    memory = [k for k in state["model"] if k.startswith("memory.")]
    assert memory and not any(state["model"][k].any() for k in memory)

    branch = tmp_path / "branch"
    fit(_cfg(data), branch, init_from=out, progress=False)
    assert [r["epoch"] for r in _log(branch)] == [2, 3]
    assert load_checkpoint(branch / "last.pt")["pseudo_epochs"] == [2, 3]

    capsys.readouterr()
    assert reference_main([str(pkl), "--like", str(like), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    torch.save({**theirs, "extra": torch.zeros(1)}, pkl)
    assert reference_main([str(pkl), "--like", str(like), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected key 'extra'" in err
    assert not (tmp_path / "x.pt").exists()


def test_pseudo_stage_epochs_log_their_diagnostics(straight):
    log = _log(straight)
    assert "diag" not in log[0] and "diag" not in log[1]  # base stage
    for record in log[2:]:
        diag = record["diag"]
        assert diag["update_norm"] > 0 and 0 < diag["relative_update"] < 1
        assert diag["dist_weight"] > 0
    assert "negative_entries" not in log[2]["diag"]  # zero target at the first regeneration
    assert "dist" in log[3]["loss"]  # the distillation loss, Δ labels at epoch 3
    # pseudo.delta_clamp_min = 0 by default: the logged share is of the clamped targets
    assert log[3]["diag"]["negative_entries"] == 0.0
    assert log[3]["diag"]["negative_mass"] == 0.0


def test_parameter_change_against_hand_values():
    model = torch.nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))
        model.bias.fill_(4.0)
    before = parameter_snapshot(model)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.0, 1.0]]))  # moves by (0, 1, 0)
    out = parameter_change(before, model)
    assert out["update_norm"] == pytest.approx(1.0)
    assert out["relative_update"] == pytest.approx(1.0 / 5.0)  # |(3, 0, 4)| = 5


def test_negative_share_against_hand_values():
    targets = {"a": torch.tensor([[1.0, -1.0]]), "b": torch.tensor([[0.0, -2.0]])}
    out = negative_share(targets)
    assert out["negative_entries"] == pytest.approx(2 / 4)
    assert out["negative_mass"] == pytest.approx(3 / 4)
    assert negative_share({"a": torch.zeros(2, 2)}) == {
        "negative_entries": 0.0,
        "negative_mass": 0.0,
    }
