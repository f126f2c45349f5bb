"""Joint decoder: K joint queries per person refine that person's keypoints.

T-frame aware like the pose decoder: joint query k of person p samples every frame around
that frame's keypoint k (its own offsets/weights per frame, one softmax over all frames),
and each frame's keypoints are refined by that frame's MLP; the key frame is the output.
"""

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from torch import nn

from vpose_d2.layers.mlp import MLP
from vpose_d2.layers.position_encoding import sine_embed_points

from ..clip_memory import ClipMemory
from .decoder_layer import DeformableDecoderLayer, ProjectValuesMixin
from .frame_attention import PointDeformableAttention
from .utils import next_references, refine_per_frame

__all__ = ["JointDecoderLayer", "JointDecoder"]


class JointDecoderLayer(DeformableDecoderLayer):
    """Self-attention among a person's K joints, deformable cross-attention, FFN (post-norm).

    ``forward(tgt, query_pos, reference_points, memory, ...)``: ``tgt`` and ``query_pos``
    (B, P, K, C) joint queries of P persons, ``reference_points`` (B, T, P, K, 2) per-frame
    joint references in [0, 1], the T-frame memory as in :class:`DeformableDecoderLayer`;
    returns (B, P, K, C).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        num_points: int = 4,
        num_frames: int = 1,
        attn_impl: str = "auto",
    ):
        super().__init__(
            lambda: PointDeformableAttention(
                embed_dim=embed_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_points=num_points,
                num_frames=num_frames,
                impl=attn_impl,
            ),
            embed_dim=embed_dim,
            num_heads=num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
        )

    def cross_attend(
        self,
        query: torch.Tensor,
        references: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor],
        projected_value: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Every joint of every person is one query of the cross-attention."""
        b, p, k, c = query.shape
        t = references.shape[1]
        out = self.cross_attn(
            query.reshape(b, p * k, c),
            references.reshape(b, t, p * k, 2),
            memory,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            memory_padding_mask,
            projected_value,
        )
        return out.view(b, p, k, c)


class JointDecoder(ProjectValuesMixin, nn.Module):
    """Stack of :class:`JointDecoderLayer` with per-layer, per-frame 2-D refinement."""

    @configurable
    def __init__(
        self,
        *,
        num_layers: int = 3,
        embed_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        num_points: int = 4,
        num_keypoints: int,
        num_frames: int = 1,
        attn_impl: str = "auto",
        neighbour_reference_grad: bool = False,
    ):
        """
        Args:
            num_layers: decoder layers (paper 3, PETR release 2).
            embed_dim, num_heads, dim_feedforward, dropout, num_levels: transformer sizes.
            num_points: samples per head, level and frame around each joint.
            num_keypoints: joints K (one learned query each, shared by all persons).
            num_frames: frames T attended.
            attn_impl: forwarded to ``ms_deform_attn``.
            neighbour_reference_grad: neighbour frames' refined joints keep their gradient into
                the next layer's sampling locations (see :func:`next_references`); it also
                applies to the pose decoder's poses that become this decoder's references.
        """
        super().__init__()
        self.num_layers = num_layers
        self.num_keypoints = num_keypoints
        self.num_frames = num_frames
        self.neighbour_reference_grad = neighbour_reference_grad
        self.embed_dim = embed_dim
        self.joint_embed = nn.Embedding(num_keypoints, embed_dim)
        self.query_pos_head = MLP(embed_dim, embed_dim, embed_dim, 2)
        self.layers = nn.ModuleList(
            JointDecoderLayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                num_levels=num_levels,
                num_points=num_points,
                num_frames=num_frames,
                attn_impl=attn_impl,
            )
            for _ in range(num_layers)
        )
        self.refine = nn.ModuleList(
            nn.ModuleList(MLP(embed_dim, embed_dim, 2, 3).zero_last() for _ in range(num_frames))
            for _ in range(num_layers)
        )
        self.sigma_heads = nn.ModuleList(nn.Linear(embed_dim, 2) for _ in range(num_layers))

    @classmethod
    def from_config(
        cls, cfg, num_keypoints: int, num_frames: int = 1, neighbour_reference_grad: bool = False
    ) -> Dict:
        v = cfg.MODEL.VPOSE
        return {
            "neighbour_reference_grad": neighbour_reference_grad,
            "num_layers": v.JOINT_DEC_LAYERS,
            "embed_dim": v.HIDDEN_DIM,
            "num_heads": v.NHEADS,
            "dim_feedforward": v.DIM_FEEDFORWARD,
            "dropout": v.DROPOUT,
            "num_levels": v.NUM_FEATURE_LEVELS,
            "num_points": v.JOINT_DEC_N_POINTS,
            "num_keypoints": num_keypoints,
            "num_frames": num_frames,
            "attn_impl": v.ATTN_IMPL,
        }

    def forward(
        self,
        reference_joints: torch.Tensor,
        memory: ClipMemory,
        key_index: int = 0,
        values: Optional[Sequence[torch.Tensor]] = None,
    ) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            reference_joints: (B, T, P, K, 2) per-frame keypoints of P persons per image (the
                pose decoder's output, detached by the caller).
            memory: the T frames' encoded memory (B, T, S, C), sampled in one call per layer.
            key_index: position of the key frame on the T axis.
            values: one (B, T * S, M, C / M) per layer, :meth:`project_values` of ``memory``
                (or the frames' projections concatenated along S), which the layers then
                sample instead of projecting ``memory``; None projects it in every layer.

        Returns:
            One dict per layer: ``joints`` (B, T, P, K, 2) refined keypoints of every frame
            (the key frame is the output), ``sigmas`` (B, P, K, 2) RLE scales of the key
            frame's joints.
        """
        b, t, p, k, _ = reference_joints.shape
        if t != self.num_frames or k != self.num_keypoints:
            raise ValueError(
                f"JointDecoder built for T={self.num_frames}, K={self.num_keypoints}, got "
                f"reference_joints {tuple(reference_joints.shape)}"
            )
        if values is not None and len(values) != self.num_layers:
            raise ValueError(
                f"JointDecoder: {len(values)} projected values for {self.num_layers} layers"
            )
        if memory.num_frames != t:
            raise ValueError(
                f"JointDecoder: {t} frames of references, memory of {memory.num_frames}"
            )
        flat = memory.flatten_time()
        tgt = self.joint_embed.weight.view(1, 1, k, -1).expand(b, p, k, -1)
        refs = reference_joints
        outputs = []
        for i, layer in enumerate(self.layers):
            pos = sine_embed_points(refs[:, key_index], self.embed_dim // 2)
            query_pos = self.query_pos_head(pos)
            tgt = layer(
                tgt,
                query_pos,
                refs,
                flat["memory"],
                flat["spatial_shapes"],
                flat["level_start_index"],
                flat["valid_ratios"],
                flat["padding_mask"],
                None if values is None else values[i],
            )
            joints = refine_per_frame(refs, tgt, self.refine[i])
            outputs.append({"joints": joints, "sigmas": self.sigma_heads[i](tgt).sigmoid()})
            refs = next_references(joints, key_index, self.neighbour_reference_grad)
        return outputs
