"""Dataset registration: PoseTrack 2017/2018/21, COCO keypoints, the synthetic PoseTrack set.

Importing this package registers the predefined names (lazily: no file is read until
``DatasetCatalog.get``):

* ``posetrack{17,18,21}_{train,val}`` under ``$VPOSE_DATASETS`` (default ``./datasets``):
  ``posetrack18/annotations/{split}/*.json`` + ``posetrack18/images/...``,
  ``posetrack21/posetrack_data/{split}/*.json``, ``posetrack17/annotations/{split}/*.json``
  (2017 format);
* ``vpose_coco_2017_{train,val}`` (17 joints) and ``vpose_coco_2017_{train,val}_pt15``
  (15 PoseTrack joints) from ``coco/annotations/person_keypoints_{split}2017.json``;
* ``synthetic_posetrack_{train,val}`` under ``datasets/synthetic_posetrack`` (relative to the
  current directory; ``cfg.DATASETS.SYNTHETIC_ROOT`` re-registers them elsewhere, see
  :func:`vpose_d2.data.build.register_from_cfg`). Nothing is generated unasked: if the set is
  not there when they are first loaded, the error names the folder and the command that
  writes it (``tools/make_synthetic_posetrack.py``; the main job runs it).
"""

from .coco import load_coco_keypoints, register_all_coco, register_coco_keypoints
from .posetrack import (
    VPOSE_DATASET_NAMES,
    PosetrackFormatError,
    ensure_gt_dir,
    load_posetrack,
    load_posetrack17,
    load_posetrack18_video,
    load_posetrack_merged,
    register_all_posetrack,
    register_posetrack,
)
from .synthetic import (
    DEFAULT_SYNTHETIC_ROOT,
    make_synthetic_posetrack,
    register_synthetic_posetrack,
)

__all__ = [
    "VPOSE_DATASET_NAMES",
    "PosetrackFormatError",
    "ensure_gt_dir",
    "load_coco_keypoints",
    "load_posetrack",
    "load_posetrack17",
    "load_posetrack18_video",
    "load_posetrack_merged",
    "make_synthetic_posetrack",
    "register_all_coco",
    "register_all_posetrack",
    "register_coco_keypoints",
    "register_posetrack",
    "register_synthetic_posetrack",
]

register_all_posetrack()
register_all_coco()
register_synthetic_posetrack(DEFAULT_SYNTHETIC_ROOT)
