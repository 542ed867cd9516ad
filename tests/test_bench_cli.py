"""``wtal bench``: several seeds of one config, mean +- std, reuse of finished runs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from wtal.bench import format_bench, summarize_seeds
from wtal.checkpoint import load_checkpoint
from wtal.cli import main
from wtal.io import InputError, write_json
from wtal.synth import THUMOS, write_synthetic

TINY = tiny_overrides(
    **{
        "train.lr_values": [1e-3, 1e-4],
        "train.batch_size": 5,
        "train.videos_per_step": 5,
        "train.checkpoint_every": 0,
    }
)


def _metrics(values: list[float]) -> dict:
    keys = ["0.10", "0.50"]
    m = {"mAP": dict(zip(keys, values, strict=True)), "averages": {"avg": float(np.mean(values))}}
    return {"official": m, "wtalc": m}


def test_summarize_seeds_mean_and_sample_std(tmp_path):
    runs = []
    for seed, vals in ((0, [10.0, 4.0]), (1, [20.0, 6.0]), (2, [30.0, 8.0])):
        run = tmp_path / f"seed{seed}"
        write_json(run / "metrics.json", _metrics(vals))
        runs.append(run)
    s = summarize_seeds(runs, [0, 1, 2])
    assert "base" not in s["stages"]  # no metrics_base.json: the stage is left out
    cell = s["stages"]["full"]["official"]["mAP"]["0.10"]
    assert cell["mean"] == pytest.approx(20.0) and cell["std"] == pytest.approx(10.0)
    assert cell["values"] == [10.0, 20.0, 30.0]
    assert s["stages"]["full"]["wtalc"]["averages"]["avg"]["mean"] == pytest.approx(13.0)
    assert "| 0.10 | 20.00 +- 10.00 |" in format_bench(s)
    write_json(runs[2] / "metrics.json", {"official": {"mAP": {"0.3": 1.0}}})
    with pytest.raises(InputError, match="averages|keys differ"):
        summarize_seeds(runs, [0, 1, 2])


def test_bench_two_seeds_end_to_end(tmp_path, capsys):
    spec = replace(
        THUMOS,
        train_videos=5,
        test_videos=3,
        feat_dim=8,
        num_classes=3,
        min_snippets=30,
        median_snippets=40,
        max_snippets=50,
    )
    data = tmp_path / "data"
    write_synthetic(data, spec, seed=0)
    out = tmp_path / "bench"
    argv = ["bench", "--seeds", "0,1", "--data", str(data), "--out", str(out), "--quiet"]
    argv += [x for kv in TINY for x in ("--set", kv)]
    config = tmp_path / "tiny.yaml"
    config.write_text("{}\n")
    assert main([*argv, str(config)]) == 0
    printed = capsys.readouterr().out
    assert "official protocol" in printed and "wtalc protocol" in printed
    bench = json.loads((out / "bench.json").read_text())
    assert bench["seeds"] == [0, 1] and set(bench["stages"]) == {"base", "full"}
    for seed in (0, 1):
        assert (out / f"seed{seed}" / "metrics.json").is_file()
    full = bench["stages"]["full"]["official"]["mAP"]
    for seed, run in enumerate(bench["runs"]):
        m = json.loads((out / f"seed{seed}" / "metrics.json").read_text())
        assert run.endswith(f"seed{seed}")
        for key, cell in full.items():
            assert cell["values"][seed] == m["official"]["mAP"][key]
    assert "+-" in (out / "bench.md").read_text()
    # Seeds really differ: the two runs did not train the same model.
    w = [load_checkpoint(out / f"seed{s}")["model"] for s in (0, 1)]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0])
    # A second call reuses both finished runs (no training: the files stay untouched).
    stamp = (out / "seed0" / "last.pt").stat().st_mtime_ns
    assert main([*argv, str(config)]) == 0
    assert "finished run reused" in capsys.readouterr().out
    assert (out / "seed0" / "last.pt").stat().st_mtime_ns == stamp
    # Another config in the same folder is refused, not mixed in.
    assert main([*argv, "--set", "train.epochs=3", str(config)]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["bench", "--seeds", "0,x", str(config), "--data", str(data)]) == 2
