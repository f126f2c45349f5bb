"""Pose tracker: Hungarian matching on the OKS between the tracks' last poses and new poses.

For models without instance embeddings (the image model, PAVE-Net). Each track remembers its
person's last pose; a new pose continues the track whose last pose it resembles most by
object keypoint similarity (the COCO definition, :func:`vpose_d2.modeling.losses.pairwise_oks`,
the one the matcher and losses use), with the track's pose as the reference: its joints and
its scale count; a joint the new pose lacks adds nothing.

With ``motion`` (default) the track's last pose is also compared moved on by the last
displacement of its centre (mean of its joints) per frame, times the frames since it was seen
(constant velocity), and the better of the two OKS counts. OKS falls off quickly with distance for small people, so without it a person who
walks far between two processed frames (PoseTrack val labels every 4th frame) no longer
resembles its own last pose and starts a new track. Two people of the same size who cross
can still swap ids: poses say nothing about who is who (the embedding tracker does).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures import Instances

from ..data.keypoints import COCO, POSETRACK
from ..modeling.losses import pairwise_oks
from ..modeling.meta_arch import resolve_keypoint_meta
from .base import Tracker
from .build import TRACKER_REGISTRY

__all__ = ["PoseTracker", "pose_features"]


class _Pose(NamedTuple):
    xy: np.ndarray  # (K, 2) float64 pixels, 0 where absent
    vis: np.ndarray  # (K,) bool, the joint exists
    area: float  # the OKS scale, pixels^2
    velocity: np.ndarray  # (2,) displacement of the centre per frame (a track's memory)

    def centre(self) -> Optional[np.ndarray]:
        return self.xy[self.vis].mean(0) if self.vis.any() else None


def pose_features(keypoints: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the pose tracker compares: joint positions, which joints exist, the OKS scale.

    Args:
        keypoints: (N, K, 3) [x, y, score] in pixels. A joint exists when its coordinates are
            finite and its score is > 0 (ground truth writes absent joints as (0, 0, 0)).

    Returns:
        xy (N, K, 2) float64 (0 where absent), visible (N, K) bool, area (N,) float64: the
        area of the box around the existing joints (the person's OKS scale; PoseTrack has no
        segmentation area either).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] != 3:
        raise ValueError(f"pred_keypoints of shape {kp.shape}; expected (N, K, 3)")
    xy = kp[..., :2].copy()
    with np.errstate(invalid="ignore"):
        vis = np.isfinite(xy).all(-1) & np.isfinite(kp[..., 2]) & (kp[..., 2] > 0)
    xy[~vis] = 0.0
    area = np.zeros(len(kp))
    for i in range(len(kp)):
        if vis[i].any():
            ext = np.ptp(xy[i][vis[i]], axis=0)
            area[i] = float(ext[0] * ext[1])
    return xy, vis, area


@TRACKER_REGISTRY.register()
class PoseTracker(Tracker):
    """Tracks persons by the OKS of their poses to the tracks' last (moved-on) poses.

    ``sim_thresh`` is the least OKS of a match.
    """

    @configurable
    def __init__(
        self,
        *,
        oks_sigmas: Optional[Sequence[float]] = None,
        min_score: float = 0.3,
        max_age: int = 3,
        oks_thresh: float = 0.02,
        motion: bool = True,
    ) -> None:
        """
        Args:
            oks_sigmas: K per-joint OKS sigmas; None takes the PoseTrack (15 joints) or COCO
                (17) layout's from the first frame's K.
            min_score: persons scoring below are not tracked (id -1).
            max_age: frames a track survives without a match.
            oks_thresh: the least OKS of a match; below it a person starts a new track.
            motion: also compare the tracks' last poses moved on by their last velocity, and
                keep the better OKS.
        """
        self._sigmas = None if oks_sigmas is None else torch.tensor(oks_sigmas, dtype=torch.float64)
        self.motion = bool(motion)
        super().__init__(min_score=min_score, max_age=max_age, sim_thresh=oks_thresh)

    @classmethod
    def from_config(cls, cfg) -> dict:
        t = cfg.MODEL.TRACKER
        if cfg.MODEL.VPOSE.NUM_KEYPOINTS == 0 and len(cfg.DATASETS.TRAIN) == 0:
            # Nothing says K yet: the sigmas given, else the layout of the first frame's K.
            sigmas = list(cfg.MODEL.VPOSE.OKS_SIGMAS) or None
        else:
            sigmas = resolve_keypoint_meta(cfg)[1]
        return {
            "oks_sigmas": sigmas,
            "min_score": t.MIN_SCORE,
            "max_age": t.MAX_AGE,
            "oks_thresh": t.OKS_THRESH,
            "motion": t.POSE_MOTION,
        }

    def _sigmas_for(self, k: int) -> torch.Tensor:
        if self._sigmas is None:
            for layout in (POSETRACK, COCO):
                if layout.num_keypoints == k:
                    self._sigmas = torch.tensor(layout.oks_sigmas, dtype=torch.float64)
                    break
            else:
                raise ValueError(
                    f"PoseTracker: poses with {k} joints and no oks_sigmas given (only the "
                    f"PoseTrack (15) and COCO (17) layouts are known)"
                )
        if len(self._sigmas) != k:
            raise ValueError(
                f"PoseTracker: frame {self._num_frames}: poses with {k} joints but "
                f"{len(self._sigmas)} OKS sigmas (MODEL.VPOSE.OKS_SIGMAS or the dataset's "
                f"keypoint_oks_sigmas)"
            )
        return self._sigmas

    def _features(self, instances: Instances, keep: np.ndarray) -> List[_Pose]:
        if not instances.has("pred_keypoints"):
            raise KeyError(
                f"PoseTracker: frame {self._num_frames} has no 'pred_keypoints' (fields: "
                f"{sorted(instances.get_fields())})"
            )
        kp = instances.pred_keypoints.detach().float().cpu().numpy()[keep]
        self._sigmas_for(kp.shape[1])
        xy, vis, area = pose_features(kp)
        return [_Pose(xy[i], vis[i], float(area[i]), np.zeros(2)) for i in range(len(kp))]

    def _similarity(self, memories: List[_Pose], missed: np.ndarray, feats: List[_Pose]):
        ref_xy = np.stack([m.xy for m in memories])  # (T, K, 2)
        ref_vis = np.stack([m.vis for m in memories])  # (T, K)
        ref_area = torch.tensor([m.area for m in memories], dtype=torch.float64)  # (T,)
        new_xy = torch.from_numpy(np.stack([f.xy for f in feats]))  # (C, K, 2)
        sigmas = self._sigmas_for(new_xy.shape[1])
        vis = torch.from_numpy(ref_vis)
        one = torch.ones(2, dtype=torch.float64)

        def oks(ref: np.ndarray) -> np.ndarray:
            # The tracks' poses are the reference ("ground truth") side; coordinates are
            # pixels already, so the image size is 1 x 1.
            return pairwise_oks(new_xy, torch.from_numpy(ref), vis, ref_area, sigmas, one).T

        sim = oks(ref_xy)
        if self.motion:
            # A track unmatched for k frames was last seen k + 1 frames ago.
            ahead = np.stack([m.velocity for m in memories]) * (missed + 1)[:, None]  # (T, 2)
            moved = np.where(ref_vis[..., None], ref_xy + ahead[:, None], 0.0)
            # The better of moved and unmoved: a person who stops or turns around (people
            # bounce off the frame edges) is closer to where it was than to where it headed.
            sim = torch.maximum(sim, oks(moved))
        return sim.numpy()  # (T, C)

    def _update(self, memory: _Pose, missed: int, feat: _Pose) -> _Pose:
        old, new = memory.centre(), feat.centre()
        if old is None or new is None:
            velocity = memory.velocity
        else:
            velocity = (new - old) / (missed + 1)
        return feat._replace(velocity=velocity)
