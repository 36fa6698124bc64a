"""DAB-Deformable-DETR and DN-Deformable-DETR (model.arch dab_deformable_detr) in the Paddle tree: the torch tests'
mirror (parameters, each layer's positional query against its definition, no look-forward-twice, DN-DETR's queries
and mask, matching queries blind to them, denoising losses, label_enc's gradients, one training step); parity with
torch is tests/test_dab_deformable_detr_parity.py."""
import re

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from convert.frameworks import paddle_linear_weights
from paddle_impl.models import build_model
from tests.dab_deformable_detr_case import (IMAGES, MASKS, NO_GT, ONE_EMPTY, TARGETS, check_queries, expected_dn,
                                            model_cfg, query_pos)
from tests.paddle_impl.training_checks import loss_before_and_after_one_step


def tiny(dn=False, double=False):
    paddle.seed(0)
    model, criterion, post = build_model({"model": model_cfg(dn)})
    rng = np.random.default_rng(1)
    for head in model.bbox_embed:  # moving boxes: every box head's last layer starts at 0 (release init)
        last = head.layers[-1].weight
        last.set_value(rng.normal(0, 0.1, last.shape).astype(np.float32))
    if double:
        model.to(dtype="float64")
    model.train()
    return model, criterion, post


def _run(model, targets=TARGETS, seed=0, dtype=np.float32):
    return model(paddle.to_tensor(IMAGES.astype(dtype)), paddle.to_tensor(MASKS), targets,
                 dn_rng=np.random.default_rng(seed))


def _spy(monkeypatch, obj, name):
    """Records the (args, kwargs) of every call of obj.name."""
    calls, inner = [], getattr(obj, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return inner(*args, **kwargs)
    monkeypatch.setattr(obj, name, spy)
    return calls


def _torch_layout(layer):
    linear = paddle_linear_weights(layer)
    return {k: (v.numpy().T if k in linear else v.numpy()) for k, v in layer.state_dict().items()}


def test_parameter_layout():
    for dn, feats in ((False, 32), (True, 31)):
        model, criterion, _ = tiny(dn)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        expected = {"tgt_embed.weight": (12, feats), "refpoint_embed.weight": (12, 4),
                    "transformer.decoder.query_scale.layers.0.weight": (32, 32),
                    "transformer.decoder.query_scale.layers.1.weight": (32, 32),
                    "transformer.decoder.ref_point_head.layers.0.weight": (64, 32),
                    "transformer.decoder.ref_point_head.layers.1.weight": (32, 32),
                    "class_embed.2.weight": (32, 4), "bbox_embed.2.layers.2.weight": (32, 4),
                    "transformer.level_embed": (2, 32)}
        if dn:
            expected["label_enc.weight"] = (5, 31)
        assert all(shapes.get(k) == v for k, v in expected.items()), {k: shapes.get(k) for k in expected}
        assert not any(re.match(r"(query_embed|transformer\.(reference_points|enc_output|pos_trans))\.", k)
                       for k in shapes)
        assert ("label_enc.weight" in shapes) == dn and "class_embed.3.weight" not in shapes
        assert set(criterion.weight_dict) == {f"{k}{t}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou")
                                              for t in (("", "_dn") if dn else ("",)) for s in ("_0", "_1", "")}


def test_each_layer_makes_its_positional_query_from_its_reference(monkeypatch):
    """float64, as in torch, to 1e-10."""
    model, _, _ = tiny(double=True)
    model.eval()
    layers = model.transformer.decoder.layers
    calls = [_spy(monkeypatch, layer, "forward_self_attn") for layer in layers]
    dec_calls = _spy(monkeypatch, model.transformer.decoder, "forward")
    with paddle.no_grad():
        out = model(paddle.to_tensor(IMAGES.astype(np.float64)), paddle.to_tensor(MASKS))
    valid_ratio = dec_calls[0][0][5][:, 0].numpy()
    assert valid_ratio[0].tolist() == [1.0, 1.0] and (valid_ratio[1] < 0.8).all()  # image 1 is padded
    w = _torch_layout(model.transformer.decoder)
    boxes = [a["pred_boxes"].numpy() for a in out["aux_outputs"]] + [out["pred_boxes"].numpy()]
    reference = F.sigmoid(model.refpoint_embed.weight).numpy()[None].repeat(2, 0)
    references = [reference] + boxes[:-1]  # r_0 the anchors, then each layer's box (no look-forward-twice)
    for lid in range(3):
        (hidden, pos, _), _ = calls[lid][0]
        expected = query_pos(w, references[lid], valid_ratio, None if lid == 0 else hidden.numpy())
        np.testing.assert_allclose(pos.numpy(), expected, rtol=0, atol=1e-10, err_msg=str(lid))
        if lid > 0:  # layer lid - 1's box from its output (this layer's input) and its reference
            with paddle.no_grad():
                delta = model.bbox_embed[lid - 1](hidden).numpy()
            logit = np.log(references[lid - 1] / (1 - references[lid - 1]))
            np.testing.assert_allclose(boxes[lid - 1], 1 / (1 + np.exp(-(delta + logit))), rtol=0, atol=1e-10)
    assert np.abs(boxes[1] - boxes[0]).max() > 1e-3


def test_no_look_forward_twice():
    model, _, _ = tiny()
    out = _run(model)
    out["pred_boxes"].sum().backward()
    grads = [head.layers[-1].weight.grad for head in model.bbox_embed]
    assert grads[2].abs().max().item() > 1e-3 and all(g is None or not g.any().item() for g in grads[:2])


@pytest.mark.parametrize("targets, pad", [(TARGETS, 6), (ONE_EMPTY, 6), (NO_GT, 0)],
                         ids=["two_images", "one_empty", "no_gt"])
def test_dn_queries_reach_the_decoder(monkeypatch, targets, pad):
    model, _, _ = tiny(dn=True)
    calls = _spy(monkeypatch, model.transformer, "forward")
    layer_calls = [_spy(monkeypatch, layer, "forward_self_attn") for layer in model.transformer.decoder.layers]
    out = _run(model, targets)
    dn = expected_dn(targets, 0)
    assert dn["pad_size"] == pad == out["dn_meta"]["pad_size"]
    args, kwargs = calls[0]
    matching = np.concatenate([model.tgt_embed.weight.numpy(), np.zeros((12, 1), np.float32)], -1)
    if pad:
        check_queries(kwargs["anchors"].numpy(), args[5].numpy(), kwargs["attn_mask"].numpy(), dn,
                      model.label_enc.weight.numpy(), model.refpoint_embed.weight.numpy(), matching)
        assert all(c[0][0][2] is kwargs["attn_mask"] for c in layer_calls)
        assert [s["pred_boxes"].shape for s in out["dn_outputs"]["aux_outputs"] + [out["dn_outputs"]]] == \
            [[2, 6, 4]] * 3
    else:
        assert kwargs["attn_mask"] is None and "dn_outputs" not in out
        np.testing.assert_array_equal(args[5].numpy(), np.broadcast_to(matching, (2, 12, 32)))
    assert out["pred_logits"].shape == [2, 12, 4]


def test_matching_outputs_do_not_see_the_dn_queries(monkeypatch):
    model, _, _ = tiny(dn=True, double=True)
    calls = _spy(monkeypatch, model.transformer, "forward")
    with_dn = _run(model, TARGETS, dtype=np.float64)
    without = _run(model, NO_GT, dtype=np.float64)
    model.eval()
    with paddle.no_grad():
        inference = model(paddle.to_tensor(IMAGES.astype(np.float64)), paddle.to_tensor(MASKS))
    assert with_dn["dn_meta"]["pad_size"] == 6 and without["dn_meta"]["pad_size"] == 0
    for other in (without, inference):
        for a, b in zip(with_dn["aux_outputs"] + [with_dn], other["aux_outputs"] + [other]):
            for k in ("pred_logits", "pred_boxes"):
                assert np.abs(a[k].numpy() - b[k].numpy()).max() <= 1e-12, k
    args, kwargs = calls[0]
    with paddle.no_grad():
        masked = model.transformer(*args, **kwargs)["hs"][-1].numpy()
        unmasked = model.transformer(*args, **dict(kwargs, attn_mask=None))["hs"][-1].numpy()
    assert np.abs(unmasked[:, 6:] - masked[:, 6:]).max() > 1e-3


@pytest.mark.parametrize("targets", [TARGETS, ONE_EMPTY, NO_GT], ids=["two_images", "one_empty", "no_gt"])
def test_dn_losses_on_every_layer(targets):
    model, criterion, _ = tiny(dn=True)
    out = _run(model, targets)
    losses = criterion(out, targets, max(float(sum(len(t["labels"]) for t in targets)), 1.0))
    dn_terms = {f"{k}_dn{s}" for k in ("loss_ce", "loss_bbox", "loss_giou") for s in ("_0", "_1", "")}
    assert set(losses) == set(criterion.weight_dict) and dn_terms < set(losses) and len(losses) == 18
    has_gt = any(len(t["labels"]) for t in targets)
    assert all((losses[k].item() > 0) == has_gt for k in dn_terms), {k: losses[k].item() for k in dn_terms}
    paddle.add_n(list(losses.values())).backward()
    assert all(p.grad is not None and bool(paddle.isfinite(p.grad).all())
               for p in model.parameters() if not p.stop_gradient)


def test_label_enc_gradients():
    """As in torch (backward of each part from its own forward, as tests/paddle_impl/test_paddle_dn_dab_detr.py
    does); a row counts above 1e-12 of the denoising part's largest: Paddle's float32 CPU softmax gives a masked key
    a weight of ~1e-28, not 0 (docs/paddle_vs_torch.md), so the matching losses reach label_enc by ~1e-29."""
    model, criterion, _ = tiny(dn=True)
    dn = expected_dn(TARGETS, 0)
    scale = None
    for part, rows in ((lambda k: "_dn" in k, set(dn["labels"][dn["valid"]])), (lambda k: "_dn" not in k, set())):
        model.clear_gradients()
        losses = criterion(_run(model), TARGETS, 3.0)
        paddle.add_n([v for k, v in losses.items() if part(k)]).backward()
        grad = model.label_enc.weight.grad
        row_norms = np.zeros(5) if grad is None else np.abs(grad.numpy()).sum(1)
        scale = scale or row_norms.max()
        assert set(np.flatnonzero(row_norms > 1e-12 * scale)) == rows


@pytest.mark.parametrize("dn", [False, True], ids=["dab", "dn"])
def test_one_step_lowers_the_loss(dn):
    model, criterion, _ = tiny(dn)
    before, after = loss_before_and_after_one_step(model, lambda: sum(criterion(_run(model), TARGETS, 3.0).values()),
                                                   lr=1e-4)
    assert after < before - 0.1, (before, after)


def test_inference_postprocess_and_targets():
    model, _, post = tiny(dn=True)
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS), TARGETS)
        results = post(out, paddle.to_tensor([[480, 640], [300, 200]]))
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs"} and results[0]["boxes"].shape == [20, 4]
    model.train()
    with pytest.raises(ValueError, match="needs the targets"):
        model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS))
