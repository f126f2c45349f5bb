"""Detectron2 ResNet (R18/34/50/101) as a pose backbone."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_resnet_backbone

from .neck import MultiScalePoseBackbone

__all__ = ["build_resnet_pose_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_pose_backbone(cfg, input_shape: ShapeSpec) -> MultiScalePoseBackbone:
    """ResNet from ``cfg.MODEL.RESNETS`` (depth, FrozenBN, ``MODEL.BACKBONE.FREEZE_AT``) with
    C3-C5 = ``MODEL.RESNETS.OUT_FEATURES`` projected to ``MODEL.VPOSE.HIDDEN_DIM`` channels.

    R18/34 need ``MODEL.RESNETS.RES2_OUT_CHANNELS: 64``.
    """
    if cfg.MODEL.RESNETS.DEPTH in (18, 34) and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
        raise ValueError(
            f"ResNet-{cfg.MODEL.RESNETS.DEPTH} needs MODEL.RESNETS.RES2_OUT_CHANNELS 64, got "
            f"{cfg.MODEL.RESNETS.RES2_OUT_CHANNELS}"
        )
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return MultiScalePoseBackbone(
        bottom_up=bottom_up,
        in_features=list(cfg.MODEL.RESNETS.OUT_FEATURES),
        out_channels=cfg.MODEL.VPOSE.HIDDEN_DIM,
        num_levels=cfg.MODEL.VPOSE.NUM_FEATURE_LEVELS,
        num_groups=cfg.MODEL.VPOSE.NECK_NUM_GROUPS,
    )
