// The few declarations of oneDNN's v3 C API that the convolution and linear ops use.
//
// The Paddle wheel ships the oneDNN library (paddle/libs/libdnnl.so.3, oneDNN 3.6 for paddle 3.2) but its
// include/third_party/install/onednn/include/ holds only forwarding headers whose targets (oneapi/dnnl/*.h) are
// missing, so the op declares what it calls itself. oneDNN keeps its C ABI stable within a major version:
// functions are only added and enumerations only extended, so these values hold for every 3.x library.
// tests/test_ops_paddle_cpu_layers.py checks each of them against oneDNN's own headers when a copy is
// installed (torch ships one).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

typedef struct dnnl_engine* dnnl_engine_t;
typedef struct dnnl_stream* dnnl_stream_t;
typedef struct dnnl_memory_desc* dnnl_memory_desc_t;
typedef const struct dnnl_memory_desc* const_dnnl_memory_desc_t;
typedef struct dnnl_memory* dnnl_memory_t;
typedef struct dnnl_primitive_desc* dnnl_primitive_desc_t;
typedef const struct dnnl_primitive_desc* const_dnnl_primitive_desc_t;
typedef struct dnnl_primitive* dnnl_primitive_t;
typedef const struct dnnl_primitive* const_dnnl_primitive_t;
typedef struct dnnl_primitive_attr* dnnl_primitive_attr_t;
typedef const struct dnnl_primitive_attr* const_dnnl_primitive_attr_t;

typedef int dnnl_status_t;  // the C enums are int-sized
typedef int dnnl_data_type_t;
typedef int dnnl_format_tag_t;
typedef int dnnl_engine_kind_t;
typedef int dnnl_prop_kind_t;
typedef int dnnl_alg_kind_t;
typedef int dnnl_query_t;
typedef int dnnl_scratchpad_mode_t;

typedef int64_t dnnl_dim_t;
typedef dnnl_dim_t dnnl_dims_t[12];  // DNNL_MAX_NDIMS

typedef struct {
  int arg;
  dnnl_memory_t memory;
} dnnl_exec_arg_t;

dnnl_status_t dnnl_engine_create(dnnl_engine_t* engine, dnnl_engine_kind_t kind, size_t index);
dnnl_status_t dnnl_stream_create(dnnl_stream_t* stream, dnnl_engine_t engine, unsigned flags);
dnnl_status_t dnnl_stream_wait(dnnl_stream_t stream);
dnnl_status_t dnnl_stream_destroy(dnnl_stream_t stream);
dnnl_status_t dnnl_memory_desc_create_with_tag(dnnl_memory_desc_t* memory_desc, int ndims, const dnnl_dims_t dims,
                                               dnnl_data_type_t data_type, dnnl_format_tag_t tag);
dnnl_status_t dnnl_memory_desc_clone(dnnl_memory_desc_t* memory_desc, const_dnnl_memory_desc_t existing);
dnnl_status_t dnnl_memory_desc_destroy(dnnl_memory_desc_t memory_desc);
int dnnl_memory_desc_equal(const_dnnl_memory_desc_t lhs, const_dnnl_memory_desc_t rhs);
size_t dnnl_memory_desc_get_size(const_dnnl_memory_desc_t memory_desc);
dnnl_status_t dnnl_memory_create(dnnl_memory_t* memory, const_dnnl_memory_desc_t memory_desc, dnnl_engine_t engine,
                                 void* handle);
dnnl_status_t dnnl_memory_destroy(dnnl_memory_t memory);
dnnl_status_t dnnl_primitive_attr_create(dnnl_primitive_attr_t* attr);
dnnl_status_t dnnl_primitive_attr_destroy(dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_primitive_attr_set_scratchpad_mode(dnnl_primitive_attr_t attr, dnnl_scratchpad_mode_t mode);
dnnl_status_t dnnl_primitive_desc_query(const_dnnl_primitive_desc_t primitive_desc, dnnl_query_t what, int index,
                                        void* result);
const_dnnl_memory_desc_t dnnl_primitive_desc_query_md(const_dnnl_primitive_desc_t primitive_desc,
                                                      dnnl_query_t what, int index);
dnnl_status_t dnnl_primitive_desc_destroy(dnnl_primitive_desc_t primitive_desc);
dnnl_status_t dnnl_primitive_create(dnnl_primitive_t* primitive, const_dnnl_primitive_desc_t primitive_desc);
dnnl_status_t dnnl_primitive_execute(const_dnnl_primitive_t primitive, dnnl_stream_t stream, int nargs,
                                     const dnnl_exec_arg_t* args);
dnnl_status_t dnnl_primitive_destroy(dnnl_primitive_t primitive);
dnnl_status_t dnnl_reorder_primitive_desc_create(dnnl_primitive_desc_t* reorder_primitive_desc,
                                                 const_dnnl_memory_desc_t src_desc, dnnl_engine_t src_engine,
                                                 const_dnnl_memory_desc_t dst_desc, dnnl_engine_t dst_engine,
                                                 const_dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_convolution_forward_primitive_desc_create(
    dnnl_primitive_desc_t* primitive_desc, dnnl_engine_t engine, dnnl_prop_kind_t prop_kind,
    dnnl_alg_kind_t alg_kind, const_dnnl_memory_desc_t src_desc, const_dnnl_memory_desc_t weights_desc,
    const_dnnl_memory_desc_t bias_desc, const_dnnl_memory_desc_t dst_desc, const dnnl_dims_t strides,
    const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_convolution_backward_data_primitive_desc_create(
    dnnl_primitive_desc_t* primitive_desc, dnnl_engine_t engine, dnnl_alg_kind_t alg_kind,
    const_dnnl_memory_desc_t diff_src_desc, const_dnnl_memory_desc_t weights_desc,
    const_dnnl_memory_desc_t diff_dst_desc, const dnnl_dims_t strides, const dnnl_dims_t dilates,
    const dnnl_dims_t padding_l, const dnnl_dims_t padding_r, const_dnnl_primitive_desc_t hint_fwd_pd,
    const_dnnl_primitive_attr_t attr);
dnnl_status_t dnnl_convolution_backward_weights_primitive_desc_create(
    dnnl_primitive_desc_t* primitive_desc, dnnl_engine_t engine, dnnl_alg_kind_t alg_kind,
    const_dnnl_memory_desc_t src_desc, const_dnnl_memory_desc_t diff_weights_desc,
    const_dnnl_memory_desc_t diff_bias_desc, const_dnnl_memory_desc_t diff_dst_desc, const dnnl_dims_t strides,
    const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_desc_t hint_fwd_pd, const_dnnl_primitive_attr_t attr);
// Row-major C = alpha op(A) op(B) + beta C, threaded like the primitives.
dnnl_status_t dnnl_sgemm(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N, dnnl_dim_t K, float alpha,
                         const float* A, dnnl_dim_t lda, const float* B, dnnl_dim_t ldb, float beta, float* C,
                         dnnl_dim_t ldc);

}  // extern "C"

// Values of the enumerations and argument indices above (oneapi/dnnl/dnnl_types.h, dnnl_common_types.h).
namespace dnnl_c {
constexpr dnnl_status_t success = 0;
constexpr dnnl_data_type_t f32 = 3;
constexpr dnnl_format_tag_t format_tag_any = 1;
constexpr dnnl_format_tag_t a = 2;     // x (bias)
constexpr dnnl_format_tag_t abcd = 5;  // nchw, oihw
constexpr dnnl_engine_kind_t cpu = 1;
constexpr dnnl_prop_kind_t forward_training = 64;
constexpr dnnl_alg_kind_t convolution_direct = 1;
constexpr dnnl_query_t src_md = 129;
constexpr dnnl_query_t diff_src_md = 130;
constexpr dnnl_query_t weights_md = 131;
constexpr dnnl_query_t diff_weights_md = 132;
constexpr dnnl_query_t dst_md = 133;
constexpr dnnl_query_t diff_dst_md = 134;
constexpr dnnl_query_t scratchpad_md = 136;
constexpr dnnl_scratchpad_mode_t scratchpad_mode_user = 1;
constexpr unsigned stream_default_flags = 1;
constexpr int arg_src = 1;
constexpr int arg_dst = 17;
constexpr int arg_weights = 33;
constexpr int arg_bias = 41;
constexpr int arg_scratchpad = 80;
constexpr int arg_diff_src = 129;
constexpr int arg_diff_dst = 145;
constexpr int arg_diff_weights = 161;
constexpr int arg_diff_bias = 169;
constexpr int arg_from = arg_src;
constexpr int arg_to = arg_dst;
}  // namespace dnnl_c
