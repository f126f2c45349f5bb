"""Online multi-person tracking: track ids for every model's per-frame predictions.

Use, one tracker per video or stream, frames in order::

    tracker = build_tracker(cfg)      # MODEL.TRACKER.*; "auto" picks by the model's outputs
    for instances in frames_predictions:
        instances = tracker(instances)   # sets pred_track_ids (N,) int64; -1: not tracked
    tracker.reset()                   # before the next video

Trackers: :class:`EmbeddingTracker` (cosine similarity of ``pred_instance_embeds``),
:class:`PoseTracker` (OKS of the poses), :class:`AutoTracker` (one of the two per video),
registered in :data:`TRACKER_REGISTRY`.
"""

from .auto import AutoTracker
from .base import Tracker, match_tracks
from .build import TRACKER_REGISTRY, build_tracker
from .embedding import EmbeddingTracker
from .pose import PoseTracker, pose_features

__all__ = [
    "AutoTracker",
    "EmbeddingTracker",
    "PoseTracker",
    "TRACKER_REGISTRY",
    "Tracker",
    "build_tracker",
    "match_tracks",
    "pose_features",
]
