"""Pose backbones: a bottom-up network + the multi-scale neck (registered on import)."""

from .neck import MultiScalePoseBackbone
from .resnet import build_resnet_pose_backbone
from .timm_backbone import TimmBackbone, build_timm_pose_backbone

__all__ = [
    "MultiScalePoseBackbone",
    "TimmBackbone",
    "build_resnet_pose_backbone",
    "build_timm_pose_backbone",
]
