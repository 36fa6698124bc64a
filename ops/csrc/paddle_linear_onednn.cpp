// A Linear layer's matrix products on Paddle CPU tensors through oneDNN's sgemm: float32, forward and gradients.
//
// Paddle 3.2's CPU matmul runs its bundled MKL-ML GEMM on one core whatever the thread setting, about 1.7x slower
// than torch's on one core and 2.2x on two; oneDNN's sgemm (the library is in the Paddle wheel) matches torch's
// speed and uses every OpenMP thread. x [..., K] @ weight [K, N] (+ bias [N]) -> [..., N], row-major (the leading
// dimensions of x are M rows); ops/paddle_cpu_layers.py decides which gradients are needed.
#include <algorithm>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

#include "onednn_c_api.h"

namespace {

// C [m, n] = alpha op(A) op(B) + beta C, row-major, lda / ldb / ldc the row strides of A, B, C as stored.
void sgemm(char trans_a, char trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const dnnl_status_t status = dnnl_sgemm(trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  PD_CHECK(status == dnnl_c::success, "linear (oneDNN sgemm) failed with status ", status);
}

paddle::Tensor contiguous(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

void check_inputs(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::optional<paddle::Tensor>& bias) {
  PD_CHECK(x.is_cpu() && weight.is_cpu() && (!bias || bias->is_cpu()), "linear (oneDNN): tensors must be on the CPU");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && weight.dtype() == paddle::DataType::FLOAT32 &&
               (!bias || bias->dtype() == paddle::DataType::FLOAT32),
           "linear (oneDNN): tensors must be float32");
  PD_CHECK(!x.shape().empty() && weight.shape().size() == 2, "linear (oneDNN): x must be [..., K], weight [K, N]");
  PD_CHECK(x.shape().back() == weight.shape()[0], "linear (oneDNN): x has ", x.shape().back(),
           " features, weight expects ", weight.shape()[0]);
  PD_CHECK(!bias || bias->numel() == weight.shape()[1], "linear (oneDNN): bias must have N elements");
}

// x [..., K] -> [..., N]
std::vector<int64_t> out_shape(std::vector<int64_t> x, int64_t n) {
  x.back() = n;
  return x;
}

// M: the number of rows of x [..., K]
int64_t rows(const paddle::Tensor& x) {
  int64_t m = 1;
  for (size_t i = 0; i + 1 < x.shape().size(); ++i) m *= x.shape()[i];
  return m;
}

std::vector<paddle::Tensor> linear_forward(const paddle::Tensor& x_in, const paddle::Tensor& weight_in,
                                           const paddle::optional<paddle::Tensor>& bias, bool, bool) {
  check_inputs(x_in, weight_in, bias);
  const int64_t m = rows(x_in), k = weight_in.shape()[0], n = weight_in.shape()[1];
  auto out = paddle::empty(out_shape(x_in.shape(), n), paddle::DataType::FLOAT32, paddle::CPUPlace());
  if (m == 0) return {out};
  float* y = out.data<float>();
  float beta = 0.0f;
  if (bias) {  // every row starts as the bias, and the product is added to it
    const paddle::Tensor b = contiguous(*bias);
    for (int64_t row = 0; row < m; ++row) std::memcpy(y + row * n, b.data<float>(), n * sizeof(float));
    beta = 1.0f;
  }
  if (k == 0) {
    if (!bias) std::fill(y, y + m * n, 0.0f);
    return {out};
  }
  const paddle::Tensor x = contiguous(x_in), weight = contiguous(weight_in);
  sgemm('N', 'N', m, n, k, x.data<float>(), k, weight.data<float>(), n, beta, y, n);
  return {out};
}

// Gradients of x, weight and bias; those not needed (need_* false, or no bias) are returned zero-filled and not
// computed. The bias gradient (column sums of grad_out) is a product with a row of ones, so it is threaded too.
std::vector<paddle::Tensor> linear_backward(const paddle::Tensor& x_in, const paddle::Tensor& weight_in,
                                            const paddle::optional<paddle::Tensor>& bias,
                                            const paddle::Tensor& grad_out_in, bool need_input_grad,
                                            bool need_weight_grad) {
  check_inputs(x_in, weight_in, bias);
  const int64_t m = rows(x_in), k = weight_in.shape()[0], n = weight_in.shape()[1];
  const bool x_grad = need_input_grad && m > 0 && k > 0 && n > 0;
  const bool w_grad = need_weight_grad && m > 0 && k > 0 && n > 0;
  const bool b_grad = bias && need_weight_grad && m > 0 && n > 0;
  auto empty_or_zeros = [](bool computed, const std::vector<int64_t>& shape) {
    return computed ? paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace())
                    : paddle::zeros(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  };
  auto grad_x = empty_or_zeros(x_grad, x_in.shape());
  auto grad_w = empty_or_zeros(w_grad, {k, n});
  paddle::Tensor grad_b;
  if (bias) grad_b = empty_or_zeros(b_grad, bias->shape());
  if (!x_grad && !w_grad && !b_grad) return {grad_x, grad_w, grad_b};
  const paddle::Tensor grad_out = contiguous(grad_out_in);
  const float* dy = grad_out.data<float>();
  if (x_grad) {  // [M, N] @ weight^T [N, K]
    const paddle::Tensor weight = contiguous(weight_in);
    sgemm('N', 'T', m, k, n, dy, n, weight.data<float>(), n, 0.0f, grad_x.data<float>(), k);
  }
  if (w_grad) {  // x^T [K, M] @ [M, N]
    const paddle::Tensor x = contiguous(x_in);
    sgemm('T', 'N', k, n, m, x.data<float>(), k, dy, n, 0.0f, grad_w.data<float>(), n);
  }
  if (b_grad) {  // ones [1, M] @ [M, N]
    const std::vector<float> ones(static_cast<size_t>(m), 1.0f);
    sgemm('N', 'N', 1, n, m, ones.data(), m, dy, n, 0.0f, grad_b.data<float>(), n);
  }
  return {grad_x, grad_w, grad_b};
}

std::vector<std::vector<int64_t>> linear_infer_shape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                     const paddle::optional<std::vector<int64_t>>&, bool, bool) {
  return {out_shape(x, w[1])};
}

std::vector<paddle::DataType> linear_infer_dtype(const paddle::DataType& x, const paddle::DataType&,
                                                 const paddle::optional<paddle::DataType>&) {
  return {x};
}

}  // namespace

PD_BUILD_OP(dac_linear)
    .Inputs({"X", "Weight", paddle::Optional("Bias")})
    .Outputs({"Out"})
    .Attrs({"need_input_grad: bool", "need_weight_grad: bool"})
    .SetKernelFn(PD_KERNEL(linear_forward))
    .SetInferShapeFn(PD_INFER_SHAPE(linear_infer_shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(linear_infer_dtype));

PD_BUILD_GRAD_OP(dac_linear)
    .Inputs({"X", "Weight", paddle::Optional("Bias"), paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad(paddle::Optional("Bias"))})
    .Attrs({"need_input_grad: bool", "need_weight_grad: bool"})
    .SetKernelFn(PD_KERNEL(linear_backward));
