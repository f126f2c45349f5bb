"""Losses and distances of the pose transformers."""

from .focal import focal_cost, sigmoid_focal_loss
from .instance_consistency import instance_consistency_loss
from .keypoint import keypoint_l1, keypoint_oks, pairwise_keypoint_l1, pairwise_oks
from .rle import RealNVP2D, RLELoss

__all__ = [k for k in globals().keys() if not k.startswith("_")]
