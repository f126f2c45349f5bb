"""Detectron2 ``DatasetEvaluator`` for COCO person keypoints seen as one-frame clips.

Detectron2's ``COCOEvaluator`` does not fit the clip inputs (no top-level ``image_id``) and
its fast path needs ``detectron2._C``; this one scores the key-frame predictions with
:func:`.coco_oks.coco_oks_ap` (pycocotools' ``COCOeval``) against the dataset's records, with
the dataset's ``keypoint_oks_sigmas``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .coco_oks import coco_oks_ap

__all__ = ["COCOKeypointEvaluator"]

logger = logging.getLogger(__name__)


class COCOKeypointEvaluator(DatasetEvaluator):
    """COCO OKS AP/AR of key-frame predictions; returns ``{"keypoints": {"AP_oks", ...}}``.

    Reads, per input, ``video_id`` and ``key_frame_id`` and, per output, ``instances`` with
    ``pred_keypoints`` (N, K, 3) [x, y, score] in original pixels and ``scores`` (N,).
    """

    def __init__(self, dataset_name: str, distributed: bool = True) -> None:
        self._dataset_name = dataset_name
        self._meta = MetadataCatalog.get(dataset_name)
        self._distributed = distributed
        sigmas = getattr(self._meta, "keypoint_oks_sigmas", None)
        if not sigmas:
            raise ValueError(
                f"COCOKeypointEvaluator: dataset {dataset_name!r} has no metadata "
                "'keypoint_oks_sigmas'"
            )
        self._sigmas = list(sigmas)
        self.reset()

    def reset(self) -> None:
        self._predictions: List[Dict[str, Any]] = []

    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            for i in range(len(inst)):
                self._predictions.append(
                    {
                        "video_id": str(inp["video_id"]),
                        "key_frame_id": int(inp["key_frame_id"]),
                        "keypoints": inst.pred_keypoints[i].float().numpy(),
                        "score": float(inst.scores[i]),
                    }
                )

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        predictions = self._predictions
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            parts = comm.gather(predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = [p for part in parts for p in part]
        records = {str(r["video_id"]): r for r in DatasetCatalog.get(self._dataset_name)}
        gt_frames = [fr for r in records.values() for fr in r["frames"] if fr["persons"]]
        dets = []
        for p in predictions:
            rec = records.get(p["video_id"])
            if rec is None:
                raise KeyError(
                    f"COCOKeypointEvaluator: prediction for {p['video_id']!r}, which dataset "
                    f"{self._dataset_name!r} does not have"
                )
            image_id = rec["frames"][p["key_frame_id"]]["image_id"]
            dets.append({"image_id": image_id, "keypoints": p["keypoints"], "score": p["score"]})
        res = coco_oks_ap(gt_frames, dets, self._sigmas)
        logger.info(
            "COCO OKS keypoint AP on %s: %s",
            self._dataset_name,
            ", ".join(f"{k} {v:.1f}" for k, v in res.items()),
        )
        return {"keypoints": res}
