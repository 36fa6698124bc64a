// GroupNorm on Paddle CPU tensors (float32, float64): forward and the gradients of x, weight and bias.
//
// Paddle 3.2's CPU group_norm backward takes the weight gradient from its output and the weight, and so returns
// 0 wherever the weight is 0; it is also about 9x slower than torch's. ops/paddle_cpu_layers.py checks inputs.
#include <vector>

#include "paddle/extension.h"

#include "group_norm_cpu.h"

namespace {

gn::Dims dims(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& bias, int groups) {
  PD_CHECK(x.is_cpu() && weight.is_cpu() && bias.is_cpu(), "group_norm: tensors must be on the CPU");
  PD_CHECK(weight.dtype() == x.dtype() && bias.dtype() == x.dtype(), "group_norm: x, weight, bias dtypes differ");
  const auto& s = x.shape();
  PD_CHECK(s.size() >= 2, "group_norm: x must be [N, C, ...]");
  PD_CHECK(groups > 0 && s[1] % groups == 0, "group_norm: ", s[1], " channels do not split into ", groups,
           " groups");
  PD_CHECK(weight.numel() == s[1] && bias.numel() == s[1], "group_norm: weight and bias must have C elements");
  int64_t spatial = 1;
  for (size_t i = 2; i < s.size(); ++i) spatial *= s[i];
  return gn::Dims{s[0], s[1], spatial, groups};
}

paddle::Tensor contiguous(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

std::vector<paddle::Tensor> forward(const paddle::Tensor& x_in, const paddle::Tensor& weight,
                                    const paddle::Tensor& bias, int groups, double epsilon) {
  const gn::Dims d = dims(x_in, weight, bias, groups);
  const paddle::Tensor x = contiguous(x_in);
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty({d.batch, d.groups}, x.dtype(), x.place());
  auto rstd = paddle::empty({d.batch, d.groups}, x.dtype(), x.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "group_norm_forward", ([&] {
    gn::forward_cpu<data_t>(x.data<data_t>(), contiguous(weight).data<data_t>(), contiguous(bias).data<data_t>(),
                            y.data<data_t>(), mean.data<data_t>(), rstd.data<data_t>(), d, epsilon);
  }));
  return {y, mean, rstd};
}

std::vector<paddle::Tensor> backward(const paddle::Tensor& x_in, const paddle::Tensor& weight,
                                     const paddle::Tensor& bias, const paddle::Tensor& mean,
                                     const paddle::Tensor& rstd, const paddle::Tensor& grad_y_in, int groups,
                                     double) {
  const gn::Dims d = dims(x_in, weight, bias, groups);
  const paddle::Tensor x = contiguous(x_in), grad_y = contiguous(grad_y_in);
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  auto grad_weight = paddle::empty(weight.shape(), x.dtype(), x.place());
  auto grad_bias = paddle::empty(bias.shape(), x.dtype(), x.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "group_norm_backward", ([&] {
    gn::backward_cpu<data_t>(x.data<data_t>(), contiguous(weight).data<data_t>(), mean.data<data_t>(),
                             rstd.data<data_t>(), grad_y.data<data_t>(), grad_x.data<data_t>(),
                             grad_weight.data<data_t>(), grad_bias.data<data_t>(), d);
  }));
  return {grad_x, grad_weight, grad_bias};
}

std::vector<std::vector<int64_t>> infer_shape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                              const std::vector<int64_t>&, int groups, double) {
  return {x, {x[0], groups}, {x[0], groups}};
}

std::vector<paddle::DataType> infer_dtype(const paddle::DataType& x, const paddle::DataType&,
                                          const paddle::DataType&) {
  return {x, x, x};
}

}  // namespace

PD_BUILD_OP(dac_group_norm)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Y", "Mean", "Rstd"})
    .Attrs({"groups: int", "epsilon: double"})
    .SetKernelFn(PD_KERNEL(forward))
    .SetInferShapeFn(PD_INFER_SHAPE(infer_shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(infer_dtype));

PD_BUILD_GRAD_OP(dac_group_norm)
    .Inputs({"X", "Weight", "Bias", "Mean", "Rstd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"groups: int", "epsilon: double"})
    .SetKernelFn(PD_KERNEL(backward));
