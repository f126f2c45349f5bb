// Operator schemas, argument checks and the Python module of vpose_d2._C.
//
// The ops live in the `vpose_d2` namespace of the dispatcher:
//   torch.ops.vpose_d2.ms_deform_attn_forward(value, spatial_shapes, level_start_index,
//                                             sampling_locations, attention_weights) -> out
//   torch.ops.vpose_d2.ms_deform_attn_backward(..., grad_output)
//       -> (grad_value, grad_sampling_locations, grad_attention_weights)
// Kernels register per backend (cpu/, cuda/); the fake (meta) kernels and the autograd formula
// are registered from Python (vpose_d2/_ops.py) so torch.compile can trace through the ops.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ms_deform_attn.h"

namespace vpose_d2 {

namespace {

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& value) {
  TORCH_CHECK(
      t.device() == value.device(),
      "ms_deform_attn: `",
      name,
      "` is on ",
      t.device(),
      " but `value` is on ",
      value.device(),
      "; all arguments must be on one device");
}

void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(
      t.is_contiguous(),
      "ms_deform_attn: `",
      name,
      "` must be contiguous (the Python wrapper makes it so; call .contiguous())");
}

}  // namespace

void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor* grad_output,
    c10::DeviceType device_type) {
  TORCH_CHECK(
      value.dim() == 4, "ms_deform_attn: `value` must be 4-D (B, S, M, D), got ", value.dim(), "-D");
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
      "ms_deform_attn: `spatial_shapes` must be (L, 2), got ",
      spatial_shapes.sizes());
  TORCH_CHECK(
      level_start_index.dim() == 1,
      "ms_deform_attn: `level_start_index` must be 1-D (L,), got ",
      level_start_index.sizes());
  TORCH_CHECK(
      sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
      "ms_deform_attn: `sampling_locations` must be (B, Q, M, L, P, 2), got ",
      sampling_locations.sizes());
  TORCH_CHECK(
      attention_weights.dim() == 5,
      "ms_deform_attn: `attention_weights` must be (B, Q, M, L, P), got ",
      attention_weights.sizes());

  const int64_t B = value.size(0);
  const int64_t M = value.size(2);
  const int64_t D = value.size(3);
  const int64_t L = spatial_shapes.size(0);
  const int64_t Q = sampling_locations.size(1);
  TORCH_CHECK(
      level_start_index.size(0) == L,
      "ms_deform_attn: `level_start_index` has ",
      level_start_index.size(0),
      " levels but `spatial_shapes` has ",
      L);
  TORCH_CHECK(
      sampling_locations.size(0) == B && sampling_locations.size(2) == M &&
          sampling_locations.size(3) == L,
      "ms_deform_attn: `sampling_locations` ",
      sampling_locations.sizes(),
      " does not match (B=",
      B,
      ", Q, M=",
      M,
      ", L=",
      L,
      ", P, 2) given by `value` and `spatial_shapes`");
  TORCH_CHECK(
      attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
      "ms_deform_attn: `attention_weights` ",
      attention_weights.sizes(),
      " must be (B, Q, M, L, P) = ",
      sampling_locations.sizes().slice(0, 5));

  const auto dtype = value.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
          dtype == at::kBFloat16,
      "ms_deform_attn: `value` must be float32, float64, float16 or bfloat16, got ",
      dtype);
  TORCH_CHECK(
      sampling_locations.scalar_type() == dtype,
      "ms_deform_attn: `sampling_locations` has dtype ",
      sampling_locations.scalar_type(),
      " but `value` has ",
      dtype);
  TORCH_CHECK(
      attention_weights.scalar_type() == dtype,
      "ms_deform_attn: `attention_weights` has dtype ",
      attention_weights.scalar_type(),
      " but `value` has ",
      dtype);
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong,
      "ms_deform_attn: `spatial_shapes` must be int64, got ",
      spatial_shapes.scalar_type());
  TORCH_CHECK(
      level_start_index.scalar_type() == at::kLong,
      "ms_deform_attn: `level_start_index` must be int64, got ",
      level_start_index.scalar_type());

  TORCH_CHECK(
      value.device().type() == device_type,
      "ms_deform_attn: the ",
      device_type,
      " kernel got `value` on ",
      value.device());
  check_same_device(spatial_shapes, "spatial_shapes", value);
  check_same_device(level_start_index, "level_start_index", value);
  check_same_device(sampling_locations, "sampling_locations", value);
  check_same_device(attention_weights, "attention_weights", value);

  check_contiguous(value, "value");
  check_contiguous(spatial_shapes, "spatial_shapes");
  check_contiguous(level_start_index, "level_start_index");
  check_contiguous(sampling_locations, "sampling_locations");
  check_contiguous(attention_weights, "attention_weights");

  if (grad_output != nullptr) {
    const at::Tensor& g = *grad_output;
    TORCH_CHECK(
        g.dim() == 3 && g.size(0) == B && g.size(1) == Q && g.size(2) == M * D,
        "ms_deform_attn: `grad_output` must be (B, Q, M*D) = (",
        B,
        ", ",
        Q,
        ", ",
        M * D,
        "), got ",
        g.sizes());
    TORCH_CHECK(
        g.scalar_type() == dtype,
        "ms_deform_attn: `grad_output` has dtype ",
        g.scalar_type(),
        " but `value` has ",
        dtype);
    check_same_device(g, "grad_output", value);
    check_contiguous(g, "grad_output");
  }
}

TORCH_LIBRARY(vpose_d2, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

}  // namespace vpose_d2

// A plain CPython module (no pybind11): importing it loads the shared library, which runs the
// TORCH_LIBRARY registrations above. WITH_CUDA tells the Python loader whether CUDA kernels
// were compiled in, so impl="auto" can decide per tensor device without asking the driver.
static struct PyModuleDef vpose_d2_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "Compiled kernels of vpose_d2 (multi-scale deformable attention), see torch.ops.vpose_d2.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&vpose_d2_c_module);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
