"""COCOKeypointEvaluator on the real COCO fixture: ground truth scores 100, noise scores less."""

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Instances

from vpose_d2.data.datasets.coco import register_coco_keypoints
from vpose_d2.evaluation.coco_evaluator import COCOKeypointEvaluator


def _run(name: str, noise_px: float) -> dict:
    evaluator = COCOKeypointEvaluator(name, distributed=False)
    evaluator.reset()
    rng = np.random.default_rng(0)
    for rec in DatasetCatalog.get(name):
        fr = rec["frames"][0]
        kpts = [np.asarray(p["keypoints"], dtype=np.float32).reshape(-1, 3) for p in fr["persons"]]
        kpts = [k for k in kpts if (k[:, 2] > 0).any()]
        inst = Instances((rec["height"], rec["width"]))
        pred = np.stack(kpts) if kpts else np.zeros((0, 17, 3), np.float32)
        pred = pred.copy()
        pred[..., :2] += rng.normal(0, noise_px, pred[..., :2].shape) if noise_px else 0
        pred[..., 2] = 1.0
        inst.pred_keypoints = torch.from_numpy(pred)
        inst.scores = torch.ones(len(pred))
        evaluator.process([{"video_id": rec["video_id"], "key_frame_id": 0}], [{"instances": inst}])
    return evaluator.evaluate()["keypoints"]


def test_ground_truth_scores_100_and_noise_less(shared_data):
    coco = shared_data / "coco"
    register_coco_keypoints("test_coco_eval_fixture", coco / "test_coco.json", coco)
    exact = _run("test_coco_eval_fixture", 0.0)
    assert abs(exact["AP_oks"] - 100.0) < 1e-6, exact
    noisy = _run("test_coco_eval_fixture", 12.0)
    assert noisy["AP_oks"] < 90.0, noisy
