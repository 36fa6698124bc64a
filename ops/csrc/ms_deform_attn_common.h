// Bilinear sampling geometry shared by the CPU and CUDA cores.
//
// Layouts (all contiguous, row-major):
//   value              [B, S, M, D]     S = sum_l H_l * W_l tokens, M heads, D channels per head
//   spatial_shapes     [L, 2] int64     (H_l, W_l)
//   level_start_index  [L] int64        first token of level l
//   sampling_locations [B, Q, M, L, P, 2]  (x, y) normalized to [0, 1]
//   attention_weights  [B, Q, M, L, P]
//   output             [B, Q, M, D]
// Sampling follows grid_sample(align_corners=False, padding_mode="zeros"): pixel x = loc_x * W - 0.5,
// and corners outside the map contribute zero.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace msda {

struct Dims {
  int64_t batch, tokens, heads, channels, queries, levels, points;
};

// The four bilinear corners of one sampling point, in the order (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
template <typename T>
struct Corners {
  int64_t offset[4];  // token index within the level, or -1 when the corner is outside the map
  T weight[4];        // bilinear weights, summing to 1
  T fx, fy;           // fractional position inside the cell
};

// Fills `c` and returns true unless all four corners fall outside the H x W map (then the sample is zero,
// and so is every gradient through it). NaN locations also return false.
template <typename T>
MSDA_HOST_DEVICE bool bilinear_corners(T loc_x, T loc_y, int64_t h, int64_t w, Corners<T>& c) {
  const T x = loc_x * static_cast<T>(w) - static_cast<T>(0.5);
  const T y = loc_y * static_cast<T>(h) - static_cast<T>(0.5);
  if (!(x > static_cast<T>(-1) && y > static_cast<T>(-1) && x < static_cast<T>(w) && y < static_cast<T>(h)))
    return false;
  const T xf = floor(x), yf = floor(y);
  const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
  c.fx = x - xf;
  c.fy = y - yf;
  const T gx = static_cast<T>(1) - c.fx, gy = static_cast<T>(1) - c.fy;
  c.weight[0] = gy * gx;
  c.weight[1] = gy * c.fx;
  c.weight[2] = c.fy * gx;
  c.weight[3] = c.fy * c.fx;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 < w, y0_in = y0 >= 0, y1_in = y0 + 1 < h;
  c.offset[0] = (y0_in && x0_in) ? y0 * w + x0 : -1;
  c.offset[1] = (y0_in && x1_in) ? y0 * w + x0 + 1 : -1;
  c.offset[2] = (y1_in && x0_in) ? (y0 + 1) * w + x0 : -1;
  c.offset[3] = (y1_in && x1_in) ? (y0 + 1) * w + x0 + 1 : -1;
  return true;
}

// Gradients of one sample given the dot products s[k] = <grad_out, value row of corner k> (0 for outside
// corners) and the attention weight a: d out / d a, and d out / d loc (x then y, in normalized units).
template <typename T>
MSDA_HOST_DEVICE void sample_grads(const Corners<T>& c, const T s[4], T a, int64_t h, int64_t w, T* grad_attn,
                                   T* grad_loc_x, T* grad_loc_y) {
  const T gx = static_cast<T>(1) - c.fx, gy = static_cast<T>(1) - c.fy;
  *grad_attn = c.weight[0] * s[0] + c.weight[1] * s[1] + c.weight[2] * s[2] + c.weight[3] * s[3];
  // d x_pixel / d loc_x = W, d y_pixel / d loc_y = H
  *grad_loc_x = a * static_cast<T>(w) * (gy * (s[1] - s[0]) + c.fy * (s[3] - s[2]));
  *grad_loc_y = a * static_cast<T>(h) * (gx * (s[2] - s[0]) + c.fx * (s[3] - s[1]));
}

}  // namespace msda
