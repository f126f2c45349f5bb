"""Keypoint layouts: PoseTrack (15 joints) and COCO (17 joints), and conversions between them.

Everything downstream reads the number of joints ``K`` and the flip map from dataset metadata
(:func:`layout_metadata`), so no other module hard-codes 15 or 17.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple, TypeVar

import numpy as np
import torch

__all__ = [
    "OFFICIAL17_NAMES",
    "POSETRACK17_JOINT_IDS",
    "KeypointLayout",
    "POSETRACK",
    "COCO",
    "official17_to_posetrack15",
    "posetrack15_to_official17",
    "coco17_to_posetrack15",
    "layout_metadata",
    "flip_indices",
]

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class KeypointLayout:
    """A named joint layout.

    Attributes:
        name: short name ("posetrack", "coco").
        names: the K joint names, in storage order.
        flip_map: pairs of joint names that swap under a horizontal flip.
        connection_rules: Detectron2 ``keypoint_connection_rules``: (name_a, name_b, (r, g, b)).
        oks_sigmas: K per-joint OKS sigmas (already divided by 10).
    """

    name: str
    names: Tuple[str, ...]
    flip_map: Tuple[Tuple[str, str], ...]
    connection_rules: Tuple[Tuple[str, str, Tuple[int, int, int]], ...]
    oks_sigmas: Tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.oks_sigmas) != len(self.names):
            raise ValueError(
                f"layout {self.name!r}: {len(self.oks_sigmas)} OKS sigmas for "
                f"{len(self.names)} joints"
            )
        known = set(self.names)
        for a, b in self.flip_map:
            if a not in known or b not in known:
                raise ValueError(f"layout {self.name!r}: flip pair ({a}, {b}) names no joint")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)


_LIMBS = (
    # (name_a, name_b, colour): left side warm, right side cool, centre neutral, as in
    # Detectron2's COCO rules, so drawn poses show at once whether left/right are swapped.
    ("left_shoulder", "left_elbow", (255, 128, 0)),
    ("left_elbow", "left_wrist", (255, 178, 0)),
    ("right_shoulder", "right_elbow", (0, 128, 255)),
    ("right_elbow", "right_wrist", (0, 178, 255)),
    ("left_hip", "left_knee", (255, 64, 64)),
    ("left_knee", "left_ankle", (255, 100, 100)),
    ("right_hip", "right_knee", (64, 64, 255)),
    ("right_knee", "right_ankle", (100, 100, 255)),
    ("left_shoulder", "right_shoulder", (255, 255, 0)),
    ("left_hip", "right_hip", (255, 255, 0)),
    ("left_shoulder", "left_hip", (255, 200, 128)),
    ("right_shoulder", "right_hip", (128, 200, 255)),
)

_LR_PAIRS = tuple(
    (f"left_{p}", f"right_{p}") for p in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")
)

# fmt: off
# PoseTrack OKS sigmas (as the public PETR / PAVE-Net releases use them); head_bottom/head_top
# reuse the shoulder's.
_POSETRACK_SIGMAS_X10 = (
    0.26, 0.79, 0.79, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89,
)
_COCO_SIGMAS_X10 = (
    0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
    0.89, 0.89,
)
# fmt: on

POSETRACK = KeypointLayout(
    name="posetrack",
    names=(
        "nose",
        "head_bottom",
        "head_top",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_map=_LR_PAIRS,
    connection_rules=_LIMBS
    + (
        ("head_top", "head_bottom", (0, 255, 0)),
        ("nose", "head_bottom", (0, 200, 0)),
        ("head_bottom", "left_shoulder", (200, 255, 0)),
        ("head_bottom", "right_shoulder", (0, 255, 200)),
    ),
    oks_sigmas=tuple(s / 10.0 for s in _POSETRACK_SIGMAS_X10),
)

COCO = KeypointLayout(
    name="coco",
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_map=(("left_eye", "right_eye"), ("left_ear", "right_ear")) + _LR_PAIRS,
    connection_rules=_LIMBS
    + (
        ("left_ear", "left_eye", (0, 255, 0)),
        ("right_ear", "right_eye", (0, 200, 255)),
        ("left_eye", "nose", (0, 255, 100)),
        ("nose", "right_eye", (0, 200, 200)),
    ),
    oks_sigmas=tuple(s / 10.0 for s in _COCO_SIGMAS_X10),
)

# The official PoseTrack 2018/21 files keep 17 COCO-ordered slots whose ears (3, 4) are
# always (0, 0, 0); the 15 PoseTrack joints are the other slots in order.
_KEEP_17_TO_15 = (0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)


# The 17 slots of an official PoseTrack 2018/21 file: COCO order, the ears always (0, 0, 0).
OFFICIAL17_NAMES: Tuple[str, ...] = (
    POSETRACK.names[:3] + ("left_ear", "right_ear") + (POSETRACK.names[3:])
)

# PoseTrack 2017 files (and poseval) number the joints differently: id -> joint name.
POSETRACK17_JOINT_IDS: Dict[int, str] = {
    0: "right_ankle",
    1: "right_knee",
    2: "right_hip",
    3: "left_hip",
    4: "left_knee",
    5: "left_ankle",
    6: "right_wrist",
    7: "right_elbow",
    8: "right_shoulder",
    9: "left_shoulder",
    10: "left_elbow",
    11: "left_wrist",
    12: "head_bottom",
    13: "nose",
    14: "head_top",
}


def _check_joints(kpts: ArrayLike, k: int, fn: str) -> None:
    if kpts.ndim < 2 or kpts.shape[-2] != k or kpts.shape[-1] != 3:
        raise ValueError(
            f"{fn}: expected keypoints of shape (..., {k}, 3), got {tuple(kpts.shape)}"
        )


def official17_to_posetrack15(kpts: ArrayLike) -> ArrayLike:
    """Drop the two always-empty ear slots of an official PoseTrack 2018/21 pose.

    Args:
        kpts: (..., 17, 3) numpy array or tensor, [x, y, v] in the official slot order.

    Returns:
        (..., 15, 3) of the same type, in :data:`POSETRACK` order.
    """
    _check_joints(kpts, 17, "official17_to_posetrack15")
    return kpts[..., list(_KEEP_17_TO_15), :]


def posetrack15_to_official17(kpts: ArrayLike) -> ArrayLike:
    """Insert (0, 0, 0) ears so a 15-joint pose fits the official 17-slot files.

    Args:
        kpts: (..., 15, 3) numpy array or tensor in :data:`POSETRACK` order.

    Returns:
        (..., 17, 3) of the same type and dtype, slots 3 and 4 zero.
    """
    _check_joints(kpts, 15, "posetrack15_to_official17")
    shape = tuple(kpts.shape[:-2]) + (17, 3)
    if isinstance(kpts, torch.Tensor):
        out = kpts.new_zeros(shape)
    else:
        out = np.zeros(shape, dtype=kpts.dtype)
    out[..., list(_KEEP_17_TO_15), :] = kpts
    return out


def coco17_to_posetrack15(kpts: ArrayLike) -> ArrayLike:
    """Map COCO keypoints to the PoseTrack layout, the common pretraining convention.

    The ears are dropped and the remaining slots are kept in place, so COCO's *eyes* stand in
    for PoseTrack's head_bottom (left eye) and head_top (right eye). This is not anatomically
    right; it is what PoseTrack methods pretrained on COCO (PoseWarper, DCPose, PAVE-Net) do:
    only the slots matter for initialising the head joints, and fine-tuning on PoseTrack
    re-learns them.

    Args:
        kpts: (..., 17, 3) numpy array or tensor in :data:`COCO` order.

    Returns:
        (..., 15, 3) of the same type, in :data:`POSETRACK` slot order.
    """
    _check_joints(kpts, 17, "coco17_to_posetrack15")
    return kpts[..., list(_KEEP_17_TO_15), :]


def layout_metadata(layout: KeypointLayout) -> Dict[str, object]:
    """Detectron2 metadata keys describing a layout.

    Returns:
        dict with ``keypoint_names`` (list), ``keypoint_flip_map`` (list of pairs),
        ``keypoint_connection_rules`` (list of (a, b, colour)) and ``keypoint_oks_sigmas``
        (list of K floats).
    """
    return {
        "keypoint_names": list(layout.names),
        "keypoint_flip_map": [tuple(p) for p in layout.flip_map],
        "keypoint_connection_rules": [tuple(r) for r in layout.connection_rules],
        "keypoint_oks_sigmas": list(layout.oks_sigmas),
    }


def flip_indices(names, flip_map) -> np.ndarray:
    """Permutation that swaps left/right joints under a horizontal flip.

    Args:
        names: the K joint names (metadata ``keypoint_names``).
        flip_map: pairs of names (metadata ``keypoint_flip_map``).

    Returns:
        (K,) int64 array ``idx`` such that ``flipped = kpts[..., idx, :]``.
    """
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    perm = np.arange(len(names), dtype=np.int64)
    for a, b in flip_map:
        if a not in index or b not in index:
            raise ValueError(f"flip pair ({a}, {b}) names a joint not in {names}")
        perm[index[a]], perm[index[b]] = index[b], index[a]
    return perm
