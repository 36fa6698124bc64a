"""Conditional DETR in the torch tree: outputs, the conditional cross-attention against a brute-force per-head
computation, the reference point, padding, training; the model.arch switch and the C4 backbone it uses."""
import re

import numpy as np
import pytest
import torch

from common import model_args as A
from tests.conditional_detr_case import (IMAGES, MASKS, TARGETS, decoder_layer, layer_inputs, model_cfg,
                                         params_without_gradient_expected)
from tests.torch_impl.training_checks import loss_before_and_after_one_step, params_without_gradient
from torch_impl.models import build_model
from torch_impl.models.attention import MultiheadAttention
from torch_impl.models.backbone import Backbone, ResNet, load_pretrained
from torch_impl.models.conditional_transformer import ConditionalDecoderLayer, ConditionalTransformer
from torch_impl.models.position_encoding import PositionEmbeddingSine, sine_embedding


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
    # focal loss on every layer, weights 2 / 5 / 2, nothing of the DAC-DETR family
    assert criterion.weight_dict == {f"{k}{s}": w for s in ("_0", "_1", "") for k, w in
                                     (("loss_ce", 2.0), ("loss_bbox", 5.0), ("loss_giou", 2.0))}
    assert set(losses) == set(criterion.weight_dict) and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        results = post(model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS)), torch.tensor([[480, 640], [300, 200]]))
    assert results[0]["boxes"].shape == (20, 4)  # num_select 20 of 12 queries x 4 classes


def test_parameter_layout():
    """One class and one box head for all layers; ca_qpos_proj only in layer 0; official names."""
    model, _, _ = tiny()
    names = set(model.state_dict())
    assert {"class_embed.weight", "bbox_embed.layers.2.weight", "query_embed.weight", "input_proj.weight",
            "transformer.decoder.ref_point_head.layers.1.weight", "transformer.decoder.query_scale.layers.1.weight",
            "transformer.decoder.norm.weight", "transformer.encoder.layers.1.self_attn.in_proj_weight",
            "transformer.decoder.layers.0.ca_qpos_proj.weight",
            "transformer.decoder.layers.2.ca_qpos_sine_proj.weight"} <= names
    assert not any(n.startswith(("transformer.decoder.layers.1.ca_qpos_proj",
                                 "transformer.decoder.layers.2.ca_qpos_proj", "backbone.body.layer4",
                                 "class_embed.0")) for n in names)
    assert model.input_proj.weight.shape == (32, 256, 1, 1)  # C4 of a ResNet-18


def test_every_trainable_parameter_gets_gradient():
    model, criterion, _ = tiny()
    no_grad = params_without_gradient(model, lambda: sum(_loss(model, criterion)[1].values()))
    assert tuple(no_grad) == params_without_gradient_expected()


@pytest.mark.parametrize("first", [True, False], ids=["layer0", "later_layer"])
def test_decoder_layer_matches_brute_force(first):
    """The whole layer, whose cross-attention concatenates [content; spatial] per head, against the per-head
    formula with the two dot products written separately (tests/conditional_detr_case.py), float64."""
    torch.manual_seed(0)
    layer = ConditionalDecoderLayer(32, 4, 64, 0.0, first=first).double().eval()
    for p in layer.parameters():  # non-trivial biases and norms
        torch.nn.init.normal_(p, 0, 0.3)
    inputs = layer_inputs()
    weights = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    expected = decoder_layer(weights, 4, *inputs, first=first)
    got = layer(*(torch.from_numpy(a) for a in inputs)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    if first:  # layer 0's additive positional terms matter: without them the result differs
        assert np.abs(decoder_layer(weights, 4, *inputs, first=False) - expected).max() > 1e-3


def test_multihead_attention_key_padding_mask_matches_torch():
    torch.manual_seed(0)
    ours = MultiheadAttention(16, 4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    expected = ref(q, k, k, key_padding_mask=pad, need_weights=False)[0]
    assert torch.allclose(ours(q, k, k, key_padding_mask=pad), expected, atol=1e-6)


def test_reference_point_and_spatial_queries():
    """s = sigmoid(ref_point_head(query_embed)) is one point per query, the same for every layer and image; each
    layer's boxes are offsets from it; layer l's spatial query is query_scale(output of l-1) * PE(s), PE(s) = 1
    * PE(s) in layer 0, and PE(s) is the feature map's code at s."""
    model, _, _ = tiny()
    model.eval()
    dec = model.transformer.decoder
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: seen.append(args)) for layer in dec.layers]
    with torch.no_grad():
        out = model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS))
        s = dec.ref_point_head(model.query_embed.weight).sigmoid()  # [Q, 2]
        pe = sine_embedding(s.flip(-1), 16)
        for lid, (tgt, *_, query_sine, _) in enumerate(seen):
            scale = 1.0 if lid == 0 else dec.query_scale(tgt)
            assert torch.allclose(query_sine, (scale * pe).expand_as(query_sine), atol=1e-6), lid
        for lid, layer_out in enumerate(out["aux_outputs"] + [out]):
            h = dec.norm(dec.layers[lid](*seen[lid]))
            delta = model.bbox_embed(h)
            box = torch.cat([delta[..., :2] + torch.logit(s), delta[..., 2:]], -1).sigmoid()
            assert torch.allclose(layer_out["pred_boxes"], box, atol=1e-5), lid
    for hook in hooks:
        hook.remove()
    # PE(s) at a pixel centre of a 4 x 5 map is that pixel's position code
    code = PositionEmbeddingSine(16)(torch.zeros(1, 4, 5, dtype=torch.bool))
    point = torch.tensor([(2 + 0.5) / 5, (1 + 0.5) / 4])  # (x, y) of row 1, column 2
    assert torch.allclose(sine_embedding(point.flip(-1), 16), code[0, :, 1, 2], atol=1e-5)


def test_padding_is_ignored():
    """Changing the features and position codes at padded positions changes no decoder output."""
    torch.manual_seed(0)
    tr = ConditionalTransformer(32, 4, 2, 2, 64, 0.0).eval()
    src, pos = torch.randn(2, 32, 4, 5), torch.randn(2, 32, 4, 5)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:] = True
    mask[1, :, 3:] = True
    query = torch.randn(6, 32)
    with torch.no_grad():
        hs, ref = tr(src, mask, query, pos)
        noise = torch.randn(2, 32, 4, 5) * 10
        hs2, ref2 = tr(src + noise * mask[:, None], mask, query, pos + noise * mask[:, None])
        hs3, _ = tr(src + noise * 1e-3, mask, query, pos)  # control: valid positions do matter
    for a, b in zip(hs, hs2):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(ref, ref2) and (hs3[-1] - hs[-1]).abs().max() > 1e-4


def test_one_step_lowers_the_loss():
    model, criterion, _ = tiny()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-4)
    assert after < before - 0.1, (before, after)


def test_arch_switch_rejects_keys_that_do_not_apply():
    """Keys of the DAC-DETR family: ignored at their defaults, accepted at their off value, else a one-line error
    naming the key."""
    base = model_cfg(dn=dict(enabled=True), dac=dict(enabled=True), two_stage=True, num_feature_levels=4)
    effective = A.effective(base)  # the schema defaults of these switches are the DAC-DETR release's: ignored
    assert not effective["dn"]["enabled"] and not effective["dac"]["enabled"] and not effective["two_stage"]
    assert effective["num_feature_levels"] == 1 and base["dn"]["enabled"]  # the input is not modified
    for overrides, key in [(dict(dn=dict(number=5)), "model.dn.number=5"),
                           (dict(dec_n_points=8), "model.dec_n_points=8"),
                           (dict(deform_attn_backend="kernel"), "model.deform_attn_backend='kernel'"),
                           (dict(num_feature_levels=3), "model.num_feature_levels=3"),
                           (dict(loss=dict(enc_class_weight=1.0)), "model.loss.enc_class_weight=1.0")]:
        with pytest.raises(ValueError, match="^" + re.escape(key) + " does not apply to model.arch=conditional_detr"
                           ) as err:
            A.check(model_cfg(**overrides))
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="model.arch must be one of"):
        A.check(model_cfg(arch="detr"))
    with pytest.raises(ValueError, match=r"^model.activation='prelu' does not apply to model.arch=dac_detr"):
        A.check(model_cfg(arch="dac_detr", activation="prelu"))  # the deformable layers have no activation choice
    A.check(model_cfg(mixed_selection=False, look_forward_twice=False))  # off values are fine


def test_c4_backbone():
    """backbone.last_stage 3: no layer4, C4 (stride 16) is the last level; a torchvision file's layer4 is ignored."""
    bb = Backbone("resnet18", num_levels=1, last_stage=3, frozen_stages=4)
    assert bb.strides == [16] and bb.num_channels == [256] and not hasattr(bb.body, "layer4")
    assert not any(p.requires_grad for p in bb.parameters())
    (x, m), = bb(torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
    assert x.shape == (1, 256, 4, 6) and m.shape == (1, 4, 6)
    full = ResNet("resnet18")
    assert [k for k in full.state_dict() if k not in bb.body.state_dict()] == \
        [k for k in full.state_dict() if k.startswith("layer4.")]
    with pytest.raises(ValueError, match="1 to 2 feature levels"):
        Backbone("resnet18", num_levels=3, last_stage=3)
    with pytest.raises(ValueError, match="last_stage=3 does not build"):
        A.backbone_args(model_cfg(backbone=dict(dilation=True)))


def test_c4_backbone_loads_torchvision_weights(tmp_path):
    full = ResNet("resnet18")
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    body = ResNet("resnet18", last_stage=3)
    ignored = load_pretrained(body, str(tmp_path / "r18.pth"))
    assert ignored and all(k.startswith("layer4.") for k in ignored)
    for k, v in body.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k


def test_hidden_dim_must_allow_the_sine_codes():
    with pytest.raises(ValueError, match="multiple of 4"):
        ConditionalTransformer(d_model=30, nhead=3)
