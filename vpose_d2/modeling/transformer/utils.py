"""Small tensor helpers shared by the transformer parts."""

from typing import List, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "inverse_sigmoid",
    "valid_ratios_from_mask",
    "flatten_levels",
    "pose_half_size",
    "bias_init_with_prob",
    "refine_per_frame",
    "next_references",
]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped into [eps, 1 - eps] (references live in this space)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_per_frame(
    refs: torch.Tensor, queries: torch.Tensor, mlps: Sequence[nn.Module]
) -> torch.Tensor:
    """Frame t's points ``sigmoid(logit(refs_t) + mlps[t](queries))`` (PETR eq. 4 / PAVE eq. 6).

    Args:
        refs: (B, T, ..., K, 2) references in [0, 1].
        queries: (B, ..., C) the queries the T MLPs read (their outputs reshape to refs[:, t]).
        mlps: T refinement MLPs, one per frame.

    Returns:
        Refined points, ``refs``' shape.
    """
    deltas = torch.stack([mlp(queries) for mlp in mlps], 1)
    return (inverse_sigmoid(refs) + deltas.view_as(refs)).sigmoid()


def next_references(points: torch.Tensor, key_index: int, neighbour_grad: bool) -> torch.Tensor:
    """Refined points (B, T, ...) as the next stage's references.

    Each stage learns a residual on a fixed reference, so references are detached, as in
    DETR. Only the key frame is supervised, though: with ``neighbour_grad`` (PAVE-Net) the
    neighbour frames keep their gradient into the next stage's sampling locations, else their
    refinement MLPs would never learn; the key frame is detached all the same.
    """
    if not neighbour_grad or points.shape[1] == 1:
        return points.detach()
    return torch.cat(
        (
            points[:, :key_index],
            points[:, key_index : key_index + 1].detach(),
            points[:, key_index + 1 :],
        ),
        1,
    )


def bias_init_with_prob(prior_prob: float) -> float:
    """Bias whose sigmoid is ``prior_prob`` (focal-loss classifier initialization)."""
    return float(-torch.log(torch.tensor((1 - prior_prob) / prior_prob)))


def valid_ratios_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of a padded map that holds image content.

    Args:
        mask: (B, H, W) bool, True at padding.

    Returns:
        (B, 2) [w_valid / W, h_valid / H].
    """
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack([valid_w / w, valid_h / h], dim=-1)


def flatten_levels(
    features: List[torch.Tensor], masks: List[torch.Tensor], pos: List[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate L feature maps into one token sequence.

    Args:
        features: L tensors (B, C, H_l, W_l).
        masks: L tensors (B, H_l, W_l) bool, True at padding.
        pos: L tensors (B, C, H_l, W_l), position (+ level) embeddings.

    Returns:
        src (B, S, C), mask (B, S), pos (B, S, C), spatial_shapes (L, 2) int64 [H, W],
        level_start_index (L,) int64, valid_ratios (B, L, 2) [w, h].
    """
    shapes = [f.shape[-2:] for f in features]
    spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=features[0].device)
    level_start_index = torch.cat(
        (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
    )
    src = torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)
    mask = torch.cat([m.flatten(1) for m in masks], 1)
    pos_flat = torch.cat([p.flatten(2).transpose(1, 2) for p in pos], 1)
    valid_ratios = torch.stack([valid_ratios_from_mask(m) for m in masks], 1)
    return src, mask, pos_flat, spatial_shapes, level_start_index, valid_ratios


def pose_half_size(poses: torch.Tensor, min_size: float = 1e-2) -> torch.Tensor:
    """Half width and height of the box around each pose.

    Args:
        poses: (..., K, 2) normalized keypoints.
        min_size: lower bound of the half size; a collapsed pose (all joints at one point,
            as proposals start) still gets sampling offsets with a usable scale.

    Returns:
        (..., 2) [w / 2, h / 2].
    """
    extent = poses.amax(-2) - poses.amin(-2)
    return (0.5 * extent).clamp(min=min_size)
