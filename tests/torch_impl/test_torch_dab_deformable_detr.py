"""DAB-Deformable-DETR and DN-Deformable-DETR (model.arch dab_deformable_detr) in the torch tree: the parameters,
each decoder layer's positional query made from its own reference box (against its definition), boxes refined
without look-forward-twice, DN-DETR's queries and mask (matching queries blind to them), the denoising losses,
label_enc's gradients, one training step, and the arch's config checks."""
import re

import numpy as np
import pytest
import torch

from common import model_args as A
from tests.dab_deformable_detr_case import (IMAGES, MASKS, NO_GT, ONE_EMPTY, TARGETS, check_queries, expected_dn,
                                            model_cfg, query_pos)
from tests.torch_impl.training_checks import loss_before_and_after_one_step
from torch_impl.models import build_model


def tiny(dn=False, double=False):
    torch.manual_seed(0)
    model, criterion, post = build_model({"model": model_cfg(dn)})
    with torch.no_grad():  # moving boxes: every box head's last layer starts at 0 (release init)
        gen = torch.Generator().manual_seed(1)
        for head in model.bbox_embed:
            head.layers[-1].weight.normal_(0, 0.1, generator=gen)
    model.train()
    return (model.double() if double else model), criterion, post


def _run(model, targets=TARGETS, seed=0, dtype=np.float32):
    return model(torch.from_numpy(IMAGES.astype(dtype)), torch.from_numpy(MASKS), targets,
                 dn_rng=np.random.default_rng(seed))


def _spy(monkeypatch, obj, name):
    """Records the (args, kwargs) of every call of obj.name."""
    calls, inner = [], getattr(obj, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return inner(*args, **kwargs)
    monkeypatch.setattr(obj, name, spy)
    return calls


def test_parameter_layout():
    """Anchor queries (tgt_embed, refpoint_embed), the decoder's query_scale / ref_point_head, one class and box head
    per layer, no two-stage or one-stage Deformable-DETR query parameters; DN-Deformable-DETR: D - 1 features."""
    for dn, feats in ((False, 32), (True, 31)):
        model, criterion, _ = tiny(dn)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        expected = {"tgt_embed.weight": (12, feats), "refpoint_embed.weight": (12, 4),
                    "transformer.decoder.query_scale.layers.0.weight": (32, 32),
                    "transformer.decoder.query_scale.layers.1.weight": (32, 32),
                    "transformer.decoder.ref_point_head.layers.0.weight": (32, 64),
                    "transformer.decoder.ref_point_head.layers.1.weight": (32, 32),
                    "class_embed.2.weight": (4, 32), "bbox_embed.2.layers.2.weight": (4, 32),
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
    """float64: layer l's query_pos equals ref_point_head(PE(r_l scaled to the first level)) (x query_scale(output of
    layer l - 1) for l > 0), r_0 = sigmoid(refpoint_embed) and r_l the box of layer l - 1; the box of layer l is
    sigmoid(bbox_embed_l(h_l) + logit(r_l)). Both to 1e-10."""
    model, _, _ = tiny(double=True)
    model.eval()
    layers = model.transformer.decoder.layers
    calls = [_spy(monkeypatch, layer, "forward_self_attn") for layer in layers]
    dec_calls = _spy(monkeypatch, model.transformer.decoder, "forward")
    with torch.no_grad():
        out = model(torch.from_numpy(IMAGES.astype(np.float64)), torch.from_numpy(MASKS))
    valid_ratio = dec_calls[0][0][5][:, 0].numpy()
    assert valid_ratio[0].tolist() == [1.0, 1.0] and (valid_ratio[1] < 0.8).all()  # image 1 is padded
    w = {k: v.numpy() for k, v in model.transformer.decoder.state_dict().items()}
    boxes = [a["pred_boxes"].numpy() for a in out["aux_outputs"]] + [out["pred_boxes"].numpy()]
    reference = torch.sigmoid(model.refpoint_embed.weight).detach().numpy()[None].repeat(2, 0)
    references = [reference] + boxes[:-1]  # r_0 the anchors, then each layer's box (no look-forward-twice)
    for lid in range(3):
        (hidden, pos, _), _ = calls[lid][0]
        expected = query_pos(w, references[lid], valid_ratio, None if lid == 0 else hidden.numpy())
        np.testing.assert_allclose(pos.numpy(), expected, rtol=0, atol=1e-10, err_msg=str(lid))
        if lid > 0:  # layer lid - 1's box from its output (this layer's input) and its reference
            delta = model.bbox_embed[lid - 1](hidden).detach().numpy()
            logit = np.log(references[lid - 1] / (1 - references[lid - 1]))
            np.testing.assert_allclose(boxes[lid - 1], 1 / (1 + np.exp(-(delta + logit))), rtol=0, atol=1e-10)
    assert np.abs(boxes[1] - boxes[0]).max() > 1e-3  # the boxes move from layer to layer


def test_no_look_forward_twice():
    """The last layer's boxes are relative to the detached box of the layer before: their loss trains the last box
    head but no earlier one."""
    model, _, _ = tiny()
    out = _run(model)
    out["pred_boxes"].sum().backward()
    grads = [head.layers[-1].weight.grad for head in model.bbox_embed]
    assert grads[2].abs().max() > 1e-3 and all(g is None or not g.any() for g in grads[:2])


@pytest.mark.parametrize("targets, pad", [(TARGETS, 6), (ONE_EMPTY, 6), (NO_GT, 0)],
                         ids=["two_images", "one_empty", "no_gt"])
def test_dn_queries_reach_the_decoder(monkeypatch, targets, pad):
    """3 groups x max 2 GT = 6 denoising queries before the 12 matching ones: anchors = logits of prepare_dn's
    noised boxes then refpoint_embed, content = label_enc(noised label) ++ 1 (empty slots 0) then tgt_embed ++ 0,
    the group mask in every decoder layer's self-attention; outputs split 6 / 12."""
    model, _, _ = tiny(dn=True)
    calls = _spy(monkeypatch, model.transformer, "forward")
    layer_calls = [_spy(monkeypatch, layer, "forward_self_attn") for layer in model.transformer.decoder.layers]
    out = _run(model, targets)
    dn = expected_dn(targets, 0)
    assert dn["pad_size"] == pad == out["dn_meta"]["pad_size"]
    args, kwargs = calls[0]
    matching = torch.cat([model.tgt_embed.weight, torch.zeros(12, 1)], -1).detach().numpy()
    if pad:
        check_queries(kwargs["anchors"].detach().numpy(), args[5].detach().numpy(), kwargs["attn_mask"].numpy(), dn,
                      model.label_enc.weight.detach().numpy(), model.refpoint_embed.weight.detach().numpy(), matching)
        assert all(c[0][0][2] is kwargs["attn_mask"] for c in layer_calls)
        assert [tuple(s["pred_boxes"].shape) for s in out["dn_outputs"]["aux_outputs"] + [out["dn_outputs"]]] == \
            [(2, 6, 4)] * 3
    else:
        assert kwargs["attn_mask"] is None and "dn_outputs" not in out
        np.testing.assert_array_equal(args[5].detach().numpy(), np.broadcast_to(matching, (2, 12, 32)))
    assert out["pred_logits"].shape == (2, 12, 4)


def test_matching_outputs_do_not_see_the_dn_queries(monkeypatch):
    """float64: every layer's matching outputs with 6 denoising queries in front equal those of a training forward
    without any (a batch without GT) and of inference, to 1e-12; the control, the same queries without the mask,
    changes them."""
    model, _, _ = tiny(dn=True, double=True)
    calls = _spy(monkeypatch, model.transformer, "forward")
    with_dn = _run(model, TARGETS, dtype=np.float64)
    without = _run(model, NO_GT, dtype=np.float64)
    model.eval()
    with torch.no_grad():
        inference = model(torch.from_numpy(IMAGES.astype(np.float64)), torch.from_numpy(MASKS))
    assert with_dn["dn_meta"]["pad_size"] == 6 and without["dn_meta"]["pad_size"] == 0
    for other in (without, inference):
        for a, b in zip(with_dn["aux_outputs"] + [with_dn], other["aux_outputs"] + [other]):
            for k in ("pred_logits", "pred_boxes"):
                assert (a[k] - b[k]).abs().max() <= 1e-12, k
    args, kwargs = calls[0]
    with torch.no_grad():
        masked = model.transformer(*args, **kwargs)["hs"][-1]
        unmasked = model.transformer(*args, **dict(kwargs, attn_mask=None))["hs"][-1]
    assert (unmasked[:, 6:] - masked[:, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize("targets", [TARGETS, ONE_EMPTY, NO_GT], ids=["two_images", "one_empty", "no_gt"])
def test_dn_losses_on_every_layer(targets):
    """Focal class, L1 and GIoU reconstruction terms *_dn on each of the 3 layers, positive with GT, zero (present
    and differentiable) without any GT in the batch; every parameter gets a gradient (label_enc too, for DDP)."""
    model, criterion, _ = tiny(dn=True)
    out = _run(model, targets)
    losses = criterion(out, targets, max(float(sum(len(t["labels"]) for t in targets)), 1.0))
    dn_terms = {f"{k}_dn{s}" for k in ("loss_ce", "loss_bbox", "loss_giou") for s in ("_0", "_1", "")}
    assert set(losses) == set(criterion.weight_dict) and dn_terms < set(losses) and len(losses) == 18
    has_gt = any(len(t["labels"]) for t in targets)
    assert all((losses[k].item() > 0) == has_gt for k in dn_terms), {k: losses[k].item() for k in dn_terms}
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_label_enc_gradients():
    """The denoising losses train label_enc's rows of the noised labels and nothing else of it; the matching
    losses none of it (their content is tgt_embed and the mask hides the denoising queries)."""
    model, criterion, _ = tiny(dn=True)
    out = _run(model)
    losses = criterion(out, TARGETS, 3.0)
    dn = expected_dn(TARGETS, 0)
    for part, rows in ((lambda k: "_dn" in k, set(dn["labels"][dn["valid"]])), (lambda k: "_dn" not in k, set())):
        grad, = torch.autograd.grad(sum(v for k, v in losses.items() if part(k)), model.label_enc.weight,
                                    retain_graph=True, allow_unused=True)
        got = set() if grad is None else set(np.flatnonzero(grad.abs().sum(1).numpy() > 0))
        assert got == rows


@pytest.mark.parametrize("dn", [False, True], ids=["dab", "dn"])
def test_one_step_lowers_the_loss(dn):
    model, criterion, _ = tiny(dn)
    before, after = loss_before_and_after_one_step(model, lambda: sum(criterion(_run(model), TARGETS, 3.0).values()),
                                                   lr=1e-4)
    assert after < before - 0.1, (before, after)


def test_inference_postprocess_and_targets():
    """No denoising at inference (targets ignored), top-k detections; training with dn needs the targets."""
    model, _, post = tiny(dn=True)
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS), TARGETS)
        results = post(out, torch.tensor([[480, 640], [300, 200]]))
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs"} and results[0]["boxes"].shape == (20, 4)
    model.train()
    with pytest.raises(ValueError, match="needs the targets"):
        model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS))


def test_arch_switch_rejects_keys_that_do_not_apply():
    """One-stage, no look-forward-twice, no C-decoder, plain denoising: those keys are accepted at their off value
    (or ignored at their default) and otherwise a one-line error naming the key; the deformable keys apply."""
    effective = A.effective(model_cfg(dn=True, two_stage=True, mixed_selection=True, look_forward_twice=True,
                                      dac=dict(enabled=True)))
    assert not (effective["two_stage"] or effective["mixed_selection"] or effective["look_forward_twice"]
                or effective["dac"]["enabled"] or effective["dn"]["contrastive"])
    assert A.transformer_args(effective)["dab"] and A.detr_args(effective)["dn"]["number"] == 3
    for overrides, key in [(dict(dac=dict(k=3)), "model.dac.k=3"),
                           (dict(activation="prelu"), "model.activation='prelu'"),
                           (dict(loss=dict(enc_class_weight=1.0)), "model.loss.enc_class_weight=1.0")]:
        message = f"{key} does not apply to model.arch=dab_deformable_detr"
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            A.check(model_cfg(**overrides))
    A.check(model_cfg(enc_n_points=2, dec_n_points=2, num_feature_levels=3, deform_attn_backend="reference"))
