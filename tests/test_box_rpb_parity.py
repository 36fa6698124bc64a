"""Plain-DETR's GlobalCrossAttention (with its BoxRPB), torch vs Paddle on the same weights (torch's copied by
convert.frameworks.torch_module_to_paddle), float64, training mode: the same output, input gradients (boxes
included) and parameter gradients."""
import numpy as np
import paddle
import pytest
import torch

from convert.frameworks import paddle_linear_weights, torch_module_to_paddle
from paddle_impl.models import box_rpb as pd_box_rpb
from tests.box_rpb_case import B, D, H, HEADS, HIDDEN, Q, STRIDE, W, inputs
from torch_impl.models import box_rpb as pt_box_rpb

INPUTS = ("query", "key", "value", "boxes")


@pytest.mark.parametrize("rpe_type", ("linear", "abs_log8"))
def test_outputs_and_gradients_match_torch(rpe_type):
    """Tolerance 1e-13 of each array's largest magnitude. Measured: output 2.0e-16, gradients 2.3e-15 (worst:
    cpb_mlp1.0.bias); k.bias, whose gradient is analytically 0, in absolute terms: 1.8e-16."""
    torch.manual_seed(0)
    pt = pt_box_rpb.GlobalCrossAttention(D, HEADS, HIDDEN, STRIDE, rpe_type).double()
    pd = pd_box_rpb.GlobalCrossAttention(D, HEADS, HIDDEN, STRIDE, rpe_type)
    pd.to(dtype="float64")
    torch_module_to_paddle(pt, pd)
    x = inputs(seed=3)
    weights = np.random.default_rng(4).normal(size=(B, Q, D))  # loss = sum(weights * output)
    t = {k: torch.tensor(x[k], requires_grad=True) for k in INPUTS}
    p = {k: paddle.to_tensor(x[k], stop_gradient=False) for k in INPUTS}
    out_t = pt(*(t[k] for k in INPUTS), (H, W), torch.from_numpy(x["mask"]))
    out_p = pd(*(p[k] for k in INPUTS), (H, W), paddle.to_tensor(x["mask"]))
    (out_t * torch.from_numpy(weights)).sum().backward()
    (out_p * paddle.to_tensor(weights)).sum().backward()

    pairs = {"output": (out_t.detach().numpy(), out_p.numpy())}
    pairs.update({f"d {k}": (t[k].grad.numpy(), p[k].grad.numpy()) for k in INPUTS})
    linear = paddle_linear_weights(pd)
    pd_params = dict(pd.named_parameters())
    for name, param in pt.named_parameters():
        grad = pd_params[name].grad.numpy()
        pairs[f"d {name}"] = (param.grad.numpy(), grad.T if name in linear else grad)
    assert len(pairs) == 5 + 14
    for name, (a, b) in pairs.items():
        scale = 1.0 if name == "d k.bias" else np.abs(a).max()
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-13 * scale, err_msg=name)
