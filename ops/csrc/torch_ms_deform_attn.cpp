// PyTorch binding of the multi-scale deformable attention core (CPU, and CUDA when built with WITH_CUDA).
// Python (ops/torch_ms_deform_attn.py) validates inputs and wraps these in a torch.autograd.Function.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "ms_deform_attn_cpu.h"

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);
std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output);
#endif

namespace {

msda::Dims check(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                 const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4 && sampling_locations.dim() == 6 && attention_weights.dim() == 5,
              "ms_deform_attn: value must be 4-D, sampling_locations 6-D, attention_weights 5-D");
  TORCH_CHECK(value.is_contiguous() && spatial_shapes.is_contiguous() && level_start_index.is_contiguous() &&
                  sampling_locations.is_contiguous() && attention_weights.is_contiguous(),
              "ms_deform_attn: inputs must be contiguous");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, sampling_locations and attention_weights must share one dtype");
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  return msda::Dims{value.size(0), value.size(1), value.size(2), value.size(3),
                    sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4)};
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const msda::Dims n = check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights);
#else
    TORCH_CHECK(false, "ms_deform_attn: this build has no CUDA kernels");
#endif
  }
  auto output = at::empty({n.batch, n.queries, n.heads * n.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward", [&] {
    msda::forward_cpu<scalar_t>(value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                                level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
                                attention_weights.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), n,
                                at::get_num_threads());
  });
  return output;
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const msda::Dims n = check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.numel() == n.batch * n.queries * n.heads * n.channels,
              "ms_deform_attn: grad_output must be a contiguous [B, Q, M * D] tensor of the value dtype");
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights, grad_output);
#else
    TORCH_CHECK(false, "ms_deform_attn: this build has no CUDA kernels");
#endif
  }
  auto grad_value = at::empty_like(value);
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward", [&] {
    msda::backward_cpu<scalar_t>(value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                                 level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
                                 attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
                                 grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
                                 grad_attn.data_ptr<scalar_t>(), n, at::get_num_threads());
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "ms_deform_attn forward -> output [B, Q, M * D]",
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &backward, "ms_deform_attn backward -> (grad_value, grad_locations, grad_weights)",
        py::call_guard<py::gil_scoped_release>());
}
