"""VEPE's instance queries (the VEPE paper section 3.6): one learned embedding per pose-query slot
that reads its pose query and the frame's features at the pose's keypoints, giving the selected
query an instance embedding (the instance mask of STPE, the triplet loss, track ids)."""

from typing import Dict

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from vpose_d2.layers.mlp import MLP

from ..clip_memory import ClipMemory
from .pose_decoder import PoseDecoderLayer

__all__ = ["InstanceQueries"]


class InstanceQueries(nn.Module):
    """Instance embeddings of a frame's selected pose queries.

    Instance query ``n`` belongs to pose-query slot ``n`` of the spatial stage ("linked one to
    one with its pose query"). It starts as its learned embedding plus a projection of its pose
    query (attention of one query over the single pose query it is linked to: a softmax over
    one key is 1, so that attention is this linear map), then each layer lets the frame's
    selected instance queries attend to each other (self-attention, invalid slots left out)
    and samples the frame's memory at the pose's keypoints (pose-aware deformable attention,
    one frame), FFN. A linear head, a BatchNorm over the selected queries (``head_norm``) and L2
    normalization give the embedding.
    """

    @configurable
    def __init__(
        self,
        *,
        num_queries: int,
        num_keypoints: int,
        embed_dim: int = 256,
        out_dim: int = 128,
        num_layers: int = 1,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        attn_impl: str = "auto",
        head_norm: str = "BN",
    ):
        """
        Args:
            num_queries: pose-query slots N of the spatial stage (one instance query each).
            num_keypoints: joints K.
            embed_dim: query / memory channels C (the pose queries').
            out_dim: instance embedding size E.
            num_layers: layers (>= 1).
            num_heads, dim_feedforward, dropout, num_levels: transformer sizes.
            attn_impl: forwarded to ``ms_deform_attn``.
            head_norm: "BN": a BatchNorm1d over the selected queries' head outputs before the
                L2 normalization (see MODEL.VEPE.INSTANCE_HEAD_NORM); "": none.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.VEPE.INSTANCE_LAYERS={num_layers} must be >= 1")
        if head_norm not in ("BN", ""):
            raise ValueError(f"MODEL.VEPE.INSTANCE_HEAD_NORM={head_norm!r} must be 'BN' or ''")
        self.num_queries = num_queries
        self.query_embed = nn.Embedding(num_queries, embed_dim)
        self.pose_proj = nn.Linear(embed_dim, embed_dim)
        self.pos_head = MLP(2 * num_keypoints, embed_dim, embed_dim, 2)
        self.layers = nn.ModuleList(
            PoseDecoderLayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                num_levels=num_levels,
                num_keypoints=num_keypoints,
                num_frames=1,
                attn_impl=attn_impl,
            )
            for _ in range(num_layers)
        )
        self.head = nn.Linear(embed_dim, out_dim)
        self.head_norm = nn.BatchNorm1d(out_dim) if head_norm == "BN" else None

    @classmethod
    def from_config(cls, cfg, num_keypoints: int) -> Dict:
        v, e = cfg.MODEL.VPOSE, cfg.MODEL.VEPE
        return {
            "num_queries": v.NUM_QUERIES,
            "num_keypoints": num_keypoints,
            "embed_dim": v.HIDDEN_DIM,
            "out_dim": e.INSTANCE_EMBED_DIM,
            "num_layers": e.INSTANCE_LAYERS,
            "num_heads": v.NHEADS,
            "dim_feedforward": v.DIM_FEEDFORWARD,
            "dropout": v.DROPOUT,
            "num_levels": v.NUM_FEATURE_LEVELS,
            "attn_impl": v.ATTN_IMPL,
            "head_norm": e.INSTANCE_HEAD_NORM,
        }

    def forward(
        self,
        slots: torch.Tensor,
        pose_queries: torch.Tensor,
        poses: torch.Tensor,
        valid: torch.Tensor,
        memory: ClipMemory,
    ) -> torch.Tensor:
        """
        Args:
            slots: (B, M) int64 the selected queries' slots among the N (PQS ``index``).
            pose_queries: (B, M, C) their pose queries (the spatial decoder's last layer).
            poses: (B, M, K, 2) their poses in [0, 1] (sampling references; detached here).
            valid: (B, M) bool, False at padding slots.
            memory: B one-frame clips, the frames the queries belong to.

        Returns:
            (B, M, E) unit-norm instance embeddings (padding slots' too, to be ignored).
        """
        if memory.num_frames != 1 or memory.num_clips != slots.shape[0]:
            raise ValueError(
                f"InstanceQueries: memory of {memory.num_clips} x {memory.num_frames} frames "
                f"for {slots.shape[0]} frames of queries (one frame each)"
            )
        refs = poses.detach()
        tgt = self.query_embed(slots) + self.pose_proj(pose_queries)
        query_pos = self.pos_head(refs.flatten(2))
        flat = memory.flatten_time()
        for layer in self.layers:
            tgt = layer(
                tgt,
                query_pos,
                refs[:, None],
                flat["memory"],
                flat["spatial_shapes"],
                flat["level_start_index"],
                flat["valid_ratios"],
                flat["padding_mask"],
                None,
                ~valid,
            )
        return F.normalize(self._normalize_head(self.head(tgt), valid), dim=-1)

    def _normalize_head(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, M, E) head outputs -> the same, BatchNorm'd over the valid slots only (padding
        slots would bias the statistics; they come out 0). A training batch with a single
        valid slot uses the running statistics (a batch variance needs two)."""
        if self.head_norm is None:
            return z
        rows = z[valid]
        bn = self.head_norm
        if self.training and rows.shape[0] < 2:
            rows = F.batch_norm(
                rows, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        else:
            rows = bn(rows)  # batch statistics in training, running ones in eval
        out = z.new_zeros(z.shape)
        out[valid] = rows
        return out
