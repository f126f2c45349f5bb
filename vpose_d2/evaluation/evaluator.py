"""Detectron2 ``DatasetEvaluator`` for PoseTrack-format datasets.

Collects the key-frame predictions of every clip, writes official prediction files under
``output_dir/posetrack_predictions`` (or a temporary folder), scores them against the
dataset's ``gt_dir`` with the official protocol (:mod:`.posetrack`) and, optionally, with
COCO OKS AP (:mod:`.coco_oks`).

Returned (EvalHook-friendly, flat floats)::

    {"posetrack": {"mAP", "Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle",
                   "Total", "AP_<joint>" x 15,
                   ["MOTA", "MOTP", "Precision", "Recall", "MOTA_<column>" x 8],
                   ["AP_oks", "AP50_oks", "AP75_oks", "APm_oks", "APl_oks", "AR_oks", ...]}}
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .coco_oks import coco_oks_ap
from .posetrack import JOINT_NAMES, PoseTrackEvalError, evaluate_posetrack, format_table
from .writer import write_posetrack_predictions

__all__ = ["PoseTrackEvaluator"]

logger = logging.getLogger(__name__)


class PoseTrackEvaluator(DatasetEvaluator):
    """PoseTrack mAP (and MOTA) with the official protocol, plus COCO OKS AP.

    Reads, per input, ``video_id`` and ``key_frame_id`` (0-based frame index in the video's
    record) and, per output, ``instances`` with ``pred_keypoints`` (N, K, 3) [x, y, score] in
    original pixels, ``scores`` (N,) and optionally ``pred_track_ids`` (N,).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        track: bool = False,
        coco_oks_ap: bool = True,
    ) -> None:
        """
        Args:
            dataset_name: a registered PoseTrack-format dataset (metadata ``gt_dir``).
            output_dir: where ``posetrack_predictions/`` and ``posetrack_results.json`` go;
                None writes the prediction files to a temporary folder.
            distributed: gather predictions from all processes to the main one.
            track: also score tracking (MOTA); needs ``pred_track_ids``.
            coco_oks_ap: also report COCO OKS AP ("AP_oks", ...).
        """
        self._dataset_name = dataset_name
        self._meta = MetadataCatalog.get(dataset_name)
        if not getattr(self._meta, "gt_dir", None):
            raise ValueError(
                f"PoseTrackEvaluator: dataset {dataset_name!r} has no metadata 'gt_dir' (a "
                f"folder of official per-video json files); register it with "
                f"vpose_d2.data.datasets.register_posetrack"
            )
        self._output_dir = output_dir
        self._distributed = distributed
        self._track = track
        self._coco_oks_ap = coco_oks_ap
        self._warned_no_ids = False
        self.reset()

    def reset(self) -> None:
        # (video_id, key_frame_id) -> list of persons (numpy, on CPU)
        self._predictions: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}

    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]):
        for inp, out in zip(inputs, outputs):
            for key in ("video_id", "key_frame_id"):
                if key not in inp:
                    raise KeyError(f"PoseTrackEvaluator: model input without {key!r}")
            inst = out["instances"].to("cpu")
            kpts = inst.pred_keypoints.float().numpy() if len(inst) else np.zeros((0, 0, 3))
            scores = inst.scores.float().numpy() if len(inst) else np.zeros(0)
            tids = inst.pred_track_ids.numpy() if inst.has("pred_track_ids") else None
            if self._track and tids is None and len(inst) and not self._warned_no_ids:
                logger.warning(
                    "PoseTrackEvaluator(track=True): outputs have no pred_track_ids; each "
                    "frame gets ids 0..n-1, so MOTA will be meaningless"
                )
                self._warned_no_ids = True
            persons = []
            for i in range(len(inst)):
                p = {"keypoints": kpts[i], "score": float(scores[i])}
                if tids is not None:
                    p["track_id"] = int(tids[i])
                persons.append(p)
            self._predictions[(str(inp["video_id"]), int(inp["key_frame_id"]))] = persons

    def _gather(self) -> Optional[Dict[Tuple[str, int], List[Dict[str, Any]]]]:
        if not self._distributed or comm.get_world_size() == 1:
            return self._predictions
        comm.synchronize()
        parts = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        merged: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
        for part in parts:
            merged.update(part)
        return merged

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        predictions = self._gather()
        if predictions is None:
            return {}
        if not predictions:
            logger.warning("PoseTrackEvaluator: no predictions were processed; every score is 0")
        records = DatasetCatalog.get(self._dataset_name)
        by_video = OrderedDict((str(r["video_id"]), r) for r in records)
        gt_dir = Path(self._meta.gt_dir)

        nested: Dict[str, Dict[int, List[Dict[str, Any]]]] = {}
        oks_dets = []
        for (vid, fidx), persons in sorted(predictions.items()):
            rec = by_video.get(vid)
            if rec is None:
                raise PoseTrackEvalError(
                    f"PoseTrackEvaluator: prediction for video {vid!r}, which dataset "
                    f"{self._dataset_name!r} does not have"
                )
            if not 0 <= fidx < len(rec["frames"]):
                raise PoseTrackEvalError(
                    f"PoseTrackEvaluator: prediction for frame {fidx} of video {vid!r}, which "
                    f"has {len(rec['frames'])} frames"
                )
            # Key by image id: the record's frame order need not be the file's image order.
            image_id = rec["frames"][fidx]["image_id"]
            nested.setdefault(vid, {})[image_id] = persons
            for p in persons:
                oks_dets.append({"image_id": image_id, **p})

        if self._output_dir:
            pred_dir = Path(self._output_dir) / "posetrack_predictions"
            tmp = None
        else:
            tmp = tempfile.TemporaryDirectory(prefix="posetrack_pred_")
            pred_dir = Path(tmp.name)
        try:
            write_posetrack_predictions(
                pred_dir, gt_dir, nested, video_ids=list(by_video), frame_key="image_id"
            )
            gt_files = [gt_dir / f"{vid}.json" for vid in by_video]
            version = str(getattr(self._meta, "posetrack_version", "2018"))
            res = evaluate_posetrack(gt_files, pred_dir, track=self._track, version=version)
        finally:
            if tmp is not None:
                tmp.cleanup()
        logger.info(
            "PoseTrack evaluation of %s (%d videos, %d frames):\n%s",
            self._dataset_name,
            res["num_videos"],
            res["num_frames"],
            format_table(res),
        )

        flat: Dict[str, float] = {"mAP": float(res["Total"])}
        for key in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total"):
            flat[key] = float(res[key])
        for name in JOINT_NAMES:
            flat[f"AP_{name}"] = float(res["per_joint"]["AP"][name])
        if self._track:
            for key in ("MOTA", "MOTP", "Precision", "Recall"):
                flat[key] = float(res[key])
            for key, v in res["MOTA_columns"].items():
                flat[f"MOTA_{key}"] = float(v)
        if self._coco_oks_ap:
            gt_frames = [
                fr for r in records for fr in r["frames"] if fr["is_labeled"] and fr["persons"]
            ]
            sigmas = getattr(self._meta, "keypoint_oks_sigmas", None)
            if not sigmas:
                logger.warning("no keypoint_oks_sigmas in metadata; COCO OKS AP skipped")
            else:
                flat.update(coco_oks_ap(gt_frames, oks_dets, sigmas))
        if self._output_dir:
            out = Path(self._output_dir) / "posetrack_results.json"
            safe = {k: (v if math.isfinite(v) else None) for k, v in flat.items()}
            out.write_text(json.dumps(safe, indent=2))
        return {"posetrack": flat}
