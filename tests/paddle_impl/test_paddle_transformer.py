"""Deformable transformer (paddle_impl): proposals, encoder reference points, box refinement, the C-decoder
stream, and parity with the torch tree (layers, and the whole transformer in eval and training mode)."""
import numpy as np
import paddle
import pytest
import torch

from convert.frameworks import paddle_linear_weights, torch_module_to_paddle
from paddle_impl.models.dac_detr import MLP
from paddle_impl.models.deformable_transformer import (DeformableTransformer, DeformableTransformerEncoder,
                                                       _scale_to_levels)
from torch_impl.models import attention as pt_attention
from torch_impl.models import dac_detr as pt_detr
from torch_impl.models import deformable_transformer as pt_tr

D = 32
ARGS = dict(d_model=D, nhead=4, num_encoder_layers=1, num_decoder_layers=3, dim_feedforward=64,
            num_feature_levels=2, enc_n_points=2, dec_n_points=2, num_queries=5, backend="reference")


def _transformer(**kw):
    return DeformableTransformer(**dict(ARGS, **kw))


def _inputs(b=2, shapes=((6, 8), (3, 4)), pad_cols=(0, 2), seed=0):
    """Random level features (numpy); image i has its rightmost pad_cols[i] columns of level 1 padded (and 2x at
    level 0)."""
    rng = np.random.default_rng(seed)
    srcs, masks, pos = [], [], []
    for lvl, (h, w) in enumerate(shapes):
        m = np.zeros((b, h, w), dtype=bool)
        for i, p in enumerate(pad_cols):
            if p:
                m[i, :, w - p * (2 if lvl == 0 else 1):] = True
        srcs.append(rng.standard_normal((b, D, h, w)).astype(np.float32))
        masks.append(m)
        pos.append(rng.standard_normal((b, D, h, w)).astype(np.float32))
    return srcs, masks, pos


def _pd(arrays, dtype=None):
    return [paddle.to_tensor(a if dtype is None or a.dtype == bool else a.astype(dtype)) for a in arrays]


def _heads(n):
    return (paddle.nn.LayerList([paddle.nn.Linear(D, 3) for _ in range(n)]),
            paddle.nn.LayerList([MLP(D, D, 4, 3) for _ in range(n)]))


def _normal_(param, std):
    param.set_value(paddle.normal(0.0, std, param.shape).astype(param.dtype))


def test_encoder_proposals():
    tr = _transformer()
    shapes = [(2, 4), (1, 2)]
    mask = np.zeros((1, 10), dtype=bool)
    mask[0, [3, 7, 9]] = True  # last column of level 0 (rows 0, 1) and of level 1
    out_mem, props = tr.gen_encoder_output_proposals(paddle.randn([1, 10, D]), paddle.to_tensor(mask), shapes)
    assert out_mem.shape == [1, 10, D] and props.shape == [1, 10, 4]
    props = props.numpy()
    assert np.isinf(props[0, [3, 7, 9]]).all()
    valid = [(0, 0, 0, 0), (1, 0, 1, 0), (2, 0, 2, 0), (4, 0, 0, 1), (5, 0, 1, 1), (6, 0, 2, 1), (8, 1, 0, 0)]
    for s, lvl, x, y in valid:  # valid width 3 (level 0) or 1 (level 1); valid heights 2 and 1
        vw, vh = (3, 2) if lvl == 0 else (1, 1)
        expected = [(x + 0.5) / vw, (y + 0.5) / vh, 0.05 * 2 ** lvl, 0.05 * 2 ** lvl]
        np.testing.assert_allclose(1 / (1 + np.exp(-props[0, s])), expected, atol=1e-6, err_msg=str(s))
    zero = tr.enc_output_norm(tr.enc_output(paddle.zeros([1, D])))[0].numpy()  # padded tokens: no memory
    np.testing.assert_allclose(out_mem[0, 3].numpy(), zero, atol=1e-6)


def test_encoder_reference_points_are_pixel_centres():
    valid_ratios = paddle.to_tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 1.0], [0.5, 1.0]]])  # image 1: left half
    ref = DeformableTransformerEncoder.reference_points([(2, 4), (1, 2)], valid_ratios)
    assert ref.shape == [2, 10, 2, 2]
    ref = ref.numpy()
    np.testing.assert_allclose(ref[0, 1, 0], [1.5 / 4, 0.5 / 2], atol=1e-7)
    # image 1, level-0 token (0, 1): x = 1.5 / (0.5 * 4) of the valid width, mapped back by the ratio 0.5
    np.testing.assert_allclose(ref[1, 1, 0], [1.5 / 4, 0.25], atol=1e-7)
    np.testing.assert_allclose(ref[1, 1, 1], ref[1, 1, 0], atol=1e-7)  # same point on both levels


def test_transformer_shapes_with_denoising_queries():
    paddle.seed(0)
    tr = _transformer()
    cls, box = _heads(4)
    srcs, masks, pos = (_pd(x) for x in _inputs())
    dn_content, dn_boxes = paddle.randn([2, 4, D]), paddle.randn([2, 4, 4])
    attn_mask = np.zeros((9, 9), dtype=bool)
    attn_mask[4:, :4] = True
    out = tr(srcs, masks, pos, (cls[3], box[3]), box[:3], paddle.randn([5, D]), dn_content, dn_boxes,
             paddle.to_tensor(attn_mask), c_stream=True)
    assert len(out["hs"]) == len(out["boxes"]) == len(out["hs_c"]) == 3
    assert out["hs"][0].shape == [2, 9, D] and out["boxes_c"][2].shape == [2, 9, 4]
    assert out["enc_logits"].shape == [2, 60, 3] and out["enc_boxes"].shape == [2, 60, 4]
    with pytest.raises(ValueError, match="num_queries"):
        _transformer(num_queries=61)(srcs, masks, pos, (cls[3], box[3]), box[:3], paddle.randn([61, D]))


def test_one_stage_learned_queries():
    tr = _transformer(two_stage=False, mixed_selection=False)
    assert hasattr(tr, "reference_points") and not hasattr(tr, "pos_trans")
    _, box = _heads(3)
    srcs, masks, pos = (_pd(x) for x in _inputs())
    out = tr(srcs, masks, pos, None, box, paddle.randn([5, 2 * D]))
    assert out["boxes"][0].shape == [2, 5, 4] and "enc_logits" not in out


def _decoder_run(look_forward_twice, c_stream=False, seed=0):
    paddle.seed(seed)
    tr = _transformer(look_forward_twice=look_forward_twice)
    _, box = _heads(3)
    for head in box:  # non-zero deltas so that every layer moves its boxes
        _normal_(head.layers[-1].weight, 0.1)
    srcs, masks, pos = (_pd(x) for x in _inputs(seed=seed + 1))
    query = paddle.to_tensor(np.random.default_rng(seed).standard_normal((5, D)).astype(np.float32))
    return tr, box, tr(srcs, masks, pos, (paddle.nn.Linear(D, 3), box[2]), box, query, c_stream=c_stream)


def test_look_forward_twice_reaches_exactly_one_layer_back():
    for lft in (True, False):
        _, box, out = _decoder_run(lft)
        out["boxes"][2].sum().backward()
        grads = [h.layers[-1].weight.grad for h in box]
        assert grads[2].abs().sum() > 0
        assert (grads[1] is not None and bool(grads[1].abs().sum() > 0)) == lft
        assert grads[0] is None or not grads[0].numpy().any()
    # the values do not depend on the switch
    _, _, a = _decoder_run(True)
    _, _, b = _decoder_run(False)
    for x, y in zip(a["boxes"], b["boxes"]):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6)


def test_c_stream_skips_self_attention_and_shares_weights():
    paddle.seed(0)
    dec = _transformer().decoder
    _, box = _heads(3)
    for head in box:
        _normal_(head.layers[-1].weight, 0.1)
    shapes = paddle.to_tensor([[6, 8], [3, 4]], dtype="int64")
    start = paddle.to_tensor([0, 48], dtype="int64")
    memory, mask = paddle.randn([2, 60, D]), paddle.zeros([2, 60], dtype="bool")
    ratios = paddle.ones([2, 2, 2])
    tgt, query_pos = paddle.randn([2, 5, D]), paddle.randn([2, 5, D])
    reference = paddle.concat([paddle.rand([2, 5, 2]) * 0.5 + 0.25, paddle.full([2, 5, 2], 0.2)], -1)
    run = lambda c: dec(tgt, reference, memory, shapes, start, ratios, query_pos, mask, None, box, c_stream=c)
    out, plain = run(True), run(False)
    assert not plain["hs_c"]
    for x, y in zip(out["hs"], plain["hs"]):  # the O-decoder does not see the C-stream
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5)
    assert out["hs_c"][0] is out["hs"][0]  # first layer: C starts from O's query after self-attention
    for lid in (1, 2):  # then: cross-attention + FFN of the same layer on the C state, no self-attention
        layer = dec.layers[lid]
        ref_c = out["boxes_c"][lid - 1].detach()
        expected = layer.forward_cross_ffn(out["hs_c"][lid - 1], query_pos, _scale_to_levels(ref_c, ratios),
                                           memory, shapes, start, mask)
        np.testing.assert_allclose(out["hs_c"][lid].numpy(), expected.numpy(), atol=1e-5)
        assert not np.allclose(out["hs_c"][lid].numpy(), out["hs"][lid].numpy(), atol=1e-3)
        delta = box[lid](out["hs_c"][lid]).numpy()
        r = np.clip(ref_c.numpy(), 1e-5, 1 - 1e-5)
        np.testing.assert_allclose(out["boxes_c"][lid].numpy(), 1 / (1 + np.exp(-(delta + np.log(r / (1 - r))))),
                                   atol=1e-5)


# ---------------------------------------------------------------- parity with torch_impl

def _pair(two_stage=True, mixed_selection=True, dtype="float32", seed=0, **kw):
    """torch and Paddle transformers plus heads (class heads, box heads with non-zero last layers), the torch
    weights copied into Paddle. Containers: {"tr", "cls", "box"}."""
    torch.manual_seed(seed)
    n = ARGS["num_decoder_layers"] + 1
    pt = torch.nn.ModuleDict(dict(
        tr=pt_tr.DeformableTransformer(**dict(ARGS, two_stage=two_stage, mixed_selection=mixed_selection, **kw)),
        cls=torch.nn.ModuleList(torch.nn.Linear(D, 3) for _ in range(n)),
        box=torch.nn.ModuleList(pt_detr.MLP(D, D, 4, 3) for _ in range(n))))
    with torch.no_grad():
        for head in pt["box"]:
            head.layers[-1].weight.normal_(0, 0.1)
        # The ring init puts the encoder's sampling points exactly on pixel centres, where bilinear sampling has
        # a kink and torch's and Paddle's grid_sample take the location gradient from different sides.
        for m in pt.modules():
            if isinstance(m, pt_attention.MSDeformAttn):
                m.sampling_offsets.weight.normal_(0, 0.01)
    pd = paddle.nn.LayerDict(dict(
        tr=DeformableTransformer(**dict(ARGS, two_stage=two_stage, mixed_selection=mixed_selection, **kw)),
        cls=paddle.nn.LayerList([paddle.nn.Linear(D, 3) for _ in range(n)]),
        box=paddle.nn.LayerList([MLP(D, D, 4, 3) for _ in range(n)])))
    if dtype == "float64":
        pt.double()
        pd.to(dtype="float64")
    torch_module_to_paddle(pt, pd)
    return pt, pd


def _run(model, srcs, masks, pos, query, dn=None, c_stream=False):
    """Either framework's transformer on already converted inputs (lists of tensors)."""
    nd = ARGS["num_decoder_layers"]
    enc_heads = (model["cls"][nd], model["box"][nd]) if model["tr"].two_stage else None
    dn = dn or (None, None, None)
    return model["tr"](srcs, masks, pos, enc_heads, model["box"][:nd], query, *dn, c_stream=c_stream)


def _assert_close(pd_out, pt_out, atol, keys=("hs", "boxes", "hs_c", "boxes_c", "enc_logits", "enc_boxes")):
    for key in keys:
        if key not in pt_out:
            continue
        a, b = pd_out[key], pt_out[key]
        for lid, (x, y) in enumerate(zip(a, b) if isinstance(a, list) else [(a, b)]):
            np.testing.assert_allclose(x.numpy(), y.detach().numpy(), rtol=0, atol=atol, err_msg=f"{key}[{lid}]")


def test_encoder_and_decoder_layers_match_torch():
    pt, pd = _pair()
    rng = np.random.default_rng(3)
    shapes = np.array([[6, 8], [3, 4]], dtype=np.int64)
    starts = np.array([0, 48], dtype=np.int64)
    src, pos = rng.standard_normal((2, 2, 60, D)).astype(np.float32)
    mask = np.zeros((2, 60), dtype=bool)
    mask[1, 40:48] = True
    enc_ref = rng.uniform(0.05, 0.95, (2, 60, 2, 2)).astype(np.float32)
    t = lambda *a: [torch.from_numpy(x) for x in a]
    p = lambda *a: [paddle.to_tensor(x) for x in a]
    enc_t, enc_p = pt["tr"].encoder.layers[0], pd["tr"].encoder.layers[0]
    out_t = enc_t(*t(src, pos, enc_ref, shapes, starts, mask))
    out_p = enc_p(*p(src, pos, enc_ref, shapes, starts, mask))
    np.testing.assert_allclose(out_p.numpy(), out_t.detach().numpy(), atol=1e-5)

    tgt, qpos = rng.standard_normal((2, 2, 7, D)).astype(np.float32)
    dec_ref = np.concatenate([rng.uniform(0.2, 0.8, (2, 7, 2, 2)), rng.uniform(0.05, 0.3, (2, 7, 2, 2))],
                             -1).astype(np.float32)
    attn_mask = rng.random((7, 7)) < 0.3
    np.fill_diagonal(attn_mask, False)
    dec_t, dec_p = pt["tr"].decoder.layers[1], pd["tr"].decoder.layers[1]
    q_t = dec_t.forward_self_attn(*t(tgt, qpos, attn_mask))
    q_p = dec_p.forward_self_attn(*p(tgt, qpos, attn_mask))
    np.testing.assert_allclose(q_p.numpy(), q_t.detach().numpy(), atol=1e-5)
    out_t = dec_t.forward_cross_ffn(q_t, *t(qpos, dec_ref, src, shapes, starts, mask))
    out_p = dec_p.forward_cross_ffn(q_p, *p(qpos, dec_ref, src, shapes, starts, mask))
    np.testing.assert_allclose(out_p.numpy(), out_t.detach().numpy(), atol=1e-5)


def _topk_margin(enc_logits, k):
    """Smallest gap between consecutive scores among the top k + 1 (the order top-k selection depends on)."""
    s = -np.sort(-enc_logits[..., 0], axis=1)[:, :k + 1]
    return float(np.diff(-s, axis=1).min())


@pytest.mark.parametrize("two_stage", [True, False], ids=["two_stage", "one_stage"])
def test_transformer_eval_matches_torch_float32(two_stage):
    """Eval mode, no denoising: float32 is enough when the top-k order is unambiguous, which is checked."""
    pt, pd = _pair(two_stage=two_stage, mixed_selection=two_stage)
    srcs, masks, pos = _inputs(seed=4)
    query = np.random.default_rng(5).standard_normal((5, D if two_stage else 2 * D)).astype(np.float32)
    pt.eval()
    pd.eval()
    with torch.no_grad():
        out_t = _run(pt, *([torch.from_numpy(a) for a in x] for x in (srcs, masks, pos)), torch.from_numpy(query))
    out_p = _run(pd, *(_pd(x) for x in (srcs, masks, pos)), paddle.to_tensor(query))
    if two_stage:
        assert _topk_margin(out_t["enc_logits"].numpy(), 5) > 1e-3
    _assert_close(out_p, out_t, atol=1e-4)  # measured ~1e-6


@pytest.mark.parametrize("backend", ["reference", "kernel"])
def test_transformer_train_with_dn_and_c_stream_matches_torch_float64(backend):
    """Training mode with denoising queries (and their attention mask) and the C stream, in float64 so that the
    top-k order cannot differ; outputs, then gradients of a random projection of every output."""
    pt, pd = _pair(dtype="float64", backend=backend)
    rng = np.random.default_rng(6)
    srcs, masks, pos = _inputs(seed=7)
    query = rng.standard_normal((5, D))
    dn_content, dn_boxes = rng.standard_normal((2, 4, D)), rng.standard_normal((2, 4, 4))
    attn_mask = np.zeros((9, 9), dtype=bool)
    attn_mask[4:, :4] = True
    attn_mask[:2, 2:4] = attn_mask[2:4, :2] = True
    pt.train()
    pd.train()
    out_t = _run(pt, *([torch.from_numpy(a.astype(np.float64) if a.dtype != bool else a) for a in x]
                       for x in (srcs, masks, pos)), torch.from_numpy(query),
                 [torch.from_numpy(a) for a in (dn_content, dn_boxes, attn_mask)], c_stream=True)
    out_p = _run(pd, *(_pd(x, "float64") for x in (srcs, masks, pos)), paddle.to_tensor(query),
                 _pd([dn_content, dn_boxes, attn_mask]), c_stream=True)
    # not 1e-12: both trees build the proposal anchors (and their logit) in float32, where the two frameworks'
    # log differs by an ulp; measured 1e-11 on enc_logits, 1e-8 on boxes, 8e-8 on hs
    _assert_close(out_p, out_t, atol=1e-6)

    keys = ("hs", "boxes", "hs_c", "boxes_c", "enc_logits", "enc_boxes")
    flat_t = [y for k in keys for y in (out_t[k] if isinstance(out_t[k], list) else [out_t[k]])]
    flat_p = [y for k in keys for y in (out_p[k] if isinstance(out_p[k], list) else [out_p[k]])]
    weights = [rng.standard_normal(tuple(y.shape)) for y in flat_t]
    sum((y * torch.from_numpy(w)).sum() for y, w in zip(flat_t, weights)).backward()
    sum((y * paddle.to_tensor(w)).sum() for y, w in zip(flat_p, weights)).backward()
    params_t = dict(pt.named_parameters())
    linear = paddle_linear_weights(pd)
    checked = 0
    for name, p in pd.named_parameters():
        g_t = params_t[name].grad
        if g_t is None:
            assert p.grad is None or not p.grad.numpy().any(), name
            continue
        g_t = g_t.numpy()
        if name in linear:
            g_t = g_t.T  # Paddle's [in, out]
        np.testing.assert_allclose(p.grad.numpy(), g_t, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(g_t).max()),
                                   err_msg=name)
        checked += 1
    assert checked > 100  # every parameter of the transformer and the heads
