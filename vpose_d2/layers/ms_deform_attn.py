"""Multi-scale deformable attention (Deformable DETR), the op every vpose_d2 model runs on.

Three layers of API:

* :func:`ms_deform_attn_reference`: pure PyTorch (``F.grid_sample``), always available, the
  oracle of the tests.
* :func:`ms_deform_attn`: checks its inputs, then runs the compiled kernel of
  ``vpose_d2._C`` (``torch.ops.vpose_d2.ms_deform_attn_forward``) or the reference.
* :class:`MSDeformAttn`: the attention module (value / offset / weight / output projections),
  on :class:`DeformableAttentionBase`, which the frame attentions of the video models share.

Semantics: for each batch b, query q and head m,
``out[b, q, m*D:(m+1)*D] = sum_{l,p} attention_weights[b,q,m,l,p] *
bilinear(value level l of head m, sampling_locations[b,q,m,l,p])`` where the bilinear sample
is that of ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` and
locations are (x, y) normalized to [0, 1] over each level. A clip of T frames is T*L levels:
concatenate the frames' maps along S and repeat the shapes, one softmax then spans all T*L*P
samples of a head.

Non-finite inputs behave the same in every implementation (compiled CPU and CUDA kernels and
the reference), as ``F.grid_sample`` and IEEE arithmetic make them, never as a silent zero:

* a NaN or +-inf sampling location makes the output of its (b, q, head) NaN in all D channels;
  its attention weight gets a NaN gradient, its location a NaN gradient in the component whose
  partner coordinate is non-finite (0 in the other: that is grid_sample's), and ``value`` gets
  no gradient from it;
* a NaN or inf attention weight gives a NaN output (inf times a finite non-zero sample gives
  +-inf), also for a sample off the map (0 * inf); its gradients are non-finite too, but
  whether an entry is NaN or +-inf may differ between implementations.

Second-order gradients: the reference supports them; through the compiled kernels a backward
of a gradient raises RuntimeError (it is not implemented).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpose_d2 import _ops

__all__ = [
    "IMPLS",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "DeformableAttentionBase",
    "MSDeformAttn",
    "ring_sampling_offsets",
]

#: Accepted values of ``impl``.
IMPLS = ("auto", "compiled", "reference")


def _zeros_connected(value: Tensor, locations: Tensor, weights: Tensor, shape) -> Tensor:
    """Zeros of ``shape`` that depend on the inputs, so autograd gives them zero gradients."""
    anchor = value.sum() * 0 + locations.sum() * 0 + weights.sum() * 0
    return anchor.expand(shape).contiguous()


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention in pure PyTorch (``F.grid_sample`` per level).

    Works level by level so that the largest intermediate is one level's samples,
    (B*M, D, Q, P), instead of all levels' stacked.

    Args:
        value: (B, S, M, D) per-head values of the L maps flattened and concatenated along S.
        spatial_shapes: (L, 2) int64, (H, W) of each level.
        level_start_index: (L,) int64, offset of each level along S.
        sampling_locations: (B, Q, M, L, P, 2) (x, y) in [0, 1] of each level.
        attention_weights: (B, Q, M, L, P).

    Returns:
        (B, Q, M*D) attended values, heads concatenated.
    """
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    if B * Q * M * D == 0 or L == 0:
        return _zeros_connected(value, sampling_locations, attention_weights, (B, Q, M * D))
    # (H, W) and offsets as Python ints: slicing needs them (a device sync on CUDA, which only
    # the reference pays).
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    # grid_sample's grid lives in [-1, 1].
    grids = sampling_locations * 2 - 1
    out = None
    for lvl, ((H, W), start) in enumerate(zip(shapes, starts)):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        v = value[:, start : start + H * W].permute(0, 2, 3, 1).reshape(B * M, D, H, W)
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * M, Q, P, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        # (B, Q, M, P) -> (B*M, 1, Q, P); weighted sum over points -> (B*M, D, Q)
        w = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(B * M, 1, Q, P)
        level_out = (sampled * w).sum(-1)
        out = level_out if out is None else out + level_out
    assert out is not None  # L > 0
    # (B*M, D, Q) -> (B, Q, M*D)
    return out.view(B, M, D, Q).permute(0, 3, 1, 2).reshape(B, Q, M * D)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: str = "auto",
) -> Tensor:
    """Multi-scale deformable attention; differentiable w.r.t. value, locations and weights.

    Args:
        value: (B, S, M, D) per-head values of the L maps flattened and concatenated along S.
        spatial_shapes: (L, 2) int64, (H, W) of each level, on value's device.
        level_start_index: (L,) int64, offset of each level along S, on value's device.
        sampling_locations: (B, Q, M, L, P, 2) (x, y) normalized to [0, 1] per level; points
            outside the map sample zeros.
        attention_weights: (B, Q, M, L, P), same dtype as value (normally a softmax over L*P).
        impl: "auto" runs the compiled kernel when ``vpose_d2._C`` was built with one for the
            tensors' device and the reference otherwise (the choice depends on the build, never
            on ``torch.cuda.is_available()``); "compiled" insists on the kernel and raises
            RuntimeError saying why it is missing; "reference" runs the pure-PyTorch version.

    Returns:
        (B, Q, M*D) attended values, heads concatenated.
    """
    if impl not in IMPLS:
        raise ValueError(f"ms_deform_attn: `impl` must be one of {IMPLS}, got {impl!r}")
    _ops.check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    device_type = value.device.type
    if impl == "compiled":
        _ops.require_kernel(device_type)
    elif impl == "reference" or not _ops.has_kernel(device_type):
        return ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return torch.ops.vpose_d2.ms_deform_attn_forward(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


def ring_sampling_offsets(num_heads: int, num_levels: int, num_points: int) -> Tensor:
    """Deformable DETR's initial sampling offsets, (M, L, P, 2).

    Head m looks in direction 2*pi*m/M (scaled so the larger component is 1), point p at
    distance p+1, the same on every level: with zero offset weights the heads start looking
    around the reference in different directions instead of all at its centre.
    """
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = grid / grid.abs().max(-1, keepdim=True)[0]
    grid = grid.view(num_heads, 1, 1, 2).repeat(1, num_levels, num_points, 1)
    return grid * torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)


class DeformableAttentionBase(nn.Module):
    """The projections of a deformable attention and the step from sampling locations and
    weights to its output; subclasses initialize the projections and turn queries and their
    references into locations and weights.

    ``sampling_offsets`` (C -> M * N * 2) and ``attention_weights`` (C -> M * N) read the
    query, for N samples per head; ``value_proj`` and ``output_proj`` are C -> C.
    """

    def __init__(self, *, embed_dim: int, num_heads: int, num_samples: int, impl: str):
        """
        Args:
            embed_dim: channels C of queries and values; divisible by ``num_heads``.
            num_heads: attention heads M.
            num_samples: samples N per query and head, all levels (and frames) together.
            impl: kernel choice passed to :func:`ms_deform_attn`.
        """
        super().__init__()
        name = type(self).__name__
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"{name}: embed_dim={embed_dim} is not divisible by num_heads={num_heads}"
            )
        if impl not in IMPLS:
            raise ValueError(f"{name}: `impl` must be one of {IMPLS}, got {impl!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.impl = impl
        # The trainer gives `sampling_offsets` an lr multiplier by this name.
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_samples * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_samples)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def project_value(self, value: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """(B, S, C) values -> (B, S, M, C / M) per-head projections, zero where
        ``padding_mask`` (B, S) is True."""
        b, s, _ = value.shape
        v = self.value_proj(value)
        if padding_mask is not None:
            if tuple(padding_mask.shape) != (b, s):
                raise ValueError(
                    f"{type(self).__name__}: the padding mask must be (B={b}, S={s}), got "
                    f"{tuple(padding_mask.shape)}"
                )
            v = v.masked_fill(padding_mask[..., None], 0.0)
        return v.view(b, s, self.num_heads, self.embed_dim // self.num_heads)

    def value_heads(
        self,
        value: Tensor,
        padding_mask: Optional[Tensor] = None,
        projected: Optional[Tensor] = None,
    ) -> Tensor:
        """The (B, S, M, C / M) values the op samples: :meth:`project_value` of ``value``
        (B, S, C) and ``padding_mask`` (B, S), or ``projected`` when the caller already has
        that projection (a streaming cache of per-frame projections), checked against
        ``value``'s (B, S)."""
        if projected is None:
            return self.project_value(value, padding_mask)
        b, s = value.shape[:2]
        expected = (b, s, self.num_heads, self.embed_dim // self.num_heads)
        if tuple(projected.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: projected values must be (B, S, M, C / M) = "
                f"{expected} for `value` {tuple(value.shape)}, got {tuple(projected.shape)}"
            )
        return projected

    def attend(
        self,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        """:func:`ms_deform_attn` on :meth:`project_value`'s (B, S, M, D), then the output
        projection: (B, Q, C)."""
        # Under autocast the projections give float16 while the softmax and reference points
        # stay float32: run the op in the widest of them (locations lose sub-pixel precision
        # in float16 on large maps).
        dtype = torch.promote_types(
            torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
        )
        out = ms_deform_attn(
            value.to(dtype),
            spatial_shapes,
            level_start_index,
            sampling_locations.to(dtype),
            attention_weights.to(dtype),
            impl=self.impl,
        )
        return self.output_proj(out.to(value.dtype))


class MSDeformAttn(DeformableAttentionBase):
    """Multi-scale deformable attention module (Deformable DETR, Zhu et al. 2021).

    Each query predicts, per head, level and point, a sampling offset around its reference
    point and an attention weight (softmax over the L*P samples of a head). For a clip, pass
    the T frames' maps as T*L levels (``num_levels = T*L``): one softmax then weighs all frames.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        impl: str = "auto",
    ):
        """
        Args:
            embed_dim: channels C of queries and values; divisible by ``num_heads``.
            num_heads: attention heads M.
            num_levels: feature levels L the queries sample (T*L for a clip of T frames).
            num_points: sampling points P per head and level.
            impl: kernel choice passed to :func:`ms_deform_attn`.
        """
        super().__init__(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_samples=num_levels * num_points,
            impl=impl,
        )
        self.num_levels = num_levels
        self.num_points = num_points
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialization.

        Offsets start at a ring: head m looks in direction 2*pi*m/M (scaled so the larger
        component is 1 pixel), point p at distance p+1, the same on every level. With zero
        offset weights and zero attention weights every query initially averages this fixed
        pattern uniformly, which trains stably.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        grid = ring_sampling_offsets(self.num_heads, self.num_levels, self.num_points)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        value_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (B, Q, C) queries (position embedding already added).
            reference_points: (B, Q, L, 2) (x, y) in [0, 1] per level, offsets then count in
                pixels of each level; or (B, Q, L, 4) boxes (cx, cy, w, h) in [0, 1], offsets
                then count in units of half the box over ``num_points``.
            value: (B, S, C) flattened maps of the L levels, concatenated along S.
            spatial_shapes: (L, 2) int64 (H, W) per level.
            level_start_index: (L,) int64 offset of each level in S.
            value_padding_mask: (B, S) bool, True at padded positions (they contribute zero).

        Returns:
            (B, Q, C) attended features.
        """
        B, Q, C = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if value.dim() != 3 or value.shape[0] != B or value.shape[2] != C:
            raise ValueError(
                f"MSDeformAttn: `value` must be (B={B}, S, C={C}), got {tuple(value.shape)}"
            )
        if spatial_shapes.shape[0] != L:
            raise ValueError(
                f"MSDeformAttn: `spatial_shapes` has {spatial_shapes.shape[0]} levels, the module "
                f"was built for num_levels={L}"
            )
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (B, Q, L):
            raise ValueError(
                f"MSDeformAttn: `reference_points` must be (B={B}, Q={Q}, L={L}, 2 or 4), got "
                f"{tuple(reference_points.shape)}"
            )

        v = self.project_value(value, value_padding_mask)

        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P)
        weights = weights.softmax(-1).view(B, Q, M, L, P)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W, H).
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[
                None, None, None, :, None, :
            ].to(offsets.dtype)
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                "MSDeformAttn: `reference_points` last dim must be 2 (points) or 4 (boxes), got "
                f"{reference_points.shape[-1]}"
            )
        return self.attend(v, spatial_shapes, level_start_index, locations, weights)
