"""The multi-scale neck shared by every pose backbone: C3-C5 -> L maps of 256 channels."""

from typing import Dict, List

import torch
from detectron2.modeling import Backbone
from torch import nn

__all__ = ["MultiScalePoseBackbone"]


def _conv_gn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(groups, out_ch))


class MultiScalePoseBackbone(Backbone):
    """A bottom-up network plus Deformable DETR's input projections.

    Each of the bottom-up maps named in ``in_features`` (C3-C5) goes through a 1x1 conv +
    GroupNorm; extra levels come from stride-2 3x3 convs (+ GroupNorm), the first on the
    last raw map (C5), the next ones on the previous extra level. Outputs ``p3``, ``p4``, ...
    """

    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int = 256,
        num_levels: int = 4,
        num_groups: int = 32,
    ):
        """
        Args:
            bottom_up: a Detectron2 Backbone producing the maps in ``in_features``.
            in_features: names of the C3-C5 maps, fine to coarse.
            out_channels: channels of every output map.
            num_levels: output maps L (>= len(in_features)).
            num_groups: GroupNorm groups.
        """
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"bottom-up backbone lacks {missing}; it has {list(shapes)}")
        if num_levels < len(in_features):
            raise ValueError(f"num_levels {num_levels} < {len(in_features)} input maps")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.input_proj = nn.ModuleList(
            _conv_gn(shapes[f].channels, out_channels, 1, 1, num_groups) for f in in_features
        )
        extra, in_ch = [], shapes[in_features[-1]].channels
        for _ in range(num_levels - len(in_features)):
            extra.append(_conv_gn(in_ch, out_channels, 3, 2, num_groups))
            in_ch = out_channels
        self.extra_proj = nn.ModuleList(extra)
        strides = [shapes[f].stride for f in in_features]
        strides += [strides[-1] * 2 ** (i + 1) for i in range(len(extra))]
        first = strides[0].bit_length() - 1
        # Detectron2's Backbone.output_shape reads the three _out_* attributes.
        self._out_features = [f"p{first + i}" for i in range(num_levels)]
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._size_divisibility = max(bottom_up.size_divisibility, strides[-1])

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, 3, H, W) normalized images.

        Returns:
            {"p3": (B, C, H/8, W/8), ..., } L maps, fine to coarse.
        """
        feats = self.bottom_up(x)
        outs = [proj(feats[f]) for proj, f in zip(self.input_proj, self.in_features)]
        last = feats[self.in_features[-1]]
        for proj in self.extra_proj:
            last = proj(last)
            outs.append(last)
        return dict(zip(self._out_features, outs))
