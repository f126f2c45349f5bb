"""VEPE's Spatio-Temporal Pose Encoder (STPE, the VEPE paper section 3.3, Fig. 3a).

The key frame's selected pose queries attend to each other (self-attention), then to the other
frames' selected pose queries (cross-attention) under an instance mask: a key query may only
read, in each other frame, the instance(s) whose instance embedding is most similar to its own;
FFN. Padding slots of the selection are never read. Without instance embeddings (Table 2's row
without the instance consistency mechanism) every valid query of the other frames is read.

Layers are pre-norm with their output projections at zero: a new STPE is the identity, so the
temporal phase starts from the spatial phase's queries.
"""

import math
from typing import Dict, Optional, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from vpose_d2.layers.mlp import MLP

__all__ = ["MaskedAttention", "STPELayer", "SpatioTemporalPoseEncoder", "instance_mask"]


def instance_mask(
    key_embeds: torch.Tensor, ref_embeds: torch.Tensor, ref_valid: torch.Tensor, topk: int
) -> torch.Tensor:
    """Which reference queries each key query may read: per other frame, the ``topk`` valid
    ones most similar to it (cosine of unit embeddings).

    Args:
        key_embeds: (B, M, E) the key frame's instance embeddings.
        ref_embeds: (B, F, R, E) the F other frames' instance embeddings.
        ref_valid: (B, F, R) bool, False at padding slots.
        topk: instances let through per frame.

    Returns:
        (B, M, F, R) bool, True where key query m may read slot r of frame f.
    """
    with torch.no_grad():
        sim = torch.einsum("bme,bfre->bmfr", key_embeds, ref_embeds)
        sim = sim.masked_fill(~ref_valid[:, None], float("-inf"))
        k = min(topk, sim.shape[-1])
        index = sim.topk(k, dim=-1).indices
        chosen = torch.ones_like(index, dtype=torch.bool)
        allowed = torch.zeros_like(sim, dtype=torch.bool).scatter(-1, index, chosen)
        return allowed & ref_valid[:, None]


class MaskedAttention(nn.Module):
    """Multi-head attention with a per-query mask of the keys it may read.

    A masked-out key gets exactly zero weight (its logit is -inf before the softmax); a query
    allowed no key at all gets zero weights and a zero output (no NaN). Returns the output and
    the weights, as ``nn.MultiheadAttention`` does.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"MaskedAttention: {embed_dim} channels, {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            query: (B, Q, C); key, value: (B, S, C).
            allowed: (B, Q, S) bool, True where query q may read key s.

        Returns:
            (B, Q, C) output and (B, H, Q, S) attention weights.
        """
        b, q, c = query.shape
        s, h = key.shape[1], self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, h, c // h).transpose(1, 2)  # (B, H, L, D)

        qh, kh, vh = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        logits = qh @ kh.transpose(-1, -2) / math.sqrt(c // h)  # (B, H, Q, S)
        allowed = allowed[:, None]
        any_key = allowed.any(-1, keepdim=True)
        # Rows without any key: softmax over zeros, then zeroed (finite values and gradients).
        logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~any_key, 0.0)
        weights = logits.softmax(-1) * any_key
        out = (self.dropout(weights) @ vh).transpose(1, 2).reshape(b, q, c)
        return self.out_proj(out), weights


class STPELayer(nn.Module):
    """Self-attention among the key queries, masked cross-attention to the other frames'
    queries, FFN; pre-norm residuals whose output projections start at zero."""

    def __init__(
        self, embed_dim: int = 256, num_heads: int = 8, dim_feedforward: int = 1024, dropout=0.1
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.self_attn = MaskedAttention(embed_dim, num_heads, dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.cross_attn = MaskedAttention(embed_dim, num_heads, dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.activation = nn.ReLU(inplace=True)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.dropout4 = nn.Dropout(dropout)
        for zero in (self.self_attn.out_proj, self.cross_attn.out_proj, self.linear2):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        query_valid: torch.Tensor,
        ref: torch.Tensor,
        ref_pos: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, M, C) key-frame queries; query_pos: (B, M, C); query_valid: (B, M).
            ref: (B, R, C) the other frames' queries; ref_pos: (B, R, C).
            allowed: (B, M, R) bool, which reference queries each key query may read.

        Returns:
            (B, M, C).
        """
        m = query.shape[1]
        h = self.norm1(query)
        self_allowed = query_valid[:, None, :].expand(-1, m, -1)
        sa = self.self_attn(h + query_pos, h + query_pos, h, self_allowed)[0]
        query = query + self.dropout1(sa)
        h = self.norm2(query)
        ca = self.cross_attn(h + query_pos, ref + ref_pos, ref, allowed)[0]
        query = query + self.dropout2(ca)
        h = self.linear2(self.dropout3(self.activation(self.linear1(self.norm3(query)))))
        return query + self.dropout4(h)


class SpatioTemporalPoseEncoder(nn.Module):
    """STPE: the key frame's selected pose queries, refined by the other frames' (Fig. 3a)."""

    @configurable
    def __init__(
        self,
        *,
        num_keypoints: int,
        num_frames: int,
        num_layers: int = 1,
        embed_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        mask_topk: int = 1,
    ):
        """
        Args:
            num_keypoints: joints K (query positions come from the queries' poses).
            num_frames: frames T of a clip.
            num_layers: layers (>= 1).
            embed_dim, num_heads, dim_feedforward, dropout: transformer sizes.
            mask_topk: instances of each other frame a key query may read (with embeddings).
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.VEPE.STPE_LAYERS={num_layers} must be >= 1")
        if mask_topk < 1:
            raise ValueError(f"MODEL.VEPE.INSTANCE_MASK_TOPK={mask_topk} must be >= 1")
        self.num_frames = num_frames
        self.mask_topk = mask_topk
        self.layers = nn.ModuleList(
            STPELayer(embed_dim, num_heads, dim_feedforward, dropout) for _ in range(num_layers)
        )
        # Position of a query: its pose, and which frame of the clip it is in.
        self.pos_head = MLP(2 * num_keypoints, embed_dim, embed_dim, 2)
        self.frame_embed = nn.Parameter(torch.empty(num_frames, embed_dim))
        nn.init.normal_(self.frame_embed)

    @classmethod
    def from_config(cls, cfg, num_keypoints: int, num_frames: int) -> Dict:
        v, e = cfg.MODEL.VPOSE, cfg.MODEL.VEPE
        return {
            "num_keypoints": num_keypoints,
            "num_frames": num_frames,
            "num_layers": e.STPE_LAYERS,
            "embed_dim": v.HIDDEN_DIM,
            "num_heads": v.NHEADS,
            "dim_feedforward": v.DIM_FEEDFORWARD,
            "dropout": v.DROPOUT,
            "mask_topk": e.INSTANCE_MASK_TOPK,
        }

    def forward(
        self,
        queries: torch.Tensor,
        poses: torch.Tensor,
        valid: torch.Tensor,
        key_index: int,
        embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            queries: (B, T, M, C) every frame's selected pose queries.
            poses: (B, T, M, K, 2) their poses in [0, 1] (detached here).
            valid: (B, T, M) bool, False at padding slots.
            key_index: the key frame on the T axis.
            embeds: (B, T, M, E) instance embeddings, or None (no instance mask).

        Returns:
            (B, M, C) the key frame's refined queries.
        """
        b, t, m, c = queries.shape
        if t != self.num_frames:
            raise ValueError(f"STPE built for T={self.num_frames}, got queries of {t} frames")
        pos = self.pos_head(poses.detach().flatten(-2)) + self.frame_embed.view(1, t, 1, c)
        others = [i for i in range(t) if i != key_index]
        ref = queries[:, others].reshape(b, -1, c)
        ref_pos = pos[:, others].reshape(b, -1, c)
        ref_valid = valid[:, others]  # (B, T - 1, M)
        if embeds is None:
            allowed = ref_valid.reshape(b, 1, -1).expand(b, m, -1)
        else:
            allowed = instance_mask(
                embeds[:, key_index], embeds[:, others], ref_valid, self.mask_topk
            ).reshape(b, m, -1)
        query, query_pos, query_valid = (
            queries[:, key_index],
            pos[:, key_index],
            valid[:, key_index],
        )
        for layer in self.layers:
            query = layer(query, query_pos, query_valid, ref, ref_pos, allowed)
        return query
