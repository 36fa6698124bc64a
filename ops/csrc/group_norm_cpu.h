// GroupNorm forward and backward on contiguous [N, C, HW] CPU arrays (float, double), OpenMP over (n, group).
//
// Same definition as torch.nn.functional.group_norm: per (n, g), mean and biased variance over the C/G * HW
// elements, y = (x - mean) / sqrt(var + eps) * w_c + b_c. The variance is a second pass over the centred values (no E[x^2] - E[x]^2 cancellation). One (n, g) block
// is C/G * HW elements, small enough at detection sizes to stay in L2 between the passes.
//
// Sums accumulate in double, except the backward's per-channel sums of dy and dy * x, which are the hot loop:
// float vector lanes within blocks of 512 elements (32 terms per lane), double across blocks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace gn {

// sum_i dy[i] * x[i] and sum_i dy[i], added to dy_x and dy_sum.
template <typename T>
void channel_sums(const T* dy, const T* x, int64_t n, double& dy_x, double& dy_sum) {
  constexpr int64_t kBlock = 512;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    T p = 0, q = 0;
#pragma omp simd reduction(+ : p, q)
    for (int64_t i = start; i < end; ++i) {
      p += dy[i] * x[i];
      q += dy[i];
    }
    dy_x += p;
    dy_sum += q;
  }
}

struct Dims {
  int64_t batch, channels, spatial, groups;  // N, C, H * W, G
};

// y = GroupNorm(x); mean and rstd [N, G] (1 / sqrt(var + eps)) are kept for the backward.
template <typename T>
void forward_cpu(const T* x, const T* weight, const T* bias, T* y, T* mean_out, T* rstd_out, const Dims& d,
                 double eps) {
  const int64_t cpg = d.channels / d.groups;
  const int64_t block = cpg * d.spatial;
#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < d.batch * d.groups; ++ng) {
    const int64_t g = ng % d.groups;
    const T* xb = x + ng * block;
    T* yb = y + ng * block;
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < block; ++i) sum += xb[i];
    const double mean = block > 0 ? sum / block : 0.0;
    double sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < block; ++i) {
      const double c = xb[i] - mean;
      sq += c * c;
    }
    const double rstd = 1.0 / std::sqrt((block > 0 ? sq / block : 0.0) + eps);
    mean_out[ng] = static_cast<T>(mean);
    rstd_out[ng] = static_cast<T>(rstd);
    for (int64_t c = 0; c < cpg; ++c) {
      const int64_t ch = g * cpg + c;
      const T scale = static_cast<T>(rstd * weight[ch]);
      const T shift = static_cast<T>(bias[ch] - mean * rstd * weight[ch]);
      const T* xc = xb + c * d.spatial;
      T* yc = yb + c * d.spatial;
#pragma omp simd
      for (int64_t i = 0; i < d.spatial; ++i) yc[i] = xc[i] * scale + shift;
    }
  }
}

// Gradients of x, weight and bias from dy, with mean / rstd from the forward. With x_hat = (x - mean) * rstd
// and M = C/G * HW elements per group:
//   dx = rstd * (w_c dy - mean_M(w dy) - x_hat * mean_M(w dy x_hat)),
//   dw_c = sum_{n, hw} dy x_hat,  db_c = sum_{n, hw} dy,
// built from the per-(n, c) sums of dy and dy * x, so no gradient depends on the weight's value.
template <typename T>
void backward_cpu(const T* x, const T* weight, const T* mean_in, const T* rstd_in, const T* dy, T* dx, T* dweight,
                  T* dbias, const Dims& d) {
  const int64_t cpg = d.channels / d.groups;
  const int64_t block = cpg * d.spatial;
  std::vector<double> sum_dy_x(d.batch * d.channels), sum_dy(d.batch * d.channels);
#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < d.batch * d.groups; ++ng) {
    const int64_t g = ng % d.groups;
    const double mean = mean_in[ng], rstd = rstd_in[ng];
    double a = 0, b = 0;  // sum over the group of w dy, and of w (dy x - mean dy)
    for (int64_t c = 0; c < cpg; ++c) {
      const int64_t nc = ng * cpg + c;
      const T* xc = x + nc * d.spatial;
      const T* dyc = dy + nc * d.spatial;
      double s_dyx = 0, s_dy = 0;
      channel_sums(dyc, xc, d.spatial, s_dyx, s_dy);
      sum_dy_x[nc] = s_dyx;
      sum_dy[nc] = s_dy;
      const double w = weight[g * cpg + c];
      a += w * s_dy;
      b += w * (s_dyx - mean * s_dy);
    }
    // dx = rstd w_c dy + k_x (x - mean) + k_0: the three terms above; centring x first keeps a large mean from
    // cancelling in float
    const double k_x = block > 0 ? -rstd * rstd * rstd * b / block : 0.0;
    const double k_0 = block > 0 ? -rstd * a / block : 0.0;
    const T mean_t = static_cast<T>(mean);
    for (int64_t c = 0; c < cpg; ++c) {
      const int64_t nc = ng * cpg + c;
      const T* xc = x + nc * d.spatial;
      const T* dyc = dy + nc * d.spatial;
      T* dxc = dx + nc * d.spatial;
      const T k_dy = static_cast<T>(rstd * weight[g * cpg + c]), kx = static_cast<T>(k_x), k0 = static_cast<T>(k_0);
#pragma omp simd
      for (int64_t i = 0; i < d.spatial; ++i) dxc[i] = k_dy * dyc[i] + kx * (xc[i] - mean_t) + k0;
    }
  }
  for (int64_t c = 0; c < d.channels; ++c) {
    const int64_t g = c / cpg;
    double dw = 0, db = 0;
    for (int64_t n = 0; n < d.batch; ++n) {
      const int64_t nc = n * d.channels + c, ng = n * d.groups + g;
      dw += (sum_dy_x[nc] - static_cast<double>(mean_in[ng]) * sum_dy[nc]) * rstd_in[ng];
      db += sum_dy[nc];
    }
    dweight[c] = static_cast<T>(dw);
    dbias[c] = static_cast<T>(db);
  }
}

}  // namespace gn
