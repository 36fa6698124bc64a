"""SAP-DETR's side-directed Gaussian bias, torch vs Paddle on the same weights (torch's copied by
convert.frameworks.torch_module_to_paddle), float64: the same bias and the same gradients of the inputs and of
every parameter."""
import numpy as np
import paddle
import torch

from convert.frameworks import paddle_linear_weights, torch_module_to_paddle
from paddle_impl.models import side_gaussian as pd_sdg
from tests.side_gaussian_case import B, D, H, HEADS, Q, W, inputs
from torch_impl.models import side_gaussian as pt_sdg

INPUTS = ("tgt", "point", "sides")


def test_outputs_and_gradients_match_torch():
    torch.manual_seed(0)
    pt = pt_sdg.SideDirectedGaussian(D, HEADS).double()
    pd = pd_sdg.SideDirectedGaussian(D, HEADS)
    pd.to(dtype="float64")
    torch_module_to_paddle(pt, pd)
    x = inputs(seed=3)
    weights = np.random.default_rng(4).normal(size=(B, HEADS, Q, H * W))  # loss = sum(weights * bias)
    t = {k: torch.tensor(x[k], requires_grad=True) for k in INPUTS}
    p = {k: paddle.to_tensor(x[k], stop_gradient=False) for k in INPUTS}
    out_t, out_p = pt(*(t[k] for k in INPUTS), (H, W)), pd(*(p[k] for k in INPUTS), (H, W))
    (out_t * torch.from_numpy(weights)).sum().backward()
    (out_p * paddle.to_tensor(weights)).sum().backward()
    pairs = {"bias": (out_t.detach().numpy(), out_p.numpy())}
    pairs.update({f"d {k}": (t[k].grad.numpy(), p[k].grad.numpy()) for k in INPUTS})
    linear = paddle_linear_weights(pd)
    pd_params = dict(pd.named_parameters())
    for name, param in pt.named_parameters():
        grad = pd_params[name].grad.numpy()
        pairs[f"d {name}"] = (param.grad.numpy(), grad.T if name in linear else grad)
    for name, (a, b) in pairs.items():  # 1e-12 of each array's largest magnitude
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * max(np.abs(a).max(), 1e-300), err_msg=name)
