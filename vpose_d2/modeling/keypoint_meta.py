"""K and the OKS sigmas a model is built for."""

from typing import List, Tuple

from detectron2.data import MetadataCatalog

__all__ = ["resolve_keypoint_meta"]


def resolve_keypoint_meta(cfg) -> Tuple[int, List[float]]:
    """K and the OKS sigmas from the config, else the first training dataset's metadata.

    Returns:
        (K, K OKS sigmas).
    """
    from vpose_d2.data.keypoints import COCO, POSETRACK

    k = cfg.MODEL.VPOSE.NUM_KEYPOINTS
    sigmas = list(cfg.MODEL.VPOSE.OKS_SIGMAS)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if len(cfg.DATASETS.TRAIN) else None
    if k == 0:
        names = getattr(meta, "keypoint_names", None) if meta is not None else None
        if not names:
            raise ValueError(
                "MODEL.VPOSE.NUM_KEYPOINTS is 0 and the metadata of DATASETS.TRAIN[0] "
                f"({cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else 'none'}) has no "
                "keypoint_names: set one of them"
            )
        k = len(names)
    if not sigmas and meta is not None:
        sigmas = list(getattr(meta, "keypoint_oks_sigmas", None) or [])
    if not sigmas:
        for layout in (POSETRACK, COCO):
            if layout.num_keypoints == k:
                sigmas = list(layout.oks_sigmas)
                break
    if not sigmas:
        # An unknown layout: a middle-of-the-road sigma for every joint.
        sigmas = [0.08] * k
    if len(sigmas) != k:
        raise ValueError(f"{len(sigmas)} OKS sigmas for {k} keypoints (MODEL.VPOSE.OKS_SIGMAS)")
    return k, sigmas
