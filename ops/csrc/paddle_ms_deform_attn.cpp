// PaddlePaddle custom op binding of the multi-scale deformable attention core (CPU, and CUDA when built with
// WITH_CUDA). Python (ops/paddle_ms_deform_attn.py) validates inputs before calling the op.
#include <vector>

#include "paddle/extension.h"

#include "ms_deform_attn_cpu.h"

#ifdef WITH_CUDA
std::vector<paddle::Tensor> ms_deform_attn_forward_cuda(const paddle::Tensor& value,
                                                        const paddle::Tensor& spatial_shapes,
                                                        const paddle::Tensor& level_start_index,
                                                        const paddle::Tensor& sampling_locations,
                                                        const paddle::Tensor& attention_weights);
std::vector<paddle::Tensor> ms_deform_attn_backward_cuda(const paddle::Tensor& value,
                                                         const paddle::Tensor& spatial_shapes,
                                                         const paddle::Tensor& level_start_index,
                                                         const paddle::Tensor& sampling_locations,
                                                         const paddle::Tensor& attention_weights,
                                                         const paddle::Tensor& grad_output);
#endif

namespace {

msda::Dims check(const paddle::Tensor& value, const paddle::Tensor& spatial_shapes,
                 const paddle::Tensor& level_start_index, const paddle::Tensor& sampling_locations,
                 const paddle::Tensor& attention_weights) {
  PD_CHECK(value.shape().size() == 4 && sampling_locations.shape().size() == 6 &&
               attention_weights.shape().size() == 5,
           "ms_deform_attn: value must be 4-D, sampling_locations 6-D, attention_weights 5-D");
  PD_CHECK(sampling_locations.dtype() == value.dtype() && attention_weights.dtype() == value.dtype(),
           "ms_deform_attn: value, sampling_locations and attention_weights must share one dtype");
  PD_CHECK(spatial_shapes.dtype() == paddle::DataType::INT64 &&
               level_start_index.dtype() == paddle::DataType::INT64,
           "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  const auto& v = value.shape();
  const auto& s = sampling_locations.shape();
  return msda::Dims{v[0], v[1], v[2], v[3], s[1], s[3], s[4]};
}

std::vector<paddle::Tensor> forward(const paddle::Tensor& value, const paddle::Tensor& spatial_shapes,
                                    const paddle::Tensor& level_start_index,
                                    const paddle::Tensor& sampling_locations,
                                    const paddle::Tensor& attention_weights) {
  const msda::Dims n = check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.is_gpu()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights);
#else
    PD_THROW("ms_deform_attn: this build has no CUDA kernels");
#endif
  }
  PD_CHECK(value.is_cpu(), "ms_deform_attn: tensors must be on CPU or GPU");
  auto output = paddle::empty({n.batch, n.queries, n.heads * n.channels}, value.dtype(), value.place());
  PD_DISPATCH_FLOATING_TYPES(value.type(), "ms_deform_attn_forward", ([&] {
    msda::forward_cpu<data_t>(value.data<data_t>(), spatial_shapes.data<int64_t>(),
                              level_start_index.data<int64_t>(), sampling_locations.data<data_t>(),
                              attention_weights.data<data_t>(), output.data<data_t>(), n, 0);
  }));
  return {output};
}

std::vector<paddle::Tensor> backward(const paddle::Tensor& value, const paddle::Tensor& spatial_shapes,
                                     const paddle::Tensor& level_start_index,
                                     const paddle::Tensor& sampling_locations,
                                     const paddle::Tensor& attention_weights, const paddle::Tensor& grad_output) {
  const msda::Dims n = check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  if (value.is_gpu()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights, grad_output);
#else
    PD_THROW("ms_deform_attn: this build has no CUDA kernels");
#endif
  }
  // grad_output may arrive as a strided view; the core needs [B, Q, M, D] contiguous
  const paddle::Tensor g = grad_output.is_contiguous() ? grad_output : grad_output.contiguous();
  auto grad_value = paddle::empty(value.shape(), value.dtype(), value.place());
  auto grad_loc = paddle::empty(sampling_locations.shape(), value.dtype(), value.place());
  auto grad_attn = paddle::empty(attention_weights.shape(), value.dtype(), value.place());
  PD_DISPATCH_FLOATING_TYPES(value.type(), "ms_deform_attn_backward", ([&] {
    msda::backward_cpu<data_t>(value.data<data_t>(), spatial_shapes.data<int64_t>(),
                               level_start_index.data<int64_t>(), sampling_locations.data<data_t>(),
                               attention_weights.data<data_t>(), g.data<data_t>(), grad_value.data<data_t>(),
                               grad_loc.data<data_t>(), grad_attn.data<data_t>(), n, 0);
  }));
  return {grad_value, grad_loc, grad_attn};
}

std::vector<std::vector<int64_t>> infer_shape(const std::vector<int64_t>& value, const std::vector<int64_t>&,
                                              const std::vector<int64_t>&,
                                              const std::vector<int64_t>& sampling_locations,
                                              const std::vector<int64_t>&) {
  const int64_t channels = (value[2] < 0 || value[3] < 0) ? -1 : value[2] * value[3];  // -1: unknown (static graph)
  return {{value[0], sampling_locations[1], channels}};
}

std::vector<paddle::DataType> infer_dtype(const paddle::DataType& value, const paddle::DataType&,
                                          const paddle::DataType&, const paddle::DataType&,
                                          const paddle::DataType&) {
  return {value};
}

}  // namespace

PD_BUILD_OP(ms_deform_attn)
    .Inputs({"Value", "SpatialShapes", "LevelStartIndex", "SamplingLocations", "AttentionWeights"})
    .Outputs({"Output"})
    .SetKernelFn(PD_KERNEL(forward))
    .SetInferShapeFn(PD_INFER_SHAPE(infer_shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(infer_dtype));

PD_BUILD_GRAD_OP(ms_deform_attn)
    .Inputs({"Value", "SpatialShapes", "LevelStartIndex", "SamplingLocations", "AttentionWeights",
             paddle::Grad("Output")})
    .Outputs({paddle::Grad("Value"), paddle::Grad("SamplingLocations"), paddle::Grad("AttentionWeights")})
    .SetKernelFn(PD_KERNEL(backward));
