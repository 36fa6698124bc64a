// CUDA half of the Paddle binding: allocates outputs and launches the shared kernels on the tensors' stream.
#include <vector>

// the parts of paddle/extension.h used here; the full header drags in cuBLAS/cuDNN headers under nvcc
#include "paddle/common/exception.h"
#include "paddle/phi/api/ext/dispatch.h"
#include "paddle/phi/api/include/api.h"
#include "paddle/phi/api/ext/tensor_compat.h"
#include "paddle/phi/api/include/tensor.h"

#include "ms_deform_attn_cuda.cuh"

namespace {

msda::Dims dims_of(const paddle::Tensor& value, const paddle::Tensor& sampling_locations) {
  const auto& v = value.shape();
  const auto& s = sampling_locations.shape();
  return msda::Dims{v[0], v[1], v[2], v[3], s[1], s[3], s[4]};
}

void check_gpu(std::initializer_list<const paddle::Tensor*> tensors) {
  for (const paddle::Tensor* t : tensors)
    PD_CHECK(t->is_gpu(), "ms_deform_attn: all inputs must be on the same GPU as value");
}

void check_launch() {
  const cudaError_t err = cudaGetLastError();
  PD_CHECK(err == cudaSuccess, "ms_deform_attn: CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace

std::vector<paddle::Tensor> ms_deform_attn_forward_cuda(const paddle::Tensor& value,
                                                        const paddle::Tensor& spatial_shapes,
                                                        const paddle::Tensor& level_start_index,
                                                        const paddle::Tensor& sampling_locations,
                                                        const paddle::Tensor& attention_weights) {
  check_gpu({&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights});
  const msda::Dims n = dims_of(value, sampling_locations);
  auto output = paddle::empty({n.batch, n.queries, n.heads * n.channels}, value.dtype(), value.place());
  PD_DISPATCH_FLOATING_TYPES(value.type(), "ms_deform_attn_forward_cuda", ([&] {
    msda::forward_cuda<data_t>(value.data<data_t>(), spatial_shapes.data<int64_t>(),
                               level_start_index.data<int64_t>(), sampling_locations.data<data_t>(),
                               attention_weights.data<data_t>(), output.data<data_t>(), n, value.stream());
  }));
  check_launch();
  return {output};
}

std::vector<paddle::Tensor> ms_deform_attn_backward_cuda(const paddle::Tensor& value,
                                                         const paddle::Tensor& spatial_shapes,
                                                         const paddle::Tensor& level_start_index,
                                                         const paddle::Tensor& sampling_locations,
                                                         const paddle::Tensor& attention_weights,
                                                         const paddle::Tensor& grad_output) {
  check_gpu({&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights, &grad_output});
  const msda::Dims n = dims_of(value, sampling_locations);
  const paddle::Tensor g = grad_output.is_contiguous() ? grad_output : grad_output.contiguous();
  auto grad_value = paddle::empty(value.shape(), value.dtype(), value.place());
  auto grad_loc = paddle::empty(sampling_locations.shape(), value.dtype(), value.place());
  auto grad_attn = paddle::empty(attention_weights.shape(), value.dtype(), value.place());
  PD_DISPATCH_FLOATING_TYPES(value.type(), "ms_deform_attn_backward_cuda", ([&] {
    msda::backward_cuda<data_t>(value.data<data_t>(), spatial_shapes.data<int64_t>(),
                                level_start_index.data<int64_t>(), sampling_locations.data<data_t>(),
                                attention_weights.data<data_t>(), g.data<data_t>(), grad_value.data<data_t>(),
                                grad_loc.data<data_t>(), grad_attn.data<data_t>(), n, value.stream());
  }));
  check_launch();
  return {grad_value, grad_loc, grad_attn};
}
