"""A plain multi-layer perceptron (the FFN heads of the DETR family)."""

from typing import Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP"]


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last).

    ``MLP(256, 512, 30, 4)`` is 256 -> 512 -> 512 -> 512 -> 30.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: Union[int, Sequence[int]],
        output_dim: int,
        num_layers: int,
    ):
        """
        Args:
            input_dim: input channels.
            hidden_dim: channels of every hidden layer (an int), or one per hidden layer.
            output_dim: output channels.
            num_layers: number of linear layers (>= 1).
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs num_layers >= 1, got {num_layers}")
        if isinstance(hidden_dim, int):
            hidden = [hidden_dim] * (num_layers - 1)
        else:
            hidden = list(hidden_dim)
            if len(hidden) != num_layers - 1:
                raise ValueError(
                    f"MLP: {num_layers} layers need {num_layers - 1} hidden sizes, got {hidden}"
                )
        dims_in = [input_dim] + hidden
        dims_out = hidden + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (..., input_dim).

        Returns:
            (..., output_dim).
        """
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x

    def zero_last(self) -> "MLP":
        """Zero the last layer, so the MLP starts as the constant 0 (residual refinements)."""
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)
        return self
