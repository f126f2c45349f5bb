"""Multi-scale deformable attention: compiled kernels against the grid_sample reference.

The compiled cases skip (with the loader's reason) where ``vpose_d2._C`` was not built; the
CUDA cases skip without a GPU. ``VPOSE_DISABLE_EXT=1`` makes a process behave as if the
extension were absent (used below in a subprocess).
"""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest
import torch
from torch.autograd import gradcheck

from vpose_d2 import _ops
from vpose_d2.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference

REPO = Path(__file__).resolve().parents[1]

needs_ext = pytest.mark.skipif(
    _ops.extension is None, reason=f"compiled op unavailable: {_ops.load_error}"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_cuda_kernel = pytest.mark.skipif(
    not _ops.has_kernel("cuda"), reason="vpose_d2._C was built without CUDA kernels"
)


def make_levels(shapes: Sequence[Tuple[int, int]], device="cpu"):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device).view(-1, 2)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(areas.sum())


def make_inputs(
    B: int,
    Q: int,
    M: int,
    D: int,
    shapes: List[Tuple[int, int]],
    P: int,
    dtype=torch.float32,
    device="cpu",
    spread: float = 0.2,
    seed: int = 0,
):
    """Random inputs; locations cover [-spread, 1 + spread] so some fall outside the maps."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, S = make_levels(shapes, device)
    L = len(shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    loc = torch.rand(B, Q, M, L, P, 2, generator=g, dtype=torch.float64) * (1 + 2 * spread)
    loc = loc - spread
    attn = torch.rand(B, Q, M, L, P, generator=g, dtype=torch.float64)
    attn = attn / attn.sum((-1, -2), keepdim=True).clamp_min(1e-6)
    cast = dict(dtype=dtype, device=device)
    return value.to(**cast), spatial_shapes, level_start_index, loc.to(**cast), attn.to(**cast)


def run_with_grads(impl: str, value, shapes, starts, loc, attn, grad_out=None):
    """Forward and gradients w.r.t. (value, loc, attn) for a fixed upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl=impl)
    if grad_out is None:
        g = torch.Generator().manual_seed(1)
        grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return out.detach(), grads


def assert_parity(value, shapes, starts, loc, attn, atol=1e-5, grad_atol=1e-4):
    out_c, grads_c = run_with_grads("compiled", value, shapes, starts, loc, attn)
    out_r, grads_r = run_with_grads("reference", value, shapes, starts, loc, attn)
    torch.testing.assert_close(out_c, out_r, atol=atol, rtol=1e-5)
    for name, gc, gr in zip(("value", "sampling_locations", "attention_weights"), grads_c, grads_r):
        torch.testing.assert_close(gc, gr, atol=grad_atol, rtol=1e-4, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------
def test_reference_gradcheck_float64():
    value, shapes, starts, loc, attn = make_inputs(1, 3, 2, 3, [(4, 3), (2, 2)], 2, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (value, loc, attn))
    assert gradcheck(
        lambda v, sl, aw: ms_deform_attn_reference(v, shapes, starts, sl, aw), inputs, eps=1e-6
    )


def test_reference_matches_hand_computed_bilinear():
    # One 2x2 map, one point at the centre of the map: the four pixels weigh 1/4 each.
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    shapes, starts, _ = make_levels([(2, 2)])
    loc = torch.full((1, 1, 1, 1, 1, 2), 0.5)
    attn = torch.ones(1, 1, 1, 1, 1)
    out = ms_deform_attn_reference(value, shapes, starts, loc, attn)
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx(2.5)
    # The centre of pixel (row 1, col 0) is at x = 0.25, y = 0.75.
    loc = torch.tensor([0.25, 0.75]).view(1, 1, 1, 1, 1, 2)
    assert ms_deform_attn_reference(value, shapes, starts, loc, attn).item() == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------------
# Compiled CPU kernel
# ----------------------------------------------------------------------------------------------
@needs_ext
def test_compiled_cpu_gradcheck_float64():
    value, shapes, starts, loc, attn = make_inputs(2, 3, 2, 3, [(4, 3), (2, 2)], 2, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (value, loc, attn))
    assert gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw, impl="compiled"),
        inputs,
        eps=1e-6,
    )


@needs_ext
@pytest.mark.parametrize(
    "B,Q,M,D,shapes,P",
    [
        (2, 7, 2, 8, [(6, 5), (3, 4)], 3),
        (1, 1, 1, 1, [(1, 1)], 1),
        (3, 11, 4, 5, [(9, 7), (5, 4), (3, 2), (1, 1)], 4),  # D not a multiple of 8 lanes
        (1, 5, 2, 16, [(8, 8), (4, 4), (2, 2), (1, 1)] * 3, 2),  # 3 frames x 4 levels
        (2, 33, 8, 32, [(16, 16), (8, 8), (4, 4), (2, 2)], 4),  # encoder-like, SIMD rows
        (1, 300, 2, 64, [(8, 8), (4, 4)], 2),  # several forward tasks per head
        (2, 9, 1, 32, [(5, 6), (3, 3)], 3),  # one head: no head-major copies
    ],
    ids=[
        "two-levels",
        "minimal",
        "four-levels",
        "3frames-x-4levels",
        "encoder-like",
        "Q300-D64",
        "one-head",
    ],
)
def test_compiled_cpu_matches_reference(B, Q, M, D, shapes, P):
    assert_parity(*make_inputs(B, Q, M, D, shapes, P))


@needs_ext
@pytest.mark.parametrize("D", [16, 5])
def test_compiled_cpu_matches_reference_float64(D):
    inputs = make_inputs(2, 13, 3, D, [(7, 6), (4, 3)], 3, torch.float64)
    assert_parity(*inputs, atol=1e-12, grad_atol=1e-11)


@needs_ext
def test_points_on_pixel_centres_edges_and_map_borders():
    # On an 8 x 4 map these locations are exact binary fractions: pixel edges (k / W), pixel
    # centres ((k + 0.5) / W, kinks of the bilinear interpolant), the borders 0 and 1, and the
    # half pixel just outside, where only one corner is in bounds.
    W, H = 8, 4
    xs = [k / W for k in range(W + 1)] + [(k + 0.5) / W for k in range(W)] + [-0.5 / W, 1.0625]
    ys = [k / H for k in range(H + 1)] + [(k + 0.5) / H for k in range(H)] + [-0.5 / H, 1.125]
    grid = torch.tensor([(x, y) for x in xs for y in ys])
    Q = grid.shape[0]
    value, shapes, starts, _, attn = make_inputs(1, Q, 1, 3, [(H, W)], 1)
    loc = grid.view(1, Q, 1, 1, 1, 2)
    assert_parity(value, shapes, starts, loc, attn)


@needs_ext
def test_points_outside_every_map_give_zeros_and_zero_gradients():
    value, shapes, starts, loc, attn = make_inputs(1, 4, 2, 4, [(5, 5), (2, 3)], 3)
    far = torch.tensor([-3.0, 5.0, -1.0 / 3, 1e30]).view(1, 4, 1, 1, 1, 1)
    loc = far.expand_as(loc).clone()
    assert_parity(value, shapes, starts, loc, attn)
    out, grads = run_with_grads("compiled", value, shapes, starts, loc, attn)
    assert torch.count_nonzero(out) == 0
    for g in grads:
        assert torch.count_nonzero(g) == 0


def assert_same_including_nan(got, expected, what):
    """Equal values (to float tolerance) and NaN exactly where `expected` has NaN."""
    torch.testing.assert_close(
        got, expected, atol=1e-5, rtol=1e-5, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def nan_location_inputs(bad: float, coordinate: str, dtype=torch.float64, device="cpu"):
    """Random inputs where three samples have a non-finite x, y or both (`coordinate`)."""
    value, shapes, starts, loc, attn = make_inputs(
        2, 5, 3, 4, [(4, 5), (2, 3)], 2, dtype=dtype, device=device
    )
    components = {"x": [0], "y": [1], "xy": [0, 1]}[coordinate]
    for b, q, m, lvl, p in [(0, 1, 0, 0, 1), (1, 3, 2, 1, 0), (1, 4, 1, 0, 0)]:
        loc[b, q, m, lvl, p, components] = bad
    return value, shapes, starts, loc, attn


@needs_ext
@pytest.mark.parametrize("coordinate", ["x", "y", "xy"])
@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_locations_give_nan_as_the_reference_does(bad, coordinate, dtype):
    # One behaviour for every implementation (the reference's, F.grid_sample's): a non-finite
    # location makes its head's output NaN, never a silent zero.
    value, shapes, starts, loc, attn = nan_location_inputs(bad, coordinate, dtype)
    out_c, grads_c = run_with_grads("compiled", value, shapes, starts, loc, attn)
    out_r, grads_r = run_with_grads("reference", value, shapes, starts, loc, attn)
    head_is_nan = out_r.view(2, 5, 3, 4).isnan()
    assert head_is_nan.all(-1).sum() == 3 and (head_is_nan.any(-1) == head_is_nan.all(-1)).all()
    assert_same_including_nan(out_c, out_r, "output")
    for name, gc, gr in zip(("value", "sampling_locations", "attention_weights"), grads_c, grads_r):
        assert_same_including_nan(gc, gr, f"grad {name}")
    assert torch.isfinite(grads_c[0]).all(), "a non-finite location must not reach grad_value"
    assert grads_c[2].isnan().sum() == 3


@needs_ext
def test_non_finite_attention_weights_give_nan_outputs_as_the_reference_does():
    value, shapes, starts, loc, attn = make_inputs(1, 4, 1, 3, [(3, 4), (2, 2)], 1)
    loc[0, 0, 0, 0, 0] = torch.tensor([5.0, 0.5])  # off the map
    loc[0, 2, 0, 0, 0] = torch.tensor([-3.0, 7.0])  # off the map
    attn[0, :2, 0, 0, 0] = float("nan")
    attn[0, 2:, 0, 0, 0] = float("inf")
    out_c = ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")
    out_r = ms_deform_attn(value, shapes, starts, loc, attn, impl="reference")
    # 0 * NaN and 0 * inf are NaN even where the sample reads nothing; inf * sample is +-inf.
    assert out_r[0, :3].isnan().all() and out_r[0, 3].isinf().all()
    assert_same_including_nan(out_c, out_r, "output")


@needs_ext
@pytest.mark.parametrize("impl", ["compiled", "reference"])
@pytest.mark.parametrize("B,Q", [(2, 0), (0, 3)], ids=["zero-queries", "zero-batch"])
def test_empty_inputs(impl, B, Q):
    value, shapes, starts, loc, attn = make_inputs(B, Q, 2, 4, [(3, 3), (2, 2)], 2)
    out, grads = run_with_grads(impl, value, shapes, starts, loc, attn)
    assert out.shape == (B, Q, 8)
    assert grads[0].shape == value.shape and torch.count_nonzero(grads[0]) == 0
    assert grads[1].shape == loc.shape and grads[2].shape == attn.shape


@needs_ext
def test_non_contiguous_inputs():
    value, shapes, starts, loc, attn = make_inputs(2, 6, 2, 4, [(4, 5), (2, 2)], 3)
    # Same values, non-contiguous layouts: value stored (B, M, S, D), locations stored (..., y, x)
    # reversed twice, attention weights a strided slice of a bigger tensor.
    value_nc = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    loc_nc = loc.flip(-1).contiguous().flip(-1)
    attn_nc = torch.stack([attn, attn], -1)[..., 0]
    starts_nc = torch.stack([starts, starts], -1)[:, 1]
    assert not any(t.is_contiguous() for t in (value_nc, attn_nc, starts_nc))
    expected = ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")
    got = ms_deform_attn(value_nc, shapes, starts_nc, loc_nc, attn_nc, impl="compiled")
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert_parity(value_nc, shapes, starts_nc, loc_nc, attn_nc)


@needs_ext
@pytest.mark.parametrize("M", [2, 1], ids=["two-heads", "one-head"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_cpu_accumulates_in_float32(dtype, M):
    value, shapes, starts, loc, attn = make_inputs(1, 9, M, 8, [(6, 6), (3, 3)], 4, dtype)
    out, grads = run_with_grads("compiled", value, shapes, starts, loc, attn)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    as32 = [t.float() for t in (value, loc, attn)]
    out32, grads32 = run_with_grads("reference", as32[0], shapes, starts, as32[1], as32[2])
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), out32, atol=tol, rtol=tol)
    torch.testing.assert_close(grads[0].float(), grads32[0], atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------------
# Dispatch, validation, tracing
# ----------------------------------------------------------------------------------------------
@needs_ext
def test_auto_picks_the_kernel_by_device_without_asking_cuda(monkeypatch):
    def forbidden():
        raise AssertionError("impl='auto' must not consult torch.cuda.is_available()")

    monkeypatch.setattr(torch.cuda, "is_available", forbidden)
    inputs = make_inputs(1, 4, 2, 4, [(3, 3)], 2)
    out = ms_deform_attn(*inputs, impl="auto")
    assert out.grad_fn is None  # inputs do not require grad; checks the result is a tensor
    torch.testing.assert_close(out, ms_deform_attn(*inputs, impl="compiled"), atol=0, rtol=0)
    assert _ops.has_kernel("cpu") and not _ops.has_kernel("mps")
    with pytest.raises(RuntimeError, match="no kernel for 'mps'"):
        _ops.require_kernel("mps")


def _bad_inputs():
    value, shapes, starts, loc, attn = make_inputs(1, 2, 2, 4, [(3, 3), (2, 2)], 2)
    cases = {
        "value-ndim": (dict(value=value[0]), "`value` must be 4-D"),
        "levels-mismatch": (dict(level_start_index=starts[:1]), "`level_start_index`"),
        "locations-L": (dict(sampling_locations=loc[:, :, :, :1]), "`sampling_locations`"),
        "locations-ndim": (dict(sampling_locations=loc[..., 0]), "`sampling_locations`"),
        "weights-shape": (dict(attention_weights=attn[..., :1]), "`attention_weights`"),
        "value-dtype": (dict(value=value.long()), "`value` must be float"),
        "locations-dtype": (dict(sampling_locations=loc.double()), "`sampling_locations` has"),
        "weights-dtype": (dict(attention_weights=attn.half()), "`attention_weights` has"),
        "shapes-dtype": (dict(spatial_shapes=shapes.int()), "`spatial_shapes` must be int64"),
        "starts-dtype": (dict(level_start_index=starts.float()), "`level_start_index` must be"),
        "shapes-device": (dict(spatial_shapes=shapes.to("meta")), "`spatial_shapes` is on meta"),
        "weights-device": (dict(attention_weights=attn.to("meta")), "`attention_weights` is on"),
    }
    base = dict(
        value=value,
        spatial_shapes=shapes,
        level_start_index=starts,
        sampling_locations=loc,
        attention_weights=attn,
    )
    return {k: ({**base, **override}, msg) for k, (override, msg) in cases.items()}


_BAD = _bad_inputs()


@pytest.mark.parametrize("impl", ["auto", "compiled", "reference"])
@pytest.mark.parametrize("case", list(_BAD))
def test_invalid_inputs_name_the_argument(case, impl):
    kwargs, msg = _BAD[case]
    if impl == "compiled" and _ops.extension is None:
        pytest.skip(f"compiled op unavailable: {_ops.load_error}")
    with pytest.raises((ValueError, TypeError), match=msg):
        ms_deform_attn(**kwargs, impl=impl)


@needs_ext
@pytest.mark.parametrize("case", ["value-ndim", "locations-dtype", "shapes-dtype", "weights-shape"])
def test_kernel_checks_its_arguments_too(case):
    kwargs, msg = _BAD[case]
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.vpose_d2.ms_deform_attn_forward(*kwargs.values())


@needs_ext
def test_kernel_rejects_non_contiguous_and_inconsistent_levels():
    value, shapes, starts, loc, attn = make_inputs(1, 2, 2, 4, [(3, 3), (2, 2)], 2)
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)
    with pytest.raises(RuntimeError, match="`value` must be contiguous"):
        torch.ops.vpose_d2.ms_deform_attn_forward(value_nc, shapes, starts, loc, attn)
    with pytest.raises(RuntimeError, match="level 0 spans rows"):
        torch.ops.vpose_d2.ms_deform_attn_forward(value, shapes * 2, starts, loc, attn)


@needs_ext
@pytest.mark.parametrize(
    "H,W",
    [(2**33, 2**31), (2**32, 2**32), (2**62, 4), (2**31 - 1, 2**40)],
    ids=["2^33x2^31", "2^32x2^32", "2^62x4", "huge-W"],
)
def test_kernel_level_check_cannot_overflow(H, W):
    # H * W wraps around int64 to a small number (0 for the first three): a check written as
    # start + H * W <= S accepted these tables and then read outside `value`. The locations are
    # off the map so that code which wrongly accepts the table returns (zeros) instead of
    # reading memory it does not own.
    value, shapes, starts, loc, attn = make_inputs(1, 2, 2, 4, [(3, 3), (2, 2)], 2)
    bad_shapes = shapes.clone()
    bad_shapes[0] = torch.tensor([H, W])
    loc = torch.full_like(loc, -10.0)
    with pytest.raises(RuntimeError, match="level 0 spans rows"):
        torch.ops.vpose_d2.ms_deform_attn_forward(value, bad_shapes, starts, loc, attn)
    grad = torch.zeros(1, 2, 8)
    with pytest.raises(RuntimeError, match="level 0 spans rows"):
        torch.ops.vpose_d2.ms_deform_attn_backward(value, bad_shapes, starts, loc, attn, grad)


@needs_ext
@pytest.mark.parametrize("H,W", [(0, 3), (3, 0), (-1, -9)])
def test_kernel_rejects_empty_or_negative_levels(H, W):
    value, shapes, starts, loc, attn = make_inputs(1, 2, 2, 4, [(3, 3), (2, 2)], 2)
    bad_shapes = shapes.clone()
    bad_shapes[1] = torch.tensor([H, W])
    with pytest.raises(RuntimeError, match="level 1 is .*both must be positive"):
        torch.ops.vpose_d2.ms_deform_attn_forward(value, bad_shapes, starts, loc, attn)


@needs_ext
def test_second_order_gradients_raise_instead_of_returning_zeros():
    value, shapes, starts, loc, attn = make_inputs(1, 3, 2, 4, [(3, 4), (2, 2)], 2, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl="compiled")
    # First-order gradients with create_graph=True still work (and match the reference) ...
    grads = torch.autograd.grad(out.square().sum(), leaves, create_graph=True)
    ref_leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    ref = ms_deform_attn(ref_leaves[0], shapes, starts, ref_leaves[1], ref_leaves[2], "reference")
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), ref_leaves)):
        torch.testing.assert_close(g.detach(), r, atol=1e-10, rtol=1e-7)
    # ... but differentiating them again says it is not supported (PyTorch's fallback for an op
    # without an autograd rule gave zeros with a warning).
    with pytest.raises(RuntimeError, match="second-order gradients .* not supported"):
        torch.autograd.grad(grads[1].square().sum(), leaves[1])
    with pytest.raises(RuntimeError, match="second-order gradients .* not supported"):
        torch.autograd.gradgradcheck(
            lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw, impl="compiled"),
            tuple(t.detach().requires_grad_() for t in (value, loc, attn)),
        )
    # The reference has them.
    assert torch.autograd.gradgradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw, impl="reference"),
        tuple(t.detach().requires_grad_() for t in (value, loc, attn)),
    )


def _fake_kernel_cases():
    value, shapes, starts, loc, attn = make_inputs(1, 2, 2, 4, [(3, 3), (2, 2)], 2)
    grad = torch.zeros(1, 2, 8)
    meta = lambda t: t.to("meta")  # noqa: E731
    base = [meta(t) for t in (value, shapes, starts, loc, attn)]

    def forward(replace=None):
        """The forward op's arguments on meta, with argument i replaced by replace[i]."""
        return "forward", [(replace or {}).get(i, t) for i, t in enumerate(base)]

    def backward(grad_output):
        return "backward", base + [grad_output]

    return {
        "float64-weights": (forward({4: meta(attn.double())}), "`attention_weights` has dtype"),
        "float64-locations": (forward({3: meta(loc.double())}), "`sampling_locations` has"),
        "batch-mismatch": (
            forward({3: meta(torch.cat([loc, loc])), 4: meta(torch.cat([attn, attn]))}),
            "does not match",
        ),
        "weights-shape": (forward({4: meta(attn[..., :1])}), "`attention_weights` must be"),
        "value-ndim": (forward({0: meta(value[0])}), "`value` must be 4-D"),
        "shapes-dtype": (forward({1: meta(shapes.int())}), "`spatial_shapes` must be int64"),
        "non-contiguous": (
            forward({0: meta(value).transpose(1, 2).contiguous().transpose(1, 2)}),
            "`value` must be contiguous",
        ),
        "meta-among-cpu": (
            ("forward", [value, shapes, starts, meta(loc), attn]),
            "`sampling_locations` is on meta but `value` is on cpu",
        ),
        "bad-grad-output": (backward(meta(torch.zeros(1, 2, 5))), "`grad_output` must be"),
        "grad-output-dtype": (backward(meta(grad.double())), "`grad_output` has dtype"),
        "grad-output-on-cpu": (backward(grad), "`grad_output` is on cpu"),
    }


_FAKE = _fake_kernel_cases()


@needs_ext
@pytest.mark.parametrize("case", list(_FAKE))
def test_fake_kernels_check_like_the_real_ones(case):
    (which, args), msg = _FAKE[case]
    op = getattr(torch.ops.vpose_d2, f"ms_deform_attn_{which}")
    with pytest.raises(RuntimeError, match=msg):
        op(*args)


@needs_ext
def test_fake_kernels_under_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    value, shapes, starts, loc, attn = make_inputs(2, 5, 3, 4, [(3, 3), (2, 2)], 2)
    with FakeTensorMode() as mode:
        fv, fs, fst, fl, fa = (mode.from_tensor(t) for t in (value, shapes, starts, loc, attn))
        out = torch.ops.vpose_d2.ms_deform_attn_forward(fv, fs, fst, fl, fa)
        assert out.shape == (2, 5, 12)
        grads = torch.ops.vpose_d2.ms_deform_attn_backward(fv, fs, fst, fl, fa, out)
        assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
        with pytest.raises(RuntimeError, match="`attention_weights` has dtype"):
            torch.ops.vpose_d2.ms_deform_attn_forward(fv, fs, fst, fl, fa.double())
        with pytest.raises(RuntimeError, match="`grad_output` must be"):
            torch.ops.vpose_d2.ms_deform_attn_backward(fv, fs, fst, fl, fa, out[:, :3])


# ----------------------------------------------------------------------------------------------
# Determinism: runs, thread counts and the two CPU instruction-set copies agree bit for bit
# ----------------------------------------------------------------------------------------------
def _encoder_like_inputs():
    return make_inputs(2, 301, 8, 32, [(16, 16), (8, 8), (4, 4), (2, 2)], 4, spread=0.05)


@needs_ext
def test_compiled_cpu_is_deterministic_and_independent_of_the_thread_count():
    inputs = _encoder_like_inputs()
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 1):
            torch.set_num_threads(threads)
            results.append(run_with_grads("compiled", *inputs))
    finally:
        torch.set_num_threads(before)
    out0, grads0 = results[0]
    for out, grads in results[1:]:
        assert torch.equal(out, out0)
        for g, g0 in zip(grads, grads0):
            assert torch.equal(g, g0)


@needs_ext
def test_baseline_and_avx2_kernels_agree_bit_for_bit(tmp_path):
    # VPOSE_CPU_KERNEL=baseline makes a process use the copy compiled for the baseline ISA; on an
    # AVX2 machine the default is the AVX2 copy. Neither fuses multiply-adds, so they agree
    # exactly (and the baseline copy is checked against the reference on this machine too).
    inputs = _encoder_like_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_ms_deform_attn import assert_parity, run_with_grads
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        assert_parity(*inputs)
        torch.save(run_with_grads("compiled", *inputs), {str(tmp_path / "baseline.pt")!r})
        print("ok")
        """)
    env = {**os.environ, "VPOSE_CPU_KERNEL": "baseline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    out_b, grads_b = torch.load(tmp_path / "baseline.pt")
    out, grads = run_with_grads("compiled", *inputs)
    assert torch.equal(out, out_b)
    for g, gb in zip(grads, grads_b):
        assert torch.equal(g, gb)


def test_unknown_impl_rejected():
    with pytest.raises(ValueError, match="`impl` must be one of"):
        ms_deform_attn(*make_inputs(1, 1, 1, 1, [(1, 1)], 1), impl="cuda")


@needs_ext
def test_meta_tensors_give_shapes_through_the_fake_kernel():
    value, shapes, starts, loc, attn = (
        t.to("meta") for t in make_inputs(2, 5, 3, 4, [(3, 3), (2, 2)], 2)
    )
    out = ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")
    assert out.device.type == "meta" and out.shape == (2, 5, 12)


@needs_ext
def test_torch_compile_traces_through_the_compiled_op():
    torch._dynamo.reset()
    value, shapes, starts, loc, attn = make_inputs(1, 6, 2, 4, [(4, 4), (2, 2)], 2)

    def f(v, sl, aw):
        return ms_deform_attn(v, shapes, starts, sl.sigmoid(), aw.softmax(-1), impl="compiled")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = compiled(*leaves)
    out.square().sum().backward()
    leaves_ref = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out_ref = f(*leaves_ref)
    out_ref.square().sum().backward()
    torch.testing.assert_close(out, out_ref)
    for a, b in zip(leaves, leaves_ref):
        torch.testing.assert_close(a.grad, b.grad)


@needs_ext
def test_opcheck_schema_fake_and_autograd_registrations():
    # torch.library.opcheck: the schema matches what the kernels do (no hidden mutation or
    # aliasing), the fake kernels agree with the real ones, autograd is registered properly.
    value, shapes, starts, loc, attn = make_inputs(2, 3, 2, 4, [(4, 3), (2, 2)], 2, torch.float64)
    inputs = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    report = torch.library.opcheck(torch.ops.vpose_d2.ms_deform_attn_forward.default, inputs)
    assert set(report.values()) == {"SUCCESS"}, report
    detached = tuple(t.detach() for t in inputs) + (torch.randn(2, 3, 8, dtype=torch.float64),)
    report = torch.library.opcheck(torch.ops.vpose_d2.ms_deform_attn_backward.default, detached)
    assert set(report.values()) == {"SUCCESS"}, report


def test_import_and_fallback_without_the_extension():
    code = textwrap.dedent("""
        import pytest, torch
        from vpose_d2 import _ops
        from vpose_d2.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn
        assert _ops.extension is None and "VPOSE_DISABLE_EXT" in _ops.load_error
        shapes = torch.tensor([[2, 2]]); starts = torch.tensor([0])
        value = torch.ones(1, 4, 1, 2); loc = torch.full((1, 1, 1, 1, 1, 2), 0.5)
        attn = torch.ones(1, 1, 1, 1, 1)
        assert ms_deform_attn(value, shapes, starts, loc, attn).tolist() == [[[1.0, 1.0]]]
        with pytest.raises(RuntimeError, match="VPOSE_DISABLE_EXT"):
            ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")
        # A library that fails to load (missing, or built for another torch) is reported too.
        import importlib, os, sys
        os.environ["VPOSE_DISABLE_EXT"] = "0"
        sys.modules["vpose_d2._C"] = None  # makes `from vpose_d2 import _C` raise ImportError
        importlib.reload(_ops)
        assert _ops.extension is None and "could not be imported" in _ops.load_error
        with pytest.raises(RuntimeError, match="could not be imported"):
            ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")
        print("ok")
        """)
    env = {**os.environ, "VPOSE_DISABLE_EXT": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------------------------
# MSDeformAttn module
# ----------------------------------------------------------------------------------------------
def test_module_initialization_follows_deformable_detr():
    m = MSDeformAttn(embed_dim=16, num_heads=4, num_levels=2, num_points=3)
    bias = m.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    # Head 0 looks right, head 1 down (theta = pi/2), point p at distance p+1, all levels equal.
    torch.testing.assert_close(bias[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[1, 1, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[:, 0], bias[:, 1])
    assert bias.abs().amax(-1).eq(torch.tensor([1.0, 2.0, 3.0])).all()
    for p in (m.attention_weights.weight, m.attention_weights.bias, m.value_proj.bias):
        assert torch.count_nonzero(p) == 0
    with pytest.raises(ValueError, match="not divisible"):
        MSDeformAttn(embed_dim=10, num_heads=4)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_forward_points_and_boxes(ref_dim):
    torch.manual_seed(0)
    shapes, starts, S = make_levels([(6, 5), (3, 3)])
    m = MSDeformAttn(embed_dim=16, num_heads=2, num_levels=2, num_points=2, impl="reference")
    nn_init = torch.nn.init
    nn_init.normal_(m.sampling_offsets.weight, std=0.1)
    nn_init.normal_(m.attention_weights.weight, std=0.1)
    query = torch.randn(2, 5, 16)
    value = torch.randn(2, S, 16)
    ref = torch.rand(2, 5, 2, ref_dim)
    out = m(query, ref, value, shapes, starts)
    assert out.shape == (2, 5, 16)
    out.sum().backward()
    assert m.sampling_offsets.weight.grad.abs().sum() > 0
    if _ops.extension is not None:
        m.impl = "compiled"
        torch.testing.assert_close(m(query, ref, value, shapes, starts), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "compiled"])
def test_module_offsets_count_in_pixels_of_each_level(impl):
    if impl == "compiled" and _ops.extension is None:
        pytest.skip(f"compiled op unavailable: {_ops.load_error}")
    torch.manual_seed(0)
    shapes, starts, S = make_levels([(4, 6)])
    m = MSDeformAttn(embed_dim=4, num_heads=1, num_levels=1, num_points=1, impl=impl)
    value = torch.randn(1, S, 4)
    projected = m.value_proj(value)  # (1, S, 4), row r * 6 + c is pixel (r, c)
    # Reference point at the centre of pixel (row 2, col 3), offset bias (+1, -1) pixels: the
    # sample lands on the centre of pixel (row 1, col 4).
    ref = torch.tensor([(3 + 0.5) / 6, (2 + 0.5) / 4]).view(1, 1, 1, 2)
    with torch.no_grad():
        m.sampling_offsets.bias.copy_(torch.tensor([1.0, -1.0]))
    out = m(torch.randn(1, 1, 4), ref, value, shapes, starts)
    torch.testing.assert_close(out[0, 0], m.output_proj(projected[0, 1 * 6 + 4]))


def test_module_padding_mask_hides_padded_values():
    torch.manual_seed(0)
    shapes, starts, S = make_levels([(4, 4)])
    m = MSDeformAttn(embed_dim=8, num_heads=2, num_levels=1, num_points=4)
    query, ref = torch.randn(1, 3, 8), torch.rand(1, 3, 1, 2)
    value = torch.randn(1, S, 8)
    mask = torch.zeros(1, S, dtype=torch.bool)
    mask[:, 8:] = True  # the bottom half of the map is padding
    out = m(query, ref, value, shapes, starts, value_padding_mask=mask)
    changed = value.clone()
    changed[:, 8:] = 100.0
    out_changed = m(query, ref, changed, shapes, starts, value_padding_mask=mask)
    torch.testing.assert_close(out, out_changed)
    with pytest.raises(ValueError, match="num_levels=1"):
        m(query, ref, value, torch.cat([shapes, shapes]), torch.cat([starts, starts + 16]))


def test_module_clip_levels_share_one_softmax():
    # T=3 frames x L=2 levels as 6 levels: the weights of a head sum to 1 over all 6*P samples.
    torch.manual_seed(0)
    shapes, starts, S = make_levels([(4, 4), (2, 2)] * 3)
    m = MSDeformAttn(embed_dim=8, num_heads=2, num_levels=6, num_points=2)
    torch.nn.init.normal_(m.attention_weights.weight)
    query = torch.randn(1, 3, 8)
    w = m.attention_weights(query).view(1, 3, 2, 12).softmax(-1)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 3, 2))
    out = m(query, torch.rand(1, 3, 6, 2), torch.randn(1, S, 8), shapes, starts)
    assert out.shape == (1, 3, 8) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------------
@needs_cuda
@needs_cuda_kernel
@pytest.mark.parametrize(
    "B,Q,M,D,shapes,P",
    [
        (2, 7, 2, 8, [(6, 5), (3, 4)], 3),
        (2, 33, 8, 32, [(16, 16), (8, 8), (4, 4), (2, 2)], 4),
        (1, 5, 2, 40, [(8, 8), (4, 4), (2, 2), (1, 1)] * 3, 2),
        (2, 0, 2, 8, [(3, 3)], 2),
    ],
    ids=["two-levels", "encoder-like", "3frames-x-4levels-D40", "zero-queries"],
)
def test_cuda_matches_reference(B, Q, M, D, shapes, P):
    assert_parity(*make_inputs(B, Q, M, D, shapes, P, device="cuda"))


@needs_cuda
@needs_cuda_kernel
def test_cuda_gradcheck_float64_and_pixel_corners():
    value, shapes, starts, loc, attn = make_inputs(
        2, 3, 2, 3, [(4, 3), (2, 2)], 2, torch.float64, device="cuda"
    )
    inputs = tuple(t.requires_grad_() for t in (value, loc, attn))
    assert gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw, impl="compiled"),
        inputs,
        eps=1e-6,
    )
    corners = torch.tensor([[k / 4, j / 4] for k in range(5) for j in range(5)], device="cuda")
    value, shapes, starts, _, attn = make_inputs(1, 25, 1, 3, [(4, 4)], 1, device="cuda")
    assert_parity(value, shapes, starts, corners.view(1, 25, 1, 1, 1, 2), attn)


@needs_cuda
@needs_cuda_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision(dtype):
    value, shapes, starts, loc, attn = make_inputs(
        2, 50, 4, 32, [(16, 16), (8, 8)], 4, dtype, "cuda"
    )
    out, grads = run_with_grads("compiled", value, shapes, starts, loc, attn)
    as32 = [t.float() for t in (value, loc, attn)]
    out32, grads32 = run_with_grads("compiled", as32[0], shapes, starts, as32[1], as32[2])
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), out32, atol=tol, rtol=tol)
    torch.testing.assert_close(grads[0].float(), grads32[0], atol=tol, rtol=tol)
    assert math.isfinite(grads[1].float().abs().sum().item())


@needs_cuda
@needs_cuda_kernel
@pytest.mark.parametrize("coordinate", ["x", "y", "xy"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_cuda_non_finite_locations_give_nan_as_the_reference_does(bad, coordinate):
    value, shapes, starts, loc, attn = nan_location_inputs(bad, coordinate, device="cuda")
    out_c, grads_c = run_with_grads("compiled", value, shapes, starts, loc, attn)
    out_r, grads_r = run_with_grads("reference", value, shapes, starts, loc, attn)
    assert out_r.isnan().any()
    assert_same_including_nan(out_c, out_r, "output")
    for name, gc, gr in zip(("value", "sampling_locations", "attention_weights"), grads_c, grads_r):
        assert_same_including_nan(gc, gr, f"grad {name}")
