"""PoseTrack / COCO loaders on the real fixtures (``shared_data``), and their error messages."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vpose_d2.data.build import get_video_records
from vpose_d2.data.datasets import (
    PosetrackFormatError,
    ensure_gt_dir,
    load_posetrack,
    register_coco_keypoints,
    register_posetrack,
)
from vpose_d2.data.keypoints import official17_to_posetrack15

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PT18 = DATA / "posetrack18"
needs_data = pytest.mark.skipif(
    not (PT18 / "annotations" / "val").is_dir(),
    reason=f"real fixtures not found at {DATA} (the shared data folder beside the repo)",
)
PERSONS = {"003418_mpii_test": 1, "009473_mpii_test": 2, "012834_mpii_test": 11}


def _name(prefix: str) -> str:
    return f"test_{prefix}_{uuid.uuid4().hex[:8]}"


@needs_data
def test_posetrack18_folder_matches_official_files():
    name = _name("pt18")
    register_posetrack(name, PT18 / "annotations" / "val", PT18, "2018")
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "posetrack" and meta.posetrack_version == "2018"
    assert Path(meta.gt_dir) == PT18 / "annotations" / "val"
    assert len(meta.keypoint_names) == 15 == len(meta.keypoint_oks_sigmas)
    records = DatasetCatalog.get(name)
    assert {r["video_id"]: len(r["frames"][0]["persons"]) for r in records} == PERSONS
    for rec in records:
        official = json.loads(Path(rec["gt_file"]).read_text())
        frame = rec["frames"][0]
        assert Path(frame["file_name"]).is_file()
        assert frame["frame_index"] == 0 and frame["is_labeled"] is True
        assert frame["image_id"] == official["images"][0]["id"]
        assert rec["height"] == 1080 and rec["width"] == 1920
        assert len(frame["ignore_regions"]) == len(official["images"][0]["ignore_regions_x"])
        for p, a in zip(frame["persons"], official["annotations"]):
            k15 = official17_to_posetrack15(np.asarray(a["keypoints"], float).reshape(17, 3))
            np.testing.assert_allclose(np.asarray(p["keypoints"]).reshape(15, 3), k15)
            assert p["track_id"] == a["track_id"] and p["bbox_head"] == a["bbox_head"]
            assert p["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


@needs_data
def test_merged_file_and_its_gt_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VPOSE_CACHE", str(tmp_path / "cache"))
    name = _name("merged")
    merged = PT18 / "annotations" / "test_posetrack18_val.json"
    register_posetrack(name, merged, PT18, "2018")
    gt_dir = Path(MetadataCatalog.get(name).gt_dir)
    assert not gt_dir.exists()  # registration does not touch the disk
    records = DatasetCatalog.get(name)
    assert {r["video_id"]: len(r["frames"][0]["persons"]) for r in records} == PERSONS
    assert ensure_gt_dir(name) == gt_dir
    for vid in PERSONS:
        written = json.loads((gt_dir / f"{vid}.json").read_text())
        official = json.loads((PT18 / "annotations" / "val" / f"{vid}.json").read_text())
        assert [im["id"] for im in written["images"]] == [im["id"] for im in official["images"]]
        assert written["categories"][0]["keypoints"] == official["categories"][0]["keypoints"]
        got = sorted((a["track_id"], a["keypoints"]) for a in written["annotations"])
        want = sorted((a["track_id"], [float(v) for v in a["keypoints"]])
                      for a in official["annotations"])  # fmt: skip
        assert got == want


@needs_data
def test_posetrack17_format(tmp_path):
    """A 2017 file built from an official 2018 one loads to the same poses."""
    official = json.loads((PT18 / "annotations" / "val" / "009473_mpii_test.json").read_text())
    pt17_ids = {  # poseval joint ids
        "right_ankle": 0, "right_knee": 1, "right_hip": 2, "left_hip": 3, "left_knee": 4,
        "left_ankle": 5, "right_wrist": 6, "right_elbow": 7, "right_shoulder": 8,
        "left_shoulder": 9, "left_elbow": 10, "left_wrist": 11, "head_bottom": 12, "nose": 13,
        "head_top": 14,
    }  # fmt: skip
    names = official["categories"][0]["keypoints"]
    rects = []
    for a in official["annotations"]:
        k = np.asarray(a["keypoints"]).reshape(17, 3)
        pts = [
            {"id": [pt17_ids[n]], "x": [float(k[i, 0])], "y": [float(k[i, 1])], "is_visible": [1]}
            for i, n in enumerate(names)
            if k[i, 2] > 0
        ]
        x, y, w, h = a["bbox_head"]
        rects.append({"x1": [x], "y1": [y], "x2": [x + w], "y2": [y + h],
                      "track_id": [a["track_id"]], "annopoints": [{"point": pts}]})  # fmt: skip
    img = official["images"][0]
    frame = {
        "image": [{"name": "images/bonn/009473_mpii/00000001.jpg"}],
        "annorect": rects,
        "imgnum": [1],
        "is_labeled": [1],
        "ignore_regions": [
            {"point": [{"x": [x], "y": [y]} for x, y in zip(xs, ys)]}
            for xs, ys in zip(img["ignore_regions_x"], img["ignore_regions_y"])
        ],
    }
    unlabeled = {"image": [{"name": "images/bonn/009473_mpii/00000002.jpg"}], "annorect": []}
    ann_dir = tmp_path / "pt17"
    ann_dir.mkdir()
    (ann_dir / "009473_mpii_relpath_5sec_testsub.json").write_text(
        json.dumps({"annolist": [frame, unlabeled]})
    )
    (rec,) = load_posetrack(ann_dir, tmp_path, "2017")
    assert rec["video_id"] == "009473_mpii_relpath_5sec_testsub"
    assert [f["frame_index"] for f in rec["frames"]] == [0, 1]
    assert [f["is_labeled"] for f in rec["frames"]] == [True, False]
    assert rec["frames"][0]["file_name"].endswith("00000001.jpg")
    assert len(rec["frames"][0]["ignore_regions"]) == len(img["ignore_regions_x"])
    by_tid = {p["track_id"]: p for p in rec["frames"][0]["persons"]}
    for a in official["annotations"]:
        k15 = official17_to_posetrack15(np.asarray(a["keypoints"], float).reshape(17, 3))
        np.testing.assert_allclose(
            np.asarray(by_tid[a["track_id"]]["keypoints"]).reshape(15, 3), k15
        )
        np.testing.assert_allclose(by_tid[a["track_id"]]["bbox_head"], a["bbox_head"])


@needs_data
def test_coco_keypoints_as_one_frame_videos():
    coco = json.loads((DATA / "coco" / "test_coco.json").read_text())
    name, name15 = _name("coco"), _name("coco15")
    register_coco_keypoints(name, DATA / "coco" / "test_coco.json", DATA / "coco")
    register_coco_keypoints(name15, DATA / "coco" / "test_coco.json", DATA / "coco", "posetrack")
    assert MetadataCatalog.get(name).evaluator_type == "coco_keypoints"
    assert len(MetadataCatalog.get(name).keypoint_names) == 17
    assert len(MetadataCatalog.get(name15).keypoint_names) == 15
    records = DatasetCatalog.get(name)
    assert len(records) == len(coco["images"])
    for rec, im in zip(records, coco["images"]):
        assert len(rec["frames"]) == 1 and "gt_file" not in rec
        want = [a for a in coco["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        persons = rec["frames"][0]["persons"]
        assert len(persons) == len(want)
        assert all(len(p["keypoints"]) == 51 for p in persons)
        assert [p["track_id"] for p in persons] == list(range(len(want)))
    assert all(len(p["keypoints"]) == 45 for r in DatasetCatalog.get(name15)
               for p in r["frames"][0]["persons"])  # fmt: skip


def test_registration_is_lazy_and_missing_files_are_named(tmp_path):
    name = _name("missing")
    missing = tmp_path / "nowhere" / "annotations" / "val"
    register_posetrack(name, missing, tmp_path, "21")  # no disk access: no error
    with pytest.raises(FileNotFoundError, match=str(missing)):
        DatasetCatalog.get(name)
    # the predefined names exist
    for n in ("posetrack17_val", "posetrack18_train", "posetrack21_val", "synthetic_posetrack_val"):
        assert n in DatasetCatalog.list()
    with pytest.raises(KeyError, match=r"not_a_dataset.*posetrack18_val"):
        get_video_records(["not_a_dataset"])


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _minimal(kpts=None, track_ids=(0,)):
    kp = kpts if kpts is not None else [10.0, 10.0, 1] * 17
    return {
        "images": [{"file_name": "images/val/v/000000.jpg", "id": 7, "frame_id": 7,
                    "is_labeled": True}],  # fmt: skip
        "annotations": [
            {"keypoints": kp, "track_id": t, "image_id": 7, "bbox": [0, 0, 5, 5], "id": i}
            for i, t in enumerate(track_ids)
        ],
        "categories": [],
    }


def test_bad_annotation_files_name_file_and_frame(tmp_path):
    empty = _write(tmp_path / "empty.json", "")
    with pytest.raises(PosetrackFormatError, match="empty.json.*empty"):
        load_posetrack(empty, tmp_path)
    no_images = _write(tmp_path / "noimg.json", {"images": [], "annotations": []})
    with pytest.raises(PosetrackFormatError, match="noimg.json.*no images"):
        load_posetrack(no_images, tmp_path)
    bad_k = _write(tmp_path / "v.json", _minimal(kpts=[1.0] * 30))
    with pytest.raises(PosetrackFormatError, match=r"v.json.*frame 0.*30 keypoint values"):
        load_posetrack(bad_k, tmp_path)
    dup = _write(tmp_path / "v.json", _minimal(track_ids=(3, 3)))
    with pytest.raises(PosetrackFormatError, match=r"v.json.*frame 0.*duplicate track_id 3"):
        load_posetrack(dup, tmp_path)
    ok = _write(tmp_path / "v.json", _minimal(track_ids=(0, 1)))
    (rec,) = load_posetrack(ok, tmp_path)
    assert rec["video_id"] == "v" and len(rec["frames"][0]["persons"]) == 2


def test_posetrack21_joint_exists_iff_positive_coordinates(tmp_path):
    kp = [10.0, 12.0, 0] + [0.0, 5.0, 1] + [3.0, 4.0, 1] * 15  # nose flag 0, head_bottom x=0
    f = _write(tmp_path / "v.json", _minimal(kpts=kp))
    (r21,) = load_posetrack(f, tmp_path, "21")
    (r18,) = load_posetrack(f, tmp_path, "2018")
    v21 = np.asarray(r21["frames"][0]["persons"][0]["keypoints"]).reshape(15, 3)[:, 2]
    v18 = np.asarray(r18["frames"][0]["persons"][0]["keypoints"]).reshape(15, 3)[:, 2]
    assert v21[:2].tolist() == [1, 0] and v18[:2].tolist() == [0, 1]
