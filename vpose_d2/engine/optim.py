"""AdamW with the PETR / PAVE-Net parameter groups and full-model gradient clipping."""

import logging
from typing import Any, Dict, List, Sequence, Type

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = ["build_vpose_optimizer", "get_vpose_param_groups", "add_full_model_clipping"]

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    # Its weight/bias are buffers, never trained; listed so custom subclasses stay exempt.
    FrozenBatchNorm2d,
)


def get_vpose_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_bias: float,
    backbone_multiplier: float,
    linear_proj_multiplier: float,
    backbone_prefixes: Sequence[str] = ("backbone.",),
    linear_proj_names: Sequence[str] = ("sampling_offsets", "reference_points"),
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups with per-name lr multipliers.

    Args:
        model: the (unwrapped) model; parameter names are matched before any DDP wrapping.
        base_lr: learning rate of every parameter without a multiplier.
        weight_decay: decay of ordinary weights.
        weight_decay_norm: decay of normalization layers' weights and biases.
        weight_decay_bias: decay of the other biases.
        backbone_multiplier: lr factor for parameters whose name starts with one of
            ``backbone_prefixes``.
        linear_proj_multiplier: lr factor for parameters whose name contains one of
            ``linear_proj_names`` (the layers that predict deformable sampling locations).
        backbone_prefixes: see ``backbone_multiplier``.
        linear_proj_names: see ``linear_proj_multiplier``.

    Returns:
        Param groups (merged by hyper-parameters) for a ``torch.optim`` constructor. Frozen
        and shared parameters appear once at most.
    """
    params: List[Dict[str, Any]] = []
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            name = f"{module_name}.{param_name}" if module_name else param_name
            lr = base_lr
            if name.startswith(tuple(backbone_prefixes)):
                lr *= backbone_multiplier
            elif any(k in name for k in linear_proj_names):
                lr *= linear_proj_multiplier
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif param_name == "bias":
                decay = weight_decay_bias
            else:
                decay = weight_decay
            params.append({"params": [param], "lr": lr, "weight_decay": decay})
    return reduce_param_groups(params)


def add_full_model_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> Type[torch.optim.Optimizer]:
    """Subclass ``optimizer_type`` so that ``step()`` first clips the norm of ALL gradients.

    Detectron2's "norm" clipping treats each parameter on its own; DETR-style training clips
    the norm of the concatenated gradient of the whole model. Under a GradScaler the grads
    are already unscaled when ``step()`` runs (``GradScaler.step`` unscales first).
    """

    class FullModelClipOptimizer(optimizer_type):
        def step(self, closure=None):
            all_params = [p for g in self.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipOptimizer.__name__ = optimizer_type.__name__ + "FullModelGradientClip"
    return FullModelClipOptimizer


def build_vpose_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (``cfg.SOLVER.OPTIMIZER``: "ADAMW" or Detectron2's "SGD") from the config.

    Clipping follows ``cfg.SOLVER.CLIP_GRADIENTS``: CLIP_TYPE "full_model" (one L2 norm over
    every parameter, the papers' setting) or Detectron2's per-parameter "value" / "norm".
    """
    solver = cfg.SOLVER
    wd_bias = solver.WEIGHT_DECAY if solver.WEIGHT_DECAY_BIAS is None else solver.WEIGHT_DECAY_BIAS
    groups = get_vpose_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_bias=wd_bias,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        linear_proj_multiplier=solver.LINEAR_PROJ_MULTIPLIER,
        backbone_prefixes=solver.BACKBONE_MULTIPLIER_PREFIXES,
        linear_proj_names=solver.LINEAR_PROJ_NAMES,
    )
    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_type, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optimizer_type, kwargs = torch.optim.SGD, {
            "momentum": solver.MOMENTUM,
            "nesterov": solver.NESTEROV,
        }
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r} is not one of 'ADAMW', 'SGD'.")

    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = add_full_model_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm"):
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r} is not one of "
            "'full_model', 'value', 'norm'."
        )
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    logger.info(
        "Optimizer %s: %d param groups, lrs %s",
        optimizer_type.__name__,
        len(groups),
        sorted({g["lr"] for g in groups}),
    )
    return optimizer_type(groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, **kwargs)
