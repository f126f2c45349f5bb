"""Deformable encoder: multi-scale deformable self-attention over the tokens of one frame."""

from typing import Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from vpose_d2.layers.ms_deform_attn import MSDeformAttn

__all__ = ["DeformableEncoderLayer", "DeformableEncoder"]


class DeformableEncoderLayer(nn.Module):
    """MSDeformAttn self-attention + FFN, post-norm (Deformable DETR's encoder layer)."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        attn_impl: str = "auto",
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            impl=attn_impl,
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.activation = nn.ReLU(inplace=True)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            src: (B, S, C) tokens of all levels.
            pos: (B, S, C) position + level embeddings.
            reference_points: (B, S, L, 2) each token's centre on every level, in padded-map
                coordinates [0, 1].
            spatial_shapes: (L, 2) int64 [H, W]; level_start_index: (L,) int64.
            padding_mask: (B, S) bool, True at padding, or None.

        Returns:
            (B, S, C).
        """
        src2 = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` over the L maps of one frame."""

    @configurable
    def __init__(
        self,
        *,
        num_layers: int = 6,
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
            num_layers: encoder layers (paper 6).
            embed_dim: token channels C.
            num_heads: attention heads.
            num_levels: feature levels L.
            num_points: sampling points per head and level.
            dim_feedforward: FFN hidden channels.
            dropout: dropout rate.
            attn_impl: forwarded to ``MSDeformAttn``.
        """
        super().__init__()
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_points=num_points,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                attn_impl=attn_impl,
            )
            for _ in range(num_layers)
        )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        v = cfg.MODEL.VPOSE
        return {
            "num_layers": v.ENC_LAYERS,
            "embed_dim": v.HIDDEN_DIM,
            "num_heads": v.NHEADS,
            "num_levels": v.NUM_FEATURE_LEVELS,
            "num_points": v.ENC_N_POINTS,
            "dim_feedforward": v.DIM_FEEDFORWARD,
            "dropout": v.DROPOUT,
            "attn_impl": v.ATTN_IMPL,
        }

    @staticmethod
    def reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
        """Token centres, normalized to the valid region, seen on every level.

        Args:
            spatial_shapes: (L, 2) int64 [H, W].
            valid_ratios: (B, L, 2) [w, h].

        Returns:
            (B, S, L, 2) in padded-map coordinates of each level.
        """
        points = []
        device = valid_ratios.device
        for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ys = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            xs = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((xs, ys), -1))
        points = torch.cat(points, 1)
        return points[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            src: (B, S, C) flattened tokens of one frame's L maps.
            pos: (B, S, C) position + level embeddings.
            spatial_shapes: (L, 2) int64; level_start_index: (L,) int64.
            valid_ratios: (B, L, 2) [w, h].
            padding_mask: (B, S) bool, True at padding, or None.

        Returns:
            (B, S, C) memory.
        """
        reference_points = self.reference_points(spatial_shapes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out
