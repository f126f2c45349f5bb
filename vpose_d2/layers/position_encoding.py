"""Sine position encodings for feature maps and for normalized points."""

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "sine_embed_points"]


class PositionEmbeddingSine(nn.Module):
    """The 2-D sine encoding of DETR, normalized to the valid (unpadded) region.

    The first half of the channels encodes y, the second half x, so that a
    ``(B, 2 * num_pos_feats, H, W)`` map adds directly to the features.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: Optional[float] = None,
    ):
        """
        Args:
            num_pos_feats: channels per axis (the output has twice as many).
            temperature: base of the geometric frequency progression.
            normalize: divide the cumulative position by the valid extent, so that the
                encoding does not depend on how much padding the batch added.
            scale: multiplier after normalization (2*pi by default).
        """
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: 'scale' needs normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask: (B, H, W) bool, True at padded pixels.

        Returns:
            (B, 2 * num_pos_feats, H, W) float encoding.
        """
        not_mask = (~mask).float()
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            # Centre the position in its cell (-0.5) as Deformable DETR does.
            y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sine_embed_points(
    points: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0
) -> torch.Tensor:
    """Sine-encode normalized 2-D points (used for query position embeddings).

    Args:
        points: (..., 2) [x, y] in [0, 1].
        num_pos_feats: channels per axis.
        temperature: base of the frequency progression.

    Returns:
        (..., 2 * num_pos_feats) encoding, y first then x as in :class:`PositionEmbeddingSine`.
    """
    scale = 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=points.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    x = points[..., 0, None].float() * scale / dim_t
    y = points[..., 1, None].float() * scale / dim_t
    x = torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)
    y = torch.stack((y[..., 0::2].sin(), y[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((y, x), dim=-1).to(points.dtype)
