// CUDA half of the PyTorch binding: allocates outputs and launches the shared kernels on the current stream.
#include <ATen/ATen.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ms_deform_attn_cuda.cuh"

namespace {

msda::Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return msda::Dims{value.size(0), value.size(1), value.size(2), value.size(3),
                    sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4)};
}

void check_cuda(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(t->is_cuda(), "ms_deform_attn: all inputs must be on the same CUDA device as value");
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  check_cuda({&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights});
  const c10::cuda::CUDAGuard guard(value.device());
  const msda::Dims n = dims_of(value, sampling_locations);
  auto output = at::empty({n.batch, n.queries, n.heads * n.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    msda::forward_cuda<scalar_t>(value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                                 level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
                                 attention_weights.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), n,
                                 c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output) {
  check_cuda({&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights, &grad_output});
  const c10::cuda::CUDAGuard guard(value.device());
  const msda::Dims n = dims_of(value, sampling_locations);
  auto grad_value = at::empty_like(value);
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    msda::backward_cuda<scalar_t>(value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                                  level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
                                  attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
                                  grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
                                  grad_attn.data_ptr<scalar_t>(), n, c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_value, grad_loc, grad_attn};
}
