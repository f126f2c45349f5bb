// The bilinear sampling math shared by the CPU and CUDA kernels of multi-scale deformable
// attention (see ms_deform_attn.h for the op). Only c10 macros, so any kernel file can use it.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace vpose_d2 {

// Bilinear footprint of one sampling location on one level: the (up to) four in-bounds
// corners, their weights and the weights' derivatives with respect to the pixel coordinates.
template <typename acc_t>
struct BilinearCorners {
  int64_t index[4];  // row h * W + w inside the level, or -1 where the corner is out of bounds
  acc_t weight[4];
  acc_t dweight_dx[4];
  acc_t dweight_dy[4];
};

// What bilinear_corners found for a location.
enum SampleKind : int {
  // No corner is in bounds: the sample reads zeros (it still multiplies its attention weight,
  // so a non-finite weight gives NaN, as in the reference).
  kOutside = 0,
  // At least one corner is in bounds; `index`, `weight` and the derivatives are set.
  kInside = 1,
  // The pixel coordinate is NaN or +-inf. No corner is in bounds (every `index` is -1) and the
  // weights and derivatives are those of the bilinear formula evaluated at the non-finite
  // coordinate, so NaN wherever they depend on it. Reading the corners as zeros then gives
  // exactly what F.grid_sample gives: a NaN sample (so NaN output of the head and NaN gradient
  // of its attention weight), a NaN location gradient in the component whose partner is
  // non-finite, and no gradient for `value`.
  kNonFinite = 2,
};

template <typename acc_t>
C10_HOST_DEVICE inline void fill_bilinear_weights(acc_t fx, acc_t fy, BilinearCorners<acc_t>& c) {
  const acc_t one = static_cast<acc_t>(1);
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
}

// Fills `c` for a normalized location (x, y) on an H x W map and says which SampleKind it is.
//
// The pixel coordinate is computed exactly as ATen's CPU grid_sampler does for
// align_corners=False, ((2x - 1) + 1) * (W / 2) - 0.5, rather than the algebraically equal
// x * W - 0.5: rounding then agrees bit for bit with the reference, which matters for the
// gradient when a point sits exactly on a pixel centre (a kink of the bilinear interpolant).
// (The build disables floating-point contraction for the same reason: an FMA here would round
// differently.)
template <typename acc_t>
C10_HOST_DEVICE inline SampleKind bilinear_corners(
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
    // ix - ix is 0 for every finite value and NaN for NaN and +-inf.
    if (ix - ix == static_cast<acc_t>(0) && iy - iy == static_cast<acc_t>(0)) {
      return kOutside;
    }
    // floor(+-inf) = +-inf, so the fractions are NaN exactly where the coordinate is not finite.
    fill_bilinear_weights<acc_t>(ix - std::floor(ix), iy - std::floor(iy), c);
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int k = 0; k < 4; ++k) {
      c.index[k] = -1;
    }
    return kNonFinite;
  }
  const acc_t x0f = std::floor(ix);
  const acc_t y0f = std::floor(iy);
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  fill_bilinear_weights<acc_t>(ix - x0f, iy - y0f, c);
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {
    const int64_t xc = x0 + (k & 1);
    const int64_t yc = y0 + (k >> 1);
    c.index[k] = (xc >= 0 && xc < W && yc >= 0 && yc < H) ? yc * W + xc : -1;
  }
  return kInside;
}

}  // namespace vpose_d2
