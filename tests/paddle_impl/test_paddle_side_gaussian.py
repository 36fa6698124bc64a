"""SAP-DETR's side-directed Gaussian attention bias (models/side_gaussian.py) in the Paddle tree: the decomposed bias
against the release's per-pixel formulation (tests/side_gaussian_case.py) and the centre moving toward the side its
offset points at; gradients against torch's are tests/test_side_gaussian_parity.py."""
import numpy as np
import paddle

from convert.frameworks import paddle_linear_weights
from paddle_impl.models.side_gaussian import SideDirectedGaussian
from tests.side_gaussian_case import D, H, HEADS, W, inputs, sdg_direct


def _module(seed=0):
    paddle.seed(seed)
    module = SideDirectedGaussian(D, HEADS)
    module.to(dtype="float64")
    return module


def test_bias_matches_the_direct_computation():
    module, x = _module(), inputs()
    linear = paddle_linear_weights(module)
    weights = {k: (v.numpy().T if k in linear else v.numpy()) for k, v in module.state_dict().items()}
    with paddle.no_grad():
        got = module(*(paddle.to_tensor(x[k]) for k in ("tgt", "point", "sides")), (H, W)).numpy()
    want = sdg_direct(weights, x["tgt"], x["point"], x["sides"])
    assert got.shape == want.shape == (2, HEADS, 5, H * W)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_centre_moves_toward_the_side_the_offset_points_at():
    module, x = _module(), inputs()
    tgt, point, sides = (paddle.to_tensor(x[k]) for k in ("tgt", "point", "sides"))
    bias = module.gaussian_proj.layers[-1].bias
    for sign in (1.0, -1.0):
        value = bias.numpy()
        value[:2 * HEADS] = sign * 1e3
        bias.set_value(value)
        with paddle.no_grad():
            centre, _ = module.centres_and_scales(tgt, point, sides)
        side = x["sides"][..., 2:] if sign > 0 else -x["sides"][..., :2]
        want = np.broadcast_to((x["point"] + side)[:, :, None], centre.shape)
        np.testing.assert_allclose(centre.numpy(), want, rtol=0, atol=1e-12)
