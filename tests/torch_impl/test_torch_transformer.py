"""Deformable transformer: proposals, encoder reference points, box refinement, the C-decoder stream."""
import pytest
import torch
from torch import nn

from torch_impl.models.dac_detr import MLP
from torch_impl.models.deformable_transformer import (DeformableTransformer, DeformableTransformerEncoder,
                                                      _scale_to_levels)

D = 32


def _transformer(**kw):
    args = dict(d_model=D, nhead=4, num_encoder_layers=1, num_decoder_layers=3, dim_feedforward=64,
                num_feature_levels=2, enc_n_points=2, dec_n_points=2, num_queries=5, backend="reference")
    args.update(kw)
    return DeformableTransformer(**args)


def _inputs(b=2, shapes=((6, 8), (3, 4)), pad_cols=(0, 2)):
    """Random level features; image i has its rightmost pad_cols[i] columns of level 1 padded (and 2x at level 0)."""
    srcs, masks, pos = [], [], []
    for lvl, (h, w) in enumerate(shapes):
        m = torch.zeros(b, h, w, dtype=torch.bool)
        for i, p in enumerate(pad_cols):
            if p:
                m[i, :, w - p * (2 if lvl == 0 else 1):] = True
        srcs.append(torch.randn(b, D, h, w))
        masks.append(m)
        pos.append(torch.randn(b, D, h, w))
    return srcs, masks, pos


def _heads(n):
    return nn.ModuleList(nn.Linear(D, 3) for _ in range(n)), nn.ModuleList(MLP(D, D, 4, 3) for _ in range(n))


def test_encoder_proposals():
    tr = _transformer()
    shapes = [(2, 4), (1, 2)]
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, [3, 7, 9]] = True  # last column of level 0 (rows 0, 1) and of level 1
    memory = torch.randn(1, 10, D)
    out_mem, props = tr.gen_encoder_output_proposals(memory, mask, shapes)
    assert out_mem.shape == (1, 10, D) and props.shape == (1, 10, 4)
    assert torch.isinf(props[0, [3, 7, 9]]).all()
    valid = [(0, 0, 0, 0), (1, 0, 1, 0), (2, 0, 2, 0), (4, 0, 0, 1), (5, 0, 1, 1), (6, 0, 2, 1), (8, 1, 0, 0)]
    for s, lvl, x, y in valid:  # valid width 3 (level 0) or 1 (level 1); valid heights 2 and 1
        vw, vh = (3, 2) if lvl == 0 else (1, 1)
        expected = torch.tensor([(x + 0.5) / vw, (y + 0.5) / vh, 0.05 * 2 ** lvl, 0.05 * 2 ** lvl])
        assert torch.allclose(props[0, s].sigmoid(), expected, atol=1e-6), s
    zero = tr.enc_output_norm(tr.enc_output(torch.zeros(D)))  # padded tokens carry no memory
    assert torch.allclose(out_mem[0, 3], zero, atol=1e-6)


def test_encoder_reference_points_are_pixel_centres():
    valid_ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 1.0], [0.5, 1.0]]])  # image 1: left half valid
    ref = DeformableTransformerEncoder.reference_points([(2, 4), (1, 2)], valid_ratios)
    assert ref.shape == (2, 10, 2, 2)
    assert torch.allclose(ref[0, 1, 0], torch.tensor([1.5 / 4, 0.5 / 2]))
    # image 1, level-0 token (0, 1): x = 1.5 / (0.5 * 4) of the valid width, mapped back by the ratio 0.5
    assert torch.allclose(ref[1, 1, 0], torch.tensor([1.5 / 4, 0.25]))
    assert torch.allclose(ref[1, 1, 1], ref[1, 1, 0])  # same point on both levels


def test_transformer_shapes_with_denoising_queries():
    torch.manual_seed(0)
    tr = _transformer()
    cls, box = _heads(4)
    srcs, masks, pos = _inputs()
    dn_content, dn_boxes = torch.randn(2, 4, D), torch.randn(2, 4, 4)
    attn_mask = torch.zeros(9, 9, dtype=torch.bool)
    attn_mask[4:, :4] = True
    out = tr(srcs, masks, pos, (cls[3], box[3]), box[:3], torch.randn(5, D), dn_content, dn_boxes, attn_mask,
             c_stream=True)
    assert len(out["hs"]) == len(out["boxes"]) == len(out["hs_c"]) == 3
    assert out["hs"][0].shape == (2, 9, D) and out["boxes_c"][2].shape == (2, 9, 4)
    assert out["enc_logits"].shape == (2, 60, 3) and out["enc_boxes"].shape == (2, 60, 4)
    with pytest.raises(ValueError, match="num_queries"):
        _transformer(num_queries=61)(srcs, masks, pos, (cls[3], box[3]), box[:3], torch.randn(61, D))


def test_one_stage_learned_queries():
    tr = _transformer(two_stage=False, mixed_selection=False)
    assert hasattr(tr, "reference_points") and not hasattr(tr, "pos_trans")
    _, box = _heads(3)
    srcs, masks, pos = _inputs()
    out = tr(srcs, masks, pos, None, box, torch.randn(5, 2 * D))
    assert out["boxes"][0].shape == (2, 5, 4) and "enc_logits" not in out


def _decoder_run(look_forward_twice, c_stream=False, seed=0):
    torch.manual_seed(seed)
    tr = _transformer(look_forward_twice=look_forward_twice)
    _, box = _heads(3)
    for head in box:  # non-zero deltas so that every layer moves its boxes
        nn.init.normal_(head.layers[-1].weight, std=0.1)
    torch.manual_seed(seed + 1)
    srcs, masks, pos = _inputs()
    query = torch.randn(5, D)
    return tr, box, tr(srcs, masks, pos, (nn.Linear(D, 3), box[2]), box, query, c_stream=c_stream)


def test_look_forward_twice_reaches_exactly_one_layer_back():
    for lft in (True, False):
        _, box, out = _decoder_run(lft)
        out["boxes"][2].sum().backward()
        grads = [h.layers[-1].weight.grad for h in box]
        assert grads[2].abs().sum() > 0
        assert (grads[1] is not None and grads[1].abs().sum() > 0) == lft
        assert grads[0] is None or grads[0].abs().sum() == 0
    # the values do not depend on the switch
    _, _, a = _decoder_run(True)
    _, _, b = _decoder_run(False)
    for x, y in zip(a["boxes"], b["boxes"]):
        assert torch.allclose(x, y, atol=1e-6)


def test_c_stream_skips_self_attention_and_shares_weights():
    torch.manual_seed(0)
    dec = _transformer().decoder
    _, box = _heads(3)
    for head in box:
        nn.init.normal_(head.layers[-1].weight, std=0.1)
    shapes = torch.tensor([[6, 8], [3, 4]])
    start = torch.tensor([0, 48])
    memory, mask = torch.randn(2, 60, D), torch.zeros(2, 60, dtype=torch.bool)
    ratios = torch.ones(2, 2, 2)
    tgt, query_pos = torch.randn(2, 5, D), torch.randn(2, 5, D)
    reference = torch.cat([torch.rand(2, 5, 2) * 0.5 + 0.25, torch.full((2, 5, 2), 0.2)], -1)
    run = lambda c: dec(tgt, reference, memory, shapes, start, ratios, query_pos, mask, None, box, c_stream=c)
    out, plain = run(True), run(False)
    assert not plain["hs_c"]
    for x, y in zip(out["hs"], plain["hs"]):  # the O-decoder does not see the C-stream
        assert torch.allclose(x, y, atol=1e-5)
    assert out["hs_c"][0] is out["hs"][0]  # first layer: C starts from O's query after self-attention
    for lid in (1, 2):  # then: cross-attention + FFN of the same layer on the C state, no self-attention
        layer = dec.layers[lid]
        ref_c = out["boxes_c"][lid - 1].detach()
        expected = layer.forward_cross_ffn(out["hs_c"][lid - 1], query_pos, _scale_to_levels(ref_c, ratios),
                                           memory, shapes, start, mask)
        assert torch.allclose(out["hs_c"][lid], expected, atol=1e-5)
        assert not torch.allclose(out["hs_c"][lid], out["hs"][lid], atol=1e-3)
        delta = box[lid](out["hs_c"][lid])
        assert torch.allclose(out["boxes_c"][lid], (delta + torch.logit(ref_c, eps=1e-5)).sigmoid(), atol=1e-5)
