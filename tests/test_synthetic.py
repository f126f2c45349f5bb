"""The synthetic PoseTrack generator: format, determinism, labels, the CLI."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import json
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from script_loader import load_script

from vpose_d2.data.datasets import load_posetrack, make_synthetic_posetrack
from vpose_d2.data.datasets.synthetic import SyntheticPosetrackConfig, register_synthetic_posetrack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFICIAL = DATA / "posetrack18" / "annotations" / "val" / "012834_mpii_test.json"
TINY = dict(
    num_train_videos=2, num_val_videos=1, frames_per_video=9, size=96, max_persons=3,
    min_person_height=30, max_person_height=80, occluder_prob=1.0, ignore_region_prob=1.0,
)  # fmt: skip


def _files(root: Path):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic_posetrack(tmp_path_factory.mktemp("syn") / "a", seed=3, **TINY)


def test_determinism(tiny, tmp_path):
    same = make_synthetic_posetrack(tmp_path / "b", seed=3, **TINY)
    a, b = _files(tiny), _files(same)
    assert a.keys() == b.keys() and len(a) == 3 + 3 * 9 + 2  # jsons, frames, blur list, marker
    assert all(a[k] == b[k] for k in a)  # identical json and JPEG bytes
    other = _files(make_synthetic_posetrack(tmp_path / "c", seed=4, **TINY))
    jpgs = [k for k in a if k.suffix == ".jpg"]
    assert any(a[k] != other[k] for k in jpgs)
    # an unknown non-empty folder is never overwritten
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        make_synthetic_posetrack(tmp_path / "user", **TINY)


def test_format_matches_official_files(tiny):
    files = sorted((tiny / "annotations").glob("*/*.json"))  # not the blurred-frame listing
    assert [f.parent.name for f in files] == ["train", "train", "val"]
    official = json.loads(OFFICIAL.read_text()) if OFFICIAL.is_file() else None
    for f in files:
        data = json.loads(f.read_text())
        if official is not None:
            assert data["categories"] == official["categories"]
            assert set(data["images"][0]) == set(official["images"][0]) - {"mask_file"}
            assert set(data["annotations"][0]) == set(official["annotations"][0])
        split = f.parent.name
        labeled = [im["is_labeled"] for im in data["images"]]
        assert labeled == ([True] * 9 if split == "train" else [i % 4 == 0 for i in range(9)])
        for im in data["images"]:
            assert (tiny / im["file_name"]).is_file()
            assert im["file_name"] == f"images/{split}/{f.stem}/{im['frame_id'] % 10000:06d}.jpg"
            if im["is_labeled"]:
                assert len(im["ignore_regions_x"]) == 1 == len(im["ignore_regions_y"])
        ids = {im["id"] for im in data["images"] if im["is_labeled"]}
        for a in data["annotations"]:
            assert a["image_id"] in ids
            k = np.asarray(a["keypoints"]).reshape(17, 3)
            assert (k[3:5] == 0).all()  # ears
            inside = (k[:, 0] >= 0) & (k[:, 0] < 96) & (k[:, 1] >= 0) & (k[:, 1] < 96)
            assert (k[k[:, 2] > 0] >= 0).all() and inside[k[:, 2] > 0].all()
            assert (k[k[:, 2] == 0] == 0).all() and a["num_keypoints"] == (k[:, 2] > 0).sum()
            assert len(a["bbox_head"]) == 4 and a["bbox_head"][2] > 0


def test_loaders_read_it_unchanged(tiny):
    records = load_posetrack(tiny / "annotations" / "train", tiny, "2018")
    assert len(records) == 2
    for rec in records:
        assert len(rec["frames"]) == 9 and rec["height"] == 96
        counts = {len(f["persons"]) for f in rec["frames"]}
        assert 1 <= max(counts) <= 3
        img = cv2.imread(rec["frames"][0]["file_name"])
        assert img.shape == (96, 96, 3)
    register_synthetic_posetrack(tiny, name_prefix="test_syn")
    assert len(DatasetCatalog.get("test_syn_val")) == 1


def test_cli_help_documents_every_knob():
    tool = load_script("tools/make_synthetic_posetrack.py")
    out = tool.get_parser().format_help()
    for f in fields(SyntheticPosetrackConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "--root" in out


def test_default_set_is_generated_on_first_load(tmp_path):
    root = tmp_path / "auto"
    register_synthetic_posetrack(root, name_prefix="auto_syn", generate_if_missing=True)
    assert not root.exists()  # registration is lazy
    val = DatasetCatalog.get("auto_syn_val")
    assert len(val) == SyntheticPosetrackConfig().num_val_videos
    assert (root / "SYNTHETIC_POSETRACK.json").is_file()
    assert val[0]["height"] == val[0]["width"] == 256
    assert not list(tmp_path.glob(".auto.tmp-*"))


def test_main_job_spots_a_set_made_with_other_parameters(tmp_path):
    """The main job rewrites a set an older checkout made: one with other values, and one
    whose marker lacks a parameter added since (it was made before that knob existed)."""
    job = load_script("tools/run_main_job.py")
    assert job.synthetic_set_differences(tmp_path) == ""  # no set at all
    meta = {f.name: f.default for f in fields(SyntheticPosetrackConfig) if f.name != "num_workers"}
    marker = tmp_path / "SYNTHETIC_POSETRACK.json"
    marker.write_text(json.dumps(meta))
    assert job.synthetic_set_differences(tmp_path) is None
    marker.write_text(json.dumps({**meta, "blur_prob": 0.15}))
    assert job.synthetic_set_differences(tmp_path) == "blur_prob 0.15 != 0.25"
    del meta["blur_strength"]
    marker.write_text(json.dumps(meta))
    assert job.synthetic_set_differences(tmp_path) == "blur_strength (absent) != 1.0"


def test_blur_strength_scales_the_blur(tmp_path):
    """Every frame blurred: strength 0 writes the same bytes as no blur at all (the draws do not
    depend on it), strength 1 removes most of the frames' fine detail (Laplacian variance)."""

    def sharpness(root: Path) -> float:
        frames = sorted((root / "images" / "val").rglob("*.jpg"))
        return float(
            np.mean([cv2.Laplacian(cv2.imread(str(f), 0), cv2.CV_64F).var() for f in frames])
        )

    args = dict(num_train_videos=0, num_val_videos=2, frames_per_video=4, size=96, seed=3)
    none = sharpness(make_synthetic_posetrack(tmp_path / "a", blur_prob=0.0, **args))
    zero = sharpness(
        make_synthetic_posetrack(tmp_path / "b", blur_prob=1.0, blur_strength=0, **args)
    )
    full = sharpness(make_synthetic_posetrack(tmp_path / "c", blur_prob=1.0, **args))
    assert zero == none
    assert full < 0.25 * none
