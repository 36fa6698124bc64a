"""Plain-DETR's BoxRPB and GlobalCrossAttention (paddle_impl/models/box_rpb.py) against the direct numpy loops of
tests/box_rpb_case.py, float64; key padding (torch's mask convention), gradients, the release's parameter names."""
import numpy as np
import paddle
import pytest

from convert.frameworks import paddle_linear_weights
from paddle_impl.models.box_rpb import BoxRPB, GlobalCrossAttention
from tests.box_rpb_case import B, D, H, HEADS, HIDDEN, Q, STRIDE, W, attention_direct, box_rpb_direct, inputs, \
    release_names

RPE_TYPES = ("linear", "abs_log8")


def _weights(layer):
    """The layer's weights in torch's layout (Linear weights transposed), as the numpy references take them."""
    linear = paddle_linear_weights(layer)
    return {k: v.numpy().T if k in linear else v.numpy() for k, v in layer.state_dict().items()}


def _build(cls, rpe_type="linear"):
    paddle.seed(0)
    args = (D, HEADS) if cls is GlobalCrossAttention else (HEADS,)
    layer = cls(*args, rpe_hidden_dim=HIDDEN, feature_stride=STRIDE, rpe_type=rpe_type)
    layer.to(dtype="float64")
    return layer


def _tensors(x, requires_grad=False):
    return {k: paddle.to_tensor(v, stop_gradient=not requires_grad or v.dtype == bool) for k, v in x.items()}


@pytest.mark.parametrize("rpe_type", RPE_TYPES)
def test_bias_matches_direct_loop(rpe_type):
    """Decomposed bias (two MLPs over W + H offsets, broadcast sum) = the MLPs at every (query, pixel) pair.
    Measured max abs error 1.8e-15 (linear, biases up to 8.9), 2.2e-16 (abs_log8, up to 0.8)."""
    rpb = _build(BoxRPB, rpe_type)
    boxes = paddle.to_tensor(inputs()["boxes"])
    bias_x, bias_y = rpb.axis_biases(boxes, (H, W))
    assert bias_x.shape == [B, HEADS, Q, W] and bias_y.shape == [B, HEADS, Q, H]
    bias = rpb(boxes, (H, W)).numpy()
    np.testing.assert_allclose(bias, box_rpb_direct(_weights(rpb), boxes.numpy(), rpe_type), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rpe_type", RPE_TYPES)
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "no_mask"])
def test_attention_matches_direct_per_head(rpe_type, padded):
    """Against per-image, per-head, per-query softmax over the unpadded pixels (image 1 padded, or no mask).
    Measured max abs error 1.9e-16."""
    attn = _build(GlobalCrossAttention, rpe_type)
    x = inputs()
    t = _tensors(x)
    mask = t["mask"] if padded else None
    out = attn(t["query"], t["key"], t["value"], t["boxes"], (H, W), mask).numpy()
    ref = attention_direct(_weights(attn), x["query"], x["key"], x["value"], x["boxes"],
                           x["mask"] if padded else None, rpe_type)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_padded_pixels_get_zero_weight():
    """A padded pixel's key and value change nothing, and receive no gradient. Not exactly 0 as in torch: Paddle
    3.2's CPU softmax gives a -inf logit a weight of ~1.6e-28, not 0 (see test_paddle_dn_dab_detr.py), and
    measured padded gradients are <= 6e-29, the largest others 0.03 (keys) and 0.3 (values)."""
    attn = _build(GlobalCrossAttention)
    x = inputs()
    t = _tensors(x, requires_grad=True)
    out = attn(t["query"], t["key"], t["value"], t["boxes"], (H, W), t["mask"])
    out.pow(2).sum().backward()
    pad = x["mask"]
    key_grad, value_grad = t["key"].grad.numpy(), t["value"].grad.numpy()
    assert pad.sum() == 10 and (key_grad[~pad] != 0).all()
    assert np.abs(key_grad[pad]).max() < 1e-25 and np.abs(value_grad[pad]).max() < 1e-25
    assert np.abs(key_grad[~pad]).max() > 1e-3 and np.abs(value_grad[~pad]).max() > 1e-3
    junk = {k: np.where(pad[..., None], 1e3 * np.random.default_rng(1).normal(size=x[k].shape), x[k])
            for k in ("key", "value")}
    out2 = attn(t["query"], paddle.to_tensor(junk["key"]), paddle.to_tensor(junk["value"]), t["boxes"], (H, W),
                t["mask"])
    np.testing.assert_allclose(out2.numpy(), out.numpy(), rtol=0, atol=1e-13)


def test_gradients_reach_every_parameter():
    """All but k.bias, whose gradient the softmax cancels (see the torch test)."""
    attn = _build(GlobalCrossAttention)
    t = _tensors(inputs())
    out = attn(t["query"], t["key"], t["value"], t["boxes"], (H, W), t["mask"])
    (out * paddle.to_tensor(np.random.default_rng(2).normal(size=out.shape))).sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and np.isfinite(p.grad.numpy()).all(), name
        if name == "k.bias":
            assert np.abs(p.grad.numpy()).max() < 1e-14
        else:
            assert np.abs(p.grad.numpy()).max() > 1e-3, name


def test_parameter_names_follow_release():
    """The release's names and order; Linear weights in Paddle's [in, out] layout."""
    attn = _build(GlobalCrossAttention)
    linear = paddle_linear_weights(attn)
    expected = [(k, shape[::-1] if k in linear else shape) for k, shape in release_names()]
    assert [(k, tuple(v.shape)) for k, v in attn.state_dict().items()] == expected


def test_bad_arguments():
    with pytest.raises(ValueError, match="rpe_type"):
        BoxRPB(HEADS, rpe_type="log")
    with pytest.raises(ValueError, match="model.nheads"):
        GlobalCrossAttention(10, 4)
