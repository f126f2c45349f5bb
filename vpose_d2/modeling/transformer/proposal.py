"""Pose proposals: every encoder token of the key frame regresses a full pose and a score."""

from typing import Dict

import torch
from detectron2.config import configurable
from torch import nn

from vpose_d2.layers.mlp import MLP

from .utils import bias_init_with_prob, inverse_sigmoid

__all__ = ["PoseProposalHead"]


class PoseProposalHead(nn.Module):
    """Token-wise pose regression and scoring; the top N seed the pose decoder.

    A token's pose is ``sigmoid(logit(c) + delta_k)`` for its grid centre c (normalized to
    the valid image) and K regressed offsets ``delta_k`` in inverse-sigmoid space.
    """

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_keypoints: int,
        num_queries: int = 300,
        prior_prob: float = 0.01,
    ):
        """
        Args:
            embed_dim: token channels C.
            num_keypoints: joints K.
            num_queries: proposals N kept as pose queries.
            prior_prob: initial foreground probability of the score head.
        """
        super().__init__()
        self.num_keypoints = num_keypoints
        self.num_queries = num_queries
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.output_norm = nn.LayerNorm(embed_dim)
        self.class_head = nn.Linear(embed_dim, 1)
        nn.init.constant_(self.class_head.bias, bias_init_with_prob(prior_prob))
        # Zero last layer: proposals start as a point at the token centre.
        self.pose_head = MLP(embed_dim, embed_dim, 2 * num_keypoints, 3).zero_last()
        self.sigma_head = nn.Linear(embed_dim, 2 * num_keypoints)

    @classmethod
    def from_config(cls, cfg, num_keypoints: int) -> Dict:
        v = cfg.MODEL.VPOSE
        return {
            "embed_dim": v.HIDDEN_DIM,
            "num_keypoints": num_keypoints,
            "num_queries": v.NUM_QUERIES,
            "prior_prob": v.PRIOR_PROB,
        }

    @staticmethod
    def token_centres(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
        """(B, S, 2) token centres normalized to each image's valid region."""
        centres = []
        for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                indexing="ij",
            )
            grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)[None]  # (1, HW, 2)
            scale = valid_ratios[:, lvl] * valid_ratios.new_tensor([w, h])  # (B, 2)
            centres.append(grid / scale[:, None])
        return torch.cat(centres, 1)

    def forward(
        self,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: torch.Tensor,
        valid_ratios: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            memory: (B, S, C) encoder memory of the key frame.
            padding_mask: (B, S) bool, True at padding.
            spatial_shapes: (L, 2) int64 [H, W].
            valid_ratios: (B, L, 2).

        Returns:
            dict with ``logits`` (B, S), ``poses`` (B, S, K, 2) in [0, 1], ``sigmas``
            (B, S, K, 2), ``valid`` (B, S) bool (tokens inside the image),
            ``topk_indices`` (B, N), ``reference_poses`` (B, N, K, 2) detached,
            ``query_content`` (B, N, C).
        """
        b, s, _ = memory.shape
        k = self.num_keypoints
        centres = self.token_centres(spatial_shapes, valid_ratios)
        # Deformable DETR's two-stage rule: tokens at the very border or in the padding
        # give no proposals.
        valid = ~padding_mask & ((centres > 0.01) & (centres < 0.99)).all(-1)
        out_mem = self.output_norm(self.output_proj(memory))
        logits = self.class_head(out_mem).squeeze(-1)
        deltas = self.pose_head(out_mem).view(b, s, k, 2)
        poses = (inverse_sigmoid(centres)[:, :, None] + deltas).sigmoid()
        sigmas = self.sigma_head(out_mem).sigmoid().view(b, s, k, 2)
        n = min(self.num_queries, s)
        masked = logits.detach().masked_fill(~valid, float("-inf"))
        topk = masked.topk(n, dim=1).indices
        ref = torch.gather(poses.detach(), 1, topk[:, :, None, None].expand(-1, -1, k, 2))
        content = torch.gather(out_mem, 1, topk[:, :, None].expand(-1, -1, out_mem.shape[-1]))
        return {
            "logits": logits,
            "poses": poses,
            "sigmas": sigmas,
            "valid": valid,
            "topk_indices": topk,
            "reference_poses": ref,
            "query_content": content,
        }
