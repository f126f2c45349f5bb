// The CPU sampling kernels, written once and compiled once per instruction set.
//
// The part below the include guard has none on purpose: ms_deform_attn_cpu.cpp includes this
// file twice, once for the baseline ISA and once (on x86-64) inside `#pragma GCC target("avx2")`,
// each time with VPOSE_CPU_ISA defined to the namespace of that copy.
//
// Work is split by head: a forward task is (batch b, head m, block of queries), a backward task
// (b, m, level l). Each task reads one head's slice of `value`, and with random locations that
// slice is the working set that has to stay in cache; the op hands the kernels head-major
// copies of the tensors (see ms_deform_attn_cpu.cpp) so that a task also reads its locations,
// weights and output rows as contiguous streams.
//
// Both kernels work in two passes over small blocks of samples: `plan` turns each sample into a
// Tap (its four corner rows, weights and attention weight) and prefetches those rows; `run`
// does the arithmetic on the block planned one step earlier. Gathering rows from memory is what
// costs, and prefetching a block ahead keeps many row fetches in flight where demand loads would
// wait for them one sample at a time. A corner outside the map reads a row of zeros (and the
// backward writes its gradient to a scratch row), so the arithmetic runs without per-corner
// branches.

// Types shared by both copies (once per translation unit).
#ifndef VPOSE_D2_CPU_KERNEL_TYPES
#define VPOSE_D2_CPU_KERNEL_TYPES

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../ms_deform_attn_sampling.h"

namespace vpose_d2 {
namespace cpu_kernels {

struct Sizes {
  int64_t B, S, M, D, Q, L, P;
};

// Element strides of value[b, s, m, :].
struct ValueLayout {
  int64_t b, m, s;
};

// The per-(b, q, m) rows of the sample tensors (locations, weights and their gradients: L * P
// samples, times 2 for locations) and of the output and grad_output (D values) have row index
// b * b_stride + m * m_stride + q * q_stride.
struct RowLayout {
  int64_t b, m, q;
  int64_t row(int64_t bb, int64_t mm, int64_t qq) const {
    return bb * b + mm * m + qq * q;
  }
};

template <typename scalar_t>
struct Problem {
  const scalar_t* value;
  ValueLayout value_layout;
  const int64_t* shapes;  // (L, 2)
  const int64_t* starts;  // (L,)
  const scalar_t* loc;
  const scalar_t* attn;
  RowLayout rows;      // of loc and attn, and of their gradients
  RowLayout out_rows;  // of the output and grad_output
  Sizes n;
};

// One sample of the forward: acc += a * sum_k w[k] * row[k].
template <typename scalar_t, typename acc_t>
struct ForwardTap {
  const scalar_t* row[4];
  acc_t w[4];
  acc_t a;
  acc_t* acc;
};

// One sample of the backward, with where its gradients go.
template <typename scalar_t, typename acc_t>
struct BackwardTap {
  const scalar_t* row[4];
  acc_t* grad_row[4];
  acc_t w[4];
  acc_t dw_dx[4];
  acc_t dw_dy[4];
  acc_t a;
  int64_t sample;
  const scalar_t* grad_out;
};

// Queries planned (and prefetched) at a time: a block's rows must be in flight while the block
// before it is computed, and still in L1 when it is computed itself.
constexpr int64_t kBlockQueries = 4;

}  // namespace cpu_kernels
}  // namespace vpose_d2

#endif  // VPOSE_D2_CPU_KERNEL_TYPES

namespace vpose_d2 {
namespace cpu_kernels {
namespace VPOSE_CPU_ISA {

// 32-byte SIMD vectors (GCC / Clang vector extensions): 8 floats or 4 doubles, compiled to one
// AVX register in the AVX2 copy and two SSE / NEON registers in the baseline one. Products and
// sums are rounded separately in both copies (no FMA, -ffp-contract=off), so the two give
// bit-identical results.
template <typename T>
struct Simd {
  static constexpr bool kEnabled = false;
};
template <>
struct Simd<float> {
  static constexpr bool kEnabled = true;
  static constexpr int kLanes = 8;
  typedef float V __attribute__((vector_size(32)));
};
template <>
struct Simd<double> {
  static constexpr bool kEnabled = true;
  static constexpr int kLanes = 4;
  typedef double V __attribute__((vector_size(32)));
};

// (Through references, not by value: a 32-byte vector argument would change the baseline ABI.)
template <typename V, typename T>
inline void load(V& v, const T* p) {
  std::memcpy(&v, p, sizeof(V));
}

template <typename V, typename T>
inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// out[d] += a * (w0 v0[d] + w1 v1[d] + w2 v2[d] + w3 v3[d]): the bilinear sample first, then
// its weight, in the order F.grid_sample and the reference use (which also decides how NaN and
// inf propagate).
// kD > 0: D is kD, known at compile time.
template <typename scalar_t, typename acc_t, int kD>
inline void accumulate_sample(
    acc_t* __restrict__ out,
    const scalar_t* __restrict__ v0,
    const scalar_t* __restrict__ v1,
    const scalar_t* __restrict__ v2,
    const scalar_t* __restrict__ v3,
    const acc_t* w,
    acc_t a,
    int64_t runtime_D) {
  const int64_t D = kD > 0 ? kD : runtime_D;
  const acc_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  int64_t d = 0;
  if constexpr (Simd<scalar_t>::kEnabled && std::is_same_v<scalar_t, acc_t>) {
    using V = typename Simd<acc_t>::V;
    constexpr int kLanes = Simd<acc_t>::kLanes;
    for (; d + kLanes <= D; d += kLanes) {
      V x0, x1, x2, x3, o;
      load(x0, v0 + d);
      load(x1, v1 + d);
      load(x2, v2 + d);
      load(x3, v3 + d);
      load(o, out + d);
      V s = w0 * x0;
      s = s + w1 * x1;
      s = s + w2 * x2;
      s = s + w3 * x3;
      store(out + d, o + a * s);
    }
    if constexpr (kD > 0 && kD % kLanes == 0) {
      return;
    }
  }
  for (; d < D; ++d) {
    acc_t s = w0 * static_cast<acc_t>(v0[d]);
    s = s + w1 * static_cast<acc_t>(v1[d]);
    s = s + w2 * static_cast<acc_t>(v2[d]);
    s = s + w3 * static_cast<acc_t>(v3[d]);
    out[d] = out[d] + a * s;
  }
}

// The backward of one sample over its four corners k: dot[k] = sum_d g[d] v_k[d] and
// grad_v_k[d] += w_k * (g[d] * a), the gradient reaching the bilinear sample being g * a (as
// autograd forms it for the reference). The dot products keep one partial sum per SIMD lane
// and add the lanes up at the end.
template <typename scalar_t, typename acc_t, int kD>
inline void sample_backward(
    const scalar_t* __restrict__ g,
    acc_t a,
    const scalar_t* __restrict__ v0,
    const scalar_t* __restrict__ v1,
    const scalar_t* __restrict__ v2,
    const scalar_t* __restrict__ v3,
    acc_t* __restrict__ gv0,
    acc_t* __restrict__ gv1,
    acc_t* __restrict__ gv2,
    acc_t* __restrict__ gv3,
    const acc_t* w,
    acc_t* dot,
    int64_t runtime_D) {
  const int64_t D = kD > 0 ? kD : runtime_D;
  const acc_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t d = 0;
  bool done = false;
  if constexpr (Simd<scalar_t>::kEnabled && std::is_same_v<scalar_t, acc_t>) {
    using V = typename Simd<acc_t>::V;
    constexpr int kLanes = Simd<acc_t>::kLanes;
    V p0 = {}, p1 = {}, p2 = {}, p3 = {};
    for (; d + kLanes <= D; d += kLanes) {
      V gg, x0, x1, x2, x3, y0, y1, y2, y3;
      load(gg, g + d);
      load(x0, v0 + d);
      load(x1, v1 + d);
      load(x2, v2 + d);
      load(x3, v3 + d);
      load(y0, gv0 + d);
      load(y1, gv1 + d);
      load(y2, gv2 + d);
      load(y3, gv3 + d);
      const V gs = gg * a;
      p0 = p0 + gg * x0;
      p1 = p1 + gg * x1;
      p2 = p2 + gg * x2;
      p3 = p3 + gg * x3;
      store(gv0 + d, y0 + w0 * gs);
      store(gv1 + d, y1 + w1 * gs);
      store(gv2 + d, y2 + w2 * gs);
      store(gv3 + d, y3 + w3 * gs);
    }
    for (int e = 0; e < kLanes; ++e) {
      s0 += p0[e];
      s1 += p1[e];
      s2 += p2[e];
      s3 += p3[e];
    }
    done = kD > 0 && kD % kLanes == 0;
  }
  for (; !done && d < D; ++d) {
    const acc_t gg = static_cast<acc_t>(g[d]);
    const acc_t gs = gg * a;
    s0 += gg * static_cast<acc_t>(v0[d]);
    s1 += gg * static_cast<acc_t>(v1[d]);
    s2 += gg * static_cast<acc_t>(v2[d]);
    s3 += gg * static_cast<acc_t>(v3[d]);
    gv0[d] += w0 * gs;
    gv1[d] += w1 * gs;
    gv2[d] += w2 * gs;
    gv3[d] += w3 * gs;
  }
  dot[0] = s0;
  dot[1] = s1;
  dot[2] = s2;
  dot[3] = s3;
}

template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t bytes, bool for_write) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t o = 0; o < bytes; o += 64) {
    if (for_write) {
      __builtin_prefetch(p + o, 1, 3);
    } else {
      __builtin_prefetch(p + o, 0, 3);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. A task is (batch b, head m, queries [q_begin, q_end)). Every output element is
// computed by one task, summing over levels and points in a fixed order: the result does not
// depend on how tasks are split or on the number of threads.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, int kD>
void forward_tasks(
    const Problem<scalar_t>& pb,
    scalar_t* __restrict__ out,
    int64_t queries_per_task,
    int64_t task_begin,
    int64_t task_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Tap = ForwardTap<scalar_t, acc_t>;
  const Sizes& n = pb.n;
  const int64_t D = kD > 0 ? kD : n.D;
  const int64_t LP = n.L * n.P;
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t tasks_per_head = (n.Q + queries_per_task - 1) / queries_per_task;

  const std::vector<scalar_t> zeros(D, scalar_t(0));
  std::vector<acc_t> acc(2 * kBlockQueries * D);
  std::vector<Tap> taps(2 * kBlockQueries * LP);
  int64_t num_taps[2] = {0, 0};

  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t bm = task / tasks_per_head;
    const int64_t b = bm / n.M;
    const int64_t m = bm % n.M;
    const int64_t q_begin = (task % tasks_per_head) * queries_per_task;
    const int64_t q_end = std::min(n.Q, q_begin + queries_per_task);
    const int64_t num_blocks = (q_end - q_begin + kBlockQueries - 1) / kBlockQueries;
    const scalar_t* head_value = pb.value + b * pb.value_layout.b + m * pb.value_layout.m;

    // Taps of block j into buffer j & 1, rows prefetched.
    auto plan = [&](int64_t j) {
      const int64_t qb = q_begin + j * kBlockQueries;
      const int64_t qe = std::min(q_end, qb + kBlockQueries);
      Tap* t = taps.data() + (j & 1) * kBlockQueries * LP;
      acc_t* block_acc = acc.data() + (j & 1) * kBlockQueries * D;
      int64_t count = 0;
      BilinearCorners<acc_t> c;
      for (int64_t q = qb; q < qe; ++q) {
        int64_t sample = pb.rows.row(b, m, q) * LP;
        acc_t* query_acc = block_acc + (q - qb) * D;
        for (int64_t l = 0; l < n.L; ++l) {
          const int64_t H = pb.shapes[2 * l];
          const int64_t W = pb.shapes[2 * l + 1];
          const scalar_t* level_value = head_value + pb.starts[l] * pb.value_layout.s;
          for (int64_t p = 0; p < n.P; ++p, ++sample) {
            const acc_t a = static_cast<acc_t>(pb.attn[sample]);
            const SampleKind kind = bilinear_corners<acc_t>(
                static_cast<acc_t>(pb.loc[2 * sample]),
                static_cast<acc_t>(pb.loc[2 * sample + 1]),
                H,
                W,
                c);
            Tap& tap = t[count];
            if (kind == kOutside) {
              // Zero contribution, except that 0 * (NaN or inf) weight is NaN.
              if (a - a == acc_t(0)) {
                continue;
              }
              for (int k = 0; k < 4; ++k) {
                tap.row[k] = zeros.data();
                tap.w[k] = acc_t(0);
              }
            } else {
              for (int k = 0; k < 4; ++k) {
                tap.row[k] = c.index[k] >= 0 ? level_value + c.index[k] * pb.value_layout.s
                                             : zeros.data();
                tap.w[k] = c.weight[k];
                prefetch_row(tap.row[k], row_bytes, false);
              }
            }
            tap.a = a;
            tap.acc = query_acc;
            ++count;
          }
        }
      }
      num_taps[j & 1] = count;
    };

    auto run = [&](int64_t j) {
      const int64_t qb = q_begin + j * kBlockQueries;
      const int64_t qe = std::min(q_end, qb + kBlockQueries);
      acc_t* block_acc = acc.data() + (j & 1) * kBlockQueries * D;
      std::fill(block_acc, block_acc + (qe - qb) * D, acc_t(0));
      const Tap* t = taps.data() + (j & 1) * kBlockQueries * LP;
      for (int64_t i = 0; i < num_taps[j & 1]; ++i) {
        const Tap& tap = t[i];
        accumulate_sample<scalar_t, acc_t, kD>(
            tap.acc, tap.row[0], tap.row[1], tap.row[2], tap.row[3], tap.w, tap.a, D);
      }
      for (int64_t q = qb; q < qe; ++q) {
        const acc_t* a = block_acc + (q - qb) * D;
        scalar_t* o = out + pb.out_rows.row(b, m, q) * D;
        for (int64_t d = 0; d < D; ++d) {
          o[d] = static_cast<scalar_t>(a[d]);
        }
      }
    };

    plan(0);
    for (int64_t j = 0; j < num_blocks; ++j) {
      if (j + 1 < num_blocks) {
        plan(j + 1);
      }
      run(j);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward. A task is (batch b, head m, level l): it owns grad_value[b, rows of level l, m] and
// the gradients of the level-l samples of head m, so no two threads write one element (no
// atomics, no per-thread copies of grad_value) and each element is summed in a fixed order
// (queries, then points) whatever the thread count. B * M * L tasks keep more threads busy
// than B * M would.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, int kD>
void backward_tasks(
    const Problem<scalar_t>& pb,
    const scalar_t* __restrict__ grad_out,
    at::opmath_type<scalar_t>* __restrict__ grad_value,  // laid out as pb.value_layout
    scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_attn,
    int64_t task_begin,
    int64_t task_end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Tap = BackwardTap<scalar_t, acc_t>;
  const Sizes& n = pb.n;
  const int64_t D = kD > 0 ? kD : n.D;
  const int64_t LP = n.L * n.P;
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t grad_row_bytes = D * static_cast<int64_t>(sizeof(acc_t));
  const int64_t num_blocks = (n.Q + kBlockQueries - 1) / kBlockQueries;

  const std::vector<scalar_t> zeros(D, scalar_t(0));
  // Receive the gradient of corners outside the map, one row per corner so that the four
  // gradient rows of a sample never alias.
  std::vector<acc_t> scratch(4 * D);
  std::vector<Tap> taps(2 * kBlockQueries * n.P);
  int64_t num_taps[2] = {0, 0};

  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t l = task % n.L;
    const int64_t bm = task / n.L;
    const int64_t b = bm / n.M;
    const int64_t m = bm % n.M;
    const int64_t H = pb.shapes[2 * l];
    const int64_t W = pb.shapes[2 * l + 1];
    const int64_t level_offset =
        b * pb.value_layout.b + m * pb.value_layout.m + pb.starts[l] * pb.value_layout.s;
    const scalar_t* level_value = pb.value + level_offset;
    acc_t* level_grad = grad_value + level_offset;

    auto plan = [&](int64_t j) {
      const int64_t qb = j * kBlockQueries;
      const int64_t qe = std::min(n.Q, qb + kBlockQueries);
      Tap* t = taps.data() + (j & 1) * kBlockQueries * n.P;
      int64_t count = 0;
      BilinearCorners<acc_t> c;
      for (int64_t q = qb; q < qe; ++q) {
        const int64_t row = pb.rows.row(b, m, q);
        int64_t sample = row * LP + l * n.P;
        for (int64_t p = 0; p < n.P; ++p, ++sample) {
          const acc_t a = static_cast<acc_t>(pb.attn[sample]);
          const SampleKind kind = bilinear_corners<acc_t>(
              static_cast<acc_t>(pb.loc[2 * sample]),
              static_cast<acc_t>(pb.loc[2 * sample + 1]),
              H,
              W,
              c);
          if (kind == kOutside) {
            // The sample reads zeros: no gradient for its weight or value rows; its location
            // gradient is a * 0, which the zero-initialised output already holds for finite a.
            if (a - a != acc_t(0)) {
              grad_loc[2 * sample] = static_cast<scalar_t>(a * acc_t(0));
              grad_loc[2 * sample + 1] = static_cast<scalar_t>(a * acc_t(0));
            }
            continue;
          }
          Tap& tap = t[count++];
          for (int k = 0; k < 4; ++k) {
            const bool in = c.index[k] >= 0;
            const int64_t offset = c.index[k] * pb.value_layout.s;
            tap.row[k] = in ? level_value + offset : zeros.data();
            tap.grad_row[k] = in ? level_grad + offset : scratch.data() + k * D;
            tap.w[k] = c.weight[k];
            tap.dw_dx[k] = c.dweight_dx[k];
            tap.dw_dy[k] = c.dweight_dy[k];
            prefetch_row(tap.row[k], row_bytes, false);
            prefetch_row(tap.grad_row[k], grad_row_bytes, true);
          }
          tap.a = a;
          tap.sample = sample;
          tap.grad_out = grad_out + pb.out_rows.row(b, m, q) * D;
        }
      }
      num_taps[j & 1] = count;
    };

    auto run = [&](int64_t j) {
      const Tap* t = taps.data() + (j & 1) * kBlockQueries * n.P;
      for (int64_t i = 0; i < num_taps[j & 1]; ++i) {
        const Tap& tap = t[i];
        acc_t dot[4];
        sample_backward<scalar_t, acc_t, kD>(
            tap.grad_out,
            tap.a,
            tap.row[0],
            tap.row[1],
            tap.row[2],
            tap.row[3],
            tap.grad_row[0],
            tap.grad_row[1],
            tap.grad_row[2],
            tap.grad_row[3],
            tap.w,
            dot,
            D);
        acc_t grad_a = 0;
        acc_t grad_x = 0;
        acc_t grad_y = 0;
        for (int k = 0; k < 4; ++k) {
          grad_a += tap.w[k] * dot[k];
          grad_x += tap.dw_dx[k] * dot[k];
          grad_y += tap.dw_dy[k] * dot[k];
        }
        const int64_t s = tap.sample;
        grad_attn[s] = static_cast<scalar_t>(grad_a);
        // d(pixel x)/d(normalized x) = W (and H for y), see bilinear_corners.
        grad_loc[2 * s] = static_cast<scalar_t>(tap.a * grad_x * static_cast<acc_t>(W));
        grad_loc[2 * s + 1] = static_cast<scalar_t>(tap.a * grad_y * static_cast<acc_t>(H));
      }
    };

    plan(0);
    for (int64_t j = 0; j < num_blocks; ++j) {
      if (j + 1 < num_blocks) {
        plan(j + 1);
      }
      run(j);
    }
  }
}

}  // namespace VPOSE_CPU_ISA
}  // namespace cpu_kernels
}  // namespace vpose_d2
