"""Detectron2 ``DatasetEvaluator`` for PoseTrack-format datasets.

Collects the key-frame predictions of every clip, writes official prediction files under
``output_dir/posetrack_predictions`` (or a temporary folder), scores them against the
dataset's ``gt_dir`` with the official protocol (:mod:`.posetrack`) and, optionally, with
COCO OKS AP (:mod:`.coco_oks`).

Tracking (``track=True``): with a ``tracker`` (:mod:`vpose_d2.tracking`, built from
``MODEL.TRACKER.*`` by the trainer), once the predictions of all processes are gathered (the
test loader splits the key frames into contiguous chunks, one per process, so a video can be
split across processes) the tracker runs over each video's predicted frames in frame order,
``reset()`` between videos. The test loader gives every labeled frame as key frame (PoseTrack
val: every 4th frame), so the tracker links the labeled frames, which are the frames MOTA is
computed on. Persons the tracker leaves untracked (score below ``MODEL.TRACKER.MIN_SCORE``,
id -1) are scored for AP but not for MOTA, which has no score (each would be a false positive
in every frame). Hence two sets of files:

* ``posetrack_predictions/``: every person, the tracked ones with their track ids (the others
  with ids unused in their frame): the AP table is computed from these, unchanged by
  tracking;
* ``posetrack_predictions_tracked/``: the tracked persons only, with their track ids: MOTA,
  MOTP, precision, recall (official protocol: ``python -m vpose_d2.evaluation.posetrack GT
  posetrack_predictions_tracked --track`` gives the same).

Without a tracker, ``track=True`` scores the model's own ``pred_track_ids`` in the one set.

Returned (EvalHook-friendly, flat floats)::

    {"posetrack": {"mAP", "Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle",
                   "Total", "AP_<joint>" x 15,
                   ["MOTA", "MOTP", "Precision", "Recall", "IDSW", "MOTA_<column>" x 8],
                   ["AP_oks", "AP50_oks", "AP75_oks", "APm_oks", "APl_oks", "AR_oks", ...]}}

``IDSW`` is the number of identity switches summed over the 15 joints (the protocol counts
per joint).
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
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Instances
from detectron2.utils import comm

from .coco_oks import coco_oks_ap
from .posetrack import JOINT_NAMES, PoseTrackEvalError, evaluate_posetrack, format_table
from .writer import write_posetrack_predictions

__all__ = ["PoseTrackEvaluator"]

logger = logging.getLogger(__name__)

# Per-frame predictions as gathered: numpy arrays on CPU.
#   keypoints (N, K, 3), scores (N,), track_ids (N,) or None (the model's own),
#   embeds (M, E) or None with embed_rows (M,): the embeddings of the persons a tracker may
#   track (score >= its min_score), the only ones it reads; the others are not kept.
_Frame = Dict[str, Any]
_EMBED_FIELD = "pred_instance_embeds"


class PoseTrackEvaluator(DatasetEvaluator):
    """PoseTrack mAP (and MOTA) with the official protocol, plus COCO OKS AP.

    Reads, per input, ``video_id`` and ``key_frame_id`` (0-based frame index in the video's
    record) and, per output, ``instances`` with ``pred_keypoints`` (N, K, 3) [x, y, score] in
    original pixels, ``scores`` (N,) and optionally ``pred_track_ids`` (N,) and
    ``pred_instance_embeds`` (N, E) (for an embedding tracker).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        track: bool = False,
        coco_oks_ap: bool = True,
        tracker: Optional[Any] = None,
    ) -> None:
        """
        Args:
            dataset_name: a registered PoseTrack-format dataset (metadata ``gt_dir``).
            output_dir: where ``posetrack_predictions/`` (and ``posetrack_predictions_tracked/``)
                and ``posetrack_results.json`` go; None writes the prediction files to a
                temporary folder.
            distributed: gather predictions from all processes to the main one.
            track: also score tracking (MOTA).
            coco_oks_ap: also report COCO OKS AP ("AP_oks", ...).
            tracker: with ``track``, assigns the track ids: a :mod:`vpose_d2.tracking` tracker
                (``reset()`` per video, ``tracker(instances)`` per frame, sets
                ``pred_track_ids``; id -1 = untracked), run on the main process over each
                video's frames in order. None scores the model's own ``pred_track_ids``.
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
        self._tracker = tracker if track else None
        self._warned_no_ids = False
        self.reset()

    def reset(self) -> None:
        # (video_id, key_frame_id) -> the frame's predictions (numpy, on CPU)
        self._predictions: Dict[Tuple[str, int], _Frame] = {}

    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]):
        for inp, out in zip(inputs, outputs):
            for key in ("video_id", "key_frame_id"):
                if key not in inp:
                    raise KeyError(f"PoseTrackEvaluator: model input without {key!r}")
            inst = out["instances"].to("cpu")
            n = len(inst)
            frame: _Frame = {
                "keypoints": inst.pred_keypoints.float().numpy() if n else np.zeros((0, 0, 3)),
                "scores": inst.scores.float().numpy() if n else np.zeros(0),
                "track_ids": None,
                "embeds": None,
            }
            if inst.has("pred_track_ids"):
                frame["track_ids"] = inst.pred_track_ids.numpy()
            elif self._track and self._tracker is None and n and not self._warned_no_ids:
                logger.warning(
                    "PoseTrackEvaluator(track=True) without a tracker: outputs have no "
                    "pred_track_ids; each frame gets ids 0..n-1, so MOTA will be meaningless"
                )
                self._warned_no_ids = True
            if self._tracker is not None and n and inst.has(_EMBED_FIELD):
                rows = np.nonzero(frame["scores"] >= self._tracker.min_score)[0]
                frame["embed_rows"] = rows
                frame["embeds"] = inst.get(_EMBED_FIELD).float().numpy()[rows]
            self._predictions[(str(inp["video_id"]), int(inp["key_frame_id"]))] = frame

    def _gather(self) -> Optional[Dict[Tuple[str, int], _Frame]]:
        if not self._distributed or comm.get_world_size() == 1:
            return self._predictions
        comm.synchronize()
        parts = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        merged: Dict[Tuple[str, int], _Frame] = {}
        for part in parts:
            merged.update(part)
        return merged

    def _run_tracker(
        self, predictions: Dict[Tuple[str, int], _Frame], by_video: Dict[str, Dict[str, Any]]
    ) -> None:
        """Set every frame's ``track_ids`` from the tracker, video by video, frames in order."""
        current = None
        for (vid, fidx), frame in sorted(predictions.items()):
            if vid != current:
                self._tracker.reset()
                current = vid
            rec = by_video[vid]
            kp = frame["keypoints"]
            inst = Instances((int(rec.get("height") or 1), int(rec.get("width") or 1)))
            inst.pred_keypoints = torch.from_numpy(np.ascontiguousarray(kp, dtype=np.float32))
            inst.scores = torch.from_numpy(np.ascontiguousarray(frame["scores"], np.float32))
            if frame["embeds"] is not None:
                emb = np.zeros((len(kp), frame["embeds"].shape[1]), dtype=np.float32)
                emb[frame["embed_rows"]] = frame["embeds"]
                inst.set(_EMBED_FIELD, torch.from_numpy(emb))
            try:
                ids = self._tracker(inst).pred_track_ids.numpy()
            except (KeyError, ValueError) as e:
                raise type(e)(f"video {vid!r}, frame {fidx}: {e}") from e
            frame["track_ids"] = ids

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        predictions = self._gather()
        if predictions is None:
            return {}
        if not predictions:
            logger.warning("PoseTrackEvaluator: no predictions were processed; every score is 0")
        records = DatasetCatalog.get(self._dataset_name)
        by_video = OrderedDict((str(r["video_id"]), r) for r in records)
        gt_dir = Path(self._meta.gt_dir)

        for vid, fidx in predictions:
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
        if self._tracker is not None:
            self._run_tracker(predictions, by_video)

        # video -> image id -> persons: every person (AP) and the tracked ones (MOTA).
        nested: Dict[str, Dict[int, List[Dict[str, Any]]]] = {}
        tracked: Dict[str, Dict[int, List[Dict[str, Any]]]] = {}
        oks_dets = []
        for (vid, fidx), frame in sorted(predictions.items()):
            # Key by image id: the record's frame order need not be the file's image order.
            image_id = by_video[vid]["frames"][fidx]["image_id"]
            persons, kept = [], []
            tids = frame["track_ids"]
            for i in range(len(frame["scores"])):
                p = {"keypoints": frame["keypoints"][i], "score": float(frame["scores"][i])}
                if tids is not None and int(tids[i]) >= 0:
                    p["track_id"] = int(tids[i])
                    kept.append(p)
                persons.append(p)
                oks_dets.append({"image_id": image_id, **p})
            nested.setdefault(vid, {})[image_id] = persons
            tracked.setdefault(vid, {})[image_id] = kept

        base = Path(self._output_dir) if self._output_dir else None
        tmp = None
        if base is None:
            tmp = tempfile.TemporaryDirectory(prefix="posetrack_pred_")
            base = Path(tmp.name)
        version = str(getattr(self._meta, "posetrack_version", "2018"))
        gt_files = [gt_dir / f"{vid}.json" for vid in by_video]
        try:
            pred_dir = base / "posetrack_predictions"
            write_posetrack_predictions(
                pred_dir, gt_dir, nested, video_ids=list(by_video), frame_key="image_id"
            )
            own_ids = self._track and self._tracker is None
            res = evaluate_posetrack(gt_files, pred_dir, track=own_ids, version=version)
            if self._tracker is not None:
                track_dir = base / "posetrack_predictions_tracked"
                write_posetrack_predictions(
                    track_dir, gt_dir, tracked, video_ids=list(by_video), frame_key="image_id"
                )
                res_track = evaluate_posetrack(gt_files, track_dir, track=True, version=version)
                for key in ("MOTA", "MOTP", "Precision", "Recall", "MOTA_columns"):
                    res[key] = res_track[key]
                for key, v in res_track["per_joint"].items():
                    if key not in ("AP", "AP_precision", "AP_recall", "num_gt"):
                        res["per_joint"][key] = v
        finally:
            if tmp is not None:
                tmp.cleanup()
        logger.info(
            "PoseTrack evaluation of %s (%d videos, %d frames)%s:\n%s",
            self._dataset_name,
            res["num_videos"],
            res["num_frames"],
            (
                f"; MOT metrics of the persons scoring >= {self._tracker.min_score} "
                f"({type(self._tracker).__name__})"
                if self._tracker is not None
                else ""
            ),
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
            flat["IDSW"] = float(sum(res["per_joint"]["num_switches"].values()))
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
