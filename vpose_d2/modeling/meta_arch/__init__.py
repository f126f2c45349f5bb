"""Meta-architectures (registered in META_ARCH_REGISTRY on import)."""

from .image_pose_transformer import ImagePoseTransformer, resolve_keypoint_meta
from .pave_net import FrameMemory, PAVENet

__all__ = ["FrameMemory", "ImagePoseTransformer", "PAVENet", "resolve_keypoint_meta"]
