"""Hungarian matcher between pose predictions and ground-truth persons."""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.utils.events import get_event_storage
from scipy.optimize import linear_sum_assignment
from torch import nn

from .losses import focal_cost, pairwise_keypoint_l1, pairwise_oks

__all__ = ["HungarianPoseMatcher"]


def _raise_non_finite(cost: torch.Tensor, image: int) -> None:
    """Detectron2's contract for a diverged run: a FloatingPointError naming the iteration
    (scipy would stop with "matrix contains invalid numeric entries")."""
    try:
        where = f"at iteration {get_event_storage().iter}"
    except AssertionError:  # not inside a trainer's EventStorage
        where = "outside training"
    n = int((~torch.isfinite(cost)).sum())
    raise FloatingPointError(
        f"Hungarian matcher {where}: the matching cost of image {image} in the batch has {n} "
        f"non-finite entries of {cost.numel()}: the model's predictions (logits or keypoints) "
        f"are NaN or inf, i.e. training diverged (lower SOLVER.BASE_LR, or check the "
        f"gradient clipping and the inputs)."
    )


class HungarianPoseMatcher(nn.Module):
    """One-to-one assignment minimizing focal + keypoint L1 + (-OKS) costs per image.

    Targets are dicts (one per image) with ``keypoints`` (G, K, 2) normalized, ``visible``
    (G, K) bool, ``areas`` (G,) pixels^2 and ``size_wh`` (2,) [w, h] pixels.
    """

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_keypoint: float = 70.0,
        cost_oks: float = 7.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        """
        Args:
            cost_class: weight of the focal classification cost.
            cost_keypoint: weight of the keypoint L1 cost (visible joints / (2 * #visible)).
            cost_oks: weight of the -OKS cost.
            focal_alpha, focal_gamma: focal parameters of the classification cost.
        """
        super().__init__()
        self.cost_class = cost_class
        self.cost_keypoint = cost_keypoint
        self.cost_oks = cost_oks
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg) -> Dict:
        v = cfg.MODEL.VPOSE
        return {
            "cost_class": v.MATCHER.COST_CLASS,
            "cost_keypoint": v.MATCHER.COST_KEYPOINT,
            "cost_oks": v.MATCHER.COST_OKS,
            "focal_alpha": v.LOSS.FOCAL_ALPHA,
            "focal_gamma": v.LOSS.FOCAL_GAMMA,
        }

    def cost_matrix(
        self,
        logits: torch.Tensor,
        poses: torch.Tensor,
        target: Dict[str, torch.Tensor],
        sigmas: torch.Tensor,
    ) -> torch.Tensor:
        """Matching cost of one image.

        Args:
            logits: (Q,) class logits; poses: (Q, K, 2) normalized keypoints.
            target: one image's target dict (see class docstring).
            sigmas: (K,) OKS sigmas.

        Returns:
            (Q, G) cost.
        """
        logits, poses = logits.float(), poses.float()
        c_cls = focal_cost(logits, self.focal_alpha, self.focal_gamma)[:, None]
        c_kpt = pairwise_keypoint_l1(poses, target["keypoints"], target["visible"])
        oks = pairwise_oks(
            poses,
            target["keypoints"],
            target["visible"],
            target["areas"],
            sigmas,
            target["size_wh"],
        )
        return self.cost_class * c_cls + self.cost_keypoint * c_kpt - self.cost_oks * oks

    @torch.no_grad()
    def forward(
        self,
        logits: torch.Tensor,
        poses: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        sigmas: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            logits: (B, Q) class logits.
            poses: (B, Q, K, 2) normalized keypoints.
            targets: B target dicts.
            sigmas: (K,) OKS sigmas.
            valid: (B, Q) bool, False for predictions that must stay unmatched, or None.

        Returns:
            B pairs (query indices (M,), target indices (M,)) int64 on CPU,
            M = min(#valid queries, G), sorted by query index.
        """
        if len(targets) != logits.shape[0]:
            raise ValueError(f"matcher: {logits.shape[0]} images but {len(targets)} targets")
        indices = []
        for b, target in enumerate(targets):
            g = target["keypoints"].shape[0]
            if g == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            keep = None
            lg, ps = logits[b], poses[b]
            if valid is not None:
                keep = valid[b].nonzero().squeeze(1)
                lg, ps = lg[keep], ps[keep]
            cost = self.cost_matrix(lg, ps, target, sigmas).cpu()
            if not torch.isfinite(cost).all():
                _raise_non_finite(cost, b)
            rows, cols = linear_sum_assignment(cost.numpy())
            rows = torch.as_tensor(rows, dtype=torch.int64)
            cols = torch.as_tensor(cols, dtype=torch.int64)
            if keep is not None:
                rows = keep.cpu()[rows]
            order = rows.argsort()
            indices.append((rows[order], cols[order]))
        return indices
