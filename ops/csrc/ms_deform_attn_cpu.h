// CPU forward and backward of multi-scale deformable attention, shared by the torch and paddle bindings.
// Layouts: see ms_deform_attn_common.h.
//
// Parallelism (OpenMP): both passes split the work over (batch, head) pairs. Everything a pair touches is its
// own: value / grad_value rows [b, :, m, :], output rows [b, :, m, :], location / weight entries
// [b, :, m, ...]. So the backward's scatter into grad_value needs no atomics and no per-thread copies of
// grad_value (threads x |value| of extra traffic), and results are bitwise deterministic. B * M >= 8 in every
// DETR configuration, which keeps 2-8 cores busy; dynamic scheduling evens out heads whose points often fall
// outside the map, and a core shared with another process.
//
// Memory layout work, measured on the R50 encoder (22k tokens, 8 heads x 32 channels): in [B, S, M, D] and
// [B, Q, M, ...] the rows of one head sit M rows apart, a power-of-two stride (1 KiB here) that crowds them
// into a few cache sets, defeats the hardware prefetchers and touches a new page every few rows. So
//   - per block of queries, the head's location / weight / grad_output rows are copied into small contiguous
//     buffers first, and its output / gradient rows written back the same way (1.3x on the backward);
//   - when the head is gathered many times per token (the encoder: Q * L * P >> S), its value rows are staged
//     in a contiguous [S, D] buffer and its grad_value accumulated in another, copied back at the end
//     (1.5x more). For few samples (the decoder) the copy would cost more than it saves: rows are used in place.
// The innermost loops run over the D contiguous channels of a row and are vectorized (omp simd).
#pragma once
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ms_deform_attn_common.h"

namespace msda {

inline int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

constexpr int64_t kQueryBlock = 64;            // queries per block of copied rows
constexpr int64_t kStageSamplesPerToken = 2;   // stage value rows when sampled at least this often per token

inline bool stage_heads(const Dims& n) {
  return n.queries * n.levels * n.points >= kStageSamplesPerToken * n.tokens;
}

// Uninitialized scratch (std::vector would zero it: a wasted pass over megabytes).
template <typename T>
std::unique_ptr<T[]> scratch(int64_t size) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(size)]);
}

// `rows` rows of `width` elements, `src_stride` apart -> `dst_stride` apart
template <typename T>
void copy_rows(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * dst_stride, src + r * src_stride, sizeof(T) * width);
}

// output [B, Q, M, D] = sum over levels and points of attention_weight * bilinear sample of value.
// num_threads <= 0 uses the OpenMP default.
template <typename T>
void forward_cpu(const T* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
                 const T* sampling_locations, const T* attention_weights, T* output, const Dims& n,
                 int num_threads) {
  const int64_t D = n.channels, M = n.heads, L = n.levels, P = n.points, Q = n.queries, LP = L * P;
  const bool staged = stage_heads(n);
#pragma omp parallel num_threads(resolve_threads(num_threads))
  {
    const std::vector<T> zeros(D, static_cast<T>(0));  // stands in for corners outside the map
    const std::unique_ptr<T[]> stage = scratch<T>(staged ? n.tokens * D : 0);
    const std::unique_ptr<T[]> block = scratch<T>(kQueryBlock * (3 * LP + D));
    T* locations = block.get();                    // [block, L, P, 2]
    T* weights = locations + kQueryBlock * 2 * LP;  // [block, L, P]
    T* outputs = weights + kQueryBlock * LP;        // [block, D]
#pragma omp for schedule(dynamic, 1)
    for (int64_t bm = 0; bm < n.batch * M; ++bm) {
      const int64_t b = bm / M, m = bm % M;
      const T* head = value + b * n.tokens * M * D + m * D;
      int64_t stride = M * D;  // between consecutive tokens of this head
      if (staged) {
        copy_rows(head, stride, stage.get(), D, n.tokens, D);
        head = stage.get();
        stride = D;
      }
      for (int64_t q0 = 0; q0 < Q; q0 += kQueryBlock) {
        const int64_t nq = std::min(kQueryBlock, Q - q0), first = (b * Q + q0) * M + m;  // rows M apart
        copy_rows(sampling_locations + first * 2 * LP, M * 2 * LP, locations, 2 * LP, nq, 2 * LP);
        copy_rows(attention_weights + first * LP, M * LP, weights, LP, nq, LP);
        for (int64_t j = 0; j < nq; ++j) {
          T* __restrict__ out = outputs + j * D;
          std::fill(out, out + D, static_cast<T>(0));
          for (int64_t l = 0; l < L; ++l) {
            const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
            const T* level = head + level_start_index[l] * stride;
            for (int64_t p = 0; p < P; ++p) {
              const int64_t i = j * LP + l * P + p;
              Corners<T> c;
              if (!bilinear_corners(locations[2 * i], locations[2 * i + 1], h, w, c)) continue;
              const T* r[4];
              T cw[4];
              for (int k = 0; k < 4; ++k) {
                r[k] = c.offset[k] >= 0 ? level + c.offset[k] * stride : zeros.data();
                cw[k] = weights[i] * c.weight[k];
              }
              const T* __restrict__ r0 = r[0];
              const T* __restrict__ r1 = r[1];
              const T* __restrict__ r2 = r[2];
              const T* __restrict__ r3 = r[3];
#pragma omp simd
              for (int64_t d = 0; d < D; ++d)
                out[d] += cw[0] * r0[d] + cw[1] * r1[d] + cw[2] * r2[d] + cw[3] * r3[d];
            }
          }
        }
        copy_rows(outputs, D, output + first * D, M * D, nq, D);
      }
    }
  }
}

// Gradients of forward_cpu given grad_output [B, Q, M, D]: grad_value [B, S, M, D], grad_sampling_locations
// [B, Q, M, L, P, 2], grad_attention_weights [B, Q, M, L, P]. All three are overwritten (need no zeroing).
template <typename T>
void backward_cpu(const T* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
                  const T* sampling_locations, const T* attention_weights, const T* grad_output, T* grad_value,
                  T* grad_sampling_locations, T* grad_attention_weights, const Dims& n, int num_threads) {
  const int64_t D = n.channels, M = n.heads, L = n.levels, P = n.points, Q = n.queries, LP = L * P;
  const bool staged = stage_heads(n);
#pragma omp parallel num_threads(resolve_threads(num_threads))
  {
    if (!staged) {
#pragma omp for schedule(static)
      for (int64_t e = 0; e < n.batch * n.tokens * M * D; ++e) grad_value[e] = static_cast<T>(0);
    }
    const std::vector<T> zeros(D, static_cast<T>(0));
    std::vector<T> sink(4 * D);  // receives the (unused) grad_value of corners outside the map
    const std::unique_ptr<T[]> stage = scratch<T>(staged ? 2 * n.tokens * D : 0);  // value rows, then grads
    const std::unique_ptr<T[]> block = scratch<T>(kQueryBlock * (6 * LP + D));
    T* locations = block.get();                         // [block, L, P, 2]
    T* weights = locations + kQueryBlock * 2 * LP;       // [block, L, P]
    T* grads = weights + kQueryBlock * LP;               // [block, D] of grad_output
    T* grad_locations = grads + kQueryBlock * D;         // [block, L, P, 2]
    T* grad_weights = grad_locations + kQueryBlock * 2 * LP;  // [block, L, P]
#pragma omp for schedule(dynamic, 1)
    for (int64_t bm = 0; bm < n.batch * M; ++bm) {
      const int64_t b = bm / M, m = bm % M;
      const int64_t head_offset = b * n.tokens * M * D + m * D;
      const T* head = value + head_offset;
      T* grad_head = grad_value + head_offset;
      int64_t stride = M * D;
      if (staged) {
        copy_rows(head, stride, stage.get(), D, n.tokens, D);
        head = stage.get();
        grad_head = stage.get() + n.tokens * D;
        std::fill(grad_head, grad_head + n.tokens * D, static_cast<T>(0));
        stride = D;
      }
      for (int64_t q0 = 0; q0 < Q; q0 += kQueryBlock) {
        const int64_t nq = std::min(kQueryBlock, Q - q0), first = (b * Q + q0) * M + m;  // rows M apart
        copy_rows(sampling_locations + first * 2 * LP, M * 2 * LP, locations, 2 * LP, nq, 2 * LP);
        copy_rows(attention_weights + first * LP, M * LP, weights, LP, nq, LP);
        copy_rows(grad_output + first * D, M * D, grads, D, nq, D);
        for (int64_t j = 0; j < nq; ++j) {
          const T* __restrict__ g = grads + j * D;
          for (int64_t l = 0; l < L; ++l) {
            const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
            const T* level = head + level_start_index[l] * stride;
            T* grad_level = grad_head + level_start_index[l] * stride;
            for (int64_t p = 0; p < P; ++p) {
              const int64_t i = j * LP + l * P + p;
              Corners<T> c;
              if (!bilinear_corners(locations[2 * i], locations[2 * i + 1], h, w, c)) {
                grad_weights[i] = grad_locations[2 * i] = grad_locations[2 * i + 1] = 0;
                continue;
              }
              const T a = weights[i];
              const T* r[4];
              T* gr[4];
              T cw[4];
              for (int k = 0; k < 4; ++k) {
                const bool in = c.offset[k] >= 0;
                r[k] = in ? level + c.offset[k] * stride : zeros.data();
                gr[k] = in ? grad_level + c.offset[k] * stride : sink.data() + k * D;
                cw[k] = a * c.weight[k];
              }
              const T* __restrict__ r0 = r[0];
              const T* __restrict__ r1 = r[1];
              const T* __restrict__ r2 = r[2];
              const T* __restrict__ r3 = r[3];
              T* __restrict__ g0 = gr[0];
              T* __restrict__ g1 = gr[1];
              T* __restrict__ g2 = gr[2];
              T* __restrict__ g3 = gr[3];
              T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
              for (int64_t d = 0; d < D; ++d) {
                const T gd = g[d];
                s0 += gd * r0[d];
                s1 += gd * r1[d];
                s2 += gd * r2[d];
                s3 += gd * r3[d];
                g0[d] += cw[0] * gd;
                g1[d] += cw[1] * gd;
                g2[d] += cw[2] * gd;
                g3[d] += cw[3] * gd;
              }
              const T s[4] = {s0, s1, s2, s3};
              sample_grads(c, s, a, h, w, grad_weights + i, grad_locations + 2 * i, grad_locations + 2 * i + 1);
            }
          }
        }
        copy_rows(grad_locations, 2 * LP, grad_sampling_locations + first * 2 * LP, M * 2 * LP, nq, 2 * LP);
        copy_rows(grad_weights, LP, grad_attention_weights + first * LP, M * LP, nq, LP);
      }
      if (staged) copy_rows(grad_head, D, grad_value + head_offset, M * D, n.tokens, D);
    }
  }
}

}  // namespace msda
