"""Pose backbones: a bottom-up network + the multi-scale neck (registered on import)."""

from .fold_bn import FoldedConv2d, fold_frozen_batchnorm, unfold_frozen_batchnorm
from .neck import MultiScalePoseBackbone
from .resnet import build_resnet_pose_backbone
from .timm_backbone import TimmBackbone, build_timm_pose_backbone

__all__ = [
    "FoldedConv2d",
    "fold_frozen_batchnorm",
    "unfold_frozen_batchnorm",
    "MultiScalePoseBackbone",
    "TimmBackbone",
    "build_resnet_pose_backbone",
    "build_timm_pose_backbone",
]
