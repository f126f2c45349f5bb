// CPU kernels of multi-scale deformable attention (float32/float64, and float16/bfloat16
// accumulating in float32). The arithmetic lives in ms_deform_attn_cpu_kernels.h, compiled here
// for the baseline ISA and, on x86-64 with GCC or Clang, for AVX2, picked at run time.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../ms_deform_attn.h"

#define VPOSE_CPU_ISA baseline
#include "ms_deform_attn_cpu_kernels.h"
#undef VPOSE_CPU_ISA

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VPOSE_HAVE_AVX2_KERNELS 1
// Only the kernels below are compiled for AVX2: everything included above keeps the baseline
// ISA, so no inline function shared with the rest of the program carries AVX2 code.
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#define VPOSE_CPU_ISA avx2
#include "ms_deform_attn_cpu_kernels.h"
#undef VPOSE_CPU_ISA
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
#define VPOSE_HAVE_AVX2_KERNELS 0
#endif

namespace vpose_d2 {

namespace {

using cpu_kernels::Problem;
using cpu_kernels::RowLayout;
using cpu_kernels::Sizes;
using cpu_kernels::ValueLayout;

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

// The AVX2 kernels where the CPU has AVX2, unless VPOSE_CPU_KERNEL=baseline asks for the
// baseline ones (the tests use it to check both copies on one machine). Decided once.
bool use_avx2() {
#if VPOSE_HAVE_AVX2_KERNELS
  static const bool use = [] {
    const char* env = std::getenv("VPOSE_CPU_KERNEL");
    if (env != nullptr && std::strcmp(env, "baseline") == 0) {
      return false;
    }
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return use;
#else
  return false;
#endif
}

// The kernels index `value` with level_start_index + (h * W + w) without further checks, so
// the level table must describe rows that exist. On CPU the table is in host memory and this
// costs nothing; the CUDA kernels instead skip out-of-range rows (reading the table back from
// the GPU would synchronize every call). The test is written so that it cannot overflow:
// H * W <= S - start is checked as H <= (S - start) / W.
void check_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
  const int64_t* starts = level_start_index.data_ptr<int64_t>();
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    const int64_t H = shapes[2 * l];
    const int64_t W = shapes[2 * l + 1];
    const int64_t start = starts[l];
    TORCH_CHECK(
        H > 0 && W > 0,
        "ms_deform_attn: `spatial_shapes` level ",
        l,
        " is (H=",
        H,
        ", W=",
        W,
        "); both must be positive");
    TORCH_CHECK(
        start >= 0 && start <= S && H <= (S - start) / W,
        "ms_deform_attn: level ",
        l,
        " spans rows [",
        start,
        ", ",
        start,
        " + ",
        H,
        " * ",
        W,
        ") of `value` (from `level_start_index` and `spatial_shapes`) but `value` has S=",
        S,
        " rows");
  }
}

// Memory for the head-major copies the kernels read, released when it goes out of scope.
// Buffers of 2 MiB and more are 2 MiB-aligned and advised to use transparent huge pages: a
// fresh 4 KiB page costs a page fault when first touched (microseconds each inside a VM, as
// much as the copy itself), and a random gather over a 4 KiB-paged head slice misses the TLB
// at almost every row; a few huge pages avoid both. Where the kernel declines (THP disabled),
// the memory is ordinary pages and only the speed differs.
class Workspace {
 public:
  explicit Workspace(size_t bytes) {
    constexpr size_t kHuge = size_t(2) << 20;
    if (bytes >= kHuge) {
      bytes_ = (bytes + kHuge - 1) / kHuge * kHuge;
      data_ = std::aligned_alloc(kHuge, bytes_);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      if (data_ != nullptr) {
        madvise(data_, bytes_, MADV_HUGEPAGE);  // advice only: failure just means 4 KiB pages
      }
#endif
    } else {
      bytes_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, std::max<size_t>(bytes_, 64));
    }
    TORCH_CHECK(
        data_ != nullptr, "ms_deform_attn: could not allocate a ", bytes_, "-byte workspace");
  }
  ~Workspace() {
    std::free(data_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // A tensor of `sizes` on the next 64-byte-aligned piece of the workspace.
  at::Tensor take(at::IntArrayRef sizes, at::ScalarType dtype) {
    int64_t numel = 1;
    for (const int64_t s : sizes) {
      numel *= s;
    }
    const size_t bytes = (numel * c10::elementSize(dtype) + 63) / 64 * 64;
    TORCH_INTERNAL_ASSERT(used_ + bytes <= bytes_);
    at::Tensor t = at::from_blob(
        static_cast<char*>(data_) + used_, sizes, at::TensorOptions().dtype(dtype));
    used_ += bytes;
    return t;
  }

  static size_t bytes_for(int64_t numel, at::ScalarType dtype) {
    return (numel * c10::elementSize(dtype) + 63) / 64 * 64;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  size_t used_ = 0;
};

// Layouts of the tensors as the op receives them ((B, S, M, D) values, (B, Q, M, ...) rows) and
// of their head-major copies ((B, M, S, D), (B, M, Q, ...)), which give each (b, m) task
// contiguous data. With one head the two coincide and no copy is made.
ValueLayout head_major_value_layout(const Sizes& n) {
  return {n.M * n.S * n.D, n.S * n.D, n.D};
}
RowLayout given_rows(const Sizes& n) {
  return {n.Q * n.M, 1, n.M};
}
RowLayout head_major_rows(const Sizes& n) {
  return {n.M * n.Q, n.Q, 1};
}

// Queries per forward task: enough to amortise a task's setup, few enough that the tasks of one
// head spread over the threads when B * M is small.
constexpr int64_t kForwardTaskQueries = 256;

template <typename scalar_t>
void run_forward(const Problem<scalar_t>& pb, scalar_t* out) {
  const Sizes& n = pb.n;
  const int64_t per_task = std::min<int64_t>(kForwardTaskQueries, n.Q);
  const int64_t tasks = n.B * n.M * ((n.Q + per_task - 1) / per_task);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
#define VPOSE_FORWARD(ISA, KD) \
  cpu_kernels::ISA::forward_tasks<scalar_t, KD>(pb, out, per_task, begin, end)
#define VPOSE_FORWARD_ISA(ISA) \
  switch (n.D) {               \
    case 16:                   \
      VPOSE_FORWARD(ISA, 16);  \
      break;                   \
    case 32:                   \
      VPOSE_FORWARD(ISA, 32);  \
      break;                   \
    case 64:                   \
      VPOSE_FORWARD(ISA, 64);  \
      break;                   \
    default:                   \
      VPOSE_FORWARD(ISA, 0);   \
  }
#if VPOSE_HAVE_AVX2_KERNELS
    if (use_avx2()) {
      VPOSE_FORWARD_ISA(avx2)
      return;
    }
#endif
    VPOSE_FORWARD_ISA(baseline)
#undef VPOSE_FORWARD_ISA
#undef VPOSE_FORWARD
  });
}

template <typename scalar_t, typename acc_t>
void run_backward(
    const Problem<scalar_t>& pb,
    const scalar_t* grad_out,
    acc_t* grad_value,
    scalar_t* grad_loc,
    scalar_t* grad_attn) {
  const Sizes& n = pb.n;
  at::parallel_for(0, n.B * n.M * n.L, 1, [&](int64_t begin, int64_t end) {
#define VPOSE_BACKWARD(ISA, KD)                   \
  cpu_kernels::ISA::backward_tasks<scalar_t, KD>( \
      pb, grad_out, grad_value, grad_loc, grad_attn, begin, end)
#define VPOSE_BACKWARD_ISA(ISA) \
  switch (n.D) {                \
    case 16:                    \
      VPOSE_BACKWARD(ISA, 16);  \
      break;                    \
    case 32:                    \
      VPOSE_BACKWARD(ISA, 32);  \
      break;                    \
    case 64:                    \
      VPOSE_BACKWARD(ISA, 64);  \
      break;                    \
    default:                    \
      VPOSE_BACKWARD(ISA, 0);   \
  }
#if VPOSE_HAVE_AVX2_KERNELS
    if (use_avx2()) {
      VPOSE_BACKWARD_ISA(avx2)
      return;
    }
#endif
    VPOSE_BACKWARD_ISA(baseline)
#undef VPOSE_BACKWARD_ISA
#undef VPOSE_BACKWARD
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
  const auto dtype = value.scalar_type();
  // Head-major copies of what the tasks read (the output is written in place: its rows are
  // whole cache lines).
  const bool copy = n.M > 1;
  Workspace ws(
      copy ? Workspace::bytes_for(value.numel(), dtype) +
              Workspace::bytes_for(sampling_locations.numel(), dtype) +
              Workspace::bytes_for(attention_weights.numel(), dtype)
           : 0);
  at::Tensor value_hm = value;
  at::Tensor loc_hm = sampling_locations;
  at::Tensor attn_hm = attention_weights;
  if (copy) {
    value_hm = ws.take({n.B, n.M, n.S, n.D}, dtype).copy_(value.transpose(1, 2));
    loc_hm = ws.take({n.B, n.M, n.Q, n.L, n.P, 2}, dtype).copy_(sampling_locations.transpose(1, 2));
    attn_hm = ws.take({n.B, n.M, n.Q, n.L, n.P}, dtype).copy_(attention_weights.transpose(1, 2));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dtype, "ms_deform_attn_forward_cpu", [&] {
        const Problem<scalar_t> pb{
            value_hm.data_ptr<scalar_t>(),
            head_major_value_layout(n),
            spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(),
            loc_hm.data_ptr<scalar_t>(),
            attn_hm.data_ptr<scalar_t>(),
            head_major_rows(n),
            given_rows(n),
            n};
        run_forward<scalar_t>(pb, out.data_ptr<scalar_t>());
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
  const auto dtype = value.scalar_type();
  // Reduced-precision grad_value is accumulated in float32 and rounded once at the end.
  const auto acc_type = at::toOpMathType(dtype);
  if (n.B * n.Q * n.M * n.L * n.P == 0 || n.D == 0) {
    return std::make_tuple(
        at::zeros_like(value), at::zeros_like(sampling_locations), at::zeros_like(attention_weights));
  }
  // Head-major copies of the inputs, and head-major gradients copied back at the end (every
  // level task reads the grad_output row of each of its queries, so that is copied too).
  const bool copy = n.M > 1;
  size_t bytes = 0;
  if (copy) {
    bytes += Workspace::bytes_for(value.numel(), dtype);
    bytes += 2 * Workspace::bytes_for(sampling_locations.numel(), dtype);
    bytes += 2 * Workspace::bytes_for(attention_weights.numel(), dtype);
    bytes += Workspace::bytes_for(grad_output.numel(), dtype);
  }
  if (copy || acc_type != dtype) {
    bytes += Workspace::bytes_for(value.numel(), acc_type);
  }
  Workspace ws(bytes);
  at::Tensor value_hm = value;
  at::Tensor loc_hm = sampling_locations;
  at::Tensor attn_hm = attention_weights;
  at::Tensor grad_out_hm = grad_output;
  at::Tensor grad_loc_hm;
  at::Tensor grad_attn_hm;
  if (copy) {
    value_hm = ws.take({n.B, n.M, n.S, n.D}, dtype).copy_(value.transpose(1, 2));
    loc_hm = ws.take({n.B, n.M, n.Q, n.L, n.P, 2}, dtype).copy_(sampling_locations.transpose(1, 2));
    attn_hm = ws.take({n.B, n.M, n.Q, n.L, n.P}, dtype).copy_(attention_weights.transpose(1, 2));
    grad_out_hm = ws.take({n.B, n.M, n.Q, n.D}, dtype)
                      .copy_(grad_output.view({n.B, n.Q, n.M, n.D}).transpose(1, 2));
    grad_loc_hm = ws.take({n.B, n.M, n.Q, n.L, n.P, 2}, dtype).zero_();
    grad_attn_hm = ws.take({n.B, n.M, n.Q, n.L, n.P}, dtype).zero_();
  } else {
    grad_loc_hm = at::zeros_like(sampling_locations);
    grad_attn_hm = at::zeros_like(attention_weights);
  }
  at::Tensor grad_value_acc = copy || acc_type != dtype
      ? ws.take({n.B, n.M, n.S, n.D}, acc_type).zero_()
      : at::zeros(value.sizes(), value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dtype, "ms_deform_attn_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Problem<scalar_t> pb{
            value_hm.data_ptr<scalar_t>(),
            head_major_value_layout(n),
            spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(),
            loc_hm.data_ptr<scalar_t>(),
            attn_hm.data_ptr<scalar_t>(),
            head_major_rows(n),
            head_major_rows(n),
            n};
        run_backward<scalar_t, acc_t>(
            pb,
            grad_out_hm.data_ptr<scalar_t>(),
            grad_value_acc.data_ptr<acc_t>(),
            grad_loc_hm.data_ptr<scalar_t>(),
            grad_attn_hm.data_ptr<scalar_t>());
      });
  // Back to the given layouts (and to value's dtype), out of the workspace.
  at::Tensor grad_value = grad_value_acc;
  if (copy || acc_type != dtype) {
    grad_value = at::empty(value.sizes(), value.options());
    grad_value.copy_(grad_value_acc.view({n.B, n.M, n.S, n.D}).transpose(1, 2));
  }
  at::Tensor grad_loc = grad_loc_hm;
  at::Tensor grad_attn = grad_attn_hm;
  if (copy) {
    grad_loc = at::empty_like(sampling_locations).copy_(grad_loc_hm.transpose(1, 2));
    grad_attn = at::empty_like(attention_weights).copy_(grad_attn_hm.transpose(1, 2));
  }
  return std::make_tuple(grad_value, grad_loc, grad_attn);
}

TORCH_LIBRARY_IMPL(vpose_d2, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace vpose_d2
