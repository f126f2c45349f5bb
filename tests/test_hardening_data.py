"""Bad data that used to give a silently wrong number: non-finite ground truth, truncated and
wrongly sized frames, a mistyped synthetic root (issue 13, items 1, 2, 3, 5)."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import copy
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from vpose_d2.config import get_vpose_cfg
from vpose_d2.data import ClipDatasetMapper
from vpose_d2.data.build import register_from_cfg
from vpose_d2.data.datasets import (
    PosetrackFormatError,
    load_coco_keypoints,
    load_posetrack,
    make_synthetic_posetrack,
)
from vpose_d2.data.datasets.synthetic import DEFAULT_SYNTHETIC_ROOT, register_synthetic_posetrack
from vpose_d2.data.keypoints import POSETRACK
from vpose_d2.evaluation.coco_oks import coco_oks_ap

SIGMAS = list(POSETRACK.oks_sigmas)


# ------------------------------------------------------------------------------------------
# 1. Non-finite ground-truth coordinates
# ------------------------------------------------------------------------------------------
def _official_video(kp17, track_id=3):
    return {
        "images": [
            {"file_name": "images/val/vid/000000.jpg", "id": 7, "frame_id": 7, "is_labeled": True}
        ],
        "annotations": [
            {"keypoints": kp17, "track_id": track_id, "image_id": 7, "bbox": [0, 0, 50, 80]}
        ],
    }


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_loaders_reject_non_finite_ground_truth(tmp_path, bad):
    kp = [10.0, 20.0, 1] * 17
    kp[3 * 5] = bad  # left_shoulder x
    path = tmp_path / "vid.json"
    path.write_text(json.dumps(_official_video(kp)))  # json writes NaN / Infinity literals
    with pytest.raises(PosetrackFormatError, match=r"vid\.json.*frame 0.*track_id 3.*finite"):
        load_posetrack(path, tmp_path)

    # 2017 layout
    point = {"id": [13], "x": [bad], "y": [5.0]}
    rect = {"track_id": [4], "annopoints": [{"point": [point]}]}
    pt17 = tmp_path / "pt17" / "000001_mpii_test.json"
    pt17.parent.mkdir()
    pt17.write_text(json.dumps({"annolist": [{"image": [{"name": "a.jpg"}], "annorect": [rect]}]}))
    with pytest.raises(PosetrackFormatError, match=r"000001_mpii_test\.json.*frame 0.*track_id 4"):
        load_posetrack(pt17.parent, tmp_path, "2017")

    # COCO
    coco = {
        "images": [{"id": 9, "file_name": "x.jpg", "height": 100, "width": 100}],
        "annotations": [{"id": 5, "image_id": 9, "bbox": [0, 0, 9, 9], "keypoints": kp}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(PosetrackFormatError, match=r"coco\.json.*image 9.*person 5.*finite"):
        load_coco_keypoints(tmp_path / "coco.json", tmp_path)


def test_oks_ap_never_matches_a_non_finite_ground_truth_joint():
    """A ground-truth person with one NaN joint and a prediction 150 px off every joint:
    pycocotools' OKS is NaN there, and NaN < threshold is False, so it used to count as a
    match at every threshold (AP 100). It is no match: AP 0."""
    xy = np.stack([np.arange(15) * 10.0 + 100, np.arange(15) * 5.0 + 100], 1)
    gt_kp = np.concatenate([xy, np.ones((15, 1))], 1)
    gt_kp[4, 0] = np.nan
    person = {"keypoints": gt_kp.reshape(-1).tolist(), "bbox": [100, 100, 150, 80], "area": 12000}
    pred = np.concatenate([xy + 150.0, np.ones((15, 1))], 1)
    dets = [{"image_id": 1, "keypoints": pred, "score": 0.9}]
    res = coco_oks_ap([{"image_id": 1, "persons": [person]}], dets, SIGMAS)
    assert res["AP_oks"] == 0.0 and res["AR_oks"] == 0.0


def test_oks_ap_warns_about_non_finite_predictions(caplog):
    xy = np.stack([np.arange(15) * 10.0 + 100, np.arange(15) * 5.0 + 100], 1)
    person = {"keypoints": np.concatenate([xy, np.ones((15, 1))], 1).reshape(-1).tolist(),
              "bbox": [100, 100, 150, 80], "area": 12000}  # fmt: skip
    good = np.concatenate([xy, np.ones((15, 1))], 1)
    bad = good.copy()
    bad[2, :2] = np.nan
    dets = [{"image_id": 1, "keypoints": good, "score": 0.9},
            {"image_id": 1, "keypoints": bad, "score": float("nan")}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="vpose_d2.evaluation.coco_oks"):
        res = coco_oks_ap([{"image_id": 1, "persons": [person]}], dets, SIGMAS)
    assert res["AP_oks"] == pytest.approx(100.0)
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "1 joint(s) with non-finite coordinates" in warnings[0]
    assert "1 non-finite score" in warnings[0]


# ------------------------------------------------------------------------------------------
# 2, 3. Truncated frames and frames whose size differs from the annotation's
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard") / "set"
    return make_synthetic_posetrack(
        root, num_train_videos=1, num_val_videos=0, frames_per_video=3, size=64, max_persons=1,
        min_person_height=30, max_person_height=50, occluder_prob=0, blur_prob=0, clutter=2,
    )  # fmt: skip


def _mapper():
    return ClipDatasetMapper(
        False, augmentations=[], offsets=[-1, 1], keypoint_names=list(POSETRACK.names)
    )


def _video(root: Path):
    (rec,) = load_posetrack(root / "annotations" / "train", root)
    return rec


def test_truncated_jpeg_names_file_video_and_frame(tiny_set, tmp_path):
    rec = _video(tiny_set)
    frame = Path(rec["frames"][2]["file_name"])
    data = frame.read_bytes()
    bad = tmp_path / "000002.jpg"
    bad.write_bytes(data[: len(data) // 2])
    assert cv2.imread(str(bad)) is not None  # OpenCV decodes it (grey lower half)
    rec = copy.deepcopy(rec)
    rec["frames"][2]["file_name"] = str(bad)
    mapper = _mapper()
    mapper({"video": rec, "key": 0})  # frames 0 and 1 only: fine
    with pytest.raises(OSError) as err:
        mapper({"video": rec, "key": 1})
    msg = str(err.value)
    assert str(bad) in msg and rec["video_id"] in msg and "frame 2" in msg
    assert "truncated" in msg

    # Bytes after the end marker (some cameras append data) are not a truncation.
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + b"\x00trailer" * 8)
    rec["frames"][2]["file_name"] = str(padded)
    clip = mapper({"video": rec, "key": 1})
    assert clip["image"].shape[0] == 3


def test_frame_size_must_match_the_annotation(tiny_set, tmp_path):
    rec = copy.deepcopy(_video(tiny_set))
    assert (rec["height"], rec["width"]) == (64, 64)
    mapper = _mapper()
    mapper({"video": rec, "key": 1})
    # Every frame of the video resized: consistent within the clip, not with the annotation.
    for i, fr in enumerate(rec["frames"]):
        img = cv2.imread(fr["file_name"])
        fr["file_name"] = str(tmp_path / f"{i:06d}.jpg")
        cv2.imwrite(fr["file_name"], cv2.resize(img, (32, 48)))
    with pytest.raises(ValueError) as err:
        mapper({"video": rec, "key": 1})
    msg = str(err.value)
    assert rec["frames"][0]["file_name"] in msg and rec["video_id"] in msg
    assert "32x48" in msg and "64x64" in msg


# ------------------------------------------------------------------------------------------
# 5. A DATASETS.SYNTHETIC_ROOT that does not exist
# ------------------------------------------------------------------------------------------
def test_missing_synthetic_root_fails_naming_path_and_command(tmp_path):
    typo = tmp_path / "synthetic_posetrakc"
    cfg = get_vpose_cfg()
    cfg.DATASETS.SYNTHETIC_ROOT = str(typo)
    try:
        register_from_cfg(cfg)
        with pytest.raises(FileNotFoundError) as err:
            DatasetCatalog.get("synthetic_posetrack_val")
        msg = str(err.value)
        assert str(typo) in msg and "tools/make_synthetic_posetrack.py --root" in msg
        assert "VPOSE_DATASETS" not in msg
        assert not typo.exists(), "nothing may be generated unasked"
    finally:
        register_synthetic_posetrack(DEFAULT_SYNTHETIC_ROOT)
