"""Models: backbones, transformer parts, matcher, criterion and meta-architectures.

Importing this package registers the backbones and meta-architectures with Detectron2.
"""

from . import backbone, meta_arch  # noqa: F401  (registration)
from .criterion import PoseSetCriterion
from .matcher import HungarianPoseMatcher
from .meta_arch import ImagePoseTransformer

__all__ = ["HungarianPoseMatcher", "ImagePoseTransformer", "PoseSetCriterion"]
