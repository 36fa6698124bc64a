"""Position encodings and attention modules (paddle_impl) against direct formulas, Paddle's own
MultiHeadAttention, and the torch tree (weights copied by convert.frameworks.torch_module_to_paddle)."""
import math

import numpy as np
import paddle
import pytest
import torch

from convert.frameworks import torch_module_to_paddle
from ops.testing import level_start_index
from paddle_impl.models.attention import MSDeformAttn, MultiheadAttention
from paddle_impl.models.layers import Linear
from paddle_impl.models.position_encoding import PositionEmbeddingSine, box_sine_embedding
from torch_impl.models import attention as pt_attention
from torch_impl.models import position_encoding as pt_position


def _sine_features(v, num_feats, temperature):
    """Direct formula: feature k is sin (k even) or cos (k odd) of v / T^(2 floor(k/2) / F)."""
    return np.array([math.sin(v / temperature ** (2 * (k // 2) / num_feats)) if k % 2 == 0 else
                     math.cos(v / temperature ** (2 * (k // 2) / num_feats)) for k in range(num_feats)])


def test_sine_position_encoding_matches_formula_on_valid_pixels():
    mask = np.zeros((1, 3, 5), dtype=bool)
    mask[0, 2:, :] = True  # one padded row
    mask[0, :, 4:] = True  # one padded column
    pe = PositionEmbeddingSine(num_pos_feats=6, temperature=10000.0)(paddle.to_tensor(mask)).numpy()
    assert pe.shape == (1, 12, 3, 5)
    valid_h, valid_w = 2, 4
    for i in range(valid_h):
        for j in range(valid_w):
            y = (i + 1 - 0.5) / (valid_h + 1e-6) * 2 * math.pi
            x = (j + 1 - 0.5) / (valid_w + 1e-6) * 2 * math.pi
            expected = np.concatenate([_sine_features(y, 6, 1e4), _sine_features(x, 6, 1e4)])
            np.testing.assert_allclose(pe[0, :, i, j], expected, atol=1e-5)


def test_sine_position_encoding_ignores_padding():
    pe = PositionEmbeddingSine(8)
    small = pe(paddle.zeros([1, 4, 6], dtype="bool")).numpy()
    mask = np.ones((1, 7, 9), dtype=bool)
    mask[0, :4, :6] = False
    padded = pe(paddle.to_tensor(mask)).numpy()
    np.testing.assert_allclose(padded[..., :4, :6], small, atol=1e-6)


def test_box_sine_embedding_formula():
    boxes = np.array([[[0.3, -1.0, 2.0, 0.0]]], dtype=np.float32)  # logits
    emb = box_sine_embedding(paddle.to_tensor(boxes), num_pos_feats=4).numpy()
    assert emb.shape == (1, 1, 16)
    s = 1 / (1 + np.exp(-boxes[0, 0].astype(np.float64))) * 2 * math.pi
    expected = np.concatenate([_sine_features(v, 4, 1e4) for v in s])
    np.testing.assert_allclose(emb[0, 0], expected, atol=1e-5)


def test_position_encodings_match_torch():
    rng = np.random.default_rng(0)
    mask = np.zeros((2, 5, 7), dtype=bool)
    mask[1, 3:, :] = True
    mask[1, :, 5:] = True
    pt = pt_position.PositionEmbeddingSine(16, 20.0)(torch.from_numpy(mask)).numpy()
    pd = PositionEmbeddingSine(16, 20.0)(paddle.to_tensor(mask)).numpy()
    valid = ~mask[:, None].repeat(32, 1)  # padded rows / columns hold meaningless values (parity notes)
    np.testing.assert_allclose(pd[valid], pt[valid], atol=1e-5)  # measured 6e-8
    boxes = rng.normal(0, 3, (2, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(box_sine_embedding(paddle.to_tensor(boxes), 16).numpy(),
                               pt_position.box_sine_embedding(torch.from_numpy(boxes), 16).numpy(), atol=1e-5)


def _single_point_attn(n_heads=2, d=8):
    attn = MSDeformAttn(d, n_levels=1, n_heads=n_heads, n_points=1, backend="reference")
    attn.sampling_offsets.bias.set_value(paddle.zeros_like(attn.sampling_offsets.bias))
    return attn


def _t(x, dtype="float32"):
    return paddle.to_tensor(np.asarray(x, dtype=dtype))


def test_deform_attn_samples_the_reference_pixel():
    paddle.seed(0)
    attn = _single_point_attn()
    h, w = 4, 5
    value = paddle.randn([1, h * w, 8])
    shapes, start = _t([[h, w]], "int64"), _t([0], "int64")
    i, j = 2, 3
    centre = [(j + 0.5) / w, (i + 0.5) / h]
    query = paddle.randn([1, 1, 8])
    expected = attn.output_proj(attn.value_proj(value[0, i * w + j])).numpy()
    out2 = attn(query, _t(centre).reshape([1, 1, 1, 2]), value, shapes, start)
    out4 = attn(query, _t(centre + [0.3, 0.3]).reshape([1, 1, 1, 4]), value, shapes, start)
    assert out2.shape == [1, 1, 8]
    np.testing.assert_allclose(out2[0, 0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out4[0, 0].numpy(), expected, atol=1e-5)
    # a padded value position contributes nothing: only output_proj's bias is left
    mask = np.zeros((1, h * w), dtype=bool)
    mask[0, i * w + j] = True
    out = attn(query, _t(centre).reshape([1, 1, 1, 2]), value, shapes, start, paddle.to_tensor(mask))
    np.testing.assert_allclose(out[0, 0].numpy(), attn.output_proj.bias.numpy(), atol=1e-6)


def test_deform_attn_offset_units():
    """A (+2, 0) offset moves 2 pixels with a 2-d reference, and 2 / n_points * half the box width with a 4-d one."""
    paddle.seed(0)
    attn = _single_point_attn()
    h, w = 4, 6
    value = paddle.randn([1, h * w, 8])
    shapes, start = _t([[h, w]], "int64"), _t([0], "int64")
    attn.sampling_offsets.bias.set_value(_t([2.0, 0.0, 2.0, 0.0]))  # both heads
    i, j = 1, 1
    centre = [(j + 0.5) / w, (i + 0.5) / h]
    query = paddle.randn([1, 1, 8])
    expected = attn.output_proj(attn.value_proj(value[0, i * w + j + 2])).numpy()
    out2 = attn(query, _t(centre).reshape([1, 1, 1, 2]), value, shapes, start)
    box = centre + [2.0 / w, 0.5]  # offset 2 * (w / 2) / 1 point = 2 pixels
    out4 = attn(query, _t(box).reshape([1, 1, 1, 4]), value, shapes, start)
    np.testing.assert_allclose(out2[0, 0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out4[0, 0].numpy(), expected, atol=1e-5)


def test_deform_attn_initial_offsets_and_weights():
    attn = MSDeformAttn(16, n_levels=2, n_heads=4, n_points=3)
    offsets = attn.sampling_offsets.bias.numpy().reshape(4, 2, 3, 2)
    # head 0 points along +x, head 1 along +y (angle pi/2); point p at distance p + 1
    np.testing.assert_allclose(offsets[0, :, :, 0], np.broadcast_to([1.0, 2.0, 3.0], (2, 3)), atol=1e-6)
    np.testing.assert_allclose(offsets[1, :, :, 1], np.broadcast_to([1.0, 2.0, 3.0], (2, 3)), atol=1e-6)
    assert not attn.attention_weights.weight.numpy().any() and not attn.sampling_offsets.weight.numpy().any()
    # the deterministic part of the init is torch's, bit for bit
    torch_bias = pt_attention.MSDeformAttn(16, n_levels=2, n_heads=4, n_points=3).sampling_offsets.bias
    np.testing.assert_array_equal(attn.sampling_offsets.bias.numpy(), torch_bias.detach().numpy())


def test_init_distributions_follow_torch():
    """Paddle's Linear default (Xavier, zero bias) is not torch's: out_proj must be U(+-1/sqrt(D)), as in torch."""
    paddle.seed(0)
    mha = MultiheadAttention(256, 8)
    bound = 1 / math.sqrt(256)
    w = mha.out_proj.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    xavier = math.sqrt(6 / (256 + 768))
    assert 0.95 * xavier < np.abs(mha.in_proj_weight.numpy()).max() <= xavier
    assert not mha.in_proj_bias.numpy().any() and not mha.out_proj.bias.numpy().any()


@pytest.mark.parametrize("use_mask", [False, True])
def test_multihead_attention_matches_paddle(use_mask):
    """Same math as paddle.nn.MultiHeadAttention, whose bool mask means the opposite (True = attend)."""
    paddle.seed(0)
    ours = MultiheadAttention(16, 4)
    ref = paddle.nn.MultiHeadAttention(16, 4)
    w, b = ours.in_proj_weight.numpy(), ours.in_proj_bias.numpy()
    for i, proj in enumerate((ref.q_proj, ref.k_proj, ref.v_proj)):
        proj.weight.set_value(w[16 * i:16 * (i + 1)].T)  # torch layout [out, in] -> Paddle's [in, out]
        proj.bias.set_value(b[16 * i:16 * (i + 1)])
    ref.out_proj.weight.set_value(ours.out_proj.weight)
    ref.out_proj.bias.set_value(ours.out_proj.bias)
    q, k, v = paddle.randn([2, 5, 16]), paddle.randn([2, 7, 16]), paddle.randn([2, 7, 16])
    mask = None
    if use_mask:
        mask = np.random.default_rng(0).random((5, 7)) > 0.5
        mask[:, 0] = False  # every query sees something
        mask = paddle.to_tensor(mask)
    expected = ref(q, k, v, attn_mask=None if mask is None else ~mask).numpy()
    np.testing.assert_allclose(ours(q, k, v, mask).numpy(), expected, atol=1e-5)
    assert set(ours.state_dict()) == {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}


def test_multihead_attention_matches_torch_with_grads():
    torch.manual_seed(0)
    pt = pt_attention.MultiheadAttention(16, 4)
    pd = MultiheadAttention(16, 4)
    torch_module_to_paddle(pt, pd)
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 16), (2, 7, 16), (2, 7, 16)))
    mask = rng.random((5, 7)) > 0.5
    mask[:, 0] = False
    out_t = pt(*(torch.from_numpy(x) for x in (q, k, v)), torch.from_numpy(mask))
    out_p = pd(*(paddle.to_tensor(x) for x in (q, k, v)), paddle.to_tensor(mask))
    np.testing.assert_allclose(out_p.numpy(), out_t.detach().numpy(), atol=1e-5)  # measured 1e-7
    (out_t ** 2).sum().backward()
    (out_p ** 2).sum().backward()
    np.testing.assert_allclose(pd.in_proj_weight.grad.numpy(), pt.in_proj_weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pd.out_proj.weight.grad.numpy(), pt.out_proj.weight.grad.numpy().T, rtol=1e-4,
                               atol=1e-5)


SHAPES = [(6, 7), (3, 4), (2, 2)]


@pytest.mark.parametrize("backend", ["reference", "kernel"])
@pytest.mark.parametrize("ref_dim", [2, 4])
def test_deform_attn_matches_torch(backend, ref_dim):
    """Random (non-ring) weights, padded tokens, 2-d or 4-d references; outputs and the gradients of the
    value, offsets and weights projections and of the query."""
    torch.manual_seed(0)
    pt = pt_attention.MSDeformAttn(32, n_levels=3, n_heads=4, n_points=3, backend=backend)
    with torch.no_grad():
        for p in pt.parameters():  # the ring init is too regular to exercise the sampling
            p.normal_(0, 0.1)
    pd = MSDeformAttn(32, n_levels=3, n_heads=4, n_points=3, backend=backend)
    torch_module_to_paddle(pt, pd)
    rng = np.random.default_rng(2)
    s = sum(h * w for h, w in SHAPES)
    query = rng.standard_normal((2, 9, 32)).astype(np.float32)
    value = rng.standard_normal((2, s, 32)).astype(np.float32)
    ref = rng.uniform(0.1, 0.9, (2, 9, 3, ref_dim)).astype(np.float32)
    mask = rng.random((2, s)) < 0.2
    shapes, starts = np.array(SHAPES, dtype=np.int64), level_start_index(SHAPES)

    tq, tv = torch.tensor(query, requires_grad=True), torch.from_numpy(value)
    out_t = pt(tq, torch.from_numpy(ref), tv, torch.from_numpy(shapes), torch.from_numpy(starts),
               torch.from_numpy(mask))
    pq, pv = paddle.to_tensor(query, stop_gradient=False), paddle.to_tensor(value)
    out_p = pd(pq, paddle.to_tensor(ref), pv, paddle.to_tensor(shapes), paddle.to_tensor(starts),
               paddle.to_tensor(mask))
    np.testing.assert_allclose(out_p.numpy(), out_t.detach().numpy(), atol=1e-5)  # measured 1e-7
    grad_out = rng.standard_normal(out_t.shape).astype(np.float32)
    (out_t * torch.from_numpy(grad_out)).sum().backward()
    (out_p * paddle.to_tensor(grad_out)).sum().backward()
    np.testing.assert_allclose(pq.grad.numpy(), tq.grad.numpy(), rtol=1e-4, atol=1e-5)
    for name in ("value_proj", "sampling_offsets", "attention_weights", "output_proj"):
        g_t = getattr(pt, name).weight.grad.numpy().T  # Paddle's [in, out]
        g_p = getattr(pd, name).weight.grad.numpy()
        np.testing.assert_allclose(g_p, g_t, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(g_t).max()), err_msg=name)


@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_linear_training_path_matches_paddle_linear(x_needs_grad):
    """attention.Linear's training path (bias gradient by a matrix product) == F.linear, values and gradients."""
    paddle.seed(0)
    layer = Linear(6, 5)
    x_np = np.random.default_rng(0).standard_normal((2, 7, 6)).astype(np.float32)
    g_np = np.random.default_rng(1).standard_normal((2, 7, 5)).astype(np.float32)
    grads = []
    for training in (True, False):
        layer.train() if training else layer.eval()
        layer.clear_gradients(set_to_zero=False)
        x = paddle.to_tensor(x_np, stop_gradient=not x_needs_grad)
        out = layer(x)
        (out * paddle.to_tensor(g_np)).sum().backward()
        grads.append([out.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]
                     + ([x.grad.numpy()] if x_needs_grad else []))
        assert x_needs_grad or x.grad is None
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    bound = 1 / math.sqrt(6)  # torch.nn.Linear's default init
    assert np.abs(layer.weight.numpy()).max() <= bound and np.abs(layer.bias.numpy()).max() <= bound
    assert layer.bias.numpy().any()
