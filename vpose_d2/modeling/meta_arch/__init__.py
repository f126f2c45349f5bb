"""Meta-architectures (registered in META_ARCH_REGISTRY on import): small siblings over
:class:`PoseModelBase`."""

from .base import PoseModelBase, resolve_keypoint_meta
from .image_pose_transformer import ImagePoseTransformer
from .pave_net import PAVENet
from .vepe import VEPE

__all__ = ["ImagePoseTransformer", "PAVENet", "PoseModelBase", "VEPE", "resolve_keypoint_meta"]
