"""ImagePoseTransformer: the PETR-style end-to-end image model (the papers' baseline).

backbone -> L maps -> deformable encoder -> pose proposals (top N) -> pose decoder (pose-aware
attention) -> joint decoder (top persons) -> poses in original pixels. No NMS. It runs on the
key frame of a clip; every part lives in :class:`PoseModelBase`, which this model runs as is.
"""

from typing import Dict

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip_memory import ClipMemory
from ..transformer import JointDecoder, PoseDecoder
from .base import PoseModelBase

__all__ = ["ImagePoseTransformer"]


@META_ARCH_REGISTRY.register()
class ImagePoseTransformer(PoseModelBase):
    """End-to-end multi-person pose estimation on the key frame of each input (T = 1)."""

    @configurable
    def __init__(self, *, pose_decoder: PoseDecoder, **kwargs):
        """
        Args:
            pose_decoder: a :class:`PoseDecoder` with ``num_frames = 1`` and at least one layer
                (its last layer gives the poses).
            kwargs: :class:`PoseModelBase`'s arguments.
        """
        if len(pose_decoder.layers) == 0 or pose_decoder.num_frames != 1:
            raise ValueError(
                "ImagePoseTransformer needs a one-frame pose decoder with layers "
                "(MODEL.VPOSE.DEC_LAYERS > 0); the video model without one is PAVENet with "
                "MODEL.PAVE.USE_STPD=False"
            )
        super().__init__(pose_decoder=pose_decoder, **kwargs)

    @classmethod
    def build_decoders(cls, cfg, num_keypoints: int) -> Dict:
        joint = cfg.MODEL.VPOSE.JOINT_DEC_LAYERS > 0
        return {
            "pose_decoder": PoseDecoder(cfg, num_keypoints=num_keypoints),
            "joint_decoder": JointDecoder(cfg, num_keypoints=num_keypoints) if joint else None,
        }

    def predict(self, clip: ClipMemory) -> Dict:
        out = self.spatial_stage(clip)
        out["final"] = out["pose_layers"][-1]
        return out
