"""VEPE's Spatio-Temporal Deformable Memory Encoder (STDME, the VEPE paper section 3.4, Fig. 3b).

The key frame's multi-scale memory (every token of its L maps is a query) attends within its
frame (multi-scale deformable self-attention, MSDA), then to all T*L maps of the clip (temporal
multi-scale deformable attention, TMSDA, eq. 1): one :class:`MSDeformAttn` over T*L levels, so
a head's weights over its T*L*K samples come from one softmax and the op samples every frame in
one call (:meth:`ClipMemory.flatten_time`'s layout). FFN.

Layers are pre-norm with their output projections at zero: a new STDME returns the key frame's
memory unchanged, so the temporal phase starts from what the spatial phase sees.
"""

from typing import Dict

import torch
from detectron2.config import configurable
from torch import nn

from vpose_d2.layers.ms_deform_attn import MSDeformAttn

from ..clip_memory import ClipMemory
from .encoder import DeformableEncoder

__all__ = ["STDMELayer", "SpatioTemporalDeformableMemoryEncoder"]


class STDMELayer(nn.Module):
    """MSDA within the key frame, TMSDA over the clip's T*L maps, FFN (pre-norm)."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_frames: int = 3,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        attn_impl: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.self_attn = MSDeformAttn(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            impl=attn_impl,
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.temporal_attn = MSDeformAttn(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_frames * num_levels,
            num_points=num_points,
            impl=attn_impl,
        )
        self.dropout2 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.activation = nn.ReLU(inplace=True)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.dropout4 = nn.Dropout(dropout)
        for zero in (self.self_attn.output_proj, self.temporal_attn.output_proj, self.linear2):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        frame: Dict[str, torch.Tensor],
        clip: Dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            src: (B, S, C) the key frame's tokens; pos: (B, S, C) their position embeddings.
            frame: the key frame's ``spatial_shapes`` (L, 2), ``level_start_index``,
                ``padding_mask`` (B, S) and ``reference_points`` (B, S, L, 2).
            clip: :meth:`ClipMemory.flatten_time` of the clip (``memory`` (B, T * S, C), ...)
                with ``reference_points`` (B, S, T * L, 2).

        Returns:
            (B, S, C).
        """
        h = self.norm1(src)
        sa = self.self_attn(
            h + pos,
            frame["reference_points"],
            h,
            frame["spatial_shapes"],
            frame["level_start_index"],
            frame["padding_mask"],
        )
        src = src + self.dropout1(sa)
        h = self.norm2(src)
        ta = self.temporal_attn(
            h + pos,
            clip["reference_points"],
            clip["memory"],
            clip["spatial_shapes"],
            clip["level_start_index"],
            clip["padding_mask"],
        )
        src = src + self.dropout2(ta)
        h = self.linear2(self.dropout3(self.activation(self.linear1(self.norm3(src)))))
        return src + self.dropout4(h)


class SpatioTemporalDeformableMemoryEncoder(nn.Module):
    """STDME: the key frame's memory, temporally encoded from the clip's T frames."""

    @configurable
    def __init__(
        self,
        *,
        num_frames: int,
        num_layers: int = 1,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        attn_impl: str = "auto",
    ):
        """
        Args:
            num_frames: frames T of a clip.
            num_layers: layers (>= 1).
            embed_dim, num_heads, dim_feedforward, dropout: transformer sizes.
            num_levels: feature levels L of a frame.
            num_points: samples K per head, level and frame.
            attn_impl: forwarded to ``ms_deform_attn``.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.VEPE.STDME_LAYERS={num_layers} must be >= 1")
        self.num_frames = num_frames
        self.num_levels = num_levels
        self.layers = nn.ModuleList(
            STDMELayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_frames=num_frames,
                num_points=num_points,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                attn_impl=attn_impl,
            )
            for _ in range(num_layers)
        )

    @classmethod
    def from_config(cls, cfg, num_frames: int) -> Dict:
        v, e = cfg.MODEL.VPOSE, cfg.MODEL.VEPE
        return {
            "num_frames": num_frames,
            "num_layers": e.STDME_LAYERS,
            "embed_dim": v.HIDDEN_DIM,
            "num_heads": v.NHEADS,
            "num_levels": v.NUM_FEATURE_LEVELS,
            "num_points": e.STDME_N_POINTS,
            "dim_feedforward": v.DIM_FEEDFORWARD,
            "dropout": v.DROPOUT,
            "attn_impl": v.ATTN_IMPL,
        }

    def forward(self, clip: ClipMemory, pos: torch.Tensor, key_index: int) -> ClipMemory:
        """
        Args:
            clip: B clips of T encoded frames.
            pos: (B, S, C) position (+ level) embeddings of the key frame's tokens.
            key_index: the key frame on the T axis.

        Returns:
            The key frame alone (B clips of one frame) with the temporally encoded memory.
        """
        if clip.num_frames != self.num_frames:
            raise ValueError(f"STDME built for T={self.num_frames}, got {clip.num_frames} frames")
        key = clip.frame(key_index)
        ratios = key.valid_ratios[:, 0]  # (B, L, 2)
        refs = DeformableEncoder.reference_points(key.spatial_shapes, ratios)  # (B, S, L, 2)
        frame = {
            "spatial_shapes": key.spatial_shapes,
            "level_start_index": key.level_start_index,
            "padding_mask": key.padding_mask[:, 0],
            "reference_points": refs,
        }
        flat = clip.flatten_time()
        # Each token's centre, normalized to the valid image, seen on every map of every frame
        # (phi_l of eq. 1).
        centres = refs[:, :, 0] / ratios[:, None, 0]
        flat["reference_points"] = centres[:, :, None] * flat["valid_ratios"][:, None]
        src = key.memory[:, 0]
        for layer in self.layers:
            src = layer(src, pos, frame, flat)
        return ClipMemory(
            memory=src[:, None],
            padding_mask=key.padding_mask,
            spatial_shapes=key.spatial_shapes,
            level_start_index=key.level_start_index,
            valid_ratios=key.valid_ratios,
            image_sizes=key.image_sizes,
        )
