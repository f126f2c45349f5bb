// Multi-scale deformable attention: declarations shared by the CPU and CUDA kernels.
//
// Semantics (identical to the pure-PyTorch reference in vpose_d2/layers/ms_deform_attn.py):
//   out[b, q, m*D + d] = sum_{l, p} attention_weights[b, q, m, l, p] *
//       bilinear(value[b, level l, m, d], sampling_locations[b, q, m, l, p])
// where the bilinear sample follows F.grid_sample(mode="bilinear", padding_mode="zeros",
// align_corners=False) and sampling locations are (x, y) normalized to [0, 1] per level.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace vpose_d2 {

// Checks every argument of the forward op (and grad_output for the backward op when defined)
// and throws c10::Error naming the argument at fault. `device_type` is the backend the caller
// implements; all tensors must live on one device of that type and be contiguous.
void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor* grad_output,
    c10::DeviceType device_type);

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

// Bilinear footprint of one sampling location on one level: the (up to) four in-bounds
// corners, their weights and the weights' derivatives with respect to the pixel coordinates.
template <typename acc_t>
struct BilinearCorners {
  int64_t index[4];  // row h * W + w inside the level, or -1 where the corner is out of bounds
  acc_t weight[4];
  acc_t dweight_dx[4];
  acc_t dweight_dy[4];
};

// Fills `c` for a normalized location (x, y) on an H x W map. Returns false when no corner can
// be in bounds (also for NaN locations, which fail every comparison), so callers skip it.
//
// The pixel coordinate is computed exactly as ATen's CPU grid_sampler does for
// align_corners=False, ((2x - 1) + 1) * (W / 2) - 0.5, rather than the algebraically equal
// x * W - 0.5: rounding then agrees bit for bit with the reference, which matters for the
// gradient when a point sits exactly on a pixel centre (a kink of the bilinear interpolant).
template <typename acc_t>
C10_HOST_DEVICE inline bool bilinear_corners(
    acc_t x, acc_t y, int64_t H, int64_t W, BilinearCorners<acc_t>& c) {
  const acc_t one = static_cast<acc_t>(1);
  const acc_t half = static_cast<acc_t>(0.5);
  const acc_t gx = x * static_cast<acc_t>(2) - one;
  const acc_t gy = y * static_cast<acc_t>(2) - one;
  const acc_t ix = (gx + one) * (static_cast<acc_t>(W) * half) - half;
  const acc_t iy = (gy + one) * (static_cast<acc_t>(H) * half) - half;
  // Corners are floor(ix) and floor(ix) + 1; outside (-2, W + 1) none of them is in bounds.
  // Testing before the float -> int conversion also keeps that conversion defined.
  if (!(ix > static_cast<acc_t>(-2) && ix < static_cast<acc_t>(W + 1) &&
        iy > static_cast<acc_t>(-2) && iy < static_cast<acc_t>(H + 1))) {
    return false;
  }
  const acc_t x0f = std::floor(ix);
  const acc_t y0f = std::floor(iy);
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  const acc_t fx = ix - x0f;
  const acc_t fy = iy - y0f;
  const acc_t rx = one - fx;
  const acc_t ry = one - fy;
  // Corner order: (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
  c.weight[0] = rx * ry;
  c.weight[1] = fx * ry;
  c.weight[2] = rx * fy;
  c.weight[3] = fx * fy;
  c.dweight_dx[0] = -ry;
  c.dweight_dx[1] = ry;
  c.dweight_dx[2] = -fy;
  c.dweight_dx[3] = fy;
  c.dweight_dy[0] = -rx;
  c.dweight_dy[1] = -fx;
  c.dweight_dy[2] = rx;
  c.dweight_dy[3] = fx;
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {
    const int64_t xc = x0 + (k & 1);
    const int64_t yc = y0 + (k >> 1);
    c.index[k] = (xc >= 0 && xc < W && yc >= 0 && yc < H) ? yc * W + xc : -1;
  }
  return true;
}

}  // namespace vpose_d2
