// CPU kernels of multi-scale deformable attention (float32/float64, and float16/bfloat16
// accumulating in float32).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ms_deform_attn.h"

namespace vpose_d2 {

namespace {

struct Sizes {
  int64_t B, S, M, D, Q, L, P;
};

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

// The kernels index `value` with level_start_index + (h * W + w) without further checks, so
// the level table must describe rows that exist. On CPU the table is in host memory and this
// costs nothing; the CUDA kernels instead skip out-of-range rows (reading the table back from
// the GPU would synchronize every call).
void check_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    const int64_t H = shapes[2 * l];
    const int64_t W = shapes[2 * l + 1];
    TORCH_CHECK(
        H >= 0 && W >= 0,
        "ms_deform_attn: `spatial_shapes` level ",
        l,
        " has a negative size (",
        H,
        ", ",
        W,
        ")");
    TORCH_CHECK(
        starts[l] >= 0 && starts[l] + H * W <= S,
        "ms_deform_attn: level ",
        l,
        " spans rows [",
        starts[l],
        ", ",
        starts[l] + H * W,
        ") of `value` (from `level_start_index` and `spatial_shapes`) but `value` has S=",
        S,
        " rows");
  }
}

template <typename scalar_t>
void forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    scalar_t* __restrict__ out,
    const Sizes& n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row_stride = n.M * n.D;  // between consecutive spatial positions of `value`
  // One work item is one (batch, query): each writes its own (M, D) slice of the output.
  const int64_t work_per_query = std::max<int64_t>(1, n.M * n.L * n.P * n.D);
  const int64_t grain = std::max<int64_t>(1, 32768 / work_per_query);
  at::parallel_for(0, n.B * n.Q, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(n.D);
    BilinearCorners<acc_t> c;
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / n.Q;
      for (int64_t m = 0; m < n.M; ++m) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        acc_t* __restrict__ a_ptr = acc.data();
        int64_t sample = (bq * n.M + m) * n.L * n.P;
        for (int64_t l = 0; l < n.L; ++l) {
          const int64_t H = shapes[2 * l];
          const int64_t W = shapes[2 * l + 1];
          const scalar_t* level_value = value + ((b * n.S + starts[l]) * n.M + m) * n.D;
          for (int64_t p = 0; p < n.P; ++p, ++sample) {
            const acc_t x = static_cast<acc_t>(loc[2 * sample]);
            const acc_t y = static_cast<acc_t>(loc[2 * sample + 1]);
            if (!bilinear_corners<acc_t>(x, y, H, W, c)) {
              continue;
            }
            const acc_t a = static_cast<acc_t>(attn[sample]);
            for (int k = 0; k < 4; ++k) {
              if (c.index[k] < 0) {
                continue;
              }
              const acc_t coef = a * c.weight[k];
              const scalar_t* __restrict__ v = level_value + c.index[k] * row_stride;
              for (int64_t d = 0; d < n.D; ++d) {
                a_ptr[d] += coef * static_cast<acc_t>(v[d]);
              }
            }
          }
        }
        scalar_t* o = out + (bq * n.M + m) * n.D;
        for (int64_t d = 0; d < n.D; ++d) {
          o[d] = static_cast<scalar_t>(a_ptr[d]);
        }
      }
    }
  });
}

// Returns sum_d go[d] * v[d] and adds coef * go into gv. The dot product keeps 8 partial sums:
// a single running sum is a serial dependency the compiler may not reorder (no -ffast-math),
// 8 independent lanes let it vectorize both statements.
template <typename scalar_t, typename acc_t>
inline acc_t dot_and_scatter(
    const scalar_t* __restrict__ v,
    const acc_t* __restrict__ go,
    acc_t* __restrict__ gv,
    acc_t coef,
    int64_t D) {
  constexpr int kLanes = 8;
  acc_t part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      part[j] += go[d + j] * static_cast<acc_t>(v[d + j]);
      gv[d + j] += coef * go[d + j];
    }
  }
  for (; d < D; ++d) {
    part[0] += go[d] * static_cast<acc_t>(v[d]);
    gv[d] += coef * go[d];
  }
  acc_t dot = 0;
  for (int j = 0; j < kLanes; ++j) {
    dot += part[j];
  }
  return dot;
}

// Why the backward parallelizes over (batch, head) and not over queries: grad_value receives
// scattered writes from every query that samples a position, so query-parallel threads would
// race on it. A (batch, head) pair owns a disjoint slice of every output -- grad_value[b, :, m]
// and grad_sampling_locations / grad_attention_weights[b, :, m] -- so threads never share a
// written element: no atomics, no per-thread copies of grad_value (which would multiply the
// memory the op is meant to save), and the result is deterministic. The cost is parallelism
// capped at B * M work items (8 heads already cover typical CPU core counts).
template <typename scalar_t, typename acc_t>
void backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out,
    acc_t* __restrict__ grad_value,
    scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_attn,
    const Sizes& n) {
  const int64_t row_stride = n.M * n.D;
  at::parallel_for(0, n.B * n.M, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> go(n.D);
    BilinearCorners<acc_t> c;
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / n.M;
      const int64_t m = bm % n.M;
      for (int64_t q = 0; q < n.Q; ++q) {
        const int64_t bqm = (b * n.Q + q) * n.M + m;
        const scalar_t* g = grad_out + bqm * n.D;
        acc_t* __restrict__ go_ptr = go.data();
        for (int64_t d = 0; d < n.D; ++d) {
          go_ptr[d] = static_cast<acc_t>(g[d]);
        }
        int64_t sample = bqm * n.L * n.P;
        for (int64_t l = 0; l < n.L; ++l) {
          const int64_t H = shapes[2 * l];
          const int64_t W = shapes[2 * l + 1];
          const int64_t level_offset = ((b * n.S + starts[l]) * n.M + m) * n.D;
          const scalar_t* level_value = value + level_offset;
          acc_t* level_grad = grad_value + level_offset;
          for (int64_t p = 0; p < n.P; ++p, ++sample) {
            const acc_t x = static_cast<acc_t>(loc[2 * sample]);
            const acc_t y = static_cast<acc_t>(loc[2 * sample + 1]);
            // Outputs were zero-initialised: a point with no in-bounds corner has no gradient.
            if (!bilinear_corners<acc_t>(x, y, H, W, c)) {
              continue;
            }
            const acc_t a = static_cast<acc_t>(attn[sample]);
            acc_t grad_a = 0;
            acc_t grad_x = 0;
            acc_t grad_y = 0;
            for (int k = 0; k < 4; ++k) {
              if (c.index[k] < 0) {
                continue;
              }
              const scalar_t* __restrict__ v = level_value + c.index[k] * row_stride;
              acc_t* __restrict__ gv = level_grad + c.index[k] * row_stride;
              const acc_t dot = dot_and_scatter<scalar_t, acc_t>(v, go_ptr, gv, a * c.weight[k], n.D);
              grad_a += c.weight[k] * dot;
              grad_x += c.dweight_dx[k] * dot;
              grad_y += c.dweight_dy[k] * dot;
            }
            grad_attn[sample] = static_cast<scalar_t>(grad_a);
            // d(pixel x)/d(normalized x) = W (and H for y), see bilinear_corners.
            grad_loc[2 * sample] = static_cast<scalar_t>(a * grad_x * static_cast<acc_t>(W));
            grad_loc[2 * sample + 1] = static_cast<scalar_t>(a * grad_y * static_cast<acc_t>(H));
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(
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
      c10::DeviceType::CPU);
  const Sizes n = get_sizes(value, sampling_locations);
  check_levels(spatial_shapes, level_start_index, n.S);
  at::Tensor out = at::empty({n.B, n.Q, n.M * n.D}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
        forward_kernel<scalar_t>(
            value.data_ptr<scalar_t>(),
            spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(),
            sampling_locations.data_ptr<scalar_t>(),
            attention_weights.data_ptr<scalar_t>(),
            out.data_ptr<scalar_t>(),
            n);
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
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
      c10::DeviceType::CPU);
  const Sizes n = get_sizes(value, sampling_locations);
  check_levels(spatial_shapes, level_start_index, n.S);
  at::Tensor grad_loc = at::zeros_like(sampling_locations);
  at::Tensor grad_attn = at::zeros_like(attention_weights);
  const auto acc_type = at::toOpMathType(value.scalar_type());
  // Reduced-precision grad_value is accumulated in float32 and rounded once at the end.
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_type));
  if (n.B * n.Q * n.M * n.L * n.P > 0 && n.D > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t>(
              value.data_ptr<scalar_t>(),
              spatial_shapes.data_ptr<int64_t>(),
              level_start_index.data_ptr<int64_t>(),
              sampling_locations.data_ptr<scalar_t>(),
              attention_weights.data_ptr<scalar_t>(),
              grad_output.data_ptr<scalar_t>(),
              grad_value_acc.data_ptr<acc_t>(),
              grad_loc.data_ptr<scalar_t>(),
              grad_attn.data_ptr<scalar_t>(),
              n);
        });
  }
  at::Tensor grad_value =
      acc_type == value.scalar_type() ? grad_value_acc : grad_value_acc.to(value.scalar_type());
  return std::make_tuple(grad_value, grad_loc, grad_attn);
}

TORCH_LIBRARY_IMPL(vpose_d2, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace vpose_d2
