"""Inference-time folding of a frozen batch norm into the convolution before it.

Detectron2's ``Conv2d`` carries its normalisation inside the module (``conv.norm``); with
``FrozenBatchNorm2d`` (the ResNet configs' ``MODEL.RESNETS.NORM: "FrozenBN"``) that norm is a
fixed per-channel affine map, so ``norm(conv(x, W))`` equals ``conv(x, W * s) + b`` with
``s = gamma / sqrt(var + eps)`` and ``b = beta - mean * s``: one pass over the activations
fewer per convolution. Detectron2 folds BN only in its Caffe2 export (``fuse_bn_into_conv``),
which needs Caffe2; the arithmetic is torch's ``fuse_conv_bn_weights``.

The fold keeps the checkpoint as it is: :func:`fold_frozen_batchnorm` swaps each foldable
``Conv2d``'s class for :class:`FoldedConv2d`, which keeps every parameter and buffer (the
state-dict keys and values do not change) and holds the folded weight and bias in
non-persistent buffers. It uses them only where they are exact: in eval mode, with no
gradient to propagate into the convolution, and refolds when the weights changed since
(e.g. ``load_state_dict`` after folding); otherwise it runs the unfolded convolution + norm.
"""

from typing import Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["FoldedConv2d", "fold_frozen_batchnorm", "unfold_frozen_batchnorm"]

#: Norms whose inference form is a fixed per-channel affine map.
_FOLDABLE_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _foldable(module: nn.Module) -> bool:
    if type(module) is not Conv2d:  # subclasses may change forward; leave them alone
        return False
    norm = module.norm
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    # A plain BatchNorm2d folds only with running statistics (eval mode uses them).
    return isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats


def _tensor_versions(conv: Conv2d) -> Tuple[int, ...]:
    """In-place change counters of everything the folded weights are computed from."""
    norm = conv.norm
    tensors = [conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var]
    return tuple(-1 if t is None else t._version for t in tensors)


class FoldedConv2d(Conv2d):
    """A Detectron2 ``Conv2d`` whose frozen norm is folded into its weight at inference.

    Made only by :func:`fold_frozen_batchnorm` (class swap of an existing ``Conv2d``); its
    parameters, buffers and submodules are those of the original module.
    """

    def _refold(self) -> None:
        norm = self.norm
        weight, bias = fuse_conv_bn_weights(
            self.weight.detach(),
            None if self.bias is None else self.bias.detach(),
            norm.running_mean,
            norm.running_var,
            norm.eps,
            None if norm.weight is None else norm.weight.detach(),
            None if norm.bias is None else norm.bias.detach(),
        )
        # Non-persistent: move with .to() / .cuda() but stay out of the state dict.
        self.register_buffer("folded_weight", weight.detach(), persistent=False)
        self.register_buffer("folded_bias", bias.detach(), persistent=False)
        self._folded_versions = _tensor_versions(self)

    def _fold_is_exact(self) -> bool:
        if self.training:
            return False  # a BatchNorm2d in training mode uses batch statistics
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return False  # gradients must reach the convolution's own weight
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (N, C_in, H, W).

        Returns:
            (N, C_out, H', W'), ``activation(norm(conv(x)))`` as ``Conv2d`` computes it.
        """
        if not self._fold_is_exact():
            return super().forward(x)
        if (
            self._folded_versions != _tensor_versions(self)
            or self.folded_weight.device != self.weight.device
            or self.folded_weight.dtype != self.weight.dtype
        ):
            self._refold()
        x = F.conv2d(
            x, self.folded_weight, self.folded_bias, self.stride, self.padding, self.dilation,
            self.groups,
        )  # fmt: skip
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every frozen norm of ``module`` into the Detectron2 ``Conv2d`` that carries it.

    In place and idempotent. Parameters, buffers and state-dict keys are unchanged (a folded
    model saves and loads the same checkpoint); training mode, or a forward pass that needs
    gradients, runs the unfolded computation. Outputs match the unfolded model to float
    rounding (relative 1e-6 per layer).

    Args:
        module: any model (e.g. ``build_model(cfg)``); convolutions without a foldable norm
            (GroupNorm, no norm, torch's own ``nn.Conv2d``) are left alone.

    Returns:
        The number of convolutions folded by this call.
    """
    folded = 0
    for sub in module.modules():
        if _foldable(sub):
            sub.__class__ = FoldedConv2d
            sub._refold()
            folded += 1
    return folded


def unfold_frozen_batchnorm(module: nn.Module) -> int:
    """Undo :func:`fold_frozen_batchnorm`: the folded convolutions become plain ``Conv2d``.

    Returns:
        The number of convolutions restored.
    """
    restored = 0
    for sub in module.modules():
        if type(sub) is FoldedConv2d:
            del sub.folded_weight, sub.folded_bias
            del sub._folded_versions
            sub.__class__ = Conv2d
            restored += 1
    return restored
