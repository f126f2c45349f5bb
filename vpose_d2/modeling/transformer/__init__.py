"""Transformer parts shared by the image model and the video models."""

from .decoder_layer import DeformableDecoderLayer
from .encoder import DeformableEncoder, DeformableEncoderLayer
from .frame_attention import PointDeformableAttention, PoseAwareDeformableAttention
from .instance_queries import InstanceQueries
from .joint_decoder import JointDecoder, JointDecoderLayer
from .pose_decoder import PoseDecoder, PoseDecoderLayer
from .pose_query_selection import PoseQuerySelection
from .proposal import PoseProposalHead
from .spatiotemporal_encoder import SpatiotemporalEncoder
from .stdme import SpatioTemporalDeformableMemoryEncoder
from .stpe import SpatioTemporalPoseEncoder, instance_mask
from .utils import (
    flatten_levels,
    inverse_sigmoid,
    next_references,
    pose_half_size,
    refine_per_frame,
    valid_ratios_from_mask,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
