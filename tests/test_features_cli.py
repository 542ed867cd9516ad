"""``wtal features``: videos -> features -> ``wtal data check`` -> ``wtal train``, end to end.

The network runs at its real 224 x 224 input, so the videos are a fraction of a second long
(one snippet each): I3D on one CPU thread takes about a second per snippet.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pytest
from conftest import tiny_config

from wtal.cli import main
from wtal.extract import extract_video, list_videos, parse_shard, select_shard
from wtal.extractors import build_extractor
from wtal.io import InputError
from wtal.video import FeatureSpec

av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")

from test_video import write_video  # noqa: E402 (needs av)

TINY_TRAIN = tiny_config(**{"train.batch_size": 2, "train.videos_per_step": 2})


@pytest.mark.filterwarnings("ignore:no prediction matches")  # random features find nothing
def test_videos_to_features_to_training(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "walk_a.avi", 18, 30)  # 0.6 s: 15 samples at 25 fps, 1 snippet
    write_video(videos / "run_b.avi", 12, 24)  # 0.5 s: 13 samples
    (videos / "broken.mp4").write_bytes(b"not a video" * 40)
    (videos / "notes.md").write_text("not a video file name: ignored")
    write_video(tmp_path / "walk_c.avi", 16, Fraction(30000, 1001))  # 0.534 s: 14 samples
    listing = tmp_path / "test_videos.txt"
    listing.write_text("# test split\nwalk_c.avi\n\n")
    out = tmp_path / "dataset"
    argv = ["--weights", "none", "--quiet"]

    # a folder with a broken video: the others are extracted, exit 2 names the broken one
    assert main(["features", str(videos), str(out), "--subset", "validation", *argv]) == 2
    err = capsys.readouterr().err
    assert "warning: --weights none: the I3D networks are randomly initialised" in err
    assert err.strip().splitlines()[-1].startswith("error: 1 of 3 videos could not be read: ")
    assert "broken.mp4 (cannot open as a video" in err
    assert sorted(os.listdir(out / "features")) == ["run_b.npy", "walk_a.npy"]

    # a text list into the same folder, another subset
    assert main(["features", str(listing), str(out), "--subset", "test", *argv]) == 0
    assert "1 videos extracted, 0 already done" in capsys.readouterr().out
    meta = json.loads((out / "features_meta.json").read_text())
    assert meta["extractor"] == "i3d-rgb" and meta["feat_dim"] == 1024
    assert meta["streams"] == [{"name": "rgb", "dim": 1024, "sha256": "random"}]
    assert "randomly initialised" in meta["warning"]
    assert (meta["fps"], meta["snippet_frames"], meta["stride"]) == (25.0, 16, 16)
    assert meta["preprocess"]["resize_short"] == 256 and meta["preprocess"]["crop"] == 224
    assert meta["libraries"]["pyav"] == av.__version__
    entries = meta["videos"]
    assert sorted(entries) == ["run_b", "walk_a", "walk_c"]
    assert [entries[v]["samples"] for v in ("walk_a", "run_b", "walk_c")] == [15, 13, 14]
    assert entries["walk_c"]["source_fps"] == pytest.approx(30000 / 1001)
    assert entries["walk_a"]["duration_s"] == pytest.approx(0.6)
    assert entries["walk_a"]["padding"] == 1 and entries["walk_a"]["snippets"] == 1
    for vid in entries:
        features = np.load(out / "features" / f"{vid}.npy")
        assert features.shape == (1, 1024) and features.dtype == np.float32
    skeleton = json.loads((out / "annotations.json").read_text())["database"]
    assert {v: e["subset"] for v, e in skeleton.items()} == {
        "walk_a": "validation",
        "run_b": "validation",
        "walk_c": "test",
    }
    assert skeleton["walk_c"]["fps"] == 25.0 and skeleton["walk_c"]["snippet_frames"] == 16
    assert skeleton["walk_a"]["duration"] == pytest.approx(0.6)

    # a rerun skips what is done (and adds a skeleton entry it lacks); other settings are
    # refused before any work
    (videos / "broken.mp4").unlink()
    stamp = (out / "features" / "walk_a.npy").stat().st_mtime_ns
    doc = json.loads((out / "annotations.json").read_text())
    del doc["database"]["run_b"]
    (out / "annotations.json").write_text(json.dumps(doc))
    assert main(["features", str(videos), str(out), "--subset", "validation", *argv]) == 0
    assert "0 videos extracted, 2 already done" in capsys.readouterr().out
    assert (out / "features" / "walk_a.npy").stat().st_mtime_ns == stamp
    assert json.loads((out / "annotations.json").read_text())["database"] == skeleton
    assert main(["features", str(videos), str(out), "--fps", "30", *argv]) == 2
    assert "written with other settings (fps: 25.0 there, 30.0 now)" in capsys.readouterr().err

    # the skeleton is a valid dataset; labelled, it trains
    assert main(["data", "check", str(out)]) == 0
    capsys.readouterr()
    doc = json.loads((out / "annotations.json").read_text())
    for vid, label in [("walk_a", "walk"), ("run_b", "run"), ("walk_c", "walk")]:
        entry = doc["database"][vid]
        entry["annotations"] = [{"segment": [0.0, 0.4], "label": label}]
    (out / "annotations.json").write_text(json.dumps(doc))
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY_TRAIN))
    run = tmp_path / "run"
    assert main(["train", str(config), "--data", str(out), "--run-dir", str(run), "--quiet"]) == 0
    assert (run / "config.yaml").is_file() and (run / "log.jsonl").is_file()


def test_video_ids_are_checked_before_any_work(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.avi", "a.mkv"):
        (videos / name).write_bytes(b"")
    out = tmp_path / "out"
    assert main(["features", str(videos), str(out), "--weights", "none"]) == 2
    assert "same video id 'a'" in capsys.readouterr().err
    assert not out.exists()
    (videos / "a.mkv").unlink()
    (videos / "..avi").write_bytes(b"")  # the id would be "."
    with pytest.raises(InputError, match="must be a plain file name"):
        list_videos([videos])
    (videos / "..avi").unlink()
    (videos / "new\nline.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"video file 'new\\nline.mp4': .*control characters"):
        list_videos([videos])
    (videos / "new\nline.mp4").unlink()
    (tmp_path / "list.txt").write_text("gone.mp4\n")
    with pytest.raises(InputError, match="line 1: video file 'gone.mp4' not found"):
        list_videos([tmp_path / "list.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no videos found"):
        list_videos([tmp_path / "empty"])
    assert main(["features", str(tmp_path / "nope"), str(out), "--weights", "none"]) == 2
    assert "nope: VIDEOS: not found" in capsys.readouterr().err
    argv = ["features", str(videos), str(out), "--weights", str(tmp_path / "missing.pt")]
    assert main(argv) == 2
    assert "missing.pt: --weights: file or folder not found" in capsys.readouterr().err
    assert not out.exists()


def test_shards_split_the_videos(monkeypatch):
    videos = [(f"v{i:02d}", None) for i in range(11)]
    shards = [select_shard(videos, k, 3) for k in range(3)]
    ids = sorted(v for shard in shards for v, _ in shard)
    assert ids == [v for v, _ in videos]  # disjoint and covering
    assert [len(s) for s in shards] == [4, 4, 3]
    assert select_shard(videos[::-1], 1, 3) == shards[1]  # independent of the input order
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(InputError, match="--shard: expected K/N"):
            parse_shard(bad)
    assert parse_shard("2/5") == (2, 5)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert parse_shard(None) == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert parse_shard(None) == (1, 4)  # under torchrun: each rank its own shard


def test_extract_video_rows_batching_and_two_stream(tmp_path):
    """Small frames (crop 32) keep the network cheap; the pipeline is the same."""
    pytest.importorskip("cv2", reason="opencv-contrib (the video extra) is not installed")
    path = write_video(tmp_path / "v.avi", 40, 30)  # 34 samples at 25 fps
    spec = FeatureSpec(snippet_frames=8, stride=8, resize_short=40, crop=32)
    rgb = build_extractor("i3d-rgb", "none", "cpu", spec)
    features, info = extract_video(path, rgb, spec, batch_size=1)
    assert features.shape == (5, 1024) and features.dtype == np.float32  # ceil(34 / 8)
    assert (info["samples"], info["snippets"], info["padding"]) == (34, 5, 6)
    batched, _ = extract_video(path, rgb, spec, batch_size=3)
    np.testing.assert_allclose(batched, features, rtol=1e-4, atol=1e-5)
    again, _ = extract_video(path, build_extractor("i3d-rgb", "none", "cpu", spec), spec)
    np.testing.assert_array_equal(again, batched)
    two = build_extractor("i3d-two-stream", "none", "cpu", spec)
    both, _ = extract_video(path, two, spec, batch_size=4)
    assert both.shape == (5, 2048)
    np.testing.assert_allclose(both[:, :1024], features, rtol=1e-4, atol=1e-5)
