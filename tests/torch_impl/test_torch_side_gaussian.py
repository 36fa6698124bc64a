"""SAP-DETR's side-directed Gaussian attention bias (models/side_gaussian.py) in the torch tree: the decomposed bias
against the release's per-pixel formulation (tests/side_gaussian_case.py), the centre moving toward the side its
offset points at, and gradients (gradcheck)."""
import numpy as np
import torch

from tests.side_gaussian_case import D, H, HEADS, W, inputs, sdg_direct
from torch_impl.models.side_gaussian import SideDirectedGaussian


def _module(seed=0):
    torch.manual_seed(seed)
    return SideDirectedGaussian(D, HEADS).double()


def test_bias_matches_the_direct_computation():
    module, x = _module(), inputs()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    with torch.no_grad():
        got = module(*(torch.from_numpy(x[k]) for k in ("tgt", "point", "sides")), (H, W)).numpy()
    want = sdg_direct(weights, x["tgt"], x["point"], x["sides"])
    assert got.shape == want.shape == (2, HEADS, 5, H * W)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_centre_moves_toward_the_side_the_offset_points_at():
    """With the offset forced to +1 / -1 (a huge output bias), the x centre is point + right / point - left."""
    module, x = _module(), inputs()
    tgt, point, sides = (torch.from_numpy(x[k]) for k in ("tgt", "point", "sides"))
    last = module.gaussian_proj.layers[-1]
    with torch.no_grad():
        for sign in (1.0, -1.0):
            last.bias[:2 * HEADS] = sign * 1e3
            centre, _ = module.centres_and_scales(tgt, point, sides)
            side = sides[..., 2:] if sign > 0 else -sides[..., :2]
            np.testing.assert_allclose(centre.numpy(), (point + side)[:, :, None].expand_as(centre).numpy(),
                                       rtol=0, atol=1e-12)


def test_gradients():
    module, x = _module(), inputs()
    args = [torch.tensor(x[k], requires_grad=True) for k in ("tgt", "point", "sides")]
    assert torch.autograd.gradcheck(lambda *a: module(*a, (H, W)), args)
