"""CUDA-only paths of the deformable attention op that tests/test_ms_deform_attn.py leaves out.

Determinism (forward bitwise; backward within rounding, and refused under
``torch.use_deterministic_algorithms``), non-contiguous and empty inputs on the GPU, CUDA vs CPU
kernel in float64, a launch large enough for many thousand blocks, capture in a CUDA graph
(the kernels use the current stream and never synchronise the host), the module under
autocast, and tensors on one GPU while another is current. Everything here skips without a
CUDA device or without the CUDA kernels; tools/gpu_check.sh runs it on a lent GPU machine.
"""

import contextlib

import pytest
import torch
from test_ms_deform_attn import assert_parity, make_inputs, make_levels, run_with_grads

from vpose_d2 import _ops
from vpose_d2.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(
        not _ops.has_kernel("cuda"), reason="vpose_d2._C was built without CUDA kernels"
    ),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


@contextlib.contextmanager
def deterministic_algorithms(warn_only: bool):
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


def crowded_inputs(dtype=torch.float32, seed=0):
    """Many queries on small maps: every value row gets grad contributions from hundreds of
    samples, so the atomics of the backward really collide."""
    return make_inputs(2, 600, 4, 32, [(4, 4), (2, 2)], 4, dtype, "cuda", seed=seed)


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_forward_is_bitwise_deterministic(dtype):
    value, shapes, starts, loc, attn = crowded_inputs(dtype)
    outs = [ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled") for _ in range(3)]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_cuda_backward_is_deterministic_up_to_the_value_atomics():
    inputs = crowded_inputs(torch.float32)
    g = torch.Generator().manual_seed(3)
    grad_out = torch.randn(2, 600, 4 * 32, generator=g).cuda()
    runs = [run_with_grads("compiled", *inputs, grad_out=grad_out)[1] for _ in range(3)]
    for grads in runs[1:]:
        # Locations and weights: one warp per (b, q, m), reduced by shuffles in a fixed order.
        assert torch.equal(grads[1], runs[0][1])
        assert torch.equal(grads[2], runs[0][2])
        # Values: float atomics, so the summation order (only) may change between runs.
        torch.testing.assert_close(grads[0], runs[0][0], rtol=1e-5, atol=1e-5)


def test_cuda_backward_is_refused_under_deterministic_algorithms():
    value, shapes, starts, loc, attn = make_inputs(1, 5, 2, 8, [(4, 4)], 2, device="cuda")
    value.requires_grad_()
    with deterministic_algorithms(warn_only=False):
        out = ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")  # forward is fine
        with pytest.raises(RuntimeError, match="ms_deform_attn_backward"):
            out.sum().backward()
    with deterministic_algorithms(warn_only=True):
        out = ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")
        with pytest.warns(UserWarning, match="ms_deform_attn_backward"):
            out.sum().backward()
    assert value.grad is not None and torch.isfinite(value.grad).all()


# ----------------------------------------------------------------------------------------------
# Layouts and sizes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_non_contiguous_inputs(dtype):
    value, shapes, starts, loc, attn = make_inputs(2, 6, 2, 36, [(4, 5), (2, 2)], 3, dtype, "cuda")
    # Same values, strided layouts: value stored (B, M, S, D), the others slices of wider tensors.
    value_nc = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    loc_nc = torch.stack([loc, torch.zeros_like(loc)], -1)[..., 0]
    attn_nc = torch.stack([attn, attn], -1)[..., 0]
    shapes_nc = torch.stack([shapes, shapes], -1)[..., 0]
    starts_nc = torch.stack([starts, starts], -1)[:, 1]
    assert not any(t.is_contiguous() for t in (value_nc, shapes_nc, loc_nc, attn_nc, starts_nc))
    expected = ms_deform_attn(value, shapes, starts, loc, attn, impl="compiled")
    got = ms_deform_attn(value_nc, shapes_nc, starts_nc, loc_nc, attn_nc, impl="compiled")
    assert torch.equal(got, expected)
    if dtype == torch.float32:
        assert_parity(value_nc, shapes, starts_nc, loc_nc, attn_nc)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B,Q", [(2, 0), (0, 3)], ids=["zero-queries", "zero-batch"])
def test_cuda_empty_inputs(dtype, B, Q):
    value, shapes, starts, loc, attn = make_inputs(B, Q, 2, 4, [(3, 3), (2, 2)], 2, dtype, "cuda")
    out, grads = run_with_grads("compiled", value, shapes, starts, loc, attn)
    assert out.shape == (B, Q, 8) and out.dtype == dtype and out.device.type == "cuda"
    assert grads[0].shape == value.shape and torch.count_nonzero(grads[0]) == 0
    assert grads[1].shape == loc.shape and grads[2].shape == attn.shape
    torch.cuda.synchronize()  # a bad launch configuration would surface here


def test_cuda_kernel_matches_cpu_kernel_float64():
    cpu = make_inputs(2, 40, 4, 40, [(9, 7), (5, 4), (3, 2), (1, 1)], 4, torch.float64, spread=0.3)
    gpu = [t.cuda() for t in cpu]
    out_c, grads_c = run_with_grads("compiled", *cpu)
    out_g, grads_g = run_with_grads("compiled", *gpu)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-12, atol=1e-12)
    for gg, gc in zip(grads_g, grads_c):
        torch.testing.assert_close(gg.cpu(), gc, rtol=1e-10, atol=1e-10)


def test_cuda_large_launch_matches_reference():
    # Encoder-sized: 2 x 21760 queries x 8 heads -> 348k warps in the backward, 43k blocks.
    shapes = [(128, 128), (64, 64), (32, 32), (16, 16)]
    _, _, S = make_levels(shapes)
    value, shapes_t, starts, loc, attn = make_inputs(2, S, 8, 32, shapes, 4, device="cuda")
    assert_parity(value, shapes_t, starts, loc, attn, atol=2e-5, grad_atol=5e-4)


# ----------------------------------------------------------------------------------------------
# Streams, graphs, autocast, devices
# ----------------------------------------------------------------------------------------------
def test_cuda_graph_capture_of_forward_and_backward():
    """Capture fails if a kernel runs on another stream than the capturing one or if the call
    synchronises with the host; replays must then match eager calls on new inputs."""
    value, shapes, starts, loc, attn = make_inputs(
        2, 50, 4, 32, [(16, 16), (8, 8)], 4, device="cuda"
    )
    static = [t.clone().requires_grad_() for t in (value, loc, attn)]
    grad_out = torch.randn(2, 50, 128, device="cuda")

    def step():
        for t in static:
            t.grad = None
        out = ms_deform_attn(static[0], shapes, starts, static[1], static[2], impl="compiled")
        out.backward(grad_out)
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm up on the side stream, as graph capture requires
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for t in static:
        t.grad = None
    with torch.cuda.graph(graph):
        static_out = ms_deform_attn(
            static[0], shapes, starts, static[1], static[2], impl="compiled"
        )
        static_out.backward(grad_out)
    for seed in (1, 2):
        fresh = make_inputs(2, 50, 4, 32, [(16, 16), (8, 8)], 4, device="cuda", seed=seed)
        with torch.no_grad():
            for t, new in zip(static, (fresh[0], fresh[3], fresh[4])):
                t.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        out, grads = run_with_grads("compiled", *fresh, grad_out=grad_out)
        torch.testing.assert_close(static_out, out)
        for t, g in zip(static, grads):
            torch.testing.assert_close(t.grad, g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_module_under_autocast_tracks_float32(dtype):
    torch.manual_seed(0)
    shapes, starts, S = make_levels([(32, 32), (16, 16), (8, 8), (4, 4)], "cuda")
    m = MSDeformAttn(embed_dim=256, num_heads=8, num_levels=4, num_points=4, impl="compiled")
    m = m.cuda()
    torch.nn.init.normal_(m.sampling_offsets.weight, std=0.01)
    torch.nn.init.normal_(m.attention_weights.weight, std=0.01)
    query = torch.randn(2, 300, 256, device="cuda")
    ref = torch.rand(2, 300, 4, 2, device="cuda")
    value = torch.randn(2, S, 256, device="cuda")
    out32 = m(query, ref, value, shapes, starts)
    with torch.autocast("cuda", dtype=dtype):
        out = m(query, ref, value, shapes, starts)
        loss = out.float().square().mean()
    assert out.dtype == dtype
    rel = (out.float() - out32).norm() / out32.norm()
    assert rel < (3e-2 if dtype == torch.bfloat16 else 5e-3), f"relative error {rel:.2e}"
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize(
    "tensor_device,current", [(1, 0), (0, 1)], ids=["on1-current0", "on0-current1"]
)
def test_cuda_tensors_on_one_device_while_another_is_current(tensor_device, current):
    device = torch.device("cuda", tensor_device)
    inputs = make_inputs(2, 9, 2, 8, [(6, 5), (3, 4)], 3, device=device)
    expected_out, expected_grads = run_with_grads("reference", *inputs)
    with torch.cuda.device(current):
        assert torch.cuda.current_device() == current
        out, grads = run_with_grads("compiled", *inputs)
        torch.cuda.synchronize(device)
    assert out.device == device and all(g.device == device for g in grads)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
