// CUDA kernels of multi-scale deformable attention. float32/float64 compute natively;
// float16/bfloat16 load and store in their own type and accumulate in float32.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers, which
// a bare toolkit (or torch's pip CUDA wheels) does not always provide.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../ms_deform_attn.h"

namespace vpose_d2 {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

struct Sizes {
  int64_t B, S, M, D, Q, L, P;
};

inline int64_t num_blocks(int64_t threads) {
  return (threads + kThreads - 1) / kThreads;
}

// A sampled row outside [0, S) is treated as zero padding. The CPU path rejects such a level
// table up front; here checking it would need the table back on the host (a sync per call),
// so the kernels only make sure an inconsistent table cannot read or write out of bounds.
__device__ inline bool row_in_range(int64_t row, int64_t S) {
  return row >= 0 && row < S;
}

// One thread per output element (b, q, m, d). Threads of one (b, q, m) read the same
// locations and weights, which the cache broadcasts; value reads along d are coalesced.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    scalar_t* __restrict__ out,
    Sizes n,
    int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) {
    return;
  }
  const int64_t d = idx % n.D;
  const int64_t bqm = idx / n.D;
  const int64_t m = bqm % n.M;
  const int64_t b = bqm / (n.M * n.Q);
  const int64_t row_stride = n.M * n.D;
  acc_t acc = 0;
  int64_t sample = bqm * n.L * n.P;
  BilinearCorners<acc_t> c;
  for (int64_t l = 0; l < n.L; ++l) {
    const int64_t H = shapes[2 * l];
    const int64_t W = shapes[2 * l + 1];
    const int64_t start = starts[l];
    const scalar_t* level_value = value + ((b * n.S + start) * n.M + m) * n.D + d;
    for (int64_t p = 0; p < n.P; ++p, ++sample) {
      const acc_t x = static_cast<acc_t>(loc[2 * sample]);
      const acc_t y = static_cast<acc_t>(loc[2 * sample + 1]);
      const acc_t a = static_cast<acc_t>(attn[sample]);
      const SampleKind kind = bilinear_corners<acc_t>(x, y, H, W, c);
      // The bilinear sample first, then its weight, as the reference computes it (which also
      // decides how NaN and inf propagate): corners outside the map read 0, so a non-finite
      // location (NaN weights) gives NaN, and an attention weight of NaN or inf gives NaN even
      // for a sample with no corner on the map.
      acc_t s = 0;
      if (kind != kOutside) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const bool in = c.index[k] >= 0 && row_in_range(start + c.index[k], n.S);
          s += c.weight[k] *
              (in ? static_cast<acc_t>(level_value[c.index[k] * row_stride]) : acc_t(0));
        }
      }
      acc += a * s;
    }
  }
  out[idx] = static_cast<scalar_t>(acc);
}

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// One warp per (b, q, m); lanes stride over d. Each lane accumulates its share of the dot
// products behind grad_attn and grad_loc, a warp shuffle reduces them, lane 0 writes.
// grad_value gets scattered contributions from many queries: atomicAdd into an acc_t buffer
// (float32 for reduced precision, so no half atomics and a single rounding at the end).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out,
    acc_t* __restrict__ grad_value,
    scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_attn,
    Sizes n,
    int64_t num_warps) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  // Uniform across the warp (blockDim is a multiple of 32), so the shuffles below always see
  // all 32 lanes.
  if (warp >= num_warps) {
    return;
  }
  const int64_t bqm = warp;
  const int64_t m = bqm % n.M;
  const int64_t b = bqm / (n.M * n.Q);
  const int64_t row_stride = n.M * n.D;
  const scalar_t* g = grad_out + bqm * n.D;
  int64_t sample = bqm * n.L * n.P;
  BilinearCorners<acc_t> c;
  for (int64_t l = 0; l < n.L; ++l) {
    const int64_t H = shapes[2 * l];
    const int64_t W = shapes[2 * l + 1];
    const int64_t start = starts[l];
    const int64_t level_offset = ((b * n.S + start) * n.M + m) * n.D;
    for (int64_t p = 0; p < n.P; ++p, ++sample) {
      const acc_t x = static_cast<acc_t>(loc[2 * sample]);
      const acc_t y = static_cast<acc_t>(loc[2 * sample + 1]);
      const acc_t a = static_cast<acc_t>(attn[sample]);
      const SampleKind kind = bilinear_corners<acc_t>(x, y, H, W, c);
      if (kind == kOutside) {
        // Reads zeros: no gradient for the weight or value; the location gradient is a * 0,
        // which the zero-initialised output holds unless a is NaN or inf.
        if (lane == 0 && a - a != acc_t(0)) {
          grad_loc[2 * sample] = static_cast<scalar_t>(a * acc_t(0));
          grad_loc[2 * sample + 1] = static_cast<scalar_t>(a * acc_t(0));
        }
        continue;
      }
      acc_t grad_a = 0;
      acc_t grad_x = 0;
      acc_t grad_y = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        // A corner off the map (or past an inconsistent level table) reads 0: its dot product
        // is 0, which still carries the NaN weights of a non-finite location into the sums.
        acc_t dot = 0;
        if (c.index[k] >= 0 && row_in_range(start + c.index[k], n.S)) {
          const int64_t base = level_offset + c.index[k] * row_stride;
          for (int64_t d = lane; d < n.D; d += kWarp) {
            const acc_t go = static_cast<acc_t>(g[d]);
            dot += go * static_cast<acc_t>(value[base + d]);
            // The gradient reaching the bilinear sample is grad_out * a, as for the reference.
            atomicAdd(grad_value + base + d, c.weight[k] * (go * a));
          }
        }
        grad_a += c.weight[k] * dot;
        grad_x += c.dweight_dx[k] * dot;
        grad_y += c.dweight_dy[k] * dot;
      }
      grad_a = warp_sum(grad_a);
      grad_x = warp_sum(grad_x);
      grad_y = warp_sum(grad_y);
      if (lane == 0) {
        grad_attn[sample] = static_cast<scalar_t>(grad_a);
        grad_loc[2 * sample] = static_cast<scalar_t>(a * grad_x * static_cast<acc_t>(W));
        grad_loc[2 * sample + 1] = static_cast<scalar_t>(a * grad_y * static_cast<acc_t>(H));
      }
    }
  }
}

Sizes get_sizes(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      sampling_locations.size(1),
      sampling_locations.size(3),
      sampling_locations.size(4)};
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(
      value,
      spatial_shapes,
      level_start_index,
      sampling_locations,
      attention_weights,
      nullptr,
      c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes n = get_sizes(value, sampling_locations);
  at::Tensor out = at::empty({n.B, n.Q, n.M * n.D}, value.options());
  const int64_t total = out.numel();
  if (total == 0) {
    return out;
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        forward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
            value.data_ptr<scalar_t>(),
            spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(),
            sampling_locations.data_ptr<scalar_t>(),
            attention_weights.data_ptr<scalar_t>(),
            out.data_ptr<scalar_t>(),
            n,
            total);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  check_ms_deform_attn_inputs(
      value,
      spatial_shapes,
      level_start_index,
      sampling_locations,
      attention_weights,
      &grad_output,
      c10::DeviceType::CUDA);
  // Float atomics make the summation order of grad_value run-dependent.
  at::globalContext().alertNotDeterministic("vpose_d2::ms_deform_attn_backward (CUDA)");
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes n = get_sizes(value, sampling_locations);
  at::Tensor grad_loc = at::zeros_like(sampling_locations);
  at::Tensor grad_attn = at::zeros_like(attention_weights);
  const auto acc_type = at::toOpMathType(value.scalar_type());
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_type));
  const int64_t num_warps = n.B * n.Q * n.M;
  if (num_warps * n.L * n.P > 0 && n.D > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t><<<num_blocks(num_warps * kWarp), kThreads, 0, stream>>>(
              value.data_ptr<scalar_t>(),
              spatial_shapes.data_ptr<int64_t>(),
              level_start_index.data_ptr<int64_t>(),
              sampling_locations.data_ptr<scalar_t>(),
              attention_weights.data_ptr<scalar_t>(),
              grad_output.data_ptr<scalar_t>(),
              grad_value_acc.data_ptr<acc_t>(),
              grad_loc.data_ptr<scalar_t>(),
              grad_attn.data_ptr<scalar_t>(),
              n,
              num_warps);
        });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor grad_value =
      acc_type == value.scalar_type() ? grad_value_acc : grad_value_acc.to(value.scalar_type());
  return std::make_tuple(grad_value, grad_loc, grad_attn);
}

TORCH_LIBRARY_IMPL(vpose_d2, CUDA, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace vpose_d2
