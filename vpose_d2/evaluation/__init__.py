"""PoseTrack evaluation: the official protocol (mAP, MOTA) + CLI, the prediction writer, the
Detectron2 evaluator, and COCO OKS AP."""

from .coco_evaluator import COCOKeypointEvaluator
from .coco_oks import OKS_KEYS, coco_oks_ap
from .evaluator import PoseTrackEvaluator
from .posetrack import (
    COLUMNS,
    JOINT_NAMES,
    PoseTrackEvalError,
    evaluate_posetrack,
    format_table,
    point_in_polygons,
)
from .writer import write_posetrack_predictions

__all__ = [
    "COCOKeypointEvaluator",
    "COLUMNS",
    "JOINT_NAMES",
    "OKS_KEYS",
    "PoseTrackEvalError",
    "PoseTrackEvaluator",
    "coco_oks_ap",
    "evaluate_posetrack",
    "format_table",
    "point_in_polygons",
    "write_posetrack_predictions",
]
