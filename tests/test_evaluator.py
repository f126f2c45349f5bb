"""PoseTrackEvaluator end to end (fake model outputs made from the ground truth) and COCO OKS AP."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Instances

from vpose_d2.evaluation import PoseTrackEvalError, PoseTrackEvaluator, coco_oks_ap

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURE_ROOT = SHARED / "posetrack18"
FIXTURE_VAL = FIXTURE_ROOT / "annotations" / "val"

needs_fixtures = pytest.mark.skipif(
    not FIXTURE_VAL.is_dir(),
    reason=f"real PoseTrack18 fixtures not found at {FIXTURE_VAL}",
)


def _register(name: str, ann: Path, root: Path) -> None:
    from vpose_d2.data.datasets import register_posetrack

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_posetrack(name, ann, root, version="2018")


def _fake_io(records, with_ids=True, jitter=0.0):
    """Model inputs/outputs for every labeled frame, predictions = the ground truth."""
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    for rec in records:
        for fr in rec["frames"]:
            if not fr["is_labeled"]:
                continue
            persons = [p for p in fr["persons"] if np.any(np.asarray(p["keypoints"])[2::3] > 0)]
            kp = np.asarray([p["keypoints"] for p in persons], np.float32).reshape(-1, 15, 3)
            kp[..., :2] += jitter * rng.standard_normal(kp[..., :2].shape)
            kp[..., 2] = np.where(kp[..., 2] > 0, 0.9, 0.01)  # joint scores
            inst = Instances((rec["height"] or 1080, rec["width"] or 1920))
            inst.pred_keypoints = torch.from_numpy(kp)
            inst.scores = torch.full((len(persons),), 0.9)
            if with_ids:
                inst.pred_track_ids = torch.tensor([p["track_id"] for p in persons])
            inputs.append({"video_id": rec["video_id"], "key_frame_id": fr["frame_index"]})
            outputs.append({"instances": inst})
    return inputs, outputs


@needs_fixtures
def test_evaluator_on_fixtures_gives_100(tmp_path):
    _register("test_eval_pt18_fixtures", FIXTURE_VAL, FIXTURE_ROOT)
    records = DatasetCatalog.get("test_eval_pt18_fixtures")
    inputs, outputs = _fake_io(records)
    ev = PoseTrackEvaluator("test_eval_pt18_fixtures", output_dir=str(tmp_path))
    ev.reset()
    for i in range(len(inputs)):  # one clip per call, as a test loader with batch 1
        ev.process(inputs[i : i + 1], outputs[i : i + 1])
    res = ev.evaluate()["posetrack"]
    assert res["mAP"] == pytest.approx(100.0) and res["Total"] == pytest.approx(100.0)
    assert res["AP_nose"] == pytest.approx(100.0)
    # COCO OKS AP on exact predictions: every OKS is 1.
    assert res["AP_oks"] == pytest.approx(100.0) and res["AP50_oks"] == pytest.approx(100.0)
    assert all(isinstance(v, float) for v in res.values())
    written = sorted((tmp_path / "posetrack_predictions").glob("*.json"))
    assert [p.name for p in written] == sorted(p.name for p in FIXTURE_VAL.glob("*.json"))
    saved = json.loads((tmp_path / "posetrack_results.json").read_text())
    assert saved["mAP"] == pytest.approx(100.0)


@needs_fixtures
def test_evaluator_lower_with_noise_and_missing_frames(tmp_path):
    _register("test_eval_pt18_fixtures_b", FIXTURE_VAL, FIXTURE_ROOT)
    records = DatasetCatalog.get("test_eval_pt18_fixtures_b")
    inputs, outputs = _fake_io(records, jitter=25.0)
    ev = PoseTrackEvaluator("test_eval_pt18_fixtures_b", output_dir=None, coco_oks_ap=True)
    ev.process(inputs, outputs)
    res = ev.evaluate()["posetrack"]
    assert 0.0 < res["mAP"] < 100.0
    assert 0.0 < res["AP_oks"] < 100.0
    # A video the model never saw gets an empty prediction file: its persons are all missed.
    ev.reset()
    keep = [i for i, x in enumerate(inputs) if x["video_id"] != "012834_mpii_test"]
    _, exact = _fake_io(records)
    ev.process([inputs[i] for i in keep], [exact[i] for i in keep])
    res = ev.evaluate()["posetrack"]
    assert 0.0 < res["mAP"] < 100.0
    # Unknown video -> clear error.
    ev.reset()
    ev.process([{"video_id": "nope", "key_frame_id": 0}], [outputs[0]])
    with pytest.raises(PoseTrackEvalError, match="nope"):
        ev.evaluate()


def test_evaluator_tracking_on_synthetic(tmp_path):
    synthetic = pytest.importorskip("vpose_d2.data.datasets.synthetic")
    root = synthetic.make_synthetic_posetrack(
        tmp_path / "syn", num_train_videos=0, num_val_videos=2, frames_per_video=9, size=96,
        min_person_height=30, max_person_height=60, max_persons=3,
    )  # fmt: skip
    _register("test_eval_synthetic_val", root / "annotations" / "val", root)
    records = DatasetCatalog.get("test_eval_synthetic_val")
    inputs, outputs = _fake_io(records)
    ev = PoseTrackEvaluator("test_eval_synthetic_val", track=True, coco_oks_ap=False)
    ev.process(inputs, outputs)
    res = ev.evaluate()["posetrack"]
    assert res["mAP"] == pytest.approx(100.0)
    assert res["MOTA"] == pytest.approx(100.0) and res["MOTA_Total"] == pytest.approx(100.0)
    assert "AP_oks" not in res


def test_evaluator_needs_gt_dir():
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("test_eval_no_gt_dir").set(evaluator_type="coco_keypoints")
    with pytest.raises(ValueError, match="test_eval_no_gt_dir.*gt_dir"):
        PoseTrackEvaluator("test_eval_no_gt_dir")


def test_coco_oks_ap_hand_case():
    sig = [0.1] * 3
    gt = [
        {"image_id": 1, "persons": [
            {"keypoints": [10, 10, 1, 20, 20, 1, 30, 30, 1], "bbox": [0, 0, 100, 100],
             "area": 10000.0},
            {"keypoints": [0, 0, 0] * 3, "bbox": [0, 0, 10, 10], "area": 100.0},  # ignored
        ]},
    ]  # fmt: skip
    exact = {"image_id": 1, "keypoints": [[10, 10, 1], [20, 20, 1], [30, 30, 1]], "score": 0.9}
    res = coco_oks_ap(gt, [exact], sig)
    assert res["AP_oks"] == pytest.approx(100.0) and res["APl_oks"] == pytest.approx(100.0)
    assert math.isnan(res["APm_oks"])  # no medium ground truth -> COCOeval's -1 -> NaN
    # A far-off prediction scored higher: ranked first as FP; the exact one is then a TP at
    # precision 1/2, and COCO's 101-point interpolated precision is 0.5 everywhere -> 50.
    far = {"image_id": 1, "keypoints": [[90, 90, 1]] * 3, "score": 0.95}
    assert coco_oks_ap(gt, [far, exact], sig)["AP_oks"] == pytest.approx(50.0)
    # Predictions on images without ground truth are dropped.
    other = {"image_id": 2, "keypoints": [[90, 90, 1]] * 3, "score": 0.99}
    assert coco_oks_ap(gt, [exact, other], sig)["AP_oks"] == pytest.approx(100.0)
