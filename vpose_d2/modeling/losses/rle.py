"""Residual log-likelihood estimation (RLE, Li et al. ICCV 2021) with a 2-D RealNVP flow."""

import math
from typing import Tuple

import torch
from torch import nn

__all__ = ["RealNVP2D", "RLELoss"]


class _CouplingNet(nn.Sequential):
    def __init__(self, hidden: int, tanh: bool):
        layers = [nn.Linear(2, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU()]
        layers.append(nn.Linear(hidden, 2))
        if tanh:
            layers.append(nn.Tanh())
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=0.01)
                nn.init.zeros_(m.bias)


class RealNVP2D(nn.Module):
    """A RealNVP density on R^2 with a standard normal prior.

    ``num_blocks`` blocks of two affine coupling layers with masks [0, 1] and [1, 0]: in a
    layer the masked coordinate passes through and conditions scale ``s`` (tanh-bounded)
    and shift ``t`` of the other one: ``x = x_m + (1 - m) * (z * exp(s) + t)``.
    """

    def __init__(self, num_blocks: int = 3, hidden: int = 64):
        super().__init__()
        masks = torch.tensor([[0.0, 1.0], [1.0, 0.0]] * num_blocks)
        self.register_buffer("masks", masks, persistent=False)
        self.s_nets = nn.ModuleList(_CouplingNet(hidden, tanh=True) for _ in range(len(masks)))
        self.t_nets = nn.ModuleList(_CouplingNet(hidden, tanh=False) for _ in range(len(masks)))

    def inverse(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Map data to the latent space.

        Args:
            x: (..., 2).

        Returns:
            z (..., 2) and log|det dz/dx| (...).
        """
        log_det = x.new_zeros(x.shape[:-1])
        z = x
        for i in reversed(range(len(self.masks))):
            m = self.masks[i]
            z_m = z * m
            s = self.s_nets[i](z_m) * (1 - m)
            t = self.t_nets[i](z_m) * (1 - m)
            z = z_m + (1 - m) * (z - t) * torch.exp(-s)
            log_det = log_det - s.sum(-1)
        return z, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) for (..., 2) points; returns (...)."""
        z, log_det = self.inverse(x)
        prior = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
        return prior + log_det


class RLELoss(nn.Module):
    """RLE negative log-likelihood of keypoints given (mu, sigma) per joint.

    Per coordinate: ``log sigma - log q(bar) + log(sigma * sqrt(2 pi)) + |gt - mu| /
    (sqrt(2) sigma)`` with ``bar = (mu - gt) / sigma``; the flow's ``log q`` is that of the
    2-D residual of a joint, shared by x and y (added once per joint).
    """

    def __init__(self, num_blocks: int = 3, hidden: int = 64):
        super().__init__()
        self.flow = RealNVP2D(num_blocks, hidden)

    def forward(
        self, mu: torch.Tensor, sigma: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            mu: (P, K, 2) predicted normalized keypoints.
            sigma: (P, K, 2) predicted scales in (0, 1).
            gt: (P, K, 2) normalized ground truth.
            visible: (P, K) bool.

        Returns:
            (P,) loss per person: summed over visible joints, divided by #visible.
        """
        sigma = sigma.clamp(min=1e-9)
        bar = (mu - gt) / sigma
        log_q = self.flow.log_prob(bar)  # (P, K)
        nf = torch.log(sigma).sum(-1) - log_q
        residual = torch.log(sigma * math.sqrt(2 * math.pi)) + (gt - mu).abs() / (
            math.sqrt(2) * sigma
        )
        per_joint = nf + residual.sum(-1)
        vis = visible.to(per_joint.dtype)
        return (per_joint * vis).sum(-1) / vis.sum(-1).clamp(min=1)
