"""Tests of wtal.data: records, both layouts, resampling, collate, the real THUMOS14 files."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from wtal.activitynet import parse_ground_truth
from wtal.annotations import VideoAnnotation, is_positive_finite
from wtal.data import (
    FeatureDataset,
    Video,
    collate,
    length_groups,
    resample,
    split_batch,
    write_pervideo,
    write_wtalc,
)
from wtal.evaluation import evaluate_detections
from wtal.io import InputError
from wtal.segments import snippets_to_seconds


def make_records(rng: np.random.Generator, num_videos: int = 5, feat_dim: int = 6):
    """Tiny annotations + features: two subsets, multi-label videos, an ambiguous span."""
    classes = ["Diving", "HighJump", "Shotput"]
    records, features = [], []
    for i in range(num_videos):
        num_snippets = int(rng.integers(8, 40))
        spans = np.array([[1, 3], [num_snippets // 2, num_snippets - 1]])
        names = [classes[i % 3], classes[(i + i % 2) % 3]]
        records.append(
            VideoAnnotation(
                video_id=f"vid{i}",
                subset="train" if i < 3 else "test",
                duration_s=float(snippets_to_seconds(num_snippets, 25, 16)),
                segments_s=snippets_to_seconds(spans, 25, 16),
                segment_labels=names,
                labels=sorted(set(names)),
                ambiguous_s=np.array([[0.1, 0.5]]) if i == 4 else np.zeros((0, 2)),
                fps=25.0,
            )
        )
        features.append(rng.random((num_snippets, feat_dim), dtype=np.float32))
    return records, features, classes


@pytest.fixture()
def tiny(tmp_path):
    records, features, classes = make_records(np.random.default_rng(0))
    write_pervideo(tmp_path / "pv", records, features, classes)
    write_wtalc(tmp_path / "wt", "Tiny", records, features, classes)
    return tmp_path, records, features, classes


# ----------------------------------------------------------------------------- resample


def reference_resample(features, num_segments, offsets):
    """Row i takes the original snippet under position (i + offset_i) * T / N."""
    num_snippets = len(features)
    rows = []
    for i in range(num_segments):
        pos = (i + offsets[i]) * num_snippets / num_segments
        rows.append(features[min(int(math.floor(pos)), num_snippets - 1)])
    return np.stack(rows)


@pytest.mark.parametrize("num_snippets", [1, 7, 75, 200, 1001])
def test_resample_uniform_matches_reference(num_snippets):
    features = np.random.default_rng(1).random((num_snippets, 3))
    out = resample(features, 75)
    assert out.shape == (75, 3) and out.dtype == features.dtype
    np.testing.assert_array_equal(out, reference_resample(features, 75, np.zeros(75)))


@pytest.mark.parametrize("num_snippets", [10, 75, 333])
def test_resample_random_stays_in_its_span_and_is_seeded(num_snippets):
    features = np.arange(num_snippets, dtype=np.float64)[:, None]  # row value = its index
    out = resample(features, 75, np.random.default_rng(5))[:, 0]
    same = resample(features, 75, np.random.default_rng(5))[:, 0]
    np.testing.assert_array_equal(out, same)
    span = np.arange(76) * num_snippets / 75
    assert np.all(out >= np.floor(span[:-1])) and np.all(out <= np.ceil(span[1:]) - 1)
    assert np.all(np.diff(out) >= 0)  # order kept
    offsets = np.random.default_rng(5).random(75)  # the same draws as inside resample
    np.testing.assert_array_equal(out, reference_resample(features, 75, offsets)[:, 0])
    if num_snippets > 75:
        other = resample(features, 75, np.random.default_rng(6))[:, 0]
        assert not np.array_equal(out, other)


def test_resample_rejects_empty():
    with pytest.raises(ValueError):
        resample(np.zeros((0, 4)), 10)


# ----------------------------------------------------------------------------- collate


def _video(video_id, num_snippets, feat_dim=4, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return Video(
        video_id=video_id,
        subset="test",
        features=rng.random((num_snippets, feat_dim), dtype=np.float32),
        labels=(rng.random(num_classes) > 0.5).astype(np.float32),
        segments_s=np.zeros((0, 2)),
        segment_labels=np.zeros(0, np.int64),
        ambiguous_s=np.zeros((0, 2)),
        duration_s=float(num_snippets) * 0.64,
        fps=25.0,
        snippet_frames=16.0,
    )


def test_collate_pads_and_masks():
    videos = [_video("a", 5, seed=1), _video("b", 9, seed=2), _video("c", 1, seed=3)]
    batch = collate(videos)
    assert batch.features.shape == (3, 9, 4) and batch.features.dtype == torch.float32
    assert batch.mask.dtype == torch.bool and batch.lengths.dtype == torch.int64
    assert batch.video_ids == ["a", "b", "c"]
    assert batch.lengths.tolist() == [5, 9, 1]
    for i, video in enumerate(videos):  # reference: explicit per-video loop
        n = len(video.features)
        np.testing.assert_array_equal(batch.features[i, :n].numpy(), video.features)
        assert torch.all(batch.features[i, n:] == 0)
        assert batch.mask[i, :n].all() and not batch.mask[i, n:].any()
        np.testing.assert_array_equal(batch.labels[i].numpy(), video.labels)


def _groups_reference(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Slow reference: sort, then open a new pass whenever adding the next video would pad
    the current one beyond ``max_padding`` times its snippets."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups:
            trial = groups[-1] + [i]
            padded = max(lengths[j] for j in trial) * len(trial)
            if padded <= max_padding * sum(lengths[j] for j in trial):
                groups[-1] = trial
                continue
        groups.append([i])
    return groups


@pytest.mark.parametrize("max_padding", [1.0, 1.25, 1.5, 3.0])
def test_length_groups_match_reference_and_bound_padding(max_padding):
    rng = np.random.default_rng(0)
    for trial in range(200):
        lengths = rng.integers(1, 3000, size=rng.integers(1, 12)).tolist()
        if trial % 5 == 0:  # ties
            lengths = rng.choice([7, 50, 50, 300], size=len(lengths)).tolist()
        groups = length_groups(lengths, max_padding)
        assert [g.tolist() for g in groups] == _groups_reference(lengths, max_padding)
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
        for g in groups:
            sub = np.asarray(lengths)[g]
            assert np.all(np.diff(sub) >= 0)
            assert len(g) == 1 or sub.max() * len(g) <= max_padding * sub.sum()


def test_length_groups_zero_keeps_one_pass_in_order():
    for max_padding in (0.0, math.inf):
        groups = length_groups([300, 5, 2000], max_padding)
        assert len(groups) == 1 and groups[0].tolist() == [0, 1, 2]
    assert [g.tolist() for g in length_groups([40, 40, 40], 1.0)] == [[0, 1, 2]]


def test_split_batch_rebuilds_each_video():
    videos = [_video(f"v{i}", n, seed=i) for i, n in enumerate([30, 4, 31, 200, 5])]
    batch = collate(videos)
    parts = split_batch(batch, 1.5)
    assert [p.video_ids for _, p in parts] == [["v1", "v4"], ["v0", "v2"], ["v3"]]
    for index, part in parts:
        assert part.features.shape[1] == int(part.lengths.max())
        for row, i in enumerate(index.tolist()):  # each row is the video, padded with 0
            n = len(videos[i].features)
            np.testing.assert_array_equal(part.features[row, :n].numpy(), videos[i].features)
            assert torch.all(part.features[row, n:] == 0) and int(part.mask[row].sum()) == n
            np.testing.assert_array_equal(part.labels[row].numpy(), videos[i].labels)
    assert split_batch(batch, 0)[0][1] is batch


def test_collate_accepts_readonly_memmaps(tiny):
    root = tiny[0]
    dataset = FeatureDataset(root / "pv", "train")
    assert isinstance(dataset[0].features, np.memmap)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.features.shape[0] == 3


# ----------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("layout", ["pv", "wt"])
def test_dataset_yields_the_written_records(tiny, layout):
    root, records, features, classes = tiny
    train = FeatureDataset(root / layout, "train")
    test = FeatureDataset(root / layout, "test")
    assert train.class_names == classes and test.num_classes == 3
    assert train.feat_dim == 6 and len(train) == 3 and len(test) == 2
    assert train.video_ids == ["vid0", "vid1", "vid2"]
    for dataset in (train, test):
        for video in (dataset[i] for i in range(len(dataset))):
            i = int(video.video_id[3:])
            rec = records[i]
            np.testing.assert_array_equal(video.features, features[i])
            assert video.features.dtype == np.float32
            expected = np.zeros(3, np.float32)
            expected[[classes.index(n) for n in rec.labels]] = 1
            np.testing.assert_array_equal(video.labels, expected)
            np.testing.assert_array_equal(video.segments_s, rec.segments_s)
            assert video.segment_labels.tolist() == [classes.index(n) for n in rec.segment_labels]
            np.testing.assert_array_equal(video.ambiguous_s, rec.ambiguous_s)
            assert video.duration_s == rec.duration_s
            assert (video.fps, video.snippet_frames) == (25.0, 16.0)


def test_dataset_all_subsets_and_bad_subset(tiny):
    root = tiny[0]
    assert len(FeatureDataset(root / "pv", None)) == 5
    with pytest.raises(
        InputError, match=r"no videos in subset 'validation' \(\['test', 'train'\]\)"
    ):
        FeatureDataset(root / "pv", "validation")


def test_ground_truth_format(tiny):
    root, records = tiny[0], tiny[1]
    gt = FeatureDataset(root / "wt", "test").ground_truth()
    assert gt.video_ids == ["vid3", "vid4"] and gt.subsets == ["test", "test"]
    rows = gt.ann_video == 1  # vid4's instances
    assert gt.ann_segments[rows].tolist() == records[4].segments_s.tolist()
    assert [name for name, r in zip(gt.ann_labels, rows, strict=True) if r] == records[
        4
    ].segment_labels
    assert gt.amb_video.tolist() == [1] and gt.amb_segments.tolist() == [[0.1, 0.5]]


@pytest.mark.parametrize("layout", ["pv", "wt"])
def test_ground_truth_is_what_parsing_its_json_gives(tiny, layout):
    """The dataset hands the evaluator its records; the result is the same as serialising them
    to ActivityNet JSON and parsing that (the route before), field by field and in mAP."""
    dataset = FeatureDataset(tiny[0] / layout, None)
    database = {
        r.video_id: {
            "subset": r.subset,
            "annotations": [
                {"segment": seg, "label": name}
                for seg, name in zip(r.segments_s.tolist(), r.segment_labels, strict=True)
            ],
            "ambiguous": r.ambiguous_s.tolist(),
        }
        for r in dataset.records
    }
    expected = parse_ground_truth({"database": database}, "json")
    got = dataset.ground_truth()
    for name in ("video_ids", "subsets", "ann_labels"):
        assert getattr(got, name) == getattr(expected, name)
    for name in ("ann_video", "ann_segments", "amb_video", "amb_segments"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    results = {"results": {"vid3": [{"label": "Diving", "score": 0.9, "segment": [0.5, 2.0]}]}}
    for protocol in ("official", "wtalc"):
        kwargs = {"subset": "test", "protocol": protocol, "ambiguous_filter": True}
        mine = evaluate_detections(got, results, "thumos", **kwargs).as_dict()
        assert (
            mine
            == evaluate_detections({"database": database}, results, "thumos", **kwargs).as_dict()
        )


def test_segments_by_video_are_the_ground_truth_as_arrays(tiny):
    dataset = FeatureDataset(tiny[0] / "wt", "test")
    gt = dataset.ground_truth()
    arrays = dataset.segments_by_video()
    assert list(arrays) == gt.video_ids
    for v, (segments, labels) in enumerate(arrays.values()):
        rows = gt.ann_video == v
        assert segments.shape == (int(rows.sum()), 2) and labels.dtype == np.int64
        assert segments.tolist() == gt.ann_segments[rows].tolist()
        names = [name for name, r in zip(gt.ann_labels, rows, strict=True) if r]
        assert [dataset.class_names[i] for i in labels] == names


def test_resampled_video_keeps_the_time_axis(tiny):
    root, _, features = tiny[0], tiny[1], tiny[2]
    dataset = FeatureDataset(root / "pv", "train", num_segments=16)
    video = dataset[1]
    assert video.features.shape == (16, 6)
    np.testing.assert_array_equal(video.features, resample(features[1], 16))
    end_s = snippets_to_seconds(16, video.fps, video.snippet_frames)  # last row's end
    np.testing.assert_allclose(end_s, snippets_to_seconds(len(features[1]), 25, 16))


def test_random_sampling_depends_on_seed_and_epoch_only(tiny):
    root = tiny[0]
    a = FeatureDataset(root / "pv", "train", num_segments=5, sampling="random", seed=3)
    b = FeatureDataset(root / "pv", "train", num_segments=5, sampling="random", seed=3)
    np.testing.assert_array_equal(a[2].features, b[2].features)
    first = [a[i].features.copy() for i in range(3)]
    a.set_epoch(1)
    assert any(not np.array_equal(first[i], a[i].features) for i in range(3))
    with pytest.raises(ValueError, match="num_segments"):
        FeatureDataset(root / "pv", "train", sampling="random")


def test_fps_from_file_or_argument(tiny, tmp_path):
    root, records, features, classes = tiny
    records = [VideoAnnotation(**{**vars(r), "fps": 30.0}) for r in records]
    write_pervideo(tmp_path / "fps30", records, features, classes)
    assert FeatureDataset(tmp_path / "fps30", "train")[0].fps == 30.0
    explicit = FeatureDataset(tmp_path / "fps30", "train", fps=25)  # the video's own wins
    assert explicit[0].fps == 30.0
    assert '"fps" 30 differs from data.fps 25' in str(explicit.warnings[-1])
    assert FeatureDataset(root / "wt", "train")[0].fps == 25.0  # W-TALC: the default


def test_class_names_default_to_sorted_union(tiny, tmp_path):
    root = tiny[0]
    ann = (root / "pv" / "annotations.json").read_text()
    (root / "pv" / "annotations.json").write_text(ann.replace('"classes"', '"unused"'))
    dataset = FeatureDataset(root / "pv", "test", class_names=["Shotput", "HighJump", "Diving"])
    assert dataset.class_names == ["Shotput", "HighJump", "Diving"]
    assert FeatureDataset(root / "pv", "test").class_names == ["Diving", "HighJump", "Shotput"]


def test_loader_raises_on_bad_features(tiny):
    root = tiny[0]
    np.save(root / "pv" / "features" / "vid1.npy", np.full((4, 6), np.nan, np.float32))
    dataset = FeatureDataset(root / "pv", "train")
    with pytest.raises(InputError, match=r"vid1.npy: video 'vid1': features: contains NaN"):
        dataset[1]
    (root / "pv" / "features" / "vid2.npy").unlink()
    with pytest.raises(InputError, match=r"vid2.npy: video 'vid2': feature file missing"):
        FeatureDataset(root / "pv", "train")


def test_loader_never_unpickles_per_video_features(tiny):
    root = tiny[0]
    obj = np.empty(1, dtype=object)
    obj[0] = [1, 2]
    np.save(root / "pv" / "features" / "vid0.npy", obj, allow_pickle=True)
    with pytest.raises(InputError, match=r"video 'vid0': not a numeric .npy array"):
        FeatureDataset(root / "pv", "train")


# ----------------------------------------------------------------------------- real THUMOS14


def wtalc_bundle_with_features(src, dst, feat_dim=8, fps=25.0, snippet_frames=16.0):
    """Copy the real W-TALC annotations and add random features of the implied lengths."""
    shutil.copytree(src, dst)
    durations = np.load(dst / "duration.npy").reshape(-1)
    lengths = np.ceil(durations * fps / snippet_frames).astype(int)
    rng = np.random.default_rng(0)
    features = np.empty(len(lengths), dtype=object)
    for i, n in enumerate(lengths):
        features[i] = rng.random((n, feat_dim), dtype=np.float32)
    np.save(dst / "Thumos14reduced-I3D-JOINTFeatures.npy", features, allow_pickle=True)
    return dst


@pytest.fixture(scope="module")
def thumos_bundle(shared_data, tmp_path_factory):
    src = shared_data / "thumos14_wtalc_reduced"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    return wtalc_bundle_with_features(src, tmp_path_factory.mktemp("th") / "th")


def test_real_thumos14_counts(thumos_bundle):
    train = FeatureDataset(thumos_bundle, "validation")
    test = FeatureDataset(thumos_bundle, "test")
    assert (len(train), len(test), train.num_classes, train.feat_dim) == (200, 212, 20, 8)
    assert train.class_names[0] == "BaseballPitch" and train.class_names[-1] == "VolleyballSpiking"
    assert sum(len(r.segment_labels) for r in train.records) == 3007
    gt = test.ground_truth()
    assert len(gt.video_ids) == 212 and len(gt.ann_labels) == len(gt.ann_segments) == 3358
    assert len(np.unique(gt.amb_video)) == 36 and len(gt.amb_segments) == 96
    v278 = gt.video_ids.index("video_test_0000278")
    assert gt.amb_segments[gt.amb_video == v278].tolist() == [[0.0, 1.4], [95.7, 97.2]]
    # Annotations that end after the video are kept, with a warning (not an error).
    late = [p for p in test.warnings if p.video == "video_test_0000270"]
    assert len(late) == 22 and all("ends after the video" in p.what for p in late)
    # Video labels come from labels_all.npy (W-TALC), not from the segment labels.
    index = test.video_ids.index("video_test_0000270")
    assert test[index].labels.sum() == 0 and len(test[index].segment_labels) == 29


def test_positive_finite_is_the_one_frame_rate_check():
    assert all(is_positive_finite(x) for x in (25, 29.97, 1e-9))
    bad = (0, -25, 0.0, float("nan"), float("inf"), True, "25", None, [25])
    assert not any(is_positive_finite(x) for x in bad)
