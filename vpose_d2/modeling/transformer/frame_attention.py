"""Deformable cross-attention over the maps of T frames with per-frame references.

Both attentions here read one memory that concatenates the L maps of every frame along the
token axis, ``(B, T * S, C)``, with the spatial shapes repeated T times (``T * L`` levels,
frame-major: level index ``t * L + l``). Every frame has its own sampling-offset and
attention-weight projection (its slice of one wider linear layer) and its own reference;
the weights of all ``T * L * P`` samples of a head go through one softmax, so a query
weighs frames against each other (PAVE-Net's joint temporal weighting). With ``T = 1``
this is the image model's attention.

The values the op samples are ``value_proj`` of the memory, per token; a caller that has them
already (PAVE-Net's streaming cache of per-frame projections) passes them as
``projected_value`` (B, T * S, M, C / M) and the attention skips its projection.
"""

from typing import Optional

import torch
from torch import nn

from vpose_d2.layers.ms_deform_attn import DeformableAttentionBase, ring_sampling_offsets

from .utils import pose_half_size

__all__ = ["PoseAwareDeformableAttention", "PointDeformableAttention"]


class _FrameDeformableAttentionBase(DeformableAttentionBase):
    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        num_frames: int,
        impl: str,
    ):
        super().__init__(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_samples=num_frames * num_levels * num_points,
            impl=impl,
        )
        self.num_levels = num_levels
        self.num_points = num_points
        self.num_frames = num_frames
        nn.init.zeros_(self.sampling_offsets.weight)
        nn.init.zeros_(self.sampling_offsets.bias)
        # Zero weights and biases: every sample starts equally weighted.
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        # The output projection starts at zero: a new layer is the identity on its residual.
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def _check(self, value: torch.Tensor, spatial_shapes: torch.Tensor, valid_ratios):
        t, l = self.num_frames, self.num_levels
        if spatial_shapes.shape != (t * l, 2):
            raise ValueError(
                f"{type(self).__name__}: spatial_shapes must be ({t}*{l}, 2) for {t} frames of "
                f"{l} levels, got {tuple(spatial_shapes.shape)}"
            )
        if valid_ratios.shape[1:] != (t * l, 2):
            raise ValueError(
                f"{type(self).__name__}: valid_ratios must be (B, {t * l}, 2), "
                f"got {tuple(valid_ratios.shape)}"
            )

    def _attend(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        padding_mask: Optional[torch.Tensor],
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        locations: torch.Tensor,
        projected_value: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Weights from the query, one softmax over all T*L*P samples, the op, projection.

        ``locations`` is (B, Q, T, M, L, P, 2) in padded-map coordinates; ``projected_value``
        (B, T * S, M, C / M) or None (then ``value`` and ``padding_mask`` are projected).
        """
        b, q, _ = query.shape
        t, m, l, p = self.num_frames, self.num_heads, self.num_levels, self.num_points
        v = self.value_heads(value, padding_mask, projected_value)
        weights = self.attention_weights(query).view(b, q, t, m, l * p)
        # F.softmax subtracts the max, so large logits stay finite in fp16/bf16.
        weights = weights.transpose(2, 3).reshape(b, q, m, t * l * p).softmax(-1)
        weights = weights.view(b, q, m, t * l, p)
        locations = locations.permute(0, 1, 3, 2, 4, 5, 6).reshape(b, q, m, t * l, p, 2)
        return self.attend(v, spatial_shapes, level_start_index, locations, weights)


class PoseAwareDeformableAttention(_FrameDeformableAttentionBase):
    """Pose-aware attention: K samples per head, level and frame at the query's keypoints.

    A query's points in frame t are its reference pose R_t (K keypoints) plus learned
    offsets in units of half R_t's box, so every point stays attached to "its" joint of
    "its" person as the pose moves between frames.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_keypoints: int,
        num_frames: int = 1,
        impl: str = "auto",
    ):
        """
        Args:
            embed_dim: query / memory channels C.
            num_heads: attention heads M.
            num_levels: feature levels L per frame.
            num_keypoints: joints K (= sampling points per head, level and frame).
            num_frames: frames T in the memory.
            impl: forwarded to ``ms_deform_attn``.
        """
        super().__init__(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_keypoints,
            num_frames=num_frames,
            impl=impl,
        )

    def forward(
        self,
        query: torch.Tensor,
        reference_poses: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        projected_value: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Q, C) queries (content + position).
            reference_poses: (B, T, Q, K, 2) per-frame reference poses, normalized to the
                unpadded image.
            value: (B, T * S, C) memories of the T frames concatenated along S.
            spatial_shapes: (T * L, 2) int64 [H, W] per level, frame-major.
            level_start_index: (T * L,) int64.
            valid_ratios: (B, T * L, 2) [w, h] fraction of each padded map with content.
            padding_mask: (B, T * S) bool, True at padded tokens, or None.
            projected_value: (B, T * S, M, C / M) :meth:`project_value` of ``value`` and
                ``padding_mask``, precomputed; None projects them here.

        Returns:
            (B, Q, C).
        """
        self._check(value, spatial_shapes, valid_ratios)
        b, q, _ = query.shape
        t, m, l, k = self.num_frames, self.num_heads, self.num_levels, self.num_points
        if reference_poses.shape != (b, t, q, k, 2):
            raise ValueError(
                f"PoseAwareDeformableAttention: reference_poses must be {(b, t, q, k, 2)}, "
                f"got {tuple(reference_poses.shape)}"
            )
        offsets = self.sampling_offsets(query).view(b, q, t, m, l, k, 2)
        refs = reference_poses.permute(0, 2, 1, 3, 4)  # (B, Q, T, K, 2)
        half = pose_half_size(refs)[:, :, :, None, None, None, :]  # (B, Q, T, 1, 1, 1, 2)
        loc = refs[:, :, :, None, None] + offsets * half  # (B, Q, T, M, L, K, 2)
        vr = valid_ratios.view(b, 1, t, 1, l, 1, 2)
        return self._attend(
            query,
            value,
            padding_mask,
            spatial_shapes,
            level_start_index,
            loc * vr,
            projected_value,
        )


class PointDeformableAttention(_FrameDeformableAttentionBase):
    """Deformable attention around one reference point per query and frame (joint queries).

    Offsets are in units of the level's feature cells, as in Deformable DETR.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        num_frames: int = 1,
        impl: str = "auto",
    ):
        """
        Args:
            embed_dim: query / memory channels C.
            num_heads: attention heads M.
            num_levels: feature levels L per frame.
            num_points: samples P per head, level and frame.
            num_frames: frames T in the memory.
            impl: forwarded to ``ms_deform_attn``.
        """
        super().__init__(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
            num_frames=num_frames,
            impl=impl,
        )
        # Start the P points of each head on a ray in the head's own direction (Deformable
        # DETR's init), so the heads look around the joint instead of all at its centre.
        # The same ring for every frame: offsets are laid out (T, M, L, P, 2).
        grid = ring_sampling_offsets(num_heads, num_levels, num_points)
        grid = grid.unsqueeze(0).repeat(num_frames, 1, 1, 1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        projected_value: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Q, C) queries (content + position).
            reference_points: (B, T, Q, 2) per-frame points, normalized to the unpadded
                image.
            value: (B, T * S, C) memories of the T frames concatenated along S.
            spatial_shapes: (T * L, 2) int64 [H, W], frame-major.
            level_start_index: (T * L,) int64.
            valid_ratios: (B, T * L, 2).
            padding_mask: (B, T * S) bool, True at padded tokens, or None.
            projected_value: (B, T * S, M, C / M) :meth:`project_value` of ``value`` and
                ``padding_mask``, precomputed; None projects them here.

        Returns:
            (B, Q, C).
        """
        self._check(value, spatial_shapes, valid_ratios)
        b, q, _ = query.shape
        t, m, l, p = self.num_frames, self.num_heads, self.num_levels, self.num_points
        if reference_points.shape != (b, t, q, 2):
            raise ValueError(
                f"PointDeformableAttention: reference_points must be {(b, t, q, 2)}, "
                f"got {tuple(reference_points.shape)}"
            )
        offsets = self.sampling_offsets(query).view(b, q, t, m, l, p, 2)
        # [W, H] of each level, as (1, 1, T, 1, L, 1, 2).
        cells = spatial_shapes.flip(-1).to(offsets.dtype).view(1, 1, t, 1, l, 1, 2)
        vr = valid_ratios.view(b, 1, t, 1, l, 1, 2)
        refs = reference_points.permute(0, 2, 1, 3)[:, :, :, None, None, None, :]
        loc = refs * vr + offsets / cells
        return self._attend(
            query, value, padding_mask, spatial_shapes, level_start_index, loc, projected_value
        )
