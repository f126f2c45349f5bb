// Multi-scale deformable attention: declarations shared by the CPU and CUDA kernels.
//
// Semantics (identical to the pure-PyTorch reference in vpose_d2/layers/ms_deform_attn.py):
//   out[b, q, m*D + d] = sum_{l, p} attention_weights[b, q, m, l, p] *
//       bilinear(value[b, level l, m, d], sampling_locations[b, q, m, l, p])
// where the bilinear sample follows F.grid_sample(mode="bilinear", padding_mode="zeros",
// align_corners=False) and sampling locations are (x, y) normalized to [0, 1] per level.
// Non-finite locations follow grid_sample too (see SampleKind::kNonFinite): NaN, never zero.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "ms_deform_attn_sampling.h"

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

}  // namespace vpose_d2
