"""Conditional DETR in the Paddle tree: the torch tests' mirror (outputs, the conditional cross-attention against
a brute-force per-head computation, the reference point, padding, training, the C4 backbone); whole-model parity
with torch is tests/test_conditional_detr_parity.py."""
import numpy as np
import paddle
import pytest
import torch

from convert.frameworks import paddle_linear_weights
from convert.rules import paddle_name_to_torch
from paddle_impl.models import build_model
from paddle_impl.models.attention import MultiheadAttention
from paddle_impl.models.backbone import Backbone, ResNet, load_pretrained
from paddle_impl.models.conditional_transformer import ConditionalDecoderLayer, ConditionalTransformer
from paddle_impl.models.position_encoding import PositionEmbeddingSine, sine_embedding
from tests.conditional_detr_case import (IMAGES, MASKS, TARGETS, decoder_layer, layer_inputs, model_cfg,
                                         params_without_gradient_expected)
from tests.paddle_impl.training_checks import loss_before_and_after_one_step, params_without_gradient


def tiny(**overrides):
    paddle.seed(0)
    return build_model({"model": model_cfg(**overrides)})


def _loss(model, criterion):
    out = model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS), TARGETS)
    return out, criterion(out, TARGETS, 3.0)


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
                                     (("loss_ce", 2.0), ("loss_bbox", 5.0), ("loss_giou", 2.0))}
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
    assert "transformer.decoder.layers.0.ca_qpos_proj.weight" in linear and "class_embed.weight" in linear


@pytest.mark.parametrize("first", [True, False], ids=["layer0", "later_layer"])
def test_decoder_layer_matches_brute_force(first):
    """As in the torch tests: the whole layer against the per-head formula (tests/conditional_detr_case.py)."""
    paddle.seed(0)
    layer = ConditionalDecoderLayer(32, 4, 64, 0.0, first=first)
    layer.to(dtype="float64")
    layer.eval()
    for p in layer.parameters():
        p.set_value(paddle.normal(0.0, 0.3, p.shape).astype("float64"))
    inputs = layer_inputs()
    linear = paddle_linear_weights(layer)
    weights = {k: (v.numpy().T if k in linear else v.numpy()) for k, v in layer.state_dict().items()}
    expected = decoder_layer(weights, 4, *inputs, first=first)
    got = layer(*(paddle.to_tensor(a) for a in inputs)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    if first:
        assert np.abs(decoder_layer(weights, 4, *inputs, first=False) - expected).max() > 1e-3


def test_multihead_attention_key_padding_mask_matches_torch():
    paddle.seed(0)
    ours = MultiheadAttention(16, 4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict({k: torch.from_numpy(v.numpy().T if k == "out_proj.weight" else v.numpy())
                         for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 5, 16)).astype(np.float32), rng.standard_normal((2, 7, 16)).astype(np.float32)
    pad = np.zeros((2, 7), bool)
    pad[1, 4:] = True
    expected = ref(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(k),
                   key_padding_mask=torch.from_numpy(pad), need_weights=False)[0].detach().numpy()
    got = ours(paddle.to_tensor(q), paddle.to_tensor(k), paddle.to_tensor(k), key_padding_mask=paddle.to_tensor(pad))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def test_reference_point_and_spatial_queries():
    """s is one point per query, the same for every layer and image; boxes are offsets from it; layer l's spatial
    query is query_scale(output of l-1) * PE(s) (PE(s) in layer 0), PE(s) the feature map's code at s."""
    model, _, _ = tiny()
    model.eval()
    dec = model.transformer.decoder
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: seen.append(args)) for layer in dec.layers]
    with paddle.no_grad():
        out = model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS))
        s = paddle.nn.functional.sigmoid(dec.ref_point_head(model.query_embed.weight))  # [Q, 2]
        pe = sine_embedding(paddle.flip(s, axis=[-1]), 16)
        for lid, (tgt, *_, query_sine, _) in enumerate(seen):
            scale = 1.0 if lid == 0 else dec.query_scale(tgt)
            np.testing.assert_allclose(query_sine.numpy(), (scale * pe).expand(query_sine.shape).numpy(),
                                       rtol=0, atol=1e-6)
        logit = np.log(s.numpy() / (1 - s.numpy()))
        for lid, layer_out in enumerate(out["aux_outputs"] + [out]):
            delta = model.bbox_embed(dec.norm(dec.layers[lid](*seen[lid]))).numpy()
            box = 1 / (1 + np.exp(-np.concatenate([delta[..., :2] + logit, delta[..., 2:]], -1)))
            np.testing.assert_allclose(layer_out["pred_boxes"].numpy(), box, rtol=0, atol=1e-5)
    for hook in hooks:
        hook.remove()
    code = PositionEmbeddingSine(16)(paddle.zeros([1, 4, 5], dtype="bool"))
    point = paddle.to_tensor([(1 + 0.5) / 4, (2 + 0.5) / 5])  # (y, x) of row 1, column 2
    np.testing.assert_allclose(sine_embedding(point, 16).numpy(), code[0, :, 1, 2].numpy(), rtol=0, atol=1e-5)


def test_padding_is_ignored():
    paddle.seed(0)
    tr = ConditionalTransformer(32, 4, 2, 2, 64, 0.0)
    tr.eval()
    src, pos = paddle.randn([2, 32, 4, 5]), paddle.randn([2, 32, 4, 5])
    mask_np = np.zeros((2, 4, 5), bool)
    mask_np[1, 3:] = True
    mask_np[1, :, 3:] = True
    mask, query = paddle.to_tensor(mask_np), paddle.randn([6, 32])
    noise = paddle.randn([2, 32, 4, 5]) * 10 * paddle.to_tensor(mask_np[:, None].astype(np.float32))
    with paddle.no_grad():
        hs, ref = tr(src, mask, query, pos)
        hs2, ref2 = tr(src + noise, mask, query, pos + noise)
    for a, b in zip(hs, hs2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5)
    assert np.array_equal(ref.numpy(), ref2.numpy()) and np.abs(noise.numpy()).max() > 1


def test_one_step_lowers_the_loss():
    model, criterion, _ = tiny()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-4)
    assert after < before - 0.1, (before, after)


def test_c4_backbone_loads_torchvision_weights(tmp_path):
    from torch_impl.models.backbone import ResNet as TorchResNet

    full = TorchResNet("resnet18")
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    body = ResNet("resnet18", last_stage=3)
    ignored = load_pretrained(body, str(tmp_path / "r18.pth"))
    assert ignored and all(k.startswith("layer4.") for k in ignored)
    bb = Backbone("resnet18", num_levels=1, last_stage=3)
    assert bb.strides == [16] and bb.num_channels == [256] and not hasattr(bb.body, "layer4")
    (x, m), = bb(paddle.randn([1, 3, 64, 96]), paddle.zeros([1, 64, 96], dtype="bool"))
    assert x.shape == [1, 256, 4, 6] and m.shape == [1, 4, 6]
