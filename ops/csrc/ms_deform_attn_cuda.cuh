// CUDA forward and backward of multi-scale deformable attention, shared by the torch and paddle bindings.
// Layouts and sampling convention: see ms_deform_attn_common.h.
//
//   forward:  one thread per output element (b, q, m, d); consecutive threads read consecutive channels.
//   backward: one thread per sampling point (b, q, m, l, p), looping over channels: it owns its grad_attn and
//             grad_loc entries (no reduction across threads) and scatters into grad_value with atomicAdd,
//             since many queries hit the same value rows.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>

#include "ms_deform_attn_common.h"

namespace msda {

constexpr int kThreads = 256;

inline int blocks_for(int64_t work) {
  return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 65535 * 8));
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                               const int64_t* __restrict__ level_start_index,
                               const T* __restrict__ sampling_locations, const T* __restrict__ attention_weights,
                               T* __restrict__ output, Dims n) {
  const int64_t D = n.channels, M = n.heads, L = n.levels, P = n.points;
  const int64_t token_stride = M * D, total = n.batch * n.queries * M * D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % D, row = e / D;  // row = (b * Q + q) * M + m
    const int64_t m = row % M, b = row / (n.queries * M);
    const T* head_value = value + b * n.tokens * token_stride + m * D + d;
    T acc = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
      const T* level_value = head_value + level_start_index[l] * token_stride;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = (row * L + l) * P + p;
        Corners<T> c;
        if (!bilinear_corners(sampling_locations[2 * i], sampling_locations[2 * i + 1], h, w, c)) continue;
        T sample = 0;
        for (int k = 0; k < 4; ++k)
          if (c.offset[k] >= 0) sample += c.weight[k] * level_value[c.offset[k] * token_stride];
        acc += attention_weights[i] * sample;
      }
    }
    output[e] = acc;
  }
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                                const int64_t* __restrict__ level_start_index,
                                const T* __restrict__ sampling_locations, const T* __restrict__ attention_weights,
                                const T* __restrict__ grad_output, T* grad_value, T* __restrict__ grad_locations,
                                T* __restrict__ grad_weights, Dims n) {
  const int64_t D = n.channels, M = n.heads, L = n.levels, P = n.points;
  const int64_t token_stride = M * D, total = n.batch * n.queries * M * L * P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = (i / P) % L, row = i / (L * P);  // row = (b * Q + q) * M + m
    const int64_t m = row % M, b = row / (n.queries * M);
    const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
    Corners<T> c;
    if (!bilinear_corners(sampling_locations[2 * i], sampling_locations[2 * i + 1], h, w, c)) {
      grad_weights[i] = grad_locations[2 * i] = grad_locations[2 * i + 1] = 0;
      continue;
    }
    const T a = attention_weights[i];
    const int64_t level_offset = b * n.tokens * token_stride + level_start_index[l] * token_stride + m * D;
    const T* g = grad_output + row * D;
    T s[4] = {0, 0, 0, 0};
    for (int k = 0; k < 4; ++k) {
      if (c.offset[k] < 0) continue;
      const int64_t base = level_offset + c.offset[k] * token_stride;
      const T cw = a * c.weight[k];
      for (int64_t d = 0; d < D; ++d) {
        s[k] += g[d] * value[base + d];
        atomicAdd(grad_value + base + d, cw * g[d]);
      }
    }
    sample_grads(c, s, a, h, w, grad_weights + i, grad_locations + 2 * i, grad_locations + 2 * i + 1);
  }
}

// Launchers: device pointers, asynchronous on `stream`.
template <typename T>
void forward_cuda(const T* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
                  const T* sampling_locations, const T* attention_weights, T* output, const Dims& n,
                  cudaStream_t stream) {
  const int64_t work = n.batch * n.queries * n.heads * n.channels;
  if (work == 0) return;
  forward_kernel<T><<<blocks_for(work), kThreads, 0, stream>>>(value, spatial_shapes, level_start_index,
                                                               sampling_locations, attention_weights, output, n);
}

// grad_value is zeroed here; grad_locations and grad_weights are fully overwritten.
template <typename T>
void backward_cuda(const T* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
                   const T* sampling_locations, const T* attention_weights, const T* grad_output, T* grad_value,
                   T* grad_locations, T* grad_weights, const Dims& n, cudaStream_t stream) {
  cudaMemsetAsync(grad_value, 0, sizeof(T) * n.batch * n.tokens * n.heads * n.channels, stream);
  const int64_t work = n.batch * n.queries * n.heads * n.levels * n.points;
  if (work == 0) return;
  backward_kernel<T><<<blocks_for(work), kThreads, 0, stream>>>(value, spatial_shapes, level_start_index,
                                                                sampling_locations, attention_weights, grad_output,
                                                                grad_value, grad_locations, grad_weights, n);
}

}  // namespace msda
