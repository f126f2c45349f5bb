"""Data: keypoint layouts, dataset registration, the clip mapper and loaders."""

from . import datasets  # noqa: F401  (registers the predefined datasets)
from .build import build_clip_test_loader, build_clip_train_loader, clip_samples
from .clip_mapper import ClipDatasetMapper
from .keypoints import (
    COCO,
    POSETRACK,
    KeypointLayout,
    coco17_to_posetrack15,
    layout_metadata,
    official17_to_posetrack15,
    posetrack15_to_official17,
)

__all__ = [
    "COCO",
    "POSETRACK",
    "ClipDatasetMapper",
    "KeypointLayout",
    "build_clip_test_loader",
    "build_clip_train_loader",
    "clip_samples",
    "coco17_to_posetrack15",
    "layout_metadata",
    "official17_to_posetrack15",
    "posetrack15_to_official17",
]
