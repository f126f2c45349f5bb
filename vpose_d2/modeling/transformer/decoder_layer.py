"""The decoder layer both decoders stack: self-attention, deformable cross-attention, FFN."""

from typing import Callable, Optional, Tuple

import torch
from torch import nn

__all__ = ["DeformableDecoderLayer", "ProjectValuesMixin"]


class ProjectValuesMixin:
    """``project_values`` for a decoder whose ``self.layers`` are :class:`DeformableDecoderLayer`
    (the pose and the joint decoder), so a caller can project memory once and pass the result
    to the decoder's ``forward(..., values=...)``."""

    layers: nn.ModuleList

    def project_values(
        self, memory: torch.Tensor, memory_padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, ...]:
        """Every layer's cross-attention values of ``memory``, for ``forward``'s ``values``.

        Args:
            memory: (B, S', C) memory tokens, any of them: one frame's (S' = S) for a
                streaming cache, or the T frames' (S' = T * S).
            memory_padding_mask: (B, S') bool, True at padded tokens, or None.

        Returns:
            One (B, S', M, C / M) per layer. A per-token linear map zeroed at padded tokens,
            so the frames' projections concatenated along S' equal the projection of the
            concatenated memory.
        """
        return tuple(layer.project_value(memory, memory_padding_mask) for layer in self.layers)


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention over the memory, FFN; each
    adds to the residual, then a LayerNorm (post-norm, Deformable DETR's decoder layer).

    Queries may carry group axes, ``(B, G..., Q, C)``: self-attention then runs along the
    ``Q`` axis within each group (a person's K joint queries attend to each other only). The
    cross-attention is built by the subclass; :meth:`cross_attend` hands it the queries and
    references, by default unchanged. The cross-attention may be given its values already
    projected (``projected_value``, see :meth:`project_value`), e.g. from a per-frame cache.
    """

    def __init__(
        self,
        make_cross_attn: Callable[[], nn.Module],
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
    ):
        """
        Args:
            make_cross_attn: builds the cross-attention module (called after the
                self-attention exists: the order of creation fixes the initial weights a seed
                gives).
            embed_dim: query / memory channels C.
            num_heads: self-attention heads.
            dim_feedforward: FFN hidden channels.
            dropout: dropout rate.
        """
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn = make_cross_attn()
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.activation = nn.ReLU(inplace=True)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dim)

    def project_value(
        self, memory: torch.Tensor, memory_padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """(B, S', C) memory tokens -> (B, S', M, C / M) the values the cross-attention samples
        (zero where ``memory_padding_mask`` (B, S') is True), to pass later as
        ``projected_value``. Token by token, so any subset of the tokens (one frame) can be
        projected on its own."""
        return self.cross_attn.project_value(memory, memory_padding_mask)

    def cross_attend(
        self,
        query: torch.Tensor,
        references: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor],
        projected_value: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The cross-attention on ``query`` (the queries' shape); returns that shape."""
        return self.cross_attn(
            query,
            references,
            memory,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            memory_padding_mask,
            projected_value,
        )

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        references: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        memory_padding_mask: Optional[torch.Tensor] = None,
        projected_value: Optional[torch.Tensor] = None,
        query_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt: (B, G..., Q, C) query content; query_pos: its position embeddings.
            references: the cross-attention's per-frame references (see the subclasses).
            memory: (B, T * S, C) the T frames' memories; spatial_shapes (T * L, 2);
                level_start_index (T * L,); valid_ratios (B, T * L, 2);
                memory_padding_mask (B, T * S) or None.
            projected_value: (B, T * S, M, C / M) :meth:`project_value` of ``memory`` and
                ``memory_padding_mask``, precomputed; None projects them here.
            query_padding_mask: (B, G..., Q) bool, True at queries the self-attention must not
                read (padding slots of a selected set), or None. A group whose queries are all
                padding reads them all instead (its outputs are padding too), which keeps the
                softmax finite.

        Returns:
            Updated queries, ``tgt``'s shape.
        """
        shape, q_len, c = tgt.shape, tgt.shape[-2], tgt.shape[-1]
        q = (tgt + query_pos).reshape(-1, q_len, c)
        key_mask = None
        if query_padding_mask is not None:
            key_mask = query_padding_mask.reshape(-1, q_len)
            key_mask = key_mask & ~key_mask.all(-1, keepdim=True)
        sa = self.self_attn(
            q, q, tgt.reshape(-1, q_len, c), key_padding_mask=key_mask, need_weights=False
        )[0]
        tgt = self.norm1(tgt + self.dropout1(sa.view(shape)))
        tgt2 = self.cross_attend(
            tgt + query_pos,
            references,
            memory,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            memory_padding_mask,
            projected_value,
        )
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))
