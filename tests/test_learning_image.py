"""The image model genuinely learns: it overfits a few synthetic frames to PoseTrack mAP >= 90.

Random initialization, CPU, a few minutes: a tiny PETR (ResNet-18 + GroupNorm, 64 channels)
trained on 3 frames of one synthetic video (tools/make_synthetic_posetrack.py's generator),
then scored with the official PoseTrack protocol on the same frames.
"""

import logging
import os
import time
from pathlib import Path

import pytest

import vpose_d2  # noqa: F401  isort: skip
import cv2
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vpose_d2.config import get_vpose_cfg

REPO = Path(__file__).resolve().parents[1]
NUM_FRAMES = 3
SIZE = 128
ITERS = 250
LR = 4e-4
WARMUP = 30


def _inputs(dataset: str):
    video = DatasetCatalog.get(dataset)[0]
    inputs = []
    for i, frame in enumerate(video["frames"]):
        img = cv2.imread(frame["file_name"])
        assert img is not None, frame["file_name"]
        img = img[:, :, ::-1].copy()  # the config's INPUT.FORMAT is RGB
        h, w = img.shape[:2]
        persons = frame["persons"]
        inst = Instances((h, w))
        inst.gt_keypoints = torch.tensor(
            [p["keypoints"] for p in persons], dtype=torch.float32
        ).view(-1, 15, 3)
        boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh in (p["bbox"] for p in persons)]
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
        inst.gt_areas = torch.tensor([p["area"] for p in persons], dtype=torch.float32)
        inst.gt_classes = torch.zeros(len(persons), dtype=torch.int64)
        inputs.append(
            {
                "image": torch.from_numpy(img).permute(2, 0, 1).contiguous(),
                "instances": inst,
                "height": h,
                "width": w,
                "video_id": video["video_id"],
                "key_frame_id": i,
            }
        )
    return inputs


def _map(model, inputs, dataset: str) -> float:
    from vpose_d2.evaluation.evaluator import PoseTrackEvaluator

    evaluator = PoseTrackEvaluator(dataset, None, distributed=False, coco_oks_ap=False)
    evaluator.reset()
    model.eval()
    with torch.no_grad():
        for d in inputs:
            evaluator.process([d], model([d]))
    model.train()
    return evaluator.evaluate()["posetrack"]["mAP"]


@pytest.fixture
def one_thread():
    # One intra-op thread: on a shared 2-core runner two threads spin against each other and
    # the test slows down several fold. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_image_model_overfits_synthetic_frames(tmp_path, one_thread):
    synthetic = pytest.importorskip("vpose_d2.data.datasets.synthetic")
    pytest.importorskip("vpose_d2.evaluation.evaluator")
    root = synthetic.make_synthetic_posetrack(
        tmp_path / "synthetic",
        seed=0,
        num_train_videos=1,
        num_val_videos=0,
        frames_per_video=NUM_FRAMES,
        size=SIZE,
        min_persons=1,
        max_persons=3,
        min_person_height=0.4 * SIZE,
        max_person_height=0.8 * SIZE,
        occluder_prob=0.0,
        blur_prob=0.0,
        ignore_region_prob=0.0,
    )
    prefix = f"_learn_image_{os.getpid()}"
    synthetic.register_synthetic_posetrack(root, prefix)
    dataset = f"{prefix}_train"

    torch.manual_seed(0)
    cfg = get_vpose_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "quick" / "petr_synthetic.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = (dataset,)
    model = build_model(cfg)
    inputs = _inputs(dataset)
    assert sum(len(d["instances"]) for d in inputs) > 0

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=1e-4)
    start = time.perf_counter()
    first = None
    with EventStorage():
        model.train()
        for it in range(ITERS):
            for group in opt.param_groups:
                group["lr"] = LR * min(1.0, (it + 1) / WARMUP)
            losses = model(inputs)
            loss = sum(losses.values())
            assert torch.isfinite(loss), {k: v.item() for k, v in losses.items()}
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    elapsed = time.perf_counter() - start
    logging.getLogger(__name__).info("trained %d iterations in %.0f s", ITERS, elapsed)
    assert loss.item() < first - 5.0
    mean_ap = _map(model, inputs, dataset)
    logging.getLogger(__name__).info("PoseTrack mAP %.1f", mean_ap)
    assert mean_ap >= 90.0, f"mAP {mean_ap:.1f} after {ITERS} iterations ({elapsed:.0f} s)"
