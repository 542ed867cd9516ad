"""The one walk over the ActivityNet ``database`` schema (``wtal.annotations.walk_database``)
and its two readers: ground truth to score and a dataset's annotations."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from wtal.activitynet import parse_ground_truth, parse_results
from wtal.annotations import (
    DATASET_WORDS,
    Reporter,
    read_items,
    read_pervideo_annotations,
    walk_database,
)
from wtal.io import InputError

GOOD = {
    "database": {
        "v1": {
            "subset": "test",
            "duration": 10.0,
            "annotations": [
                {"label": "a", "segment": [1.0, 2.0]},
                {"label": "b", "segment": [3, 4]},
            ],
        },
        "v2": {
            "subset": "train",
            "duration": 8,
            "annotations": [{"label": "a", "segment": [0.5, 4.5]}],
            "ambiguous": [[1, 2]],
        },
    }
}


def _edit(change):
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def _write(tmp_path, data):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _set(video, key, value):
    return lambda data: data["database"][video].__setitem__(key, value)


def _set_annotation(value):
    return lambda data: data["database"]["v1"]["annotations"].__setitem__(1, value)


# (change, video, how scoring words it, how a dataset words it)
SHARED_PROBLEMS = [
    (
        lambda data: data["database"].__setitem__("v1", 3),
        "v1",
        "expected an object, got 3",
        "entry is not an object",
    ),
    (
        _set("v1", "subset", 3),
        "v1",
        "field 'subset': expected a string, got 3",
        '"subset" must be a string',
    ),
    (
        _set("v2", "annotations", {}),
        "v2",
        "field 'annotations': expected a list, got {}",
        '"annotations" must be a list',
    ),
    (
        _set_annotation({"label": "a", "segment": [True, 2]}),
        "v1",
        "annotation 1: expected {'label': str, 'segment': [start, end]}, "
        "got {'label': 'a', 'segment': [True, 2]}",
        'annotations[1]: expected {"segment": [s, e], "label": str}',
    ),
    (
        _set_annotation({"label": 7, "segment": [1, 2]}),
        "v1",
        "annotation 1: expected {'label': str, 'segment': [start, end]}, "
        "got {'label': 7, 'segment': [1, 2]}",
        'annotations[1]: expected {"segment": [s, e], "label": str}',
    ),
    (
        _set("v2", "ambiguous", 3),
        "v2",
        "field 'ambiguous': expected a list",
        '"ambiguous" must be a list of [start, end] pairs',
    ),
    (
        lambda data: data.__setitem__("ambiguous", {"v1": [[1, 2], ["x", 3]]}),
        "v1",
        "ambiguous 1: expected [start, end] numbers, got ['x', 3]",
        '"ambiguous" must be a list of [start, end] pairs',
    ),
    (
        lambda data: data.__setitem__("ambiguous", [[1, 2]]),
        None,
        "field 'ambiguous': expected an object {video_id: [[s, e]]}",
        '"ambiguous" must be an object {video_id: [[s, e], ...]}',
    ),
]


@pytest.mark.parametrize(("change", "video", "scoring", "dataset"), SHARED_PROBLEMS)
def test_both_readers_reject_a_shared_problem_each_in_its_words(
    tmp_path, change, video, scoring, dataset
):
    data = _edit(change)
    with pytest.raises(InputError) as info:
        parse_ground_truth(data, "gt.json")
    assert (info.value.video, info.value.what) == (video, scoring)
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as info:
        read_pervideo_annotations(path)
    assert (info.value.video, info.value.what) == (video, dataset)


def test_readers_differ_only_where_training_is_stricter(tmp_path):
    """A zero-length or negative-start segment scores (the official toolkit takes it) but
    is a dataset error; a reversed one is an error for both."""
    for segment, scores in [([3, 3], True), ([-1, 3], True), ([3, 2], False)]:
        data = _edit(_set_annotation({"label": "b", "segment": segment}))
        if scores:
            assert parse_ground_truth(data, "gt.json").ann_segments[1].tolist() == segment
        else:
            with pytest.raises(InputError, match="annotation 1: field 'segment'"):
                parse_ground_truth(data, "gt.json")
        rep = Reporter(strict=False)
        records, _ = read_pervideo_annotations(_write(tmp_path, data), rep)
        assert [(p.level, p.video) for p in rep.problems] == [("error", "v1")]
        assert records[0].segments_s.tolist() == [[1.0, 2.0]]


def test_ambiguous_intervals_of_the_entry_and_the_top_level_both_count(tmp_path):
    data = _edit(lambda data: data.__setitem__("ambiguous", {"v2": [[5, 6]], "gone": [[0, 1]]}))
    gt = parse_ground_truth(data, "gt.json")
    assert gt.amb_video.tolist() == [1, 1]
    assert gt.amb_segments.tolist() == [[1.0, 2.0], [5.0, 6.0]]
    records, _ = read_pervideo_annotations(_write(tmp_path, data))
    assert records[1].ambiguous_s.tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert records[0].ambiguous_s.shape == (0, 2)


def test_walk_collects_every_problem_and_keeps_the_videos_it_can(tmp_path):
    def change(data):
        data["database"]["v1"]["annotations"] += [{"segment": [1, 2]}, "x"]
        data["database"]["v2"]["subset"] = None
        data["database"]["v3"] = {"subset": "test", "annotations": [], "ambiguous": [[1]]}

    rep = Reporter(strict=False)
    videos = list(walk_database(_edit(change), "a.json", rep, DATASET_WORDS))
    assert [v.video_id for v in videos] == ["v1", "v3"]
    assert videos[0].malformed == [2, 3]
    assert videos[0].labels == ["a", "b", "", ""]  # placeholders keep the lists aligned
    assert videos[0].starts == [1.0, 3, 0.0, 0.0] and videos[0].ends == [2.0, 4, 1.0, 1.0]
    assert videos[1].ambiguous == []
    assert [(p.video, p.what) for p in rep.problems] == [
        ("v1", 'annotations[2]: expected {"segment": [s, e], "label": str}'),
        ("v1", 'annotations[3]: expected {"segment": [s, e], "label": str}'),
        ("v2", '"subset" must be a string'),
        ("v3", '"ambiguous" must be a list of [start, end] pairs'),
    ]
    with pytest.raises(InputError, match=r"annotations\[2\]"):
        list(walk_database(_edit(change), "a.json", Reporter(strict=True), DATASET_WORDS))


def test_missing_database_raises_whatever_the_reporter():
    for data in [{"videos": {}}, [], {"database": []}]:
        with pytest.raises(InputError, match='"database" object of videos'):
            walk_database(data, "a.json", Reporter(strict=False), DATASET_WORDS)
    with pytest.raises(InputError, match="field 'database': expected an object, got \\[\\]"):
        parse_ground_truth({"database": []}, "gt.json")


def test_results_share_the_item_check():
    items = [
        {"label": "a", "score": 0.5, "segment": [0, 1]},
        {"label": "a", "score": 0.5, "segment": [0, False]},
        {"label": "a", "segment": [0, 1]},
        {"label": "b", "score": 1, "segment": (2.5, 3)},
    ]
    labels, starts, ends, scores = [], [], [], []
    assert read_items(items, labels, starts, ends, scores) == [1, 2]
    assert labels == ["a", "", "", "b"] and scores == [0.5, 0.0, 0.0, 1]
    assert read_items(items, [], [], []) == [1]  # no score wanted: only the bool is wrong
    with pytest.raises(InputError, match="prediction 1: expected") as info:
        parse_results({"results": {"v1": items}}, "det.json")
    assert info.value.video == "v1"
    good = parse_results({"results": {"v1": items[:1] + items[3:]}}, "det.json")
    np.testing.assert_array_equal(good.segments, [[0.0, 1.0], [2.5, 3.0]])
