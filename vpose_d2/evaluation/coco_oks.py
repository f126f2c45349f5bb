"""COCO-style OKS keypoint AP (pycocotools) for any joint layout.

Used beside the PoseTrack table: same predictions, scored by object keypoint similarity with
the dataset's ``keypoint_oks_sigmas`` instead of PCKh. Built in memory, no files.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import math
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

__all__ = ["coco_oks_ap", "OKS_KEYS"]

logger = logging.getLogger(__name__)

# Names of COCOeval.stats[0..9] for keypoints, as returned (percent).
OKS_KEYS = (
    "AP_oks",
    "AP50_oks",
    "AP75_oks",
    "APm_oks",
    "APl_oks",
    "AR_oks",
    "AR50_oks",
    "AR75_oks",
    "ARm_oks",
    "ARl_oks",
)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


@functools.lru_cache(maxsize=None)
def _finite_oks_eval_class() -> type:
    # pycocotools is imported on first use only, as in coco_oks_ap.
    from pycocotools.cocoeval import COCOeval

    class FiniteOksEval(COCOeval):
        """COCOeval whose non-finite OKS is no match: pycocotools skips a pair when
        ``oks < threshold``, which is False for NaN, so a NaN OKS matched at every threshold."""

        def computeOks(self, imgId, catId):
            ious = super().computeOks(imgId, catId)
            if isinstance(ious, np.ndarray):
                ious = np.where(np.isfinite(ious), ious, 0.0)
            return ious

    return FiniteOksEval


def coco_oks_ap(
    gt_images: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    oks_sigmas: Sequence[float],
) -> Dict[str, float]:
    """COCO keypoint AP/AR (OKS) with pycocotools' ``COCOeval(iouType="keypoints")``.

    Args:
        gt_images: the frames to score, each ``{"image_id": int, "persons": [{"keypoints":
            K*3 floats (v > 0 annotated), "bbox": [x, y, w, h], "area": float}, ...]}``.
            Persons without annotated joints are ignored, as COCO does.
        predictions: ``{"image_id", "keypoints": (K, 3) [x, y, score], "score": float}``;
            those on images not in ``gt_images`` are dropped.
        oks_sigmas: K per-joint sigmas (metadata ``keypoint_oks_sigmas``).

    A non-finite OKS (a non-finite ground-truth joint or area) is no match. Non-finite
    predicted coordinates are placed at (0, 0) and non-finite scores ranked as 0; each kind
    is counted in one warning per call.

    Returns:
        dict over :data:`OKS_KEYS` in percent (NaN where COCOeval reports -1, e.g. no
        ground truth).
    """
    from pycocotools.coco import COCO

    sigmas = np.asarray(oks_sigmas, dtype=np.float64)
    k = len(sigmas)
    images, anns = [], []
    bad_gt: List[str] = []
    for fr in gt_images:
        images.append({"id": int(fr["image_id"])})
        for p in fr.get("persons", []):
            kp = _to_numpy(p["keypoints"]).reshape(-1)
            if kp.size != 3 * k:
                raise ValueError(
                    f"image {fr['image_id']}: ground-truth person with {kp.size // 3} joints, "
                    f"but {k} OKS sigmas"
                )
            kp = kp.reshape(k, 3).copy()
            kp[:, 2] = np.where(kp[:, 2] > 0, 2.0, 0.0)
            bbox = [float(v) for v in p.get("bbox", [0, 0, 0, 0])]
            area = float(p.get("area", bbox[2] * bbox[3]))
            if not (np.isfinite(kp[kp[:, 2] > 0, :2]).all() and math.isfinite(area)):
                bad_gt.append(f"image {fr['image_id']} track_id {p.get('track_id')}")
            if not area > 0:
                vis = kp[:, 2] > 0
                ext = np.ptp(kp[vis, :2], axis=0) if vis.any() else np.zeros(2)
                area = float(ext[0] * ext[1])
            anns.append(
                {
                    # COCOeval marks unmatched ground truth with id 0: ids must start at 1.
                    "id": len(anns) + 1,
                    "image_id": int(fr["image_id"]),
                    "category_id": 1,
                    "keypoints": kp.reshape(-1).tolist(),
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    if bad_gt:
        # The loaders refuse such files; this guards records built some other way.
        logger.warning(
            "COCO OKS AP: %d ground-truth person(s) with non-finite joints or area (%s%s): "
            "they can only be missed",
            len(bad_gt), ", ".join(bad_gt[:5]), ", ..." if len(bad_gt) > 5 else "",
        )  # fmt: skip
    nan = {key: math.nan for key in OKS_KEYS}
    if not any(a["num_keypoints"] > 0 for a in anns):
        logger.warning("COCO OKS AP: no annotated ground-truth person; returning NaN")
        return nan
    image_ids = {im["id"] for im in images}
    dets = []
    n_bad_dets = n_bad_joints = n_bad_scores = 0
    for d in predictions:
        if int(d["image_id"]) not in image_ids:
            continue
        kp = _to_numpy(d["keypoints"]).reshape(k, 3).copy()
        bad_xy = ~np.isfinite(kp[:, :2]).all(1)
        s = float(d.get("score", 0.0))
        n_bad_joints += int(bad_xy.sum())
        n_bad_scores += not math.isfinite(s)
        n_bad_dets += bool(bad_xy.any()) or not math.isfinite(s)
        kp[~np.isfinite(kp)] = 0.0
        dets.append(
            {
                "image_id": int(d["image_id"]),
                "category_id": 1,
                "keypoints": kp.reshape(-1).tolist(),
                "score": s if math.isfinite(s) else 0.0,
            }
        )
    if n_bad_dets:
        logger.warning(
            "COCO OKS AP: %d prediction(s) hold %d joint(s) with non-finite coordinates (placed "
            "at (0, 0): they never match) and %d non-finite score(s) (ranked as 0)",
            n_bad_dets, n_bad_joints, n_bad_scores,
        )  # fmt: skip
    if not dets:
        logger.warning("COCO OKS AP: no prediction on a scored image; AP is 0")
        return {key: 0.0 for key in OKS_KEYS}

    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": [str(i) for i in range(k)]}],
    }
    log = io.StringIO()
    # pycocotools prints progress and the summary table; keep them out of stdout.
    with contextlib.redirect_stdout(log):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = _finite_oks_eval_class()(coco_gt, coco_dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = sigmas
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("COCOeval output:\n%s", log.getvalue())
    return {key: (float(v) * 100.0 if v >= 0 else math.nan) for key, v in zip(OKS_KEYS, ev.stats)}
