"""DAB-DETR in the torch tree: outputs, the decoder (anchor codes, w / h-modulated conditional cross-attention,
anchor updates) against a numpy brute force, detached anchors, padding, training, the model.arch switch."""
import re

import numpy as np
import pytest
import torch

from common import model_args as A
from tests.dab_detr_case import (IMAGES, MASKS, TARGETS, decoder, decoder_inputs, model_cfg,
                                 params_without_gradient_expected)
from tests.torch_impl.training_checks import loss_before_and_after_one_step, params_without_gradient
from torch_impl.models import build_model
from torch_impl.models.dab_transformer import DABTransformer
from torch_impl.models.position_encoding import anchor_code
from torch_impl.models.dac_detr import MLP


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model({"model": model_cfg(**overrides)})


def _loss(model, criterion):
    out = model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS), TARGETS)
    return out, criterion(out, TARGETS, 3.0)


def test_outputs_and_loss_terms():
    model, criterion, post = tiny()
    model.train()
    out, losses = _loss(model, criterion)
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs"}
    assert out["pred_logits"].shape == (2, 12, 4) and out["pred_boxes"].shape == (2, 12, 4)
    assert [tuple(a["pred_boxes"].shape) for a in out["aux_outputs"]] == [(2, 12, 4)] * 2
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    # focal loss on every layer, the release's weights 1 / 5 / 2, nothing of the DAC-DETR family
    assert criterion.weight_dict == {f"{k}{s}": w for s in ("_0", "_1", "") for k, w in
                                     (("loss_ce", 1.0), ("loss_bbox", 5.0), ("loss_giou", 2.0))}
    assert set(losses) == set(criterion.weight_dict) and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        results = post(model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS)), torch.tensor([[480, 640], [300, 200]]))
    assert results[0]["boxes"].shape == (20, 4)  # num_select 20 of 12 queries x 4 classes


def test_parameter_layout():
    """Anchor-box queries, one class and one box head for all layers, the release's names and shapes."""
    model, _, _ = tiny()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"refpoint_embed.weight": (12, 4), "class_embed.weight": (4, 32), "bbox_embed.layers.2.weight": (4, 32),
                "input_proj.weight": (32, 256, 1, 1), "transformer.encoder.query_scale.layers.1.weight": (32, 32),
                "transformer.decoder.ref_point_head.layers.0.weight": (32, 64),
                "transformer.decoder.ref_point_head.layers.1.weight": (32, 32),
                "transformer.decoder.ref_anchor_head.layers.1.weight": (2, 32),
                "transformer.decoder.query_scale.layers.1.weight": (32, 32), "transformer.decoder.norm.weight": (32,),
                "transformer.encoder.layers.1.self_attn.in_proj_weight": (96, 32),
                "transformer.decoder.layers.0.ca_qpos_proj.weight": (32, 32),
                "transformer.decoder.layers.2.ca_qpos_sine_proj.weight": (32, 32),
                "transformer.encoder.layers.0.activation.weight": (1,),
                "transformer.decoder.layers.2.activation.weight": (1,)}
    assert {k: shapes.get(k) for k in expected} == expected
    absent = ("query_embed", "transformer.decoder.bbox_embed", "class_embed.0", "backbone.body.layer4",
              "transformer.decoder.layers.1.ca_qpos_proj", "transformer.decoder.layers.2.ca_qpos_proj")
    assert not any(n.startswith(absent) for n in shapes)


def test_every_trainable_parameter_gets_gradient():
    model, criterion, _ = tiny()
    no_grad = params_without_gradient(model, lambda: sum(_loss(model, criterion)[1].values()))
    assert tuple(no_grad) == params_without_gradient_expected()


@pytest.mark.parametrize("modulate", [True, False], ids=["modulated", "control"])
def test_decoder_matches_brute_force(modulate):
    """The whole decoder (3 layers: anchor codes, positional and spatial queries, w / h modulation, the
    conditional cross-attention per head, anchor updates) against tests/dab_detr_case.py's numpy formulas,
    float64; the control (no modulation in the numpy version) must differ."""
    torch.manual_seed(0)
    tr = DABTransformer(32, 4, 0, 3, 64, 0.0).double().eval()
    box = MLP(32, 32, 4, 3).double()
    for p in list(tr.decoder.parameters()) + list(box.parameters()):  # non-trivial biases, norms, box updates
        torch.nn.init.normal_(p, 0, 0.3)
    memory, pos, anchor, mask = decoder_inputs()
    weights = {k: v.numpy() for k, v in tr.decoder.state_dict().items()}
    hs_np, refs_np = decoder(weights, {k: v.numpy() for k, v in box.state_dict().items()}, 4, memory, pos, anchor,
                             mask, modulate=modulate)
    with torch.no_grad():
        tgt = torch.zeros(2, 5, 32, dtype=torch.float64)
        hs, refs = tr.decoder(tgt, *(torch.from_numpy(a) for a in (memory, pos, anchor, mask)), box)
    err = max(np.abs(a.numpy() - b).max() for a, b in zip(hs + refs, hs_np + refs_np))
    if modulate:
        assert err <= 1e-12, err
        assert min(np.abs(refs[i + 1].numpy() - refs[i].numpy()).max() for i in range(2)) > 1e-2  # anchors move
    else:
        assert err > 1e-3, err


def test_anchors_update_layer_by_layer_and_are_detached():
    """Layer 0 attends with sigmoid(refpoint_embed); layer l + 1 with sigmoid(bbox_embed(out_l) + logit(a_l)) from
    the layer's output before `norm`, detached: its positional query has no gradient path to bbox_embed or
    refpoint_embed. Layer l's boxes are predicted from the undetached a_l (as in the release)."""
    model, _, _ = tiny()
    model.eval()
    with torch.no_grad():
        model.bbox_embed.layers[-1].weight.normal_(0, 0.3)
    dec = model.transformer.decoder
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: seen.append(args)) for layer in dec.layers]
    images, masks = torch.from_numpy(IMAGES), torch.from_numpy(MASKS)
    x, mask = model.backbone(images, masks)[-1]
    hs, refs = model.transformer(model.input_proj(x), mask, model.refpoint_embed.weight, model.position_embedding(mask),
                                 model.bbox_embed)
    out = model(images, masks)
    for hook in hooks:
        hook.remove()
    assert torch.equal(refs[0], model.refpoint_embed.weight.sigmoid().expand(2, -1, -1))
    for lid in range(3):
        tgt, query_pos = seen[lid][0], seen[lid][3]
        assert torch.allclose(query_pos, dec.ref_point_head(anchor_code(refs[lid], 32)), atol=1e-6), lid
        if lid:  # the update from the previous layer's raw output (= this layer's input)
            update = (model.bbox_embed(tgt) + torch.logit(refs[lid - 1])).sigmoid()
            assert torch.allclose(refs[lid], update, atol=1e-6) and (refs[lid] - refs[lid - 1]).abs().max() > 1e-2
        box = (model.bbox_embed(hs[lid]) + torch.logit(refs[lid])).sigmoid()
        layer_out = (out["aux_outputs"] + [out])[lid]
        assert torch.allclose(layer_out["pred_boxes"], box, atol=1e-6), lid
        heads = [model.refpoint_embed.weight] + list(model.bbox_embed.parameters())
        grads = torch.autograd.grad(query_pos.sum(), heads, allow_unused=True, retain_graph=True)
        assert (grads[0] is not None) == (lid == 0) and all(g is None for g in grads[1:]), lid
        if lid:  # the prediction reference keeps its graph: layer l's box loss trains the previous update
            grads = torch.autograd.grad(refs[lid].sum(), heads[1:], retain_graph=True)
            assert all(g.abs().max() > 0 for g in grads[-2:]), lid


def test_padding_is_ignored():
    """Changing the features and position codes at padded positions changes no decoder output."""
    torch.manual_seed(0)
    tr = DABTransformer(32, 4, 2, 2, 64, 0.0).eval()
    box = MLP(32, 32, 4, 3)
    src, pos = torch.randn(2, 32, 4, 5), torch.randn(2, 32, 4, 5)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:] = True
    mask[1, :, 3:] = True
    anchors = torch.randn(6, 4)
    with torch.no_grad():
        hs, refs = tr(src, mask, anchors, pos, box)
        noise = torch.randn(2, 32, 4, 5) * 10
        hs2, refs2 = tr(src + noise * mask[:, None], mask, anchors, pos + noise * mask[:, None], box)
        hs3, _ = tr(src + noise * 1e-3, mask, anchors, pos, box)  # control: valid positions do matter
    for a, b in zip(hs + refs, hs2 + refs2):
        assert torch.allclose(a, b, atol=1e-5)
    assert (hs3[-1] - hs[-1]).abs().max() > 1e-4


def test_one_step_lowers_the_loss():
    model, criterion, _ = tiny()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-4)
    assert after < before - 0.1, (before, after)


def test_arch_switch_rejects_keys_that_do_not_apply():
    """As for conditional_detr: keys of the DAC-DETR family are ignored at their defaults, accepted at their off
    value, else a one-line error naming the key; model.dn is DN-DETR's (tests/test_denoising_dn_detr.py), with
    contrastive off."""
    effective = A.effective(model_cfg(dac=dict(enabled=True), two_stage=True, num_feature_levels=4))
    assert not effective["dac"]["enabled"] and not effective["two_stage"] and effective["num_feature_levels"] == 1
    assert not effective["dn"]["enabled"] and not A.effective(model_cfg(dn=dict(enabled=True)))["dn"]["contrastive"]
    for overrides, key in [(dict(dac=dict(k=3)), "model.dac.k=3"),
                           (dict(num_feature_levels=3), "model.num_feature_levels=3")]:
        with pytest.raises(ValueError, match="^" + re.escape(key) + " does not apply to model.arch=dab_detr"):
            A.check(model_cfg(**overrides))
    # the anchors' codes have the release's fixed temperature; model.pe_temperature is the pixels' only
    assert "pe_temperature" not in A.transformer_args(effective) and A.detr_args(effective)["pe_temperature"] == 20.0


def test_hidden_dim_must_allow_the_sine_codes():
    with pytest.raises(ValueError, match="multiple of 4"):
        DABTransformer(d_model=30, nhead=3)
