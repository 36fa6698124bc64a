"""DAB-DETR in the Paddle tree: the torch tests' mirror (outputs, the decoder against the numpy brute force,
detached anchors, padding, training); whole-model parity with torch is tests/test_dab_detr_parity.py."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from convert.frameworks import paddle_linear_weights
from convert.rules import paddle_name_to_torch
from paddle_impl.models import build_model
from paddle_impl.models.dab_transformer import DABTransformer
from paddle_impl.models.position_encoding import anchor_code
from paddle_impl.models.dac_detr import MLP
from tests.dab_detr_case import (IMAGES, MASKS, TARGETS, decoder, decoder_inputs, model_cfg,
                                 params_without_gradient_expected)
from tests.paddle_impl.training_checks import loss_before_and_after_one_step, params_without_gradient


def tiny(**overrides):
    paddle.seed(0)
    return build_model({"model": model_cfg(**overrides)})


def _loss(model, criterion):
    out = model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS), TARGETS)
    return out, criterion(out, TARGETS, 3.0)


def _torch_layout(layer):
    linear = paddle_linear_weights(layer)
    return {k: (v.numpy().T if k in linear else v.numpy()) for k, v in layer.state_dict().items()}


def test_outputs_and_loss_terms():
    model, criterion, post = tiny()
    model.train()
    out, losses = _loss(model, criterion)
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs"}
    assert out["pred_logits"].shape == [2, 12, 4] and out["pred_boxes"].shape == [2, 12, 4]
    assert [a["pred_boxes"].shape for a in out["aux_outputs"]] == [[2, 12, 4]] * 2
    boxes = out["pred_boxes"].numpy()
    assert ((boxes > 0) & (boxes < 1)).all()
    assert criterion.weight_dict == {f"{k}{s}": w for s in ("_0", "_1", "") for k, w in
                                     (("loss_ce", 1.0), ("loss_bbox", 5.0), ("loss_giou", 2.0))}
    assert set(losses) == set(criterion.weight_dict) and all(np.isfinite(v.item()) for v in losses.values())
    model.eval()
    with paddle.no_grad():
        results = post(model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS)),
                       paddle.to_tensor([[480, 640], [300, 200]]))
    assert results[0]["boxes"].shape == [20, 4]


def test_every_trainable_parameter_gets_gradient():
    """Layer 0's self-attention content weights never get one, the box head's first layers not at step 0."""
    model, criterion, _ = tiny()
    no_grad = params_without_gradient(model, lambda: sum(_loss(model, criterion)[1].values()))
    assert tuple(no_grad) == params_without_gradient_expected()


def test_state_dict_mirrors_torch():
    """The torch tree's keys in the same order and shapes up to the Linear transposition: conversion is a rule."""
    from torch_impl.models import build_model as build_torch

    torch_state = {k: v for k, v in build_torch({"model": model_cfg()})[0].state_dict().items()
                   if not k.endswith("num_batches_tracked")}
    model = tiny()[0]
    state, linear = model.state_dict(), paddle_linear_weights(model)
    assert [paddle_name_to_torch(k) for k in state] == list(torch_state)
    for k, v in state.items():
        twin = tuple(torch_state[paddle_name_to_torch(k)].shape)
        assert tuple(v.shape) == (twin[::-1] if k in linear else twin), k
    assert "transformer.decoder.ref_point_head.layers.0.weight" in linear and "refpoint_embed.weight" not in linear


@pytest.mark.parametrize("modulate", [True, False], ids=["modulated", "control"])
def test_decoder_matches_brute_force(modulate):
    """As in the torch tests: the whole decoder against tests/dab_detr_case.py's numpy formulas, float64."""
    paddle.seed(0)
    tr = DABTransformer(32, 4, 0, 3, 64, 0.0)
    box = MLP(32, 32, 4, 3)
    for m in (tr, box):
        m.to(dtype="float64")
        m.eval()
    for p in list(tr.decoder.parameters()) + list(box.parameters()):
        p.set_value(paddle.normal(0.0, 0.3, p.shape).astype("float64"))
    memory, pos, anchor, mask = decoder_inputs()
    hs_np, refs_np = decoder(_torch_layout(tr.decoder), _torch_layout(box), 4, memory, pos, anchor, mask,
                             modulate=modulate)
    with paddle.no_grad():
        tgt = paddle.zeros([2, 5, 32], "float64")
        hs, refs = tr.decoder(tgt, *(paddle.to_tensor(a) for a in (memory, pos, anchor, mask)), box)
    err = max(np.abs(a.numpy() - b).max() for a, b in zip(hs + refs, hs_np + refs_np))
    if modulate:  # measured 1.4e-12 (already 1e-12 after layer 0: Paddle's float64 kernels; torch's: 1e-15)
        assert err <= 1e-11, err
        assert min(np.abs(refs[i + 1].numpy() - refs[i].numpy()).max() for i in range(2)) > 1e-2
    else:
        assert err > 1e-3, err


def test_anchors_update_layer_by_layer_and_are_detached():
    """As in the torch tests: each layer's anchor is the previous update, detached where it feeds the layer, not
    where the boxes are predicted from."""
    model, _, _ = tiny()
    model.eval()
    w = model.bbox_embed.layers[-1].weight
    w.set_value(paddle.normal(0.0, 0.3, w.shape))
    dec = model.transformer.decoder
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: seen.append(args)) for layer in dec.layers]
    images, masks = paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS)
    x, mask = model.backbone(images, masks)[-1]
    hs, refs = model.transformer(model.input_proj(x), mask, model.refpoint_embed.weight, model.position_embedding(mask),
                                 model.bbox_embed)
    out = model(images, masks)
    for hook in hooks:
        hook.remove()
    logit = lambda a: paddle.log(a / (1 - a))  # noqa: E731
    np.testing.assert_array_equal(refs[0].numpy(), np.broadcast_to(F.sigmoid(model.refpoint_embed.weight).numpy(),
                                                                   [2, 12, 4]))
    heads = [model.refpoint_embed.weight] + list(model.bbox_embed.parameters())
    for lid in range(3):
        tgt, query_pos = seen[lid][0], seen[lid][3]
        np.testing.assert_allclose(query_pos.numpy(), dec.ref_point_head(anchor_code(refs[lid], 32)).numpy(),
                                   rtol=0, atol=1e-6)
        if lid:
            update = F.sigmoid(model.bbox_embed(tgt) + logit(refs[lid - 1])).numpy()
            np.testing.assert_allclose(refs[lid].numpy(), update, rtol=0, atol=1e-6)
            assert np.abs(refs[lid].numpy() - refs[lid - 1].numpy()).max() > 1e-2
        box = F.sigmoid(model.bbox_embed(hs[lid]) + logit(refs[lid])).numpy()
        np.testing.assert_allclose((out["aux_outputs"] + [out])[lid]["pred_boxes"].numpy(), box, rtol=0, atol=1e-6)
        grads = paddle.grad(query_pos.sum(), heads, retain_graph=True, allow_unused=True)
        assert (grads[0] is not None) == (lid == 0) and all(g is None for g in grads[1:]), lid
        if lid:
            grads = paddle.grad(refs[lid].sum(), heads[1:], retain_graph=True, allow_unused=True)
            assert all(np.abs(g.numpy()).max() > 0 for g in grads[-2:]), lid


def test_padding_is_ignored():
    paddle.seed(0)
    tr = DABTransformer(32, 4, 2, 2, 64, 0.0)
    tr.eval()
    box = MLP(32, 32, 4, 3)
    src, pos = paddle.randn([2, 32, 4, 5]), paddle.randn([2, 32, 4, 5])
    mask_np = np.zeros((2, 4, 5), bool)
    mask_np[1, 3:] = True
    mask_np[1, :, 3:] = True
    mask, anchors = paddle.to_tensor(mask_np), paddle.randn([6, 4])
    noise = paddle.randn([2, 32, 4, 5]) * 10 * paddle.to_tensor(mask_np[:, None].astype(np.float32))
    with paddle.no_grad():
        hs, refs = tr(src, mask, anchors, pos, box)
        hs2, refs2 = tr(src + noise, mask, anchors, pos + noise, box)
    for a, b in zip(hs + refs, hs2 + refs2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5)
    assert np.abs(noise.numpy()).max() > 1


def test_one_step_lowers_the_loss():
    model, criterion, _ = tiny()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-4)
    assert after < before - 0.1, (before, after)
