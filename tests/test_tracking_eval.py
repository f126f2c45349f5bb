"""Tracking in PoseTrackEvaluator: the pose tracker on ground-truth poses (ids removed, persons
shuffled) scored with the official protocol, untracked persons, and a 2-process evaluation."""

import vpose_d2  # noqa: F401  isort: skip  (compat must run before detectron2)

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Instances
from detectron2.utils import comm

from vpose_d2.config import get_vpose_cfg
from vpose_d2.data.datasets import register_posetrack
from vpose_d2.engine import launch
from vpose_d2.evaluation import PoseTrackEvaluator, evaluate_posetrack
from vpose_d2.tracking import build_tracker

# Small and fast (~3 s), with what makes tracking hard: 2-5 people per video who overlap,
# some 30 px tall, walking up to 3 px a frame; labeled every 4th frame, as PoseTrack val.
SYNTHETIC = dict(
    seed=7, num_train_videos=0, num_val_videos=4, frames_per_video=24, size=128, min_persons=2,
    max_persons=5, min_person_height=30, max_person_height=100,
)  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory):
    from vpose_d2.data.datasets.synthetic import make_synthetic_posetrack

    return make_synthetic_posetrack(tmp_path_factory.mktemp("track_syn") / "syn", **SYNTHETIC)


def _register(name: str, root: Path) -> str:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_posetrack(name, root / "annotations" / "val", root, version="2018")
    return name


def _tracker(**tracker_opts):
    cfg = get_vpose_cfg()  # MODEL.TRACKER.NAME "auto": the pose tracker without embeddings
    cfg.MODEL.VPOSE.NUM_KEYPOINTS = 15
    for k, v in tracker_opts.items():
        cfg.MODEL.TRACKER[k] = v
    return build_tracker(cfg)


def _ground_truth_io(records, junk: bool = False):
    """Model inputs/outputs for every labeled frame: the ground-truth poses without their
    track ids, in a random order per frame; absent joints unpredicted (NaN). With ``junk``,
    every frame also gets two low-score persons elsewhere."""
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    for rec in records:
        for fr in rec["frames"]:
            if not fr["is_labeled"]:
                continue
            persons = [p for p in fr["persons"] if np.any(np.asarray(p["keypoints"])[2::3] > 0)]
            kp = np.asarray([p["keypoints"] for p in persons], np.float32).reshape(-1, 15, 3)
            kp = kp[rng.permutation(len(kp))]
            vis = kp[..., 2] > 0
            kp[~vis, :2] = np.nan
            kp[..., 2] = np.where(vis, 0.9, 0.0)
            scores = np.full(len(kp), 0.9, np.float32)
            if junk:
                noise = rng.uniform(0, rec["width"], (2, 15, 3)).astype(np.float32)
                noise[..., 2] = 0.05
                kp = np.concatenate([kp, noise])
                scores = np.concatenate([scores, np.full(2, 0.1, np.float32)])
            inst = Instances((rec["height"], rec["width"]))
            inst.pred_keypoints = torch.from_numpy(kp)
            inst.scores = torch.from_numpy(scores)
            inputs.append({"video_id": rec["video_id"], "key_frame_id": fr["frame_index"]})
            outputs.append({"instances": inst})
    return inputs, outputs


def _evaluate(name, inputs, outputs, output_dir=None, tracker=None):
    ev = PoseTrackEvaluator(
        name, output_dir=output_dir, track=True, coco_oks_ap=False, tracker=tracker
    )
    ev.reset()
    ev.process(inputs, outputs)
    return ev.evaluate()


def test_pose_tracker_on_ground_truth_poses_official_mota(synthetic_val, tmp_path):
    name = _register("track_eval_syn_val", synthetic_val)
    records = DatasetCatalog.get(name)
    inputs, outputs = _ground_truth_io(records)
    res = _evaluate(name, inputs, outputs, str(tmp_path), _tracker())["posetrack"]
    assert res["mAP"] == pytest.approx(100.0)
    assert res["MOTA"] >= 95.0, res
    assert res["Precision"] == pytest.approx(100.0) and res["Recall"] == pytest.approx(100.0)
    # The files are what is scored: the official command line's computation gives the same.
    gt_dir = synthetic_val / "annotations" / "val"
    cli = evaluate_posetrack(gt_dir, tmp_path / "posetrack_predictions_tracked", track=True)
    assert cli["MOTA"] == pytest.approx(res["MOTA"])
    assert sum(cli["per_joint"]["num_switches"].values()) == res["IDSW"]
    # Without a tracker the shuffled persons get ids 0..n-1 per frame: MOTA collapses.
    untracked = _evaluate(name, inputs, outputs)["posetrack"]
    assert untracked["MOTA"] < 75.0 and untracked["IDSW"] > 10 * res["IDSW"] + 100


def test_untracked_persons_count_for_ap_not_for_mota(synthetic_val, tmp_path):
    name = _register("track_eval_syn_val_junk", synthetic_val)
    records = DatasetCatalog.get(name)
    clean = _evaluate(name, *_ground_truth_io(records), tracker=_tracker())["posetrack"]
    inputs, outputs = _ground_truth_io(records, junk=True)
    res = _evaluate(name, inputs, outputs, str(tmp_path), _tracker())["posetrack"]
    # Persons below MODEL.TRACKER.MIN_SCORE (0.3) are not tracked: MOTA as without them ...
    for key in ("MOTA", "MOTP", "Precision", "Recall", "IDSW"):
        assert res[key] == pytest.approx(clean[key]), key
    # ... but they are in the AP files (they rank last: AP is unchanged here).
    assert res["mAP"] == pytest.approx(100.0)
    vid = records[0]["video_id"]
    every = json.loads((tmp_path / "posetrack_predictions" / f"{vid}.json").read_text())
    tracked = json.loads((tmp_path / "posetrack_predictions_tracked" / f"{vid}.json").read_text())
    assert sum(a["score"] < 0.3 for a in every["annotations"]) == 2 * 6  # 6 labeled frames
    assert all(a["score"] >= 0.3 for a in tracked["annotations"])
    assert len(tracked["annotations"]) == len(every["annotations"]) - 12
    # The tracked file carries the tracker's ids: one id per ground-truth person.
    gt = json.loads((synthetic_val / "annotations" / "val" / f"{vid}.json").read_text())
    gt_ids = {a["track_id"] for a in gt["annotations"] if any(a["keypoints"][2::3])}
    assert len({a["track_id"] for a in tracked["annotations"]}) == len(gt_ids)


def _two_process_eval(root: str, out: str) -> None:
    name = _register("track_eval_syn_val_dist", Path(root))
    records = DatasetCatalog.get(name)
    inputs, outputs = _ground_truth_io(records)
    # As Detectron2's InferenceSampler, one contiguous chunk of the key frames per process;
    # the cut falls inside a video, as it does wherever a video straddles a chunk boundary.
    rank, world = comm.get_rank(), comm.get_world_size()
    cut = len(inputs) // 2 + 3
    lo, hi = (0, cut) if rank == 0 else (cut, len(inputs))
    ev = PoseTrackEvaluator(name, track=True, coco_oks_ap=False, tracker=_tracker())
    ev.reset()
    for i in range(lo, hi):
        ev.process(inputs[i : i + 1], outputs[i : i + 1])
    res = ev.evaluate()
    if comm.is_main_process():
        split = inputs[cut - 1]["video_id"] == inputs[cut]["video_id"]
        Path(out).write_text(json.dumps({"world": world, "split": split, **res["posetrack"]}))
    else:
        assert res == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) launch path")
def test_two_process_evaluation_gives_the_same_mota(synthetic_val, tmp_path):
    name = _register("track_eval_syn_val_single", synthetic_val)
    single = _evaluate(name, *_ground_truth_io(DatasetCatalog.get(name)), tracker=_tracker())
    out = tmp_path / "two.json"
    launch(_two_process_eval, 2, dist_url="auto", args=(str(synthetic_val), str(out)))
    two = json.loads(out.read_text())
    assert two["world"] == 2 and two["split"], "the chunks must split a video across processes"
    for key in ("mAP", "MOTA", "MOTP", "Precision", "Recall", "IDSW"):
        assert two[key] == pytest.approx(single["posetrack"][key]), key
