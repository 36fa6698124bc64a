"""ms_deform_attn agrees across frameworks: torch kernel == paddle kernel, torch reference == paddle reference."""
import numpy as np
import paddle
import pytest
import torch

from ops import paddle_ms_deform_attn as pd_msda
from ops import torch_ms_deform_attn as pt_msda
from ops.testing import random_inputs

CASES = [
    (2, 3, 4, 7, [[5, 6], [1, 1], [3, 2]], 4),
    (1, 16, 32, 40, [[12, 10], [6, 5], [3, 3], [1, 1]], 4),
]


def torch_run(backend, arrays, grad_out):
    t = [torch.from_numpy(a) for a in arrays]
    for i in (0, 3, 4):
        t[i].requires_grad_()
    out = pt_msda.ms_deform_attn(*t, backend=backend)
    grads = torch.autograd.grad(out, [t[0], t[3], t[4]], torch.from_numpy(grad_out))
    return [x.detach().numpy() for x in (out, *grads)]


def paddle_run(backend, arrays, grad_out):
    t = [paddle.to_tensor(a) for a in arrays]
    for i in (0, 3, 4):
        t[i].stop_gradient = False
    out = pd_msda.ms_deform_attn(*t, backend=backend)
    grads = paddle.grad(out, [t[0], t[3], t[4]], paddle.to_tensor(grad_out))
    return [x.numpy() for x in (out, *grads)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_and_paddle_agree(case, dtype):
    batch, heads, dim, queries, shapes, points = case
    rng = np.random.default_rng(5)
    arrays = random_inputs(rng, batch, heads, dim, queries, shapes, points, dtype)
    grad_out = rng.standard_normal((batch, queries, heads * dim)).astype(dtype)
    # the kernels share one C++ core: identical up to float rounding of identical operations
    for t, p in zip(torch_run("kernel", arrays, grad_out), paddle_run("kernel", arrays, grad_out)):
        np.testing.assert_allclose(p, t, rtol=1e-6, atol=1e-6)
    # two grid_sample implementations; float32 sums in different orders
    tol = 1e-5 if dtype == "float32" else 1e-10
    for t, p in zip(torch_run("reference", arrays, grad_out), paddle_run("reference", arrays, grad_out)):
        scale = max(1.0, np.abs(t).max())
        assert np.abs(p - t).max() <= tol * scale
