"""Keypoint distances: masked L1 and OKS, pairwise (for matching) and elementwise (losses)."""

import torch

__all__ = ["pairwise_keypoint_l1", "pairwise_oks", "keypoint_l1", "keypoint_oks"]


def pairwise_keypoint_l1(
    pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """L1 distance over visible joints divided by 2 * #visible (x and y both count).

    Args:
        pred: (Q, K, 2) normalized predictions.
        gt: (G, K, 2) normalized ground truth.
        visible: (G, K) bool.

    Returns:
        (Q, G); 0 for a target without visible joints.
    """
    vis = visible.to(pred.dtype)
    diff = (pred[:, None] - gt[None]).abs().sum(-1)  # (Q, G, K)
    num = (2 * vis.sum(-1)).clamp(min=1)
    return (diff * vis[None]).sum(-1) / num[None]


def _oks_terms(sq_dist_px: torch.Tensor, areas: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """exp(-d^2 / (2 * area * (2 sigma)^2)) per joint (the COCO definition)."""
    var = (2 * sigmas) ** 2
    return torch.exp(-sq_dist_px / (2 * var * areas[..., None].clamp(min=1.0)))


def pairwise_oks(
    pred: torch.Tensor,
    gt: torch.Tensor,
    visible: torch.Tensor,
    areas: torch.Tensor,
    sigmas: torch.Tensor,
    size_wh: torch.Tensor,
) -> torch.Tensor:
    """Object keypoint similarity between every prediction and every target of one image.

    Args:
        pred: (Q, K, 2) normalized predictions.
        gt: (G, K, 2) normalized ground truth.
        visible: (G, K) bool.
        areas: (G,) person areas in pixels^2.
        sigmas: (K,) per-joint OKS sigmas.
        size_wh: (2,) image [w, h] in pixels (distances are measured in pixels).

    Returns:
        (Q, G) in [0, 1]; 0 for a target without visible joints.
    """
    d = (pred[:, None] - gt[None]) * size_wh
    terms = _oks_terms((d**2).sum(-1), areas[None], sigmas)  # (Q, G, K)
    vis = visible.to(pred.dtype)[None]
    return (terms * vis).sum(-1) / vis.sum(-1).clamp(min=1)


def keypoint_l1(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Elementwise version of :func:`pairwise_keypoint_l1`: (P, K, 2) x2, (P, K) -> (P,)."""
    vis = visible.to(pred.dtype)
    return ((pred - gt).abs().sum(-1) * vis).sum(-1) / (2 * vis.sum(-1)).clamp(min=1)


def keypoint_oks(
    pred: torch.Tensor,
    gt: torch.Tensor,
    visible: torch.Tensor,
    areas: torch.Tensor,
    sigmas: torch.Tensor,
    size_wh: torch.Tensor,
) -> torch.Tensor:
    """Elementwise OKS: (P, K, 2) x2, (P, K), (P,), (K,), (P, 2) [w, h] -> (P,)."""
    d = (pred - gt) * size_wh[:, None]
    terms = _oks_terms((d**2).sum(-1), areas, sigmas)
    vis = visible.to(pred.dtype)
    return (terms * vis).sum(-1) / vis.sum(-1).clamp(min=1)
