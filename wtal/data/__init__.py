"""Datasets of pre-extracted snippet features with video-level labels.

Two on-disk layouts yield the same :class:`Video` records:

* **per-video** (ActivityNet / ActionFormer style), the layout we write::

      ROOT/annotations.json   {"version", "classes"?, "database": {video_id: {
                                  "subset", "duration", "fps"?, "labels"?,
                                  "annotations": [{"segment": [start_s, end_s], "label"}],
                                  "ambiguous"?: [[start_s, end_s], ...]}}}
      ROOT/features/<video_id>.npy   (T, D) numeric array, one row per snippet

  The JSON is parsed by :func:`wtal.annotations.read_pervideo_annotations` (the module that
  parses ground truth for scoring too). Feature files are opened memory-mapped
  (``mmap_mode="r"``) with ``allow_pickle=False`` when an item is requested, so the dataset
  never holds all features in memory. The optional top-level ``"classes"`` fixes the class
  order (default: sorted union of all labels); the optional per-video ``"labels"`` are the
  video-level labels (default: the labels of its annotations); a top-level
  ``"ambiguous": {video_id: [[s, e], ...]}`` is accepted as well.
* **W-TALC bundle** (``sujoyp/wtalc-pytorch``), read-only::

      ROOT/<Name>-I3D-JOINTFeatures.npy  object array of (T_i, D) arrays
      ROOT/{videoname,subset,classlist,segments,labels,labels_all,duration}.npy
      ROOT/Ambiguous_test.txt            optional, lines "video_id  start_s end_s"

  These files are *pickled* object arrays: loading them runs code stored in the files, so
  only open bundles from a source you trust (convert them once with ``wtal data convert``).
  The W-TALC reader is the only place in the package that passes ``allow_pickle=True``.
  The whole features array is loaded into memory (a pickle cannot be memory-mapped).

Timing is explicit: snippet ``i`` covers frames ``[i, i + 1) * snippet_frames`` of a video
sampled at ``fps``; :func:`wtal.segments.snippets_to_seconds` is the only conversion.
"""

from wtal.data.check import check_dataset, convert_wtalc, format_summary
from wtal.data.dataset import (
    Batch,
    FeatureDataset,
    Video,
    collate,
    length_groups,
    resample,
    split_batch,
)
from wtal.data.layouts import detect_layout, read_wtalc_annotations, write_pervideo, write_wtalc

__all__ = [
    "Batch",
    "FeatureDataset",
    "Video",
    "check_dataset",
    "collate",
    "convert_wtalc",
    "detect_layout",
    "format_summary",
    "length_groups",
    "read_wtalc_annotations",
    "resample",
    "split_batch",
    "write_pervideo",
    "write_wtalc",
]
