"""Loader of the compiled extension ``vpose_d2._C``.

Importing this module never fails: when the extension is missing (not built, built against
another torch, or disabled with the environment variable ``VPOSE_DISABLE_EXT=1``) the reason
is recorded and :func:`require_kernel` reports it to callers that insist on the compiled op.

When the extension loads, this module also registers, for its two dispatcher ops
``torch.ops.vpose_d2.ms_deform_attn_forward`` / ``ms_deform_attn_backward``:

* fake (meta) implementations, so ``torch.compile`` and meta-device tracing see output shapes
  without running a kernel;
* the autograd formula of the forward op (its backward is the backward op).
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Optional, Tuple

import torch

__all__ = ["DISABLE_ENV", "extension", "load_error", "has_kernel", "require_kernel"]

logger = logging.getLogger(__name__)

#: Set to "1" to make vpose_d2 behave as if the extension had not been built.
DISABLE_ENV = "VPOSE_DISABLE_EXT"

_FORWARD = "vpose_d2::ms_deform_attn_forward"
_BACKWARD = "vpose_d2::ms_deform_attn_backward"


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


def _register_python_parts() -> None:
    @torch.library.register_fake(_FORWARD)
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attn):
        torch._check(value.dim() == 4, lambda: "ms_deform_attn: `value` must be 4-D")
        torch._check(
            sampling_locations.dim() == 6,
            lambda: "ms_deform_attn: `sampling_locations` must be (B, Q, M, L, P, 2)",
        )
        B, _, M, D = value.shape
        Q = sampling_locations.shape[1]
        return value.new_empty((B, Q, M * D))

    @torch.library.register_fake(_BACKWARD)
    def _backward_fake(value, spatial_shapes, level_start_index, sampling_locations, attn, grad):
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


if extension is not None:
    _register_python_parts()
