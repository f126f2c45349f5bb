"""Auxiliary keypoint heatmap on the encoder's finest level (training only).

PETR's public release trains a linear K-way heatmap on the stride-8 encoder tokens with a
penalty-reduced focal loss (CornerNet / CenterNet) next to its set losses; the papers do not
mention it. A dense per-joint target gives every token a gradient from the first iteration,
which is what lets a randomly initialised backbone learn joint-discriminative features in
minutes instead of the hours that the sparse set losses alone need. It adds nothing at
inference (the head is not called).

No maintained library in our stack (Detectron2, fvcore, timm) provides a Gaussian heatmap
focal loss over a padded token grid, hence this file.
"""

from typing import Dict, List

import torch
from torch import nn

from ..transformer.utils import bias_init_with_prob

__all__ = ["KeypointHeatmapHead", "gaussian_heatmap_targets", "heatmap_focal_loss"]


def gaussian_heatmap_targets(
    targets: List[Dict[str, torch.Tensor]],
    shape: torch.Size,
    valid_ratios: torch.Tensor,
    sigma: float,
) -> torch.Tensor:
    """Per-joint Gaussian targets on a token grid, peak exactly 1 at each visible joint's cell.

    Args:
        targets: per image ``keypoints`` (P, K, 2) normalized to the unpadded image and
            ``visible`` (P, K) bool (the criterion's targets).
        shape: (B, H, W, K) of the prediction.
        valid_ratios: (B, 2) [w, h] fraction of the padded grid that holds the image.
        sigma: Gaussian standard deviation in grid cells.

    Returns:
        (B, H, W, K) float targets in [0, 1], the maximum over persons.
    """
    b, h, w, k = shape
    device = valid_ratios.device
    out = torch.zeros(shape, device=device)
    ys = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w)
    grid_wh = valid_ratios * valid_ratios.new_tensor([w, h])  # cells covered by the image
    for i, tgt in enumerate(targets):
        kpts, vis = tgt["keypoints"].to(device), tgt["visible"].to(device)
        if kpts.numel() == 0 or not vis.any():
            continue
        # Cell index of each joint (centre of cell j is at (j + 0.5) / cells).
        cells = (kpts * grid_wh[i] - 0.5).round()  # (P, K, 2)
        cells = cells.clamp_min(0).minimum(cells.new_tensor([w - 1, h - 1]))
        cx, cy = cells[..., 0].reshape(-1), cells[..., 1].reshape(-1)  # (P*K,)
        g = torch.exp(
            -((xs - cx.view(-1, 1, 1)) ** 2 + (ys - cy.view(-1, 1, 1)) ** 2) / (2 * sigma**2)
        )  # (P*K, H, W)
        g = g * vis.reshape(-1, 1, 1)
        per_joint = g.view(kpts.shape[0], k, h, w).amax(0)  # (K, H, W)
        out[i] = per_joint.permute(1, 2, 0)
    return out


def heatmap_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss (CornerNet eq. 1), mean over positive cells.

    Args:
        logits: (B, H, W, K); target: (B, H, W, K) Gaussian targets (1 at the peaks);
        valid: (B, H, W) bool, False at padded cells (they add nothing).
    """
    logits = logits.float()
    pos = target.eq(1.0) & valid[..., None]
    neg = ~pos & valid[..., None]
    log_p = nn.functional.logsigmoid(logits)
    log_1mp = nn.functional.logsigmoid(-logits)
    p = logits.sigmoid()
    pos_term = -((1 - p) ** alpha) * log_p
    neg_term = -((1 - target) ** beta) * (p**alpha) * log_1mp
    num_pos = pos.sum().clamp_min(1)
    return (pos_term[pos].sum() + neg_term[neg].sum()) / num_pos


class KeypointHeatmapHead(nn.Module):
    """Linear K-way heatmap on the tokens of the finest level (stride 8); training only."""

    def __init__(self, embed_dim: int, num_keypoints: int, sigma: float = 1.0):
        """
        Args:
            embed_dim: token channels C.
            num_keypoints: joints K.
            sigma: target Gaussian's standard deviation in cells of the finest level.
        """
        super().__init__()
        self.sigma = sigma
        self.proj = nn.Linear(embed_dim, num_keypoints)
        # Start at a 1% foreground prior so the first steps are not swamped by negatives.
        nn.init.constant_(self.proj.bias, bias_init_with_prob(0.01))

    def loss(
        self,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: torch.Tensor,
        valid_ratios: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """
        Args:
            memory: (B, S, C) encoder memory of one frame per image (the supervised frame).
            padding_mask: (B, S) bool, True at padding.
            spatial_shapes: (L, 2) [H, W] per level; level 0 is the finest.
            valid_ratios: (B, L, 2).
            targets: the criterion's per-image targets for that frame.

        Returns:
            scalar loss (unweighted).
        """
        h, w = (int(v) for v in spatial_shapes[0].tolist())
        b = memory.shape[0]
        logits = self.proj(memory[:, : h * w]).view(b, h, w, -1)
        valid = ~padding_mask[:, : h * w].view(b, h, w)
        with torch.no_grad():
            target = gaussian_heatmap_targets(targets, logits.shape, valid_ratios[:, 0], self.sigma)
        return heatmap_focal_loss(logits, target, valid)
