"""Plain-DETR's BoxRPB and GlobalCrossAttention (torch_impl/models/box_rpb.py) against the direct numpy loops of
tests/box_rpb_case.py, float64; key padding, gradients, the release's parameter names."""
import numpy as np
import pytest
import torch

from tests.box_rpb_case import B, D, H, HEADS, HIDDEN, Q, STRIDE, W, attention_direct, box_rpb_direct, inputs, \
    release_names
from torch_impl.models.box_rpb import BoxRPB, GlobalCrossAttention

RPE_TYPES = ("linear", "abs_log8")


def _weights(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _build(cls, rpe_type="linear"):
    torch.manual_seed(0)
    args = (D, HEADS) if cls is GlobalCrossAttention else (HEADS,)
    return cls(*args, rpe_hidden_dim=HIDDEN, feature_stride=STRIDE, rpe_type=rpe_type).double()


def _tensors(x, requires_grad=False):
    return {k: torch.tensor(v, requires_grad=requires_grad and v.dtype != bool) for k, v in x.items()}


@pytest.mark.parametrize("rpe_type", RPE_TYPES)
def test_bias_matches_direct_loop(rpe_type):
    """Decomposed bias (two MLPs over W + H offsets, broadcast sum) = the MLPs at every (query, pixel) pair.
    Measured max abs error 1.8e-15 (linear, biases up to 10.5), 2.2e-16 (abs_log8, up to 0.8)."""
    rpb = _build(BoxRPB, rpe_type)
    boxes = torch.from_numpy(inputs()["boxes"])
    bias_x, bias_y = rpb.axis_biases(boxes, (H, W))
    assert bias_x.shape == (B, HEADS, Q, W) and bias_y.shape == (B, HEADS, Q, H)
    bias = rpb(boxes, (H, W)).detach().numpy()
    np.testing.assert_allclose(bias, box_rpb_direct(_weights(rpb), boxes.numpy(), rpe_type), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rpe_type", RPE_TYPES)
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "no_mask"])
def test_attention_matches_direct_per_head(rpe_type, padded):
    """Against per-image, per-head, per-query softmax over the unpadded pixels (image 1 padded, or no mask).
    Measured max abs error 3.3e-16 (linear), 1.1e-16 (abs_log8), outputs up to 0.9."""
    attn = _build(GlobalCrossAttention, rpe_type)
    x = inputs()
    t = _tensors(x)
    mask = t["mask"] if padded else None
    out = attn(t["query"], t["key"], t["value"], t["boxes"], (H, W), mask).detach().numpy()
    ref = attention_direct(_weights(attn), x["query"], x["key"], x["value"], x["boxes"],
                           x["mask"] if padded else None, rpe_type)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_padded_pixels_get_zero_weight():
    """A padded pixel's key and value change nothing, and receive exactly zero gradient."""
    attn = _build(GlobalCrossAttention)
    x = inputs()
    t = _tensors(x, requires_grad=True)
    out = attn(t["query"], t["key"], t["value"], t["boxes"], (H, W), t["mask"])
    out.pow(2).sum().backward()
    pad = x["mask"]
    assert pad.sum() == 10 and (t["key"].grad[torch.from_numpy(~pad)] != 0).all()
    assert (t["key"].grad[torch.from_numpy(pad)] == 0).all() and (t["value"].grad[torch.from_numpy(pad)] == 0).all()
    junk = {k: np.where(pad[..., None], 1e3 * np.random.default_rng(1).normal(size=x[k].shape), x[k])
            for k in ("key", "value")}
    out2 = attn(t["query"], torch.from_numpy(junk["key"]), torch.from_numpy(junk["value"]), t["boxes"], (H, W),
                t["mask"])
    np.testing.assert_allclose(out2.detach().numpy(), out.detach().numpy(), rtol=0, atol=1e-13)


def test_gradients_reach_every_parameter():
    """All but k.bias: it adds q . k.bias to all logits of a query, which the softmax cancels, so its gradient is 0
    up to rounding (measured 1.7e-16; the release has the bias too)."""
    attn = _build(GlobalCrossAttention)
    t = _tensors(inputs())
    out = attn(t["query"], t["key"], t["value"], t["boxes"], (H, W), t["mask"])
    (out * torch.from_numpy(np.random.default_rng(2).normal(size=out.shape))).sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name == "k.bias":
            assert p.grad.abs().max() < 1e-14
        else:
            assert p.grad.abs().max() > 1e-3, name


def test_input_gradients_gradcheck():
    """Backward (through torch's fused attention with a float mask) against finite differences, boxes included."""
    attn = _build(GlobalCrossAttention)
    t = _tensors(inputs(), requires_grad=True)

    def f(query, key, value, boxes):
        return attn(query, key, value, boxes, (H, W), t["mask"])

    assert torch.autograd.gradcheck(f, (t["query"], t["key"], t["value"], t["boxes"]), eps=1e-6, atol=1e-7)


def test_parameter_names_follow_release():
    attn = _build(GlobalCrossAttention)
    assert [(k, tuple(v.shape)) for k, v in attn.state_dict().items()] == release_names()


def test_bad_arguments():
    with pytest.raises(ValueError, match="rpe_type"):
        BoxRPB(HEADS, rpe_type="log")
    with pytest.raises(ValueError, match="model.nheads"):
        GlobalCrossAttention(10, 4)
