// 2-D convolution on Paddle CPU tensors through oneDNN: float32, NCHW, groups = 1, forward and both gradients.
//
// Paddle 3.2's dynamic graph convolves on CPU with im2col + GEMM whatever FLAGS_use_mkldnn says; torch calls
// oneDNN. This op does what torch does: the primitives are created with format_tag::any, so oneDNN picks its
// blocked layouts (nChw16c on AVX-512), and reorders convert Paddle's plain NCHW / OIHW tensors on the way in and
// out. Primitive descriptors and primitives are built once per shape and parameters and cached (the 256 most
// recent shapes, behind a mutex); executions use per-call memory objects and scratchpads, so threads may share a
// primitive. ops/paddle_cpu_layers.py decides which gradients are needed; paddle_impl/models/layers.py decides
// when to use the op at all.
#include <array>
#include <cstdlib>
#include <list>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "paddle/extension.h"

#include "onednn_c_api.h"

namespace {

void check(dnnl_status_t status, const char* what) {
  PD_CHECK(status == dnnl_c::success, "conv2d (oneDNN): ", what, " failed with status ", status);
}

struct MdFree {
  void operator()(dnnl_memory_desc* p) const { dnnl_memory_desc_destroy(p); }
};
struct PdFree {
  void operator()(dnnl_primitive_desc* p) const { dnnl_primitive_desc_destroy(p); }
};
struct PrimFree {
  void operator()(dnnl_primitive* p) const { dnnl_primitive_destroy(p); }
};
struct MemFree {
  void operator()(dnnl_memory* p) const { dnnl_memory_destroy(p); }
};
using Md = std::unique_ptr<dnnl_memory_desc, MdFree>;
using Pd = std::unique_ptr<dnnl_primitive_desc, PdFree>;
using Prim = std::unique_ptr<dnnl_primitive, PrimFree>;
using Mem = std::unique_ptr<dnnl_memory, MemFree>;

// Engine, attributes and streams live as long as the process: destroying them at exit could run after
// libdnnl has been unloaded.
dnnl_engine_t engine() {
  static dnnl_engine_t e = [] {
    dnnl_engine_t created = nullptr;
    check(dnnl_engine_create(&created, dnnl_c::cpu, 0), "engine creation");
    return created;
  }();
  return e;
}

dnnl_stream_t stream() {
  thread_local dnnl_stream_t s = [] {
    dnnl_stream_t created = nullptr;
    check(dnnl_stream_create(&created, engine(), dnnl_c::stream_default_flags), "stream creation");
    return created;
  }();
  return s;
}

// Scratchpads are passed at execution (not held by the primitive), so concurrent executions never share one.
const_dnnl_primitive_attr_t user_scratchpad() {
  static dnnl_primitive_attr_t attr = [] {
    dnnl_primitive_attr_t created = nullptr;
    check(dnnl_primitive_attr_create(&created), "attribute creation");
    check(dnnl_primitive_attr_set_scratchpad_mode(created, dnnl_c::scratchpad_mode_user), "scratchpad mode");
    return created;
  }();
  return attr;
}

Md make_md(const std::vector<int64_t>& dims, dnnl_format_tag_t tag) {
  dnnl_dims_t d = {};
  for (size_t i = 0; i < dims.size(); ++i) d[i] = dims[i];
  dnnl_memory_desc_t md = nullptr;
  check(dnnl_memory_desc_create_with_tag(&md, static_cast<int>(dims.size()), d, dnnl_c::f32, tag),
        "memory descriptor creation");
  return Md(md);
}

Md clone(const_dnnl_memory_desc_t md) {
  dnnl_memory_desc_t copy = nullptr;
  check(dnnl_memory_desc_clone(&copy, md), "memory descriptor clone");
  return Md(copy);
}

// A primitive with its descriptor and the scratchpad size it needs.
struct Step {
  Pd pd;
  Prim prim;
  size_t scratch = 0;

  explicit operator bool() const { return static_cast<bool>(prim); }
};

Step make_step(dnnl_primitive_desc_t pd, const char* what) {
  Step step;
  step.pd.reset(pd);
  dnnl_primitive_t prim = nullptr;
  check(dnnl_primitive_create(&prim, pd), what);
  step.prim.reset(prim);
  step.scratch = dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_c::scratchpad_md, 0));
  return step;
}

Step make_reorder(const_dnnl_memory_desc_t from, const_dnnl_memory_desc_t to) {
  dnnl_primitive_desc_t pd = nullptr;
  check(dnnl_reorder_primitive_desc_create(&pd, from, engine(), to, engine(), user_scratchpad()),
        "reorder descriptor creation");
  return make_step(pd, "reorder creation");
}

// One tensor argument of a primitive: the layout the primitive chose, and reorders from / to Paddle's plain
// layout when the two differ.
struct Arg {
  Md chosen;
  Step to_chosen, to_plain;
  size_t bytes = 0;

  bool plain() const { return !to_chosen && !to_plain; }
};

Arg make_arg(const_dnnl_memory_desc_t plain, const_dnnl_memory_desc_t chosen, bool in, bool out) {
  Arg arg;
  arg.chosen = clone(chosen);
  arg.bytes = dnnl_memory_desc_get_size(chosen);
  if (!dnnl_memory_desc_equal(plain, chosen)) {
    if (in) arg.to_chosen = make_reorder(plain, chosen);
    if (out) arg.to_plain = make_reorder(chosen, plain);
  }
  return arg;
}

// Byte buffers for the blocked copies and scratchpads of one call. They come from a per-thread pool that keeps
// its blocks: freshly mapped memory page-faults on first touch, which made a reorder into a new 32 MB buffer
// 3-4x slower than into a reused one. The pool holds at most the largest set of buffers one call needed.
class Buffers {
 public:
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (size_t i : taken_) pool()[i].busy = false;
  }

  void* get(size_t bytes) {
    if (bytes == 0) return nullptr;
    auto& blocks = pool();
    size_t best = blocks.size(), spare = blocks.size();
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].busy) continue;
      if (blocks[i].bytes >= bytes && (best == blocks.size() || blocks[i].bytes < blocks[best].bytes)) best = i;
      if (blocks[i].bytes < bytes) spare = i;
    }
    if (best == blocks.size()) {  // grow a free block that is too small, or add one
      if (spare == blocks.size()) {
        blocks.emplace_back();
        spare = blocks.size() - 1;
      }
      Block& b = blocks[spare];
      b.bytes = (bytes + 63) / 64 * 64;
      b.data.reset(static_cast<char*>(std::aligned_alloc(64, b.bytes)));
      PD_CHECK(b.data != nullptr, "conv2d (oneDNN): out of memory allocating ", b.bytes, " bytes");
      best = spare;
    }
    blocks[best].busy = true;
    taken_.push_back(best);
    return blocks[best].data.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  struct Block {
    std::unique_ptr<char, Free> data;
    size_t bytes = 0;
    bool busy = false;
  };
  static std::vector<Block>& pool() {
    thread_local std::vector<Block> blocks;
    return blocks;
  }
  std::vector<size_t> taken_;
};

Mem memory(const_dnnl_memory_desc_t md, void* data) {
  dnnl_memory_t mem = nullptr;
  check(dnnl_memory_create(&mem, md, engine(), data), "memory creation");
  return Mem(mem);
}

// Runs `step` on (argument index, descriptor, data) triples plus its scratchpad.
void run(const Step& step, const std::vector<std::tuple<int, const_dnnl_memory_desc_t, void*>>& args,
         Buffers& buffers) {
  std::vector<Mem> mems;
  std::vector<dnnl_exec_arg_t> exec;
  for (const auto& [index, md, data] : args) {
    mems.push_back(memory(md, data));
    exec.push_back({index, mems.back().get()});
  }
  if (step.scratch > 0) {
    mems.push_back(memory(dnnl_primitive_desc_query_md(step.pd.get(), dnnl_c::scratchpad_md, 0),
                          buffers.get(step.scratch)));
    exec.push_back({dnnl_c::arg_scratchpad, mems.back().get()});
  }
  check(dnnl_primitive_execute(step.prim.get(), stream(), static_cast<int>(exec.size()), exec.data()),
        "execution");
  check(dnnl_stream_wait(stream()), "stream wait");
}

// Data of `arg` in the chosen layout: `plain_data` itself, or a reordered copy.
void* to_chosen(const Arg& arg, const_dnnl_memory_desc_t plain, void* plain_data, Buffers& buffers) {
  if (!arg.to_chosen) return plain_data;
  void* data = buffers.get(arg.bytes);
  run(arg.to_chosen, {{dnnl_c::arg_from, plain, plain_data}, {dnnl_c::arg_to, arg.chosen.get(), data}}, buffers);
  return data;
}

// N, C, H, W, O, KH, KW, stride (2), padding top/bottom/left/right (4), dilation (2), bias
using Key = std::array<int64_t, 16>;

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = 0;
    for (int64_t v : key) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

struct Conv {
  Md src, weights, bias, dst;  // Paddle's plain layouts
  dnnl_dims_t strides = {}, dilates = {}, pad_l = {}, pad_r = {};
  Step forward;
  Arg f_src, f_weights, f_dst;
  std::once_flag backward_built;
  Step backward_data, backward_weights;
  Arg bd_diff_dst, bd_weights, bd_diff_src, bw_src, bw_diff_dst, bw_diff_weights;
};

std::shared_ptr<Conv> build_forward(const Key& k, int64_t oh, int64_t ow) {
  auto c = std::make_shared<Conv>();
  c->src = make_md({k[0], k[1], k[2], k[3]}, dnnl_c::abcd);
  c->weights = make_md({k[4], k[1], k[5], k[6]}, dnnl_c::abcd);
  c->dst = make_md({k[0], k[4], oh, ow}, dnnl_c::abcd);
  if (k[15]) c->bias = make_md({k[4]}, dnnl_c::a);
  c->strides[0] = k[7], c->strides[1] = k[8];
  c->pad_l[0] = k[9], c->pad_r[0] = k[10], c->pad_l[1] = k[11], c->pad_r[1] = k[12];
  c->dilates[0] = k[13] - 1, c->dilates[1] = k[14] - 1;  // oneDNN counts the gaps: 0 is a dense kernel
  Md any_src = make_md({k[0], k[1], k[2], k[3]}, dnnl_c::format_tag_any);
  Md any_weights = make_md({k[4], k[1], k[5], k[6]}, dnnl_c::format_tag_any);
  Md any_dst = make_md({k[0], k[4], oh, ow}, dnnl_c::format_tag_any);
  dnnl_primitive_desc_t pd = nullptr;
  check(dnnl_convolution_forward_primitive_desc_create(
            &pd, engine(), dnnl_c::forward_training, dnnl_c::convolution_direct, any_src.get(), any_weights.get(),
            c->bias.get(), any_dst.get(), c->strides, c->dilates, c->pad_l, c->pad_r, user_scratchpad()),
        "forward descriptor creation");
  c->forward = make_step(pd, "forward primitive creation");
  c->f_src = make_arg(c->src.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::src_md, 0), true, false);
  c->f_weights = make_arg(c->weights.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::weights_md, 0), true, false);
  c->f_dst = make_arg(c->dst.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::dst_md, 0), false, true);
  return c;
}

void build_backward(Conv& c, int64_t n, int64_t ch, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw,
                    int64_t oh, int64_t ow) {
  Md any_src = make_md({n, ch, h, w}, dnnl_c::format_tag_any);
  Md any_weights = make_md({o, ch, kh, kw}, dnnl_c::format_tag_any);
  Md any_dst = make_md({n, o, oh, ow}, dnnl_c::format_tag_any);
  dnnl_primitive_desc_t pd = nullptr;
  check(dnnl_convolution_backward_data_primitive_desc_create(
            &pd, engine(), dnnl_c::convolution_direct, any_src.get(), any_weights.get(), any_dst.get(), c.strides,
            c.dilates, c.pad_l, c.pad_r, c.forward.pd.get(), user_scratchpad()),
        "backward-data descriptor creation");
  c.backward_data = make_step(pd, "backward-data primitive creation");
  c.bd_diff_dst = make_arg(c.dst.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::diff_dst_md, 0), true, false);
  c.bd_weights = make_arg(c.weights.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::weights_md, 0), true, false);
  c.bd_diff_src = make_arg(c.src.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::diff_src_md, 0), false, true);
  pd = nullptr;
  check(dnnl_convolution_backward_weights_primitive_desc_create(
            &pd, engine(), dnnl_c::convolution_direct, any_src.get(), any_weights.get(), c.bias.get(),
            any_dst.get(), c.strides, c.dilates, c.pad_l, c.pad_r, c.forward.pd.get(), user_scratchpad()),
        "backward-weights descriptor creation");
  c.backward_weights = make_step(pd, "backward-weights primitive creation");
  c.bw_src = make_arg(c.src.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::src_md, 0), true, false);
  c.bw_diff_dst = make_arg(c.dst.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::diff_dst_md, 0), true, false);
  c.bw_diff_weights =
      make_arg(c.weights.get(), dnnl_primitive_desc_query_md(pd, dnnl_c::diff_weights_md, 0), false, true);
}

struct Shapes {
  Key key;
  int64_t oh, ow;
};

Shapes shapes(const paddle::Tensor& x, const paddle::Tensor& weight, bool bias, const std::vector<int>& strides,
              const std::vector<int>& paddings, const std::vector<int>& dilations) {
  PD_CHECK(x.is_cpu() && weight.is_cpu(), "conv2d (oneDNN): tensors must be on the CPU");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && weight.dtype() == paddle::DataType::FLOAT32,
           "conv2d (oneDNN): tensors must be float32");
  PD_CHECK(x.shape().size() == 4 && weight.shape().size() == 4, "conv2d (oneDNN): x and weight must be 4-D");
  PD_CHECK(strides.size() == 2 && paddings.size() == 4 && dilations.size() == 2,
           "conv2d (oneDNN): expected 2 strides, 4 paddings (top, bottom, left, right), 2 dilations");
  const auto& xs = x.shape();
  const auto& ws = weight.shape();
  PD_CHECK(xs[1] == ws[1], "conv2d (oneDNN): x has ", xs[1], " channels, weight expects ", ws[1]);
  Shapes s;
  s.key = {xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], strides[0], strides[1],
           paddings[0], paddings[1], paddings[2], paddings[3], dilations[0], dilations[1], bias ? 1 : 0};
  s.oh = (xs[2] + paddings[0] + paddings[1] - dilations[0] * (ws[2] - 1) - 1) / strides[0] + 1;
  s.ow = (xs[3] + paddings[2] + paddings[3] - dilations[1] * (ws[3] - 1) - 1) / strides[1] + 1;
  PD_CHECK(s.oh > 0 && s.ow > 0, "conv2d (oneDNN): the output would be empty");
  return s;
}

// The cached primitives of one shape, least recently used first out: DETR batches vary in H and W, so a long
// multi-scale run meets many shapes, each worth a few hundred KiB of JIT code and descriptors. A caller keeps
// its entry alive while it runs even if another thread evicts it.
std::shared_ptr<Conv> cached(const Shapes& s) {
  constexpr size_t kCapacity = 256;
  using Entries = std::list<std::pair<Key, std::shared_ptr<Conv>>>;
  static std::mutex mutex;
  static auto* order = new Entries();  // most recent first; never destroyed, see engine()
  static auto* index = new std::unordered_map<Key, Entries::iterator, KeyHash>();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = index->find(s.key);
  if (it != index->end()) {
    order->splice(order->begin(), *order, it->second);
    return order->front().second;
  }
  order->emplace_front(s.key, build_forward(s.key, s.oh, s.ow));
  (*index)[s.key] = order->begin();
  if (order->size() > kCapacity) {
    index->erase(order->back().first);
    order->pop_back();
  }
  return order->front().second;
}

paddle::Tensor contiguous(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

std::vector<paddle::Tensor> conv2d_forward(const paddle::Tensor& x_in, const paddle::Tensor& weight_in,
                                           const paddle::optional<paddle::Tensor>& bias,
                                           const std::vector<int>& strides, const std::vector<int>& paddings,
                                           const std::vector<int>& dilations, bool, bool) {
  const Shapes s = shapes(x_in, weight_in, static_cast<bool>(bias), strides, paddings, dilations);
  const Key& k = s.key;
  auto out = paddle::empty({k[0], k[4], s.oh, s.ow}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  if (k[0] == 0) return {out};
  const paddle::Tensor x = contiguous(x_in), weight = contiguous(weight_in);
  const std::shared_ptr<Conv> entry = cached(s);
  Conv& c = *entry;
  Buffers buffers;
  void* src = to_chosen(c.f_src, c.src.get(), const_cast<float*>(x.data<float>()), buffers);
  void* wei = to_chosen(c.f_weights, c.weights.get(), const_cast<float*>(weight.data<float>()), buffers);
  void* dst = c.f_dst.plain() ? out.data<float>() : buffers.get(c.f_dst.bytes);
  std::vector<std::tuple<int, const_dnnl_memory_desc_t, void*>> args = {
      {dnnl_c::arg_src, c.f_src.chosen.get(), src},
      {dnnl_c::arg_weights, c.f_weights.chosen.get(), wei},
      {dnnl_c::arg_dst, c.f_dst.chosen.get(), dst}};
  paddle::Tensor b;
  if (bias) {
    b = contiguous(*bias);
    args.emplace_back(dnnl_c::arg_bias, c.bias.get(), const_cast<float*>(b.data<float>()));
  }
  run(c.forward, args, buffers);
  if (!c.f_dst.plain()) {
    run(c.f_dst.to_plain, {{dnnl_c::arg_from, c.f_dst.chosen.get(), dst}, {dnnl_c::arg_to, c.dst.get(),
                                                                              out.data<float>()}},
        buffers);
  }
  return {out};
}

// Gradients of x, weight and bias; those not needed (need_* false, or no bias) are returned zero-filled and
// not computed.
std::vector<paddle::Tensor> conv2d_backward(const paddle::Tensor& x_in, const paddle::Tensor& weight_in,
                                            const paddle::optional<paddle::Tensor>& bias,
                                            const paddle::Tensor& grad_out_in, const std::vector<int>& strides,
                                            const std::vector<int>& paddings, const std::vector<int>& dilations,
                                            bool need_input_grad, bool need_weight_grad) {
  const Shapes s = shapes(x_in, weight_in, static_cast<bool>(bias), strides, paddings, dilations);
  const Key& k = s.key;
  auto grad_x = need_input_grad && k[0] > 0
                    ? paddle::empty(x_in.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace())
                    : paddle::zeros(x_in.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto grad_w = need_weight_grad && k[0] > 0
                    ? paddle::empty(weight_in.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace())
                    : paddle::zeros(weight_in.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  paddle::Tensor grad_b;
  if (bias) grad_b = paddle::zeros({k[4]}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  if (k[0] == 0 || (!need_input_grad && !need_weight_grad)) return {grad_x, grad_w, grad_b};
  const paddle::Tensor x = contiguous(x_in), weight = contiguous(weight_in), grad_out = contiguous(grad_out_in);
  const std::shared_ptr<Conv> entry = cached(s);
  Conv& c = *entry;
  std::call_once(c.backward_built, [&] { build_backward(c, k[0], k[1], k[2], k[3], k[4], k[5], k[6], s.oh, s.ow); });
  Buffers buffers;
  void* dy_plain = const_cast<float*>(grad_out.data<float>());
  void* dy_data = nullptr;  // grad_out in the backward-data layout, reused by backward-weights when equal
  if (need_input_grad) {
    dy_data = to_chosen(c.bd_diff_dst, c.dst.get(), dy_plain, buffers);
    void* wei = to_chosen(c.bd_weights, c.weights.get(), const_cast<float*>(weight.data<float>()), buffers);
    void* dx = c.bd_diff_src.plain() ? grad_x.data<float>() : buffers.get(c.bd_diff_src.bytes);
    run(c.backward_data,
        {{dnnl_c::arg_diff_dst, c.bd_diff_dst.chosen.get(), dy_data},
         {dnnl_c::arg_weights, c.bd_weights.chosen.get(), wei},
         {dnnl_c::arg_diff_src, c.bd_diff_src.chosen.get(), dx}},
        buffers);
    if (!c.bd_diff_src.plain()) {
      run(c.bd_diff_src.to_plain,
          {{dnnl_c::arg_from, c.bd_diff_src.chosen.get(), dx}, {dnnl_c::arg_to, c.src.get(), grad_x.data<float>()}},
          buffers);
    }
  }
  if (need_weight_grad) {
    void* src = to_chosen(c.bw_src, c.src.get(), const_cast<float*>(x.data<float>()), buffers);
    void* dy = dy_data != nullptr && dnnl_memory_desc_equal(c.bd_diff_dst.chosen.get(), c.bw_diff_dst.chosen.get())
                   ? dy_data
                   : to_chosen(c.bw_diff_dst, c.dst.get(), dy_plain, buffers);
    void* dw = c.bw_diff_weights.plain() ? grad_w.data<float>() : buffers.get(c.bw_diff_weights.bytes);
    std::vector<std::tuple<int, const_dnnl_memory_desc_t, void*>> args = {
        {dnnl_c::arg_src, c.bw_src.chosen.get(), src},
        {dnnl_c::arg_diff_dst, c.bw_diff_dst.chosen.get(), dy},
        {dnnl_c::arg_diff_weights, c.bw_diff_weights.chosen.get(), dw}};
    if (bias) args.emplace_back(dnnl_c::arg_diff_bias, c.bias.get(), grad_b.data<float>());
    run(c.backward_weights, args, buffers);
    if (!c.bw_diff_weights.plain()) {
      run(c.bw_diff_weights.to_plain,
          {{dnnl_c::arg_from, c.bw_diff_weights.chosen.get(), dw},
           {dnnl_c::arg_to, c.weights.get(), grad_w.data<float>()}},
          buffers);
    }
  }
  return {grad_x, grad_w, grad_b};
}

std::vector<std::vector<int64_t>> conv2d_infer_shape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                     const paddle::optional<std::vector<int64_t>>&,
                                                     const std::vector<int>& strides,
                                                     const std::vector<int>& paddings,
                                                     const std::vector<int>& dilations, bool, bool) {
  auto out = [](int64_t in, int64_t k, int p0, int p1, int d, int st) {
    return in < 0 ? int64_t{-1} : (in + p0 + p1 - d * (k - 1) - 1) / st + 1;
  };
  return {{x[0], w[0], out(x[2], w[2], paddings[0], paddings[1], dilations[0], strides[0]),
           out(x[3], w[3], paddings[2], paddings[3], dilations[1], strides[1])}};
}

std::vector<paddle::DataType> conv2d_infer_dtype(const paddle::DataType& x, const paddle::DataType&,
                                                 const paddle::optional<paddle::DataType>&) {
  return {x};
}

}  // namespace

PD_BUILD_OP(dac_conv2d)
    .Inputs({"X", "Weight", paddle::Optional("Bias")})
    .Outputs({"Out"})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>",
            "need_input_grad: bool", "need_weight_grad: bool"})
    .SetKernelFn(PD_KERNEL(conv2d_forward))
    .SetInferShapeFn(PD_INFER_SHAPE(conv2d_infer_shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(conv2d_infer_dtype));

PD_BUILD_GRAD_OP(dac_conv2d)
    .Inputs({"X", "Weight", paddle::Optional("Bias"), paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad(paddle::Optional("Bias"))})
    .Attrs({"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>",
            "need_input_grad: bool", "need_weight_grad: bool"})
    .SetKernelFn(PD_KERNEL(conv2d_backward));
