"""torch ms_deform_attn: compiled kernel against the grid_sample reference, gradcheck, validation, fallback."""
import logging

import numpy as np
import pytest
import torch

from ops import build
from ops.backend import LazyKernel
from ops import torch_ms_deform_attn as msda
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


def tensors(case, dtype="float32", seed=0):
    batch, heads, dim, queries, shapes, points = case
    arrays = random_inputs(np.random.default_rng(seed), batch, heads, dim, queries, shapes, points, dtype)
    return [torch.from_numpy(a) for a in arrays]


def output_and_grads(backend, value, shapes, starts, loc, attn, grad_out):
    value, loc, attn = (t.detach().requires_grad_() for t in (value, loc, attn))
    out = msda.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    grads = torch.autograd.grad(out, (value, loc, attn), grad_out)
    return [out.detach(), *grads]


def assert_close_scaled(actual, expected, tol):
    """max |actual - expected| <= tol * max(1, max |expected|): float32 sums of ~100 terms of size ~|expected|."""
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= tol * scale


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_float32(case):
    value, shapes, starts, loc, attn = tensors(case)
    grad_out = torch.randn(case[0], case[3], case[1] * case[2], generator=torch.Generator().manual_seed(1))
    kernel = output_and_grads("kernel", value, shapes, starts, loc, attn, grad_out)
    reference = output_and_grads("reference", value, shapes, starts, loc, attn, grad_out)
    for name, k, r in zip(("output", "grad_value", "grad_locations", "grad_weights"), kernel, reference):
        assert k.shape == r.shape, name
        assert_close_scaled(k, r, 1e-5)


def test_points_outside_the_map_contribute_nothing():
    value, shapes, starts, loc, attn = tensors(CASES[0])
    outside = loc.clone()
    outside[..., 0] = -0.6  # pixel x = -0.6 W - 0.5 < -1 for every level: no corner inside
    out, _, grad_loc, grad_attn = output_and_grads("kernel", value, shapes, starts, outside, attn,
                                                   torch.ones(2, 7, 12))
    assert out.abs().max() == 0 and grad_loc.abs().max() == 0 and grad_attn.abs().max() == 0


def test_non_contiguous_inputs():
    value, shapes, starts, loc, attn = tensors(CASES[1])
    # same values, strided storage
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)
    loc_nc = torch.stack([loc, loc + 5], dim=-1)[..., 0]
    attn_nc = attn.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or attn_nc.is_contiguous())
    grad_out = torch.randn(1, 16 * 32, 40).transpose(1, 2)
    kernel = output_and_grads("kernel", value_nc, shapes, starts, loc_nc, attn_nc, grad_out)
    reference = output_and_grads("reference", value, shapes, starts, loc, attn, grad_out)
    for k, r in zip(kernel, reference):
        assert_close_scaled(k, r, 1e-5)


@pytest.mark.parametrize("queries", [5, 20])  # 20: value rows staged (see CASES)
def test_gradcheck_float64(queries):
    value, shapes, starts, loc, attn = tensors((2, 2, 3, queries, [[3, 4], [1, 1], [2, 2]], 2), "float64")
    inputs = tuple(t.requires_grad_() for t in (value, loc, attn))

    def fn(v, sl, aw):
        return msda.ms_deform_attn(v, shapes, starts, sl, aw, backend="kernel")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_float64_kernel_matches_reference_tightly():
    value, shapes, starts, loc, attn = tensors(CASES[1], "float64")
    grad_out = torch.randn(1, 40, 16 * 32, dtype=torch.float64)
    kernel = output_and_grads("kernel", value, shapes, starts, loc, attn, grad_out)
    reference = output_and_grads("reference", value, shapes, starts, loc, attn, grad_out)
    for k, r in zip(kernel, reference):
        torch.testing.assert_close(k, r, rtol=1e-10, atol=1e-10)


def test_hand_computed_single_point():
    # 2x2 map, one head, D=1: value tokens (row-major) 1, 2, 3, 4; the point (0.5, 0.5) is the map centre,
    # pixel (0.5, 0.5), so the bilinear sample is the mean 2.5; weight 0.8 -> 2.0
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    shapes, starts = torch.tensor([[2, 2]]), torch.tensor([0])
    loc = torch.full((1, 1, 1, 1, 1, 2), 0.5)
    attn = torch.full((1, 1, 1, 1, 1), 0.8)
    out, grad_value, grad_loc, grad_attn = output_and_grads("kernel", value, shapes, starts, loc, attn,
                                                            torch.ones(1, 1, 1))
    assert out.item() == pytest.approx(2.0)
    assert grad_value.flatten().tolist() == pytest.approx([0.2] * 4)
    assert grad_attn.item() == pytest.approx(2.5)
    # d sample / d x_pixel = mean of right minus left column = 1; x_pixel = 2 loc_x - 0.5 -> 0.8 * 1 * 2
    # d sample / d y_pixel = bottom minus top row = 2 -> 0.8 * 2 * 2
    assert grad_loc.flatten().tolist() == pytest.approx([1.6, 3.2])


def test_auto_uses_kernel_when_available(caplog):
    value, shapes, starts, loc, attn = tensors(CASES[0])
    with caplog.at_level(logging.WARNING, logger="ops"):
        out = msda.ms_deform_attn(value, shapes, starts, loc, attn)
    assert not caplog.records
    assert torch.equal(out, msda.ms_deform_attn(value, shapes, starts, loc, attn, backend="kernel"))


def test_auto_falls_back_with_one_warning_when_build_fails(monkeypatch, caplog):
    def broken_build(framework, verbose=False):
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(msda, "_kernel", LazyKernel(msda._kernel.framework))
    monkeypatch.setattr(build, "load", broken_build)
    value, shapes, starts, loc, attn = tensors(CASES[0])
    with caplog.at_level(logging.WARNING, logger="ops"):
        first = msda.ms_deform_attn(value, shapes, starts, loc, attn, backend="auto")
        second = msda.ms_deform_attn(value, shapes, starts, loc, attn, backend="auto")
    warnings = [r for r in caplog.records if r.name == "ops"]
    assert len(warnings) == 1 and "simulated compiler failure" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    expected = msda.ms_deform_attn_reference(value, shapes, starts, loc, attn)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    with pytest.raises(RuntimeError, match="kernel unavailable.*simulated compiler failure"):
        msda.ms_deform_attn(value, shapes, starts, loc, attn, backend="kernel")


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(value=a["value"].half()), "value must be float32 or float64"),
    (lambda a: a.update(attention_weights=a["attention_weights"].double()), "must share one dtype"),
    (lambda a: a.update(spatial_shapes=a["spatial_shapes"].int()), "spatial_shapes must be int64"),
    (lambda a: a.update(level_start_index=a["level_start_index"].int()), "level_start_index must be int64"),
    (lambda a: a.update(spatial_shapes=a["spatial_shapes"] + 1), "sum of H\\*W"),
    (lambda a: a.update(level_start_index=a["level_start_index"] + 1), "running sum of H\\*W"),
    (lambda a: a.update(spatial_shapes=a["spatial_shapes"][:2]), "spatial_shapes must be \\[L, 2\\] with L=3"),
    (lambda a: a.update(value=a["value"][0]), "value must be \\[B, S, heads, head_dim\\]"),
    (lambda a: a.update(sampling_locations=a["sampling_locations"][..., :1]), "sampling_locations must be"),
    (lambda a: a.update(sampling_locations=a["sampling_locations"][:, :, :2]), "batch or heads"),
    (lambda a: a.update(attention_weights=a["attention_weights"][:, :3]), "attention_weights shape"),
    (lambda a: a.update(value=a["value"].numpy()), "value must be a torch.Tensor"),
    (lambda a: a.update(backend="fast"), "backend must be one of"),
])
def test_validation_errors(mutate, message):
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    args = dict(zip(names, tensors(CASES[0])))
    mutate(args)
    for backend in ("reference", "kernel"):
        with pytest.raises(ValueError, match=message):
            msda.ms_deform_attn(**{"backend": backend, **args})


def test_reference_accepts_python_lists_for_levels():
    value, shapes, starts, loc, attn = tensors(CASES[0])
    expected = msda.ms_deform_attn_reference(value, shapes, starts, loc, attn)
    got = msda.ms_deform_attn_reference(value, shapes.tolist(), starts.tolist(), loc, attn)
    assert torch.equal(got, expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated", "ignore::torch.jit.TracerWarning")
def test_trace_through_the_reference():
    # what ONNX export does: the level sizes become constants of the traced graph
    value, shapes, starts, loc, attn = tensors(CASES[0])

    def fn(v, sl, aw):
        return msda.ms_deform_attn(v, shapes, starts, sl, aw, backend="reference")

    traced = torch.jit.trace(fn, (value, loc, attn), check_trace=False)
    value2, _, _, loc2, attn2 = tensors(CASES[0], seed=1)
    assert torch.allclose(traced(value2, loc2, attn2), fn(value2, loc2, attn2), rtol=1e-6, atol=1e-6)
