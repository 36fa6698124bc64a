// Gradient clipping by global norm and the AdamW update over all parameters in one op each, on Paddle CPU float32
// tensors, in place.
//
// Paddle's dynamic graph updates parameters one op per tensor (AdamW's adamw_, and the clipping's square, sum and
// multiply), each with tens of microseconds of Python and dispatch around a little arithmetic: 90 ms per step for
// the demo model's 213 tensors, 13% of its training step. torch has the same problem and `fused=True` for it.
// The arithmetic is that of Paddle's adamw kernel, so the two paths agree to float32 rounding and keep the same
// optimizer state (ops/paddle_cpu_layers.py, paddle_impl/optim.py).
#include <algorithm>
#include <cmath>
#include <vector>

#include "paddle/extension.h"

namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per work item: the tensors range from 1 to millions of elements

struct Item {
  size_t tensor;
  int64_t begin, end;
};

// The tensors cut into chunks, so that the threads share the work whatever the sizes.
std::vector<Item> chunks(const std::vector<paddle::Tensor>& tensors) {
  std::vector<Item> items;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = tensors[t].numel();
    for (int64_t b = 0; b < n; b += kChunk) items.push_back({t, b, std::min(n, b + kChunk)});
  }
  return items;
}

void check_float32_cpu(const std::vector<paddle::Tensor>& tensors, const char* what) {
  for (const auto& t : tensors) {
    PD_CHECK(t.is_cpu() && t.dtype() == paddle::DataType::FLOAT32 && t.is_contiguous(), what,
             ": tensors must be contiguous float32 CPU tensors");
  }
}

// Scales `grads` in place so that their global L2 norm is at most max_norm; returns the norm before clipping
// (0-D float32). The sum of squares is accumulated in double, chunk by chunk (vector lanes within a chunk), and
// the chunks are added in a fixed order: the result does not depend on the number of threads.
std::vector<paddle::Tensor> clip_grad_norm(std::vector<paddle::Tensor>& grads, float max_norm) {
  check_float32_cpu(grads, "clip_grad_norm");
  const std::vector<Item> items = chunks(grads);
  std::vector<double> partial(items.size(), 0.0);
#pragma omp parallel for schedule(dynamic)
  for (int64_t i = 0; i < static_cast<int64_t>(items.size()); ++i) {
    const float* g = grads[items[i].tensor].data<float>();
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = items[i].begin; j < items[i].end; ++j) sum += static_cast<double>(g[j]) * g[j];
    partial[i] = sum;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  const float norm = static_cast<float>(std::sqrt(total));
  const float coef = std::min(1.0f, max_norm / (norm + 1e-6f));
  if (coef < 1.0f) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < static_cast<int64_t>(items.size()); ++i) {
      float* g = grads[items[i].tensor].data<float>();
#pragma omp simd
      for (int64_t j = items[i].begin; j < items[i].end; ++j) g[j] *= coef;
    }
  }
  auto out = paddle::full({}, norm, paddle::DataType::FLOAT32, paddle::CPUPlace());
  return {out};
}

// One AdamW step of every parameter, as Paddle's adamw kernel does it: decoupled decay p *= 1 - lr * wd, moments
// m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, then p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) +
// eps sqrt(1 - b2^t)), with b^t the parameter's beta-power accumulator, which is then multiplied by b.
// lrs: the learning rate of each parameter (its group's).
void adamw(std::vector<paddle::Tensor>& params, const std::vector<paddle::Tensor>& grads,
           std::vector<paddle::Tensor>& moments1, std::vector<paddle::Tensor>& moments2,
           std::vector<paddle::Tensor>& beta1_pows, std::vector<paddle::Tensor>& beta2_pows,
           const std::vector<float>& lrs, float beta1, float beta2, float epsilon, float weight_decay) {
  const size_t n = params.size();
  PD_CHECK(grads.size() == n && moments1.size() == n && moments2.size() == n && beta1_pows.size() == n &&
               beta2_pows.size() == n && lrs.size() == n,
           "adamw: expected as many gradients, moments, beta powers and learning rates as parameters");
  check_float32_cpu(params, "adamw");
  check_float32_cpu(grads, "adamw");
  check_float32_cpu(moments1, "adamw");
  check_float32_cpu(moments2, "adamw");
  check_float32_cpu(beta1_pows, "adamw");
  check_float32_cpu(beta2_pows, "adamw");
  for (size_t t = 0; t < n; ++t) {
    const int64_t numel = params[t].numel();
    PD_CHECK(grads[t].numel() == numel && moments1[t].numel() == numel && moments2[t].numel() == numel,
             "adamw: parameter ", t, " and its gradient or moments differ in size");
    PD_CHECK(beta1_pows[t].numel() == 1 && beta2_pows[t].numel() == 1, "adamw: beta powers must be scalars");
  }
  const std::vector<Item> items = chunks(params);
#pragma omp parallel for schedule(dynamic)
  for (int64_t i = 0; i < static_cast<int64_t>(items.size()); ++i) {
    const size_t t = items[i].tensor;
    const float lr = lrs[t];
    const float b1p = *beta1_pows[t].data<float>(), b2p = *beta2_pows[t].data<float>();
    const float lr_t = lr * std::sqrt(1.0f - b2p) / (1.0f - b1p);
    const float eps = epsilon * std::sqrt(1.0f - b2p);
    const float decay = 1.0f - lr * weight_decay;
    float* __restrict p = params[t].data<float>();
    const float* __restrict g = grads[t].data<float>();
    float* __restrict m = moments1[t].data<float>();
    float* __restrict v = moments2[t].data<float>();
#pragma omp simd
    for (int64_t j = items[i].begin; j < items[i].end; ++j) {
      const float gj = g[j];
      m[j] = beta1 * m[j] + (1.0f - beta1) * gj;
      v[j] = beta2 * v[j] + (1.0f - beta2) * gj * gj;
      p[j] = p[j] * decay - lr_t * (m[j] / (std::sqrt(v[j]) + eps));
    }
  }
  for (size_t t = 0; t < n; ++t) {  // after every chunk has read them
    *beta1_pows[t].data<float>() *= beta1;
    *beta2_pows[t].data<float>() *= beta2;
  }
}

std::vector<std::vector<int64_t>> clip_infer_shape(const std::vector<std::vector<int64_t>>&, float) {
  return {{}};
}

std::vector<paddle::DataType> clip_infer_dtype(const std::vector<paddle::DataType>&) {
  return {paddle::DataType::FLOAT32};
}

}  // namespace

PD_BUILD_OP(dac_clip_by_global_norm)
    .Inputs({paddle::Vec("Grads")})
    .Outputs({paddle::Vec("GradsOut"), "Norm"})
    .Attrs({"max_norm: float"})
    .SetInplaceMap({{paddle::Vec("Grads"), paddle::Vec("GradsOut")}})
    .SetKernelFn(PD_KERNEL(clip_grad_norm))
    .SetInferShapeFn(PD_INFER_SHAPE(clip_infer_shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(clip_infer_dtype));

PD_BUILD_OP(dac_adamw)
    .Inputs({paddle::Vec("Params"), paddle::Vec("Grads"), paddle::Vec("Moments1"), paddle::Vec("Moments2"),
             paddle::Vec("Beta1Pows"), paddle::Vec("Beta2Pows")})
    .Outputs({paddle::Vec("ParamsOut"), paddle::Vec("Moments1Out"), paddle::Vec("Moments2Out"),
              paddle::Vec("Beta1PowsOut"), paddle::Vec("Beta2PowsOut")})
    .Attrs({"lrs: std::vector<float>", "beta1: float", "beta2: float", "epsilon: float", "weight_decay: float"})
    .SetInplaceMap({{paddle::Vec("Params"), paddle::Vec("ParamsOut")},
                    {paddle::Vec("Moments1"), paddle::Vec("Moments1Out")},
                    {paddle::Vec("Moments2"), paddle::Vec("Moments2Out")},
                    {paddle::Vec("Beta1Pows"), paddle::Vec("Beta1PowsOut")},
                    {paddle::Vec("Beta2Pows"), paddle::Vec("Beta2PowsOut")}})
    .SetKernelFn(PD_KERNEL(adamw));
