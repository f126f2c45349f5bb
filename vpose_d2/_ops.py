"""Loader of the compiled extension ``vpose_d2._C``.

Importing this module never fails: when the extension is missing (not built, built against
another torch, or disabled with the environment variable ``VPOSE_DISABLE_EXT=1``) the reason
is recorded and :func:`require_kernel` reports it to callers that insist on the compiled op.

It also holds :func:`check_inputs`, the one Python statement of the op's argument contract
(the C++ kernels check the same in csrc/ms_deform_attn.cpp).

When the extension loads, this module registers, for its two dispatcher ops
``torch.ops.vpose_d2.ms_deform_attn_forward`` / ``ms_deform_attn_backward``:

* fake (meta) implementations, so ``torch.compile`` and meta-device tracing see output shapes
  without running a kernel; they check their arguments as the kernels do;
* the autograd formula of the forward op (its backward is the backward op);
* an autograd formula for the backward op that raises: second-order gradients are not
  implemented, and without a rule PyTorch would silently give zeros.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "DISABLE_ENV",
    "FLOAT_DTYPES",
    "extension",
    "load_error",
    "has_kernel",
    "require_kernel",
    "check_inputs",
]

logger = logging.getLogger(__name__)

#: Set to "1" to make vpose_d2 behave as if the extension had not been built.
DISABLE_ENV = "VPOSE_DISABLE_EXT"

_FORWARD = "vpose_d2::ms_deform_attn_forward"
_BACKWARD = "vpose_d2::ms_deform_attn_backward"

#: dtypes the op computes in (float16 / bfloat16 accumulate in float32).
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: What double backward through the compiled op raises.
DOUBLE_BACKWARD_ERROR = (
    "ms_deform_attn(impl='compiled'): second-order gradients (double backward, e.g. "
    "torch.autograd.grad(..., create_graph=True) followed by a backward through the result) are "
    "not supported by the compiled kernels; use impl='reference' where they are needed"
)


def _load() -> Tuple[Optional[ModuleType], Optional[str]]:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None, f"disabled by the environment variable {DISABLE_ENV}=1"
    try:
        from vpose_d2 import _C  # noqa: F401  (loading the library registers the ops)
    except (ImportError, OSError) as e:
        return None, (
            f"vpose_d2._C could not be imported ({type(e).__name__}: {e}); build it with "
            "`pip install --no-build-isolation --no-deps -e .` (or `make setup`)"
        )
    return _C, None


extension, load_error = _load()
if load_error is not None:
    logger.debug("Compiled ms_deform_attn unavailable: %s", load_error)


def has_kernel(device_type: str) -> bool:
    """Whether the compiled op has a kernel for tensors on ``device_type``.

    Decided from what was compiled into the extension, never from the driver: a CPU tensor gets
    the CPU kernel even on a GPU machine, and a CUDA tensor gets the CUDA kernel only where the
    extension was built with it. "meta" counts as covered through the fake implementation.
    """
    if extension is None:
        return False
    if device_type in ("cpu", "meta"):
        return True
    if device_type == "cuda":
        return bool(getattr(extension, "WITH_CUDA", 0))
    return False


def require_kernel(device_type: str) -> None:
    """Raises RuntimeError saying why the compiled op cannot run on ``device_type``."""
    if extension is None:
        raise RuntimeError(f"ms_deform_attn(impl='compiled'): {load_error}")
    if not has_kernel(device_type):
        raise RuntimeError(
            f"ms_deform_attn(impl='compiled'): vpose_d2._C has no kernel for {device_type!r} "
            "tensors (CUDA kernels are compiled in only when a CUDA toolkit and a CUDA build of "
            "torch were present at build time, or with FORCE_CUDA=1); use impl='auto' or "
            "'reference'"
        )


def check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Optional[Tensor] = None,
    *,
    kernel: bool = False,
) -> None:
    """Checks the arguments of the op against its contract, naming the argument at fault.

    Args:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights: the
            op's arguments (shapes in :func:`vpose_d2.layers.ms_deform_attn.ms_deform_attn`).
        grad_output: (B, Q, M*D), checked when given (the backward op's last argument).
        kernel: check as the compiled kernels do, for the fake (meta) kernels: every failure
            is a RuntimeError, like the kernels' TORCH_CHECK, and tensors must also be
            contiguous (the Python wrapper makes them so before calling the op). Otherwise
            type problems raise TypeError and shape or device problems ValueError.

    The values of ``spatial_shapes`` / ``level_start_index`` are not read here (that would
    synchronize a GPU, and fake tensors have none); the CPU kernels check them.
    """

    def fail(error: type, message: str) -> None:
        raise (RuntimeError if kernel else error)("ms_deform_attn: " + message)

    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    if grad_output is not None:
        named["grad_output"] = grad_output
    for name, t in named.items():
        if not isinstance(t, Tensor):
            fail(TypeError, f"`{name}` must be a Tensor, got {type(t).__name__}")
    if value.dim() != 4:
        fail(ValueError, f"`value` must be 4-D (B, S, M, D), got {value.dim()}-D")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        fail(ValueError, f"`spatial_shapes` must be (L, 2), got {tuple(spatial_shapes.shape)}")
    L = spatial_shapes.shape[0]
    if level_start_index.dim() != 1 or level_start_index.shape[0] != L:
        fail(
            ValueError,
            f"`level_start_index` must be (L,) with L={L} from `spatial_shapes`, got "
            f"{tuple(level_start_index.shape)}",
        )
    B, _, M, D = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        fail(
            ValueError,
            "`sampling_locations` must be (B, Q, M, L, P, 2), got "
            f"{tuple(sampling_locations.shape)}",
        )
    Bs, Q, Ms, Ls, P, _ = sampling_locations.shape
    if (Bs, Ms, Ls) != (B, M, L):
        fail(
            ValueError,
            f"`sampling_locations` {tuple(sampling_locations.shape)} does not match (B={B}, Q, "
            f"M={M}, L={L}, P, 2) given by `value` and `spatial_shapes`",
        )
    if tuple(attention_weights.shape) != (B, Q, M, L, P):
        fail(
            ValueError,
            f"`attention_weights` must be (B, Q, M, L, P) = {(B, Q, M, L, P)}, got "
            f"{tuple(attention_weights.shape)}",
        )
    if grad_output is not None and tuple(grad_output.shape) != (B, Q, M * D):
        fail(
            ValueError,
            f"`grad_output` must be (B, Q, M*D) = {(B, Q, M * D)}, got "
            f"{tuple(grad_output.shape)}",
        )
    if value.dtype not in FLOAT_DTYPES:
        fail(TypeError, f"`value` must be float32/float64/float16/bfloat16, got {value.dtype}")
    for name in ("sampling_locations", "attention_weights", "grad_output"):
        if name in named and named[name].dtype != value.dtype:
            fail(
                TypeError,
                f"`{name}` has dtype {named[name].dtype} but `value` has {value.dtype}; cast "
                "them to one floating dtype",
            )
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype != torch.int64:
            fail(TypeError, f"`{name}` must be int64, got {named[name].dtype}")
    for name, t in named.items():
        if t.device != value.device:
            fail(
                ValueError,
                f"`{name}` is on {t.device} but `value` is on {value.device}; all arguments "
                "must be on one device",
            )
    if kernel:
        for name, t in named.items():
            if not t.is_contiguous():
                fail(
                    ValueError,
                    f"`{name}` must be contiguous (the Python wrapper makes it so; call "
                    ".contiguous())",
                )


def _register_python_parts() -> None:
    # A direct call with a meta tensor among CPU ones dispatches here too (Meta outranks CPU):
    # check_inputs' device test is what stops it from returning uninitialised memory.
    @torch.library.register_fake(_FORWARD)
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attn):
        check_inputs(
            value, spatial_shapes, level_start_index, sampling_locations, attn, kernel=True
        )
        B, _, M, D = value.shape
        Q = sampling_locations.shape[1]
        return value.new_empty((B, Q, M * D))

    @torch.library.register_fake(_BACKWARD)
    def _backward_fake(value, spatial_shapes, level_start_index, sampling_locations, attn, grad):
        check_inputs(
            value, spatial_shapes, level_start_index, sampling_locations, attn, grad, kernel=True
        )
        return (
            torch.empty_like(value),
            torch.empty_like(sampling_locations),
            torch.empty_like(attn),
        )

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attn = ctx.saved_tensors
        grad_value, grad_locations, grad_attn = torch.ops.vpose_d2.ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attn,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_attn

    torch.library.register_autograd(_FORWARD, _backward, setup_context=_setup_context)

    # The backward op is differentiated only for second-order gradients (create_graph=True);
    # its formula is not implemented, so say so instead of PyTorch's fallback of zeros.
    def _double_backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)

    torch.library.register_autograd(
        _BACKWARD, _double_backward, setup_context=lambda ctx, inputs, output: None
    )


if extension is not None:
    _register_python_parts()
