"""ops/paddle_cpu_layers.py (oneDNN conv2d and linear, GroupNorm) and the paddle_impl layers using them: torch parity
of the outputs and every gradient, Paddle builtin parity of the layers, export path, the oneDNN ABI header, fallback."""
import logging
import re
import subprocess

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF

from ops import build, paddle_cpu_layers as cl
from paddle_impl.models import layers

# Measured max |op - torch| / max |torch| on this grid: conv 8e-7, linear 3e-7, group_norm float32 3e-7,
# float64 4e-16.
RTOL32, RTOL64 = 1e-5, 1e-12


@pytest.fixture(scope="module", autouse=True)
def ops_built():
    assert cl.available(), cl._ops.error


def assert_close(actual, expected, rtol, what):
    """max |actual - expected| <= rtol * max |expected| (a relative tolerance on the tensor's scale)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected).max(initial=0.0)
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} * {scale:.3g}"


def paddle_run(fn, arrays, grad, needs):
    """fn(*paddle tensors) -> (output, [grads of the tensors whose need is True, None for the others])."""
    tensors = [None if a is None else paddle.to_tensor(a, stop_gradient=not need) for a, need in zip(arrays, needs)]
    out = fn(*tensors)
    out.backward(paddle.to_tensor(grad))
    return out.numpy(), [None if t is None or t.grad is None else t.grad.numpy() for t in tensors]


def torch_run(fn, arrays, grad, needs):
    tensors = [None if a is None else torch.tensor(a, requires_grad=need) for a, need in zip(arrays, needs)]
    out = fn(*tensors)
    out.backward(torch.tensor(grad))
    return out.detach().numpy(), [None if t is None or t.grad is None else t.grad.numpy() for t in tensors]


# (N, C, H, W, O, K, stride, padding, dilation, bias): the ResNet / input projection convs at odd, tiny sizes,
# batch 1 and 3, plus strides, paddings and dilations around them
CONVS = [
    (2, 3, 19, 23, 8, 7, 2, 3, 1, False),    # stem
    (1, 8, 9, 11, 16, 3, 1, 1, 1, False),
    (3, 8, 9, 11, 16, 3, 2, 1, 1, False),
    (2, 16, 10, 7, 8, 1, 2, 0, 1, False),    # downsample
    (2, 16, 10, 7, 8, 1, 1, 0, 1, True),     # input projection
    (1, 16, 5, 6, 8, 3, 2, 1, 1, True),      # extra level
    (2, 8, 13, 12, 8, 3, 1, 2, 2, False),    # DC5 dilation
    (3, 5, 8, 9, 7, 3, (2, 1), (0, 2), (1, 3), True),
    (1, 4, 6, 5, 3, (3, 2), 1, 0, 1, True),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_arrays(n, c, h, w, o, k, bias, rng):
    kh, kw = _pair(k)
    return [rng.standard_normal((n, c, h, w)).astype("float32"),
            (rng.standard_normal((o, c, kh, kw)) / np.sqrt(c * kh * kw)).astype("float32"),
            rng.standard_normal(o).astype("float32") if bias else None]


@pytest.mark.parametrize("case", CONVS)
def test_conv2d_matches_torch(case):
    n, c, h, w, o, k, stride, padding, dilation, bias = case
    rng = np.random.default_rng(0)
    arrays = conv_arrays(n, c, h, w, o, k, bias, rng)
    out_shape = TF.conv2d(torch.tensor(arrays[0]), torch.tensor(arrays[1]), None, stride, padding, dilation).shape
    grad = rng.standard_normal(tuple(out_shape)).astype("float32")
    needs = [True, True, bias]
    ref, ref_grads = torch_run(lambda x, wt, b: TF.conv2d(x, wt, b, stride, padding, dilation), arrays, grad, needs)
    out, grads = paddle_run(lambda x, wt, b: cl.conv2d(x, wt, b, stride, padding, dilation), arrays, grad, needs)
    assert_close(out, ref, RTOL32, "output")
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        if r is not None:
            assert_close(g, r, RTOL32, f"grad {name}")


def test_conv2d_asymmetric_padding_matches_torch():
    rng = np.random.default_rng(1)
    arrays = conv_arrays(2, 4, 7, 8, 5, 3, True, rng)
    pad = [0, 2, 1, 0]  # top, bottom, left, right (Paddle's order); torch pads (left, right, top, bottom)
    grad = rng.standard_normal((2, 5, 7, 7)).astype("float32")
    ref, ref_grads = torch_run(lambda x, wt, b: TF.conv2d(TF.pad(x, (1, 0, 0, 2)), wt, b), arrays, grad, [True] * 3)
    out, grads = paddle_run(lambda x, wt, b: cl.conv2d(x, wt, b, 1, pad), arrays, grad, [True] * 3)
    assert_close(out, ref, RTOL32, "output")
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, RTOL32, "grad")


@pytest.mark.parametrize("need_x, need_w", [(False, True), (True, False)])
def test_conv2d_computes_only_requested_gradients(need_x, need_w):
    rng = np.random.default_rng(2)
    arrays = conv_arrays(2, 3, 9, 10, 4, 3, False, rng)
    grad = rng.standard_normal((2, 4, 9, 10)).astype("float32")
    needs = [need_x, need_w, False]
    ref, ref_grads = torch_run(lambda x, wt, b: TF.conv2d(x, wt, b, 1, 1), arrays, grad, needs)
    out, grads = paddle_run(lambda x, wt, b: cl.conv2d(x, wt, b, 1, 1), arrays, grad, needs)
    assert_close(out, ref, RTOL32, "output")
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            assert_close(g, r, RTOL32, "grad")


def test_conv2d_empty_batch():
    x = paddle.zeros([0, 3, 8, 8])
    x.stop_gradient = False
    weight = paddle.ones([4, 3, 3, 3])
    weight.stop_gradient = False
    bias = paddle.ones([4])
    bias.stop_gradient = False
    out = cl.conv2d(x, weight, bias, 2, 1)
    assert out.shape == [0, 4, 4, 4]
    out.sum().backward()
    assert x.grad.shape == [0, 3, 8, 8]
    assert not weight.grad.numpy().any() and not bias.grad.numpy().any()


def test_conv2d_repeated_shapes_reuse_the_cache():
    # a cached primitive must serve other data of the same shape, and another batch size must get its own
    rng = np.random.default_rng(3)
    for n in (2, 1, 2):
        arrays = conv_arrays(n, 4, 6, 7, 5, 3, True, rng)
        ref = TF.conv2d(*(torch.tensor(a) for a in arrays), 1, 1).numpy()
        assert_close(cl.conv2d(*(paddle.to_tensor(a) for a in arrays), 1, 1).numpy(), ref, RTOL32, f"batch {n}")


# (leading dims of x, K, N, bias): the model's projections (hidden 128 / 256, FFN, class and box heads), odd and
# degenerate sizes, 3-D inputs as the layers pass them
LINEARS = [((200,), 128, 512, True), ((2, 37), 64, 6, True), ((3,), 5, 7, False), ((1,), 1, 1, True),
           ((2, 3, 4), 16, 2, False), ((513,), 33, 129, True)]


def linear_arrays(lead, k, n, bias, rng):
    return [rng.standard_normal((*lead, k)).astype("float32"),
            (rng.standard_normal((k, n)) / np.sqrt(k)).astype("float32"),
            rng.standard_normal(n).astype("float32") if bias else None]


@pytest.mark.parametrize("case", LINEARS)
def test_linear_matches_torch(case):
    lead, k, n, bias = case
    rng = np.random.default_rng(10)
    arrays = linear_arrays(lead, k, n, bias, rng)
    grad = rng.standard_normal((*lead, n)).astype("float32")
    needs = [True, True, bias]
    # torch's weight is [out, in]: the op's [K, N] transposed
    ref, ref_grads = torch_run(lambda x, wt, b: TF.linear(x, wt.T, b), arrays, grad, needs)
    out, grads = paddle_run(cl.linear, arrays, grad, needs)
    assert_close(out, ref, RTOL32, "output")
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        if r is not None:
            assert_close(g, r, RTOL32, f"grad {name}")


@pytest.mark.parametrize("needs", [(False, True, True), (True, False, False), (False, False, True)])
def test_linear_computes_only_requested_gradients(needs):
    rng = np.random.default_rng(11)
    arrays = linear_arrays((4, 9), 8, 5, True, rng)
    grad = rng.standard_normal((4, 9, 5)).astype("float32")
    ref, ref_grads = torch_run(lambda x, wt, b: TF.linear(x, wt.T, b), arrays, grad, needs)
    out, grads = paddle_run(cl.linear, arrays, grad, needs)
    assert_close(out, ref, RTOL32, "output")
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            assert_close(g, r, RTOL32, "grad")


def test_linear_empty_batch():
    x = paddle.zeros([2, 0, 8])
    x.stop_gradient = False
    weight, bias = paddle.ones([8, 3]), paddle.ones([3])
    weight.stop_gradient = bias.stop_gradient = False
    out = cl.linear(x, weight, bias)
    assert out.shape == [2, 0, 3]
    out.sum().backward()
    assert x.grad.shape == [2, 0, 8]
    assert not weight.grad.numpy().any() and not bias.grad.numpy().any()


# (N, C, H, W, groups)
GROUP_NORMS = [(2, 64, 7, 9, 32), (1, 6, 5, 3, 3), (3, 8, 1, 1, 4), (2, 12, 11, 13, 1), (3, 10, 4, 5, 10)]


def group_norm_arrays(n, c, h, w, dtype, rng, weight=None):
    x = (rng.standard_normal((n, c, h, w)) * 3 + 2).astype(dtype)  # a mean far from 0 checks the centring
    weight = rng.standard_normal(c).astype(dtype) if weight is None else np.full(c, weight, dtype)
    return [x, weight, rng.standard_normal(c).astype(dtype)]


@pytest.mark.parametrize("dtype, rtol", [("float32", RTOL32), ("float64", RTOL64)])
@pytest.mark.parametrize("case", GROUP_NORMS)
@pytest.mark.parametrize("weight", [None, 0.0])  # None: random; 0: the value Paddle's builtin gets wrong
def test_group_norm_matches_torch(case, dtype, rtol, weight):
    n, c, h, w, groups = case
    rng = np.random.default_rng(4)
    arrays = group_norm_arrays(n, c, h, w, dtype, rng, weight)
    grad = rng.standard_normal((n, c, h, w)).astype(dtype)
    ref, ref_grads = torch_run(lambda x, wt, b: TF.group_norm(x, groups, wt, b, 1e-5), arrays, grad, [True] * 3)
    out, grads = paddle_run(lambda x, wt, b: cl.group_norm(x, groups, wt, b, 1e-5), arrays, grad, [True] * 3)
    assert_close(out, ref, rtol, "output")
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        assert_close(g, r, rtol, f"grad {name}")
    if weight == 0.0:
        assert np.abs(grads[1]).min() > 0  # the weight gradient Paddle 3.2's kernel returns as 0


def test_group_norm_empty_batch():
    x = paddle.zeros([0, 4, 3, 3])
    x.stop_gradient = False
    weight, bias = paddle.ones([4]), paddle.zeros([4])
    weight.stop_gradient = bias.stop_gradient = False
    out = cl.group_norm(x, 2, weight, bias)
    assert out.shape == [0, 4, 3, 3]
    out.sum().backward()
    assert not weight.grad.numpy().any() and not bias.grad.numpy().any()


def test_conv2d_layer_matches_paddle_builtin():
    paddle.seed(0)
    layer = layers.Conv2D(6, 5, 3, stride=2, padding=1)
    builtin = paddle.nn.Conv2D(6, 5, 3, stride=2, padding=1)
    # same parameters, same names: checkpoints and convert/rules.py see a paddle.nn.Conv2D
    assert [(k, v.shape) for k, v in layer.state_dict().items()] == \
        [(k, v.shape) for k, v in builtin.state_dict().items()]
    builtin.set_state_dict(layer.state_dict())
    x = np.random.default_rng(5).standard_normal((2, 6, 9, 8)).astype("float32")
    results = []
    for conv in (layer, builtin):
        xt = paddle.to_tensor(x, stop_gradient=False)
        out = conv(xt)
        (out * out).sum().backward()
        results.append([out.numpy(), xt.grad.numpy(), conv.weight.grad.numpy(), conv.bias.grad.numpy()])
    for name, a, b in zip(("output", "grad x", "grad weight", "grad bias"), *results):
        assert_close(a, b, RTOL32, name)


@pytest.mark.parametrize("rows", [15, 10000])  # outputs under and over Linear.OP_MIN_OUTPUT: Paddle's path, the op
def test_linear_layer_matches_paddle_builtin(rows, monkeypatch):
    calls, real = [], cl.linear
    monkeypatch.setattr(cl, "linear", lambda *args: calls.append(1) or real(*args))
    paddle.seed(0)
    layer = layers.Linear(12, 7)
    builtin = paddle.nn.Linear(12, 7)
    assert [(k, v.shape) for k, v in layer.state_dict().items()] == \
        [(k, v.shape) for k, v in builtin.state_dict().items()]
    builtin.set_state_dict(layer.state_dict())
    x = np.random.default_rng(12).standard_normal((3, rows, 12)).astype("float32")
    results = []
    for linear in (layer, builtin):
        xt = paddle.to_tensor(x, stop_gradient=False)
        out = linear(xt)
        (out * out).sum().backward()
        results.append([out.numpy(), xt.grad.numpy(), linear.weight.grad.numpy(), linear.bias.grad.numpy()])
    assert len(calls) == (rows * 7 >= layers.Linear.OP_MIN_OUTPUT)
    for name, a, b in zip(("output", "grad x", "grad weight", "grad bias"), *results):
        assert_close(a, b, RTOL32, name)


def test_conv2d_layer_keeps_paddle_path_for_unsupported_configs():
    x = paddle.to_tensor(np.random.default_rng(6).standard_normal((1, 4, 6, 6)).astype("float32"))
    for kwargs in ({"groups": 2}, {"padding": "SAME"}, {"padding": 1, "padding_mode": "reflect"}):
        paddle.seed(0)
        layer = layers.Conv2D(4, 4, 3, **kwargs)
        paddle.seed(0)
        builtin = paddle.nn.Conv2D(4, 4, 3, **kwargs)
        np.testing.assert_array_equal(layer(x).numpy(), builtin(x).numpy())


def test_group_norm_layer_matches_paddle_builtin_where_it_is_right():
    # Paddle's kernel is right for nonzero weights; its output, input and bias gradients are the reference
    layer = layers.GroupNorm(4, 8)
    builtin = paddle.nn.GroupNorm(4, 8, epsilon=1e-5)
    rng = np.random.default_rng(7)
    params = {"weight": rng.uniform(0.5, 1.5, 8).astype("float32"), "bias": rng.standard_normal(8).astype("float32")}
    for norm in (layer, builtin):
        norm.set_state_dict({k: paddle.to_tensor(v) for k, v in params.items()})
    x = rng.standard_normal((2, 8, 5, 7)).astype("float32")
    results = []
    for norm in (layer, builtin):
        xt = paddle.to_tensor(x, stop_gradient=False)
        out = norm(xt)
        (out * out).sum().backward()
        results.append([out.numpy(), xt.grad.numpy(), norm.weight.grad.numpy(), norm.bias.grad.numpy()])
    for name, a, b in zip(("output", "grad x", "grad weight", "grad bias"), *results):
        assert_close(a, b, 1e-5, name)


def test_layers_export_with_paddle_ops():
    # static graphs (paddle.jit.to_static, and so paddle.jit.save) take Paddle's builtin path
    paddle.seed(0)
    model = paddle.nn.Sequential(layers.Conv2D(3, 8, 3, padding=1), layers.GroupNorm(4, 8), paddle.nn.Flatten(2),
                                 layers.Linear(30, 4))
    x = paddle.to_tensor(np.random.default_rng(8).standard_normal((1, 3, 6, 5)).astype("float32"))
    dynamic = model(x).numpy()
    static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([None, 3, 6, 5], "float32")],
                                  full_graph=True)
    assert_close(static(x).numpy(), dynamic, RTOL32, "static output")
    program = str(static.forward.concrete_program.main_program)
    assert "dac_conv2d" not in program and "dac_group_norm" not in program and "dac_linear" not in program


# oneDNN's names for the constants of csrc/onednn_c_api.h
ONEDNN_NAMES = {
    "success": "dnnl_success", "f32": "dnnl_f32", "format_tag_any": "dnnl_format_tag_any", "a": "dnnl_a",
    "abcd": "dnnl_abcd", "cpu": "dnnl_cpu", "forward_training": "dnnl_forward_training",
    "convolution_direct": "dnnl_convolution_direct", "src_md": "dnnl_query_src_md",
    "diff_src_md": "dnnl_query_diff_src_md", "weights_md": "dnnl_query_weights_md",
    "diff_weights_md": "dnnl_query_diff_weights_md", "dst_md": "dnnl_query_dst_md",
    "diff_dst_md": "dnnl_query_diff_dst_md", "scratchpad_md": "dnnl_query_scratchpad_md",
    "scratchpad_mode_user": "dnnl_scratchpad_mode_user", "stream_default_flags": "dnnl_stream_default_flags",
    "arg_src": "DNNL_ARG_SRC", "arg_dst": "DNNL_ARG_DST", "arg_weights": "DNNL_ARG_WEIGHTS",
    "arg_bias": "DNNL_ARG_BIAS", "arg_scratchpad": "DNNL_ARG_SCRATCHPAD", "arg_diff_src": "DNNL_ARG_DIFF_SRC",
    "arg_diff_dst": "DNNL_ARG_DIFF_DST", "arg_diff_weights": "DNNL_ARG_DIFF_WEIGHTS",
    "arg_diff_bias": "DNNL_ARG_DIFF_BIAS", "arg_from": "DNNL_ARG_FROM", "arg_to": "DNNL_ARG_TO",
}


def test_onednn_header_constants_match_onednn(tmp_path):
    # torch ships oneDNN's real headers: every constant the op declares must equal oneDNN's own
    from torch.utils.cpp_extension import include_paths
    header = (build.CSRC / "onednn_c_api.h").read_text()
    constants = re.findall(r"constexpr \w+ (\w+) = (\w+);", header)
    assert {name for name, _ in constants} == set(ONEDNN_NAMES)
    values = {name: value for name, value in constants}
    checks = "\n".join(f"static_assert({ONEDNN_NAMES[name]} == {ONEDNN_NAMES.get(values[name], values[name])}, "
                       f"\"{name}\");" for name, _ in constants)
    # the functions declared by hand too, here the one whose arguments are not all handles
    checks += ("\nstatic_assert(std::is_same_v<decltype(&dnnl_sgemm), dnnl_status_t (*)(char, char, dnnl_dim_t, "
               "dnnl_dim_t, dnnl_dim_t, float, const float*, dnnl_dim_t, const float*, dnnl_dim_t, float, float*, "
               "dnnl_dim_t)>, \"dnnl_sgemm\");")
    source = tmp_path / "check.cpp"
    source.write_text(f"#include <type_traits>\n#include \"oneapi/dnnl/dnnl.h\"\n{checks}\n")
    cmd = ["c++", "-std=c++17", "-fsyntax-only", *(f"-I{p}" for p in include_paths()), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_onednn_library_is_version_3():
    assert cl.onednn_version()[0] == 3


def test_build_failure_warns_once_and_layers_use_paddle_ops(monkeypatch, caplog):
    def failing_load(verbose=False):
        raise RuntimeError("building the paddle CPU layer ops in /x failed: error: boom")

    monkeypatch.setattr(cl, "load", failing_load)
    monkeypatch.setattr(cl, "_ops", cl._Ops())
    with caplog.at_level(logging.WARNING, logger="ops"):
        assert not cl.available()
        paddle.seed(0)
        conv = layers.Conv2D(3, 4, 3, padding=1)
        norm = layers.GroupNorm(2, 4)
        linear = layers.Linear(6, 3)
        x = paddle.to_tensor(np.random.default_rng(9).standard_normal((2, 3, 5, 6)).astype("float32"))
        out = linear(norm(conv(x)))
        assert not cl.available()
    warnings = [r for r in caplog.records if r.name == "ops" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "boom" in warnings[0].getMessage()
    ref = PF.linear(PF.group_norm(PF.conv2d(x, conv.weight, conv.bias, padding=1), 2, 1e-5, norm.weight, norm.bias),
                    linear.weight, linear.bias)
    assert_close(out.numpy(), ref.numpy(), RTOL32, "fallback output")


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        cl.load()


def test_build_dir_is_keyed_by_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("DETR_OPS_BUILD_DIR", str(tmp_path))
    first = cl.build_dir()
    assert first.parent == tmp_path and first.name.startswith(f"paddle-cpu-layers-{paddle.__version__}-")
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in cl.SOURCES:
        (csrc / name).write_bytes((build.CSRC / name).read_bytes())
    monkeypatch.setattr(build, "CSRC", csrc)
    assert cl.build_dir() == first
    with open(csrc / "group_norm_cpu.h", "a") as fh:
        fh.write("// edited\n")
    assert cl.build_dir() != first
