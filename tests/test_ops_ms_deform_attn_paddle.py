"""paddle ms_deform_attn: custom op against the grid_sample reference, finite differences, validation, fallback."""
import logging

import numpy as np
import paddle
import pytest

from ops import build
from ops.backend import LazyKernel
from ops import paddle_ms_deform_attn as msda
from ops.testing import random_inputs

# (batch, heads, head_dim, queries, spatial_shapes, points): 1x1 levels, batch 1, 16 heads, head dims 1..32.
# Cases 0, 1, 4 sample each token >= 2 times (queries * levels * points >= 2 * tokens), which makes the C++
# core stage value rows head-major; 2, 3, 5 read them in place. 4 and 5 span several 64-query blocks.
CASES = [
    (2, 3, 4, 7, [[5, 6], [1, 1], [3, 2]], 4),
    (1, 16, 32, 40, [[12, 10], [6, 5], [3, 3], [1, 1]], 4),
    (1, 8, 1, 9, [[4, 7]], 3),
    (3, 2, 5, 11, [[1, 1], [2, 9]], 1),
    (2, 4, 8, 150, [[6, 9], [3, 5], [1, 1]], 2),
    (1, 3, 16, 130, [[20, 30]], 2),
]


def arrays(case, dtype="float32", seed=0):
    batch, heads, dim, queries, shapes, points = case
    return random_inputs(np.random.default_rng(seed), batch, heads, dim, queries, shapes, points, dtype)


def output_and_grads(backend, value, shapes, starts, loc, attn, grad_out):
    """numpy in -> numpy [output, grad_value, grad_locations, grad_weights]; value/loc/attn may be tensors."""
    value, loc, attn = (paddle.to_tensor(a) if isinstance(a, np.ndarray) else a for a in (value, loc, attn))
    for t in (value, loc, attn):
        t.stop_gradient = False
    out = msda.ms_deform_attn(value, paddle.to_tensor(shapes), paddle.to_tensor(starts), loc, attn, backend=backend)
    grads = paddle.grad(out, [value, loc, attn], paddle.to_tensor(grad_out))
    return [out.numpy(), *(g.numpy() for g in grads)]


def assert_close_scaled(actual, expected, tol):
    """max |actual - expected| <= tol * max(1, max |expected|): float32 sums of ~100 terms of size ~|expected|."""
    assert np.abs(actual - expected).max() <= tol * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_float32(case):
    inputs = arrays(case)
    grad_out = np.random.default_rng(1).standard_normal((case[0], case[3], case[1] * case[2])).astype("float32")
    kernel = output_and_grads("kernel", *inputs, grad_out)
    reference = output_and_grads("reference", *inputs, grad_out)
    for k, r in zip(kernel, reference):
        assert k.shape == r.shape and k.dtype == r.dtype == np.float32
        assert_close_scaled(k, r, 1e-5)


def test_non_contiguous_inputs():
    value, shapes, starts, loc, attn = arrays(CASES[1])
    value_nc = paddle.to_tensor(value.transpose(0, 2, 1, 3)).transpose([0, 2, 1, 3])
    loc_nc = paddle.to_tensor(np.concatenate([loc, loc + 5], axis=-1))[..., :2]
    attn_nc = paddle.to_tensor(attn.transpose(4, 3, 2, 1, 0)).transpose([4, 3, 2, 1, 0])
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or attn_nc.is_contiguous())
    grad_out = np.random.default_rng(2).standard_normal((1, 40, 16 * 32)).astype("float32")
    kernel = output_and_grads("kernel", value_nc, shapes, starts, loc_nc, attn_nc, grad_out)
    reference = output_and_grads("reference", value, shapes, starts, loc, attn, grad_out)
    for k, r in zip(kernel, reference):
        assert_close_scaled(k, r, 1e-5)


@pytest.mark.parametrize("queries", [4, 12])  # 12: value rows staged (see CASES)
def test_float64_grads_match_central_differences(queries):
    value, shapes, starts, loc, attn = arrays((2, 2, 3, queries, [[3, 4], [1, 1], [2, 2]], 2), "float64")
    grad_out = np.random.default_rng(3).standard_normal((2, queries, 6))
    analytic = output_and_grads("kernel", value, shapes, starts, loc, attn, grad_out)[1:]
    def loss(v, sl, aw):
        out = msda.ms_deform_attn(*(paddle.to_tensor(x) for x in (v, shapes, starts, sl, aw)), backend="kernel")
        return float((out.numpy() * grad_out).sum())

    eps = 1e-6
    base = [value, loc, attn]
    for which, grad in enumerate(analytic):
        numeric = np.zeros_like(grad)
        for idx in np.ndindex(grad.shape):
            plus, minus = [x.copy() for x in base], [x.copy() for x in base]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


def test_float64_kernel_matches_reference_tightly():
    inputs = arrays(CASES[1], "float64")
    grad_out = np.random.default_rng(4).standard_normal((1, 40, 16 * 32))
    for k, r in zip(output_and_grads("kernel", *inputs, grad_out), output_and_grads("reference", *inputs, grad_out)):
        np.testing.assert_allclose(k, r, rtol=1e-10, atol=1e-10)


def test_auto_falls_back_with_one_warning_when_build_fails(monkeypatch, caplog):
    def broken_build(framework, verbose=False):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(msda, "_kernel", LazyKernel(msda._kernel.framework))
    monkeypatch.setattr(build, "load", broken_build)
    tensors = [paddle.to_tensor(a) for a in arrays(CASES[0])]
    with caplog.at_level(logging.WARNING, logger="ops"):
        first = msda.ms_deform_attn(*tensors, backend="auto")
        second = msda.ms_deform_attn(*tensors, backend="auto")
    warnings = [r for r in caplog.records if r.name == "ops"]
    assert len(warnings) == 1 and "simulated compiler failure" in warnings[0].getMessage()
    expected = msda.ms_deform_attn_reference(*tensors).numpy()
    np.testing.assert_array_equal(first.numpy(), expected)
    np.testing.assert_array_equal(second.numpy(), expected)
    with pytest.raises(RuntimeError, match="kernel unavailable.*simulated compiler failure"):
        msda.ms_deform_attn(*tensors, backend="kernel")


def test_auto_uses_kernel_when_available(caplog):
    tensors = [paddle.to_tensor(a) for a in arrays(CASES[0])]
    with caplog.at_level(logging.WARNING, logger="ops"):
        out = msda.ms_deform_attn(*tensors)
    assert not caplog.records
    np.testing.assert_array_equal(out.numpy(), msda.ms_deform_attn(*tensors, backend="kernel").numpy())


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(value=a["value"].astype("float16")), "value must be float32 or float64"),
    (lambda a: a.update(attention_weights=a["attention_weights"].astype("float64")), "must share one dtype"),
    (lambda a: a.update(spatial_shapes=a["spatial_shapes"].astype("int32")), "spatial_shapes must be int64"),
    (lambda a: a.update(spatial_shapes=a["spatial_shapes"] + 1), "sum of H\\*W"),
    (lambda a: a.update(level_start_index=a["level_start_index"] + 1), "running sum of H\\*W"),
    (lambda a: a.update(sampling_locations=a["sampling_locations"][:, :, :2]), "batch or heads"),
    (lambda a: a.update(attention_weights=a["attention_weights"][:, :3]), "attention_weights shape"),
    (lambda a: a.update(value=a["value"].numpy()), "value must be a paddle.Tensor"),
    (lambda a: a.update(backend="fast"), "backend must be one of"),
])
def test_validation_errors(mutate, message):
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    args = {n: paddle.to_tensor(a) for n, a in zip(names, arrays(CASES[0]))}
    mutate(args)
    for backend in ("reference", "kernel"):
        with pytest.raises(ValueError, match=message):
            msda.ms_deform_attn(**{"backend": backend, **args})


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_gradient_for_locations_only(backend):
    # value and weights frozen. (Not via paddle.grad(out, [loc]): paddle 3.2's own grid_sample backward
    # segfaults when the input's gradient is pruned, which would kill the reference run; see ops/README.md.)
    value, shapes, starts, loc, attn = (paddle.to_tensor(a) for a in arrays(CASES[0]))
    loc.stop_gradient = False
    out = msda.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    out.backward(paddle.ones_like(out))
    grad = loc.grad
    expected = output_and_grads("reference", *arrays(CASES[0]), np.ones(out.shape, "float32"))[2]
    assert_close_scaled(grad.numpy(), expected, 1e-5)


def test_reference_accepts_python_lists_for_levels():
    value, shapes, starts, loc, attn = arrays(CASES[0])
    tensors = [paddle.to_tensor(a) for a in (value, shapes, starts, loc, attn)]
    expected = msda.ms_deform_attn_reference(*tensors).numpy()
    got = msda.ms_deform_attn_reference(tensors[0], shapes.tolist(), starts.tolist(), tensors[3], tensors[4])
    np.testing.assert_array_equal(got.numpy(), expected)
