"""COCO person keypoints as one-frame "videos" (for image pretraining, PAVE-Net's pseudo-video).

Each image becomes a video record with a single labeled frame (docs/INTERNALS.md). Crowd
annotations are dropped (as Detectron2 does for keypoints). With ``keypoint_layout="posetrack"``
the poses are mapped to the 15 PoseTrack joints by
:func:`~vpose_d2.data.keypoints.coco17_to_posetrack15` (eyes stand in for the head joints).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..keypoints import COCO, POSETRACK, coco17_to_posetrack15, layout_metadata
from .posetrack import VPOSE_DATASET_NAMES, PosetrackFormatError, check_finite

__all__ = ["register_coco_keypoints", "load_coco_keypoints", "register_all_coco"]

logger = logging.getLogger(__name__)


def load_coco_keypoints(
    json_file: Union[str, Path], image_root: Union[str, Path], keypoint_layout: str = "coco"
) -> List[Dict[str, Any]]:
    """Load a COCO person-keypoints json into one-frame video records.

    Args:
        json_file: ``person_keypoints_*.json``.
        image_root: folder of the images.
        keypoint_layout: "coco" (17 joints) or "posetrack" (15, see module docstring).

    Returns:
        list of video records, one per image, in the file's image order; ``video_id`` is the
        image file stem, ``track_id`` the person's index in the image.
    """
    src = Path(json_file)
    if not src.is_file():
        raise FileNotFoundError(f"COCO keypoints file not found: {src.resolve()}")
    text = src.read_text()
    if not text.strip():
        raise PosetrackFormatError(f"{src}: the annotation file is empty")
    data = json.loads(text)
    if not data.get("images"):
        raise PosetrackFormatError(f"{src}: the annotation file lists no images")
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for a in data.get("annotations") or []:
        by_image.setdefault(a["image_id"], []).append(a)
    records = []
    for im in data["images"]:
        where = f"{src} (image {im['id']}, {im['file_name']})"
        persons = []
        for a in by_image.get(im["id"], []):
            if a.get("iscrowd", 0):
                continue
            who = f"person {a.get('id')}"
            check_finite(a.get("keypoints") or [], f"{who} keypoints", where)
            check_finite(a["bbox"], f"{who} bbox", where)
            if "area" in a:
                check_finite(a["area"], f"{who} area", where)
            kp = np.asarray(a.get("keypoints") or [0.0] * 51, dtype=np.float64)
            if kp.size != 51:
                raise PosetrackFormatError(
                    f"{where}: person {a.get('id')} has {kp.size} keypoint values, expected 51"
                )
            kp = kp.reshape(17, 3)
            kp[:, 2] = (kp[:, 2] > 0).astype(np.float64)
            kp[kp[:, 2] == 0, :2] = 0.0
            if keypoint_layout == "posetrack":
                kp = coco17_to_posetrack15(kp)
            bbox = [float(v) for v in a["bbox"]]
            persons.append(
                {
                    "keypoints": kp.reshape(-1).tolist(),
                    "track_id": len(persons),
                    "bbox": bbox,
                    "bbox_head": None,
                    "area": float(a.get("area", bbox[2] * bbox[3])),
                }
            )
        records.append(
            {
                "video_id": Path(im["file_name"]).stem,
                "height": int(im.get("height", 0)),
                "width": int(im.get("width", 0)),
                "frames": [
                    {
                        "file_name": str(Path(image_root) / im["file_name"]),
                        "image_id": int(im["id"]),
                        "frame_id": int(im["id"]),
                        "frame_index": 0,
                        "is_labeled": True,
                        "persons": persons,
                        "ignore_regions": [],
                    }
                ],
            }
        )
    return records


def register_coco_keypoints(
    name: str,
    json_file: Union[str, Path],
    image_root: Union[str, Path],
    keypoint_layout: str = "coco",
) -> None:
    """Register COCO person keypoints as one-frame videos (lazy; no disk access here).

    Args:
        name: dataset name.
        json_file: ``person_keypoints_*.json``.
        image_root: folder of the images.
        keypoint_layout: "coco" (17 joints) or "posetrack" (15 joints, for pretraining a
            PoseTrack model).
    """
    if keypoint_layout not in ("coco", "posetrack"):
        raise ValueError(f"register_coco_keypoints({name!r}): layout must be coco or posetrack")
    json_file, image_root = Path(json_file), Path(image_root)
    DatasetCatalog.register(
        name, lambda: load_coco_keypoints(json_file, image_root, keypoint_layout)
    )
    layout = COCO if keypoint_layout == "coco" else POSETRACK
    MetadataCatalog.get(name).set(
        evaluator_type="coco_keypoints",
        json_file=str(json_file),
        image_root=str(image_root),
        **layout_metadata(layout),
    )
    if name not in VPOSE_DATASET_NAMES:
        VPOSE_DATASET_NAMES.append(name)


def register_all_coco(root: Optional[Union[str, Path]] = None) -> None:
    """Register ``vpose_coco_2017_{train,val}`` (17 joints) and ``..._pt15`` (15 joints)."""
    root = root or os.environ.get("VPOSE_DATASETS", "datasets")
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    for split in ("train", "val"):
        ann = root / "coco" / "annotations" / f"person_keypoints_{split}2017.json"
        img = root / "coco" / f"{split}2017"
        for suffix, layout in (("", "coco"), ("_pt15", "posetrack")):
            name = f"vpose_coco_2017_{split}{suffix}"
            if name not in DatasetCatalog.list():
                register_coco_keypoints(name, ann, img, layout)
