"""Pose decoder: pose queries refine full-body poses with pose-aware attention.

Written for T frames from the start (PAVE-Net's spatiotemporal pose decoder); the image
model is the case ``num_frames = 1``. Queries are shared by all frames; every frame has its
own reference poses, offset/weight projections and refinement MLPs; class and sigma heads
read the shared query and describe the key frame.
"""

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from torch import nn

from vpose_d2.layers.mlp import MLP

from ..clip_memory import ClipMemory
from .decoder_layer import DeformableDecoderLayer, ProjectValuesMixin
from .frame_attention import PoseAwareDeformableAttention
from .utils import bias_init_with_prob, next_references, refine_per_frame

__all__ = ["PoseDecoderLayer", "PoseDecoder"]


class PoseDecoderLayer(DeformableDecoderLayer):
    """Self-attention among queries, pose-aware cross-attention over T frames, FFN (post-norm).

    ``forward(tgt, query_pos, reference_poses, memory, ...)``: ``tgt`` and ``query_pos``
    (B, N, C), ``reference_poses`` (B, T, N, K, 2) per-frame reference poses in [0, 1], the
    T-frame memory as in :class:`DeformableDecoderLayer`; returns (B, N, C).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        num_keypoints: int,
        num_frames: int = 1,
        attn_impl: str = "auto",
    ):
        super().__init__(
            lambda: PoseAwareDeformableAttention(
                embed_dim=embed_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_keypoints=num_keypoints,
                num_frames=num_frames,
                impl=attn_impl,
            ),
            embed_dim=embed_dim,
            num_heads=num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
        )


class PoseDecoder(ProjectValuesMixin, nn.Module):
    """Stack of :class:`PoseDecoderLayer` with per-layer, per-frame pose refinement.

    After layer i, frame t's pose is ``sigmoid(logit(R_t) + MLP_{i,t}(q))`` (paper eq. 4 /
    PAVE eq. 6); the refined pose, detached, is the next layer's reference.
    """

    @configurable
    def __init__(
        self,
        *,
        num_layers: int = 3,
        embed_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        num_keypoints: int,
        num_frames: int = 1,
        refine_hidden_dim: int = 512,
        refine_num_layers: int = 4,
        prior_prob: float = 0.01,
        attn_impl: str = "auto",
        neighbour_reference_grad: bool = False,
    ):
        """
        Args:
            num_layers: decoder layers (paper 3).
            embed_dim, num_heads, dim_feedforward, dropout, num_levels: transformer sizes.
            num_keypoints: joints K.
            num_frames: frames T attended (1 for the image model).
            refine_hidden_dim, refine_num_layers: the refinement MLPs (PAVE:
                256 -> 512 -> 512 -> 512 -> 2K, i.e. 512 and 4 layers).
            prior_prob: initial foreground probability of the class heads.
            attn_impl: forwarded to ``ms_deform_attn``.
            neighbour_reference_grad: neighbour frames' refined poses keep their gradient into
                the next layer's sampling locations (see :func:`next_references`).
        """
        super().__init__()
        self.num_layers = num_layers
        self.num_keypoints = num_keypoints
        self.num_frames = num_frames
        self.neighbour_reference_grad = neighbour_reference_grad
        self.layers = nn.ModuleList(
            PoseDecoderLayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                num_levels=num_levels,
                num_keypoints=num_keypoints,
                num_frames=num_frames,
                attn_impl=attn_impl,
            )
            for _ in range(num_layers)
        )
        # refine[i][t]: layer i, frame t. Zero last layer: refinement starts as identity.
        self.refine = nn.ModuleList(
            nn.ModuleList(
                MLP(embed_dim, refine_hidden_dim, 2 * num_keypoints, refine_num_layers).zero_last()
                for _ in range(num_frames)
            )
            for _ in range(num_layers)
        )
        self.class_heads = nn.ModuleList(nn.Linear(embed_dim, 1) for _ in range(num_layers))
        self.sigma_heads = nn.ModuleList(
            nn.Linear(embed_dim, 2 * num_keypoints) for _ in range(num_layers)
        )
        bias = bias_init_with_prob(prior_prob)
        for head in self.class_heads:
            nn.init.constant_(head.bias, bias)
        # The query position embedding is recomputed from the key-frame reference each layer.
        self.query_pos_head = MLP(2 * num_keypoints, embed_dim, embed_dim, 2)

    @classmethod
    def from_config(
        cls,
        cfg,
        num_keypoints: int,
        num_frames: int = 1,
        neighbour_reference_grad: bool = False,
        num_layers: Optional[int] = None,
    ) -> Dict:
        v = cfg.MODEL.VPOSE
        return {
            "num_layers": v.DEC_LAYERS if num_layers is None else num_layers,
            "neighbour_reference_grad": neighbour_reference_grad,
            "embed_dim": v.HIDDEN_DIM,
            "num_heads": v.NHEADS,
            "dim_feedforward": v.DIM_FEEDFORWARD,
            "dropout": v.DROPOUT,
            "num_levels": v.NUM_FEATURE_LEVELS,
            "num_keypoints": num_keypoints,
            "num_frames": num_frames,
            "refine_hidden_dim": v.REFINE_HIDDEN_DIM,
            "refine_num_layers": v.REFINE_NUM_LAYERS,
            "prior_prob": v.PRIOR_PROB,
            "attn_impl": v.ATTN_IMPL,
        }

    def forward(
        self,
        tgt: torch.Tensor,
        reference_poses: torch.Tensor,
        memory: ClipMemory,
        key_index: int = 0,
        values: Optional[Sequence[torch.Tensor]] = None,
        query_padding_mask: Optional[torch.Tensor] = None,
    ) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            tgt: (B, N, C) initial query content (from the proposals).
            reference_poses: (B, T, N, K, 2) initial references in [0, 1] (for PAVE-Net every
                frame starts from the key-frame proposal); detached by the caller.
            memory: the T frames' encoded memory (B, T, S, C); every layer samples all T
                frames in one call (:meth:`ClipMemory.flatten_time`).
            key_index: position of the key frame on the T axis.
            values: one (B, T * S, M, C / M) per layer, :meth:`project_values` of the flat
                memory (or the frames' projections concatenated along S), which the layers then
                sample instead of projecting ``memory``; None projects it in every layer.
            query_padding_mask: (B, N) bool, True at padding queries the self-attention of
                every layer leaves out (a selected set padded to N, VEPE's), or None.

        Returns:
            One dict per layer: ``poses`` (B, T, N, K, 2) refined poses of every frame,
            ``logits`` (B, N) class logits, ``sigmas`` (B, N, K, 2) RLE scales of the
            key-frame joints, ``queries`` (B, N, C) layer output.
        """
        b, t, n, k, _ = reference_poses.shape
        if t != self.num_frames or k != self.num_keypoints:
            raise ValueError(
                f"PoseDecoder built for T={self.num_frames}, K={self.num_keypoints} got "
                f"reference_poses {tuple(reference_poses.shape)}"
            )
        if not 0 <= key_index < t:
            raise ValueError(f"PoseDecoder: key_index {key_index} outside [0, {t})")
        if values is not None and len(values) != self.num_layers:
            raise ValueError(
                f"PoseDecoder: {len(values)} projected values for {self.num_layers} layers"
            )
        if memory.num_frames != t:
            raise ValueError(
                f"PoseDecoder: {t} frames of references, memory of {memory.num_frames}"
            )
        flat = memory.flatten_time()
        outputs = []
        refs = reference_poses
        for i, layer in enumerate(self.layers):
            query_pos = self.query_pos_head(refs[:, key_index].flatten(2))
            tgt = layer(
                tgt,
                query_pos,
                refs,
                flat["memory"],
                flat["spatial_shapes"],
                flat["level_start_index"],
                flat["valid_ratios"],
                flat["padding_mask"],
                None if values is None else values[i],
                query_padding_mask,
            )
            poses = refine_per_frame(refs, tgt, self.refine[i])
            outputs.append(
                {
                    "poses": poses,
                    "logits": self.class_heads[i](tgt).squeeze(-1),
                    "sigmas": self.sigma_heads[i](tgt).sigmoid().view(b, n, k, 2),
                    "queries": tgt,
                }
            )
            refs = next_references(poses, key_index, self.neighbour_reference_grad)
        return outputs
