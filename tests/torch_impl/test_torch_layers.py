"""Position encodings and attention modules against direct formulas and torch's own MultiheadAttention."""
import math

import numpy as np
import pytest
import torch

from torch_impl.models.attention import MSDeformAttn, MultiheadAttention
from torch_impl.models.position_encoding import PositionEmbeddingSine, box_sine_embedding


def _sine_features(v, num_feats, temperature):
    """Direct formula: feature k is sin (k even) or cos (k odd) of v / T^(2 floor(k/2) / F)."""
    return np.array([math.sin(v / temperature ** (2 * (k // 2) / num_feats)) if k % 2 == 0 else
                     math.cos(v / temperature ** (2 * (k // 2) / num_feats)) for k in range(num_feats)])


def test_sine_position_encoding_matches_formula_on_valid_pixels():
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    mask[0, 2:, :] = True  # one padded row
    mask[0, :, 4:] = True  # one padded column
    pe = PositionEmbeddingSine(num_pos_feats=6, temperature=10000.0)(mask)
    assert pe.shape == (1, 12, 3, 5)
    valid_h, valid_w = 2, 4
    for i in range(valid_h):
        for j in range(valid_w):
            y = (i + 1 - 0.5) / (valid_h + 1e-6) * 2 * math.pi
            x = (j + 1 - 0.5) / (valid_w + 1e-6) * 2 * math.pi
            expected = np.concatenate([_sine_features(y, 6, 1e4), _sine_features(x, 6, 1e4)])
            np.testing.assert_allclose(pe[0, :, i, j].numpy(), expected, atol=1e-5)


def test_sine_position_encoding_ignores_padding():
    pe = PositionEmbeddingSine(8)
    small = pe(torch.zeros(1, 4, 6, dtype=torch.bool))
    mask = torch.ones(1, 7, 9, dtype=torch.bool)
    mask[0, :4, :6] = False
    padded = pe(mask)
    assert torch.allclose(padded[..., :4, :6], small, atol=1e-6)


def test_box_sine_embedding_formula():
    boxes = torch.tensor([[[0.3, -1.0, 2.0, 0.0]]])  # logits
    emb = box_sine_embedding(boxes, num_pos_feats=4)
    assert emb.shape == (1, 1, 16)
    s = torch.sigmoid(boxes[0, 0]).double().numpy() * 2 * math.pi
    expected = np.concatenate([_sine_features(v, 4, 1e4) for v in s])
    np.testing.assert_allclose(emb[0, 0].numpy(), expected, atol=1e-5)


def _single_point_attn(n_heads=2, d=8):
    attn = MSDeformAttn(d, n_levels=1, n_heads=n_heads, n_points=1, backend="reference")
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
    return attn


def test_deform_attn_samples_the_reference_pixel():
    torch.manual_seed(0)
    attn = _single_point_attn()
    h, w = 4, 5
    value = torch.randn(1, h * w, 8)
    shapes, start = torch.tensor([[h, w]]), torch.tensor([0])
    i, j = 2, 3
    centre = torch.tensor([(j + 0.5) / w, (i + 0.5) / h])
    query = torch.randn(1, 1, 8)
    expected = attn.output_proj(attn.value_proj(value[0, i * w + j]))
    out2 = attn(query, centre.view(1, 1, 1, 2), value, shapes, start)
    out4 = attn(query, torch.cat([centre, torch.tensor([0.3, 0.3])]).view(1, 1, 1, 4), value, shapes, start)
    assert out2.shape == (1, 1, 8)
    assert torch.allclose(out2[0, 0], expected, atol=1e-5) and torch.allclose(out4[0, 0], expected, atol=1e-5)
    # a padded value position contributes nothing: only output_proj's bias is left
    mask = torch.zeros(1, h * w, dtype=torch.bool)
    mask[0, i * w + j] = True
    out = attn(query, centre.view(1, 1, 1, 2), value, shapes, start, mask)
    assert torch.allclose(out[0, 0], attn.output_proj.bias, atol=1e-6)


def test_deform_attn_offset_units():
    """A (+2, 0) offset moves 2 pixels with a 2-d reference, and 2 / n_points * half the box width with a 4-d one."""
    torch.manual_seed(0)
    attn = _single_point_attn()
    h, w = 4, 6
    value = torch.randn(1, h * w, 8)
    shapes, start = torch.tensor([[h, w]]), torch.tensor([0])
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([2.0, 0.0, 2.0, 0.0]))  # both heads
    i, j = 1, 1
    centre = torch.tensor([(j + 0.5) / w, (i + 0.5) / h])
    query = torch.randn(1, 1, 8)
    expected = attn.output_proj(attn.value_proj(value[0, i * w + j + 2]))
    out2 = attn(query, centre.view(1, 1, 1, 2), value, shapes, start)
    box = torch.cat([centre, torch.tensor([2.0 / w, 0.5])])  # offset 2 * (w / 2) / 1 point = 2 pixels
    out4 = attn(query, box.view(1, 1, 1, 4), value, shapes, start)
    assert torch.allclose(out2[0, 0], expected, atol=1e-5) and torch.allclose(out4[0, 0], expected, atol=1e-5)


def test_deform_attn_initial_offsets_and_weights():
    attn = MSDeformAttn(16, n_levels=2, n_heads=4, n_points=3)
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x, head 1 along +y (angle pi/2); point p at distance p + 1
    assert torch.allclose(offsets[0, :, :, 0], torch.tensor([1.0, 2.0, 3.0]).expand(2, 3))
    assert torch.allclose(offsets[1, :, :, 1], torch.tensor([1.0, 2.0, 3.0]).expand(2, 3))
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.sampling_offsets.weight.abs().sum() == 0


@pytest.mark.parametrize("use_mask", [False, True])
def test_multihead_attention_matches_torch(use_mask):
    torch.manual_seed(0)
    ours = MultiheadAttention(16, 4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    mask = None
    if use_mask:
        mask = torch.rand(5, 7) > 0.5
        mask[:, 0] = False  # every query sees something
    expected = ref(q, k, v, attn_mask=mask, need_weights=False)[0]
    assert torch.allclose(ours(q, k, v, mask), expected, atol=1e-5)
    assert set(ours.state_dict()) == {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
