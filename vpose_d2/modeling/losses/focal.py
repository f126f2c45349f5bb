"""Sigmoid focal loss (RetinaNet) and its matching cost (Deformable DETR)."""

import torch
from torch.nn import functional as F

__all__ = ["sigmoid_focal_loss", "focal_cost"]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Elementwise focal loss.

    Args:
        logits: (...) raw scores.
        targets: (...) in {0, 1} (same shape).
        alpha: weight of the positives (negatives get 1 - alpha); < 0 disables.
        gamma: focusing exponent.

    Returns:
        (...) unreduced loss.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def focal_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Cost of calling a query a person: focal loss as positive minus as negative.

    Args:
        logits: (Q,) raw scores.

    Returns:
        (Q,) cost (lower = better candidate).
    """
    # logsigmoid keeps the log terms finite for confident scores.
    prob = logits.sigmoid()
    pos = alpha * (1 - prob) ** gamma * (-F.logsigmoid(logits))
    neg = (1 - alpha) * prob**gamma * (-F.logsigmoid(-logits))
    return pos - neg
