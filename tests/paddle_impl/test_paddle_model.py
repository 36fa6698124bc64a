"""The assembled Paddle detector: outputs, parameter sharing, empty images, variants, release layout, and parity
with torch_impl (whole forward in eval and training mode, gradients).

Where a test is about the model rather than the losses, a surrogate loss (a fixed random projection of the
outputs) stands in for the criterion; the loss-based tests of tests/torch_impl/test_torch_model.py (every parameter
gets a gradient, one step reduces the loss, overfitting) use the criterion from build_model.
"""
import numpy as np
import paddle
import pytest
import torch

from common import model_args as A
from common.config.fields import Field
from common.config.model_schema import MODEL
from convert.frameworks import paddle_linear_weights, torch_module_to_paddle
from paddle_impl.models import build_model
from paddle_impl.models.backbone import Backbone
from paddle_impl.models.dac_detr import DACDETR
from paddle_impl.models.deformable_transformer import DeformableTransformer
from tests.paddle_impl.training_checks import loss_before_and_after_one_step
from torch_impl.models import attention as pt_attention
from torch_impl.models import backbone as pt_backbone
from torch_impl.models import dac_detr as pt_detr
from torch_impl.models import deformable_transformer as pt_tr


def _fill(schema, overrides):
    return {k: (overrides.get(k, v.default) if isinstance(v, Field) else _fill(v, overrides.get(k, {})))
            for k, v in schema.items()}


def _model_cfg(**overrides):
    """A small DAC-DETR (cdn + ice) for CPU tests; overrides are nested dicts of model keys."""
    base = dict(num_classes=4, backbone=dict(name="resnet18", frozen_stages=1), hidden_dim=32, nheads=4,
                enc_layers=2, dec_layers=2, dim_feedforward=64, num_queries=30, dn=dict(number=10),
                deform_attn_backend="reference")
    for k, v in overrides.items():
        base[k] = dict(base.get(k, {}), **v) if isinstance(v, dict) else v
    return _fill(MODEL, base)


def tiny(**overrides):
    m = _model_cfg(**overrides)
    paddle.seed(0)
    return DACDETR(Backbone(**A.backbone_args(m)), DeformableTransformer(**A.transformer_args(m)), **A.detr_args(m))


def tiny_torch(**overrides):
    m = _model_cfg(**overrides)
    torch.manual_seed(0)
    return pt_detr.DACDETR(pt_backbone.Backbone(**A.backbone_args(m)),
                           pt_tr.DeformableTransformer(**A.transformer_args(m)), **A.detr_args(m))


_rng = np.random.default_rng(0)
IMAGES = _rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
MASKS = np.zeros((2, 64, 64), dtype=bool)
MASKS[1, :, 48:] = True
TARGETS = [{"labels": np.array([1, 3]), "boxes": np.array([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]], np.float32)},
           {"labels": np.array([2]), "boxes": np.array([[0.4, 0.5, 0.3, 0.3]], np.float32)}]
EMPTY = {"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4), np.float32)}


def _forward(model, targets=TARGETS, seed=0, dtype="float32"):
    return model(paddle.to_tensor(IMAGES.astype(dtype)), paddle.to_tensor(MASKS), targets,
                 dn_rng=np.random.default_rng(seed))


def _flat(out):
    """Every output tensor of the detector's dict, in a fixed order: [(name, tensor)]."""
    items = []
    for key in sorted(k for k in out if k != "dn_meta"):
        value = out[key]
        if isinstance(value, dict):
            items += [(f"{key}.{n}", t) for n, t in _flat(value)]
        elif isinstance(value, list):
            for i, layer in enumerate(value):
                items += [(f"{key}.{i}.{n}", t) for n, t in _flat(layer)]
        else:
            items.append((key, value))
    return items


def _surrogate(items, to_tensor, seed=1):
    """A fixed random projection of every output: a loss that reaches everything the outputs depend on."""
    rng = np.random.default_rng(seed)
    return sum((t * to_tensor(rng.standard_normal(tuple(t.shape)))).sum() for _, t in items)


def _pd_tensor(dtype):
    return lambda a: paddle.to_tensor(a.astype(dtype))


def test_training_outputs():
    model = tiny()
    model.train()
    out = _forward(model)
    q, c, s = 30, 4, 8 * 8 + 4 * 4 + 2 * 2 + 1  # 4 levels at strides 8..64
    pad = out["dn_meta"]["pad_size"]
    assert (out["dn_meta"]["num_groups"], pad) == (5, 20)  # 10 // 2 groups of 2 x 2 slots
    for stream, n in (("", q), ("dn_outputs", pad), ("c_outputs", q), ("c_dn_outputs", pad)):
        s_out = out[stream] if stream else out
        assert s_out["pred_logits"].shape == [2, n, c] and s_out["pred_boxes"].shape == [2, n, 4]
        assert len(s_out["aux_outputs"]) == 1 and s_out["aux_outputs"][0]["pred_boxes"].shape == [2, n, 4]
    assert out["enc_outputs"]["pred_logits"].shape == [2, s, c]
    boxes = out["pred_boxes"].numpy()
    assert ((boxes > 0) & (boxes < 1)).all()


def test_eval_mode_has_no_c_decoder_or_denoising():
    model = tiny()
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS))
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs", "enc_outputs"}
    assert out["pred_logits"].shape == [2, 30, 4]


def test_c_decoder_adds_no_parameters():
    with_dac = tiny()
    without = tiny(dac=dict(enabled=False))
    shapes = lambda m: [(n, tuple(p.shape)) for n, p in m.named_parameters()]
    assert shapes(with_dac) == shapes(without)
    no_dn = tiny(dn=dict(enabled=False))
    assert [n for n, _ in shapes(with_dac) if n not in dict(shapes(no_dn))] == ["label_enc.weight"]
    assert with_dac.label_enc.weight.shape == [5, 32]  # num_classes + 1 rows


def test_c_stream_shares_weights_and_skips_later_self_attention():
    model = tiny()
    model.train()
    out = _forward(model)
    items = [(n, t) for n, t in _flat(out) if n.startswith("c_outputs")]
    assert len(items) == 4  # 2 layers x (logits, boxes)
    _surrogate(items, _pd_tensor("float32")).backward()
    layers = model.transformer.decoder.layers
    assert layers[1].cross_attn.value_proj.weight.grad.abs().sum() > 0
    assert model.class_embed[1].weight.grad.abs().sum() > 0 and model.query_embed.weight.grad.abs().sum() > 0
    # the C-stream enters after layer 0's self-attention and never goes through layer 1's
    assert layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
    grad = layers[1].self_attn.in_proj_weight.grad
    assert grad is None or not grad.numpy().any()


@pytest.mark.parametrize("targets", [[TARGETS[0], EMPTY], [EMPTY, EMPTY]], ids=["one_empty", "all_empty"])
def test_images_without_objects(targets):
    model = tiny()
    model.train()
    out = _forward(model, targets)
    pad = out["dn_meta"]["pad_size"]
    assert pad == (0 if targets[0] is EMPTY else 20)
    assert ("dn_outputs" in out) == (pad > 0) and ("c_dn_outputs" in out) == (pad > 0)
    items = _flat(out)
    assert all(np.isfinite(t.numpy()).all() for _, t in items if "enc_outputs" not in _)
    _surrogate(items, _pd_tensor("float32")).backward()
    assert model.label_enc.weight.grad is not None  # still in the graph (data-parallel needs every parameter)


def test_tensor_targets_give_the_same_outputs():
    model = tiny()
    model.train()
    from_numpy = _flat(_forward(model))
    as_tensors = [{"labels": paddle.to_tensor(t["labels"]), "boxes": paddle.to_tensor(t["boxes"])} for t in TARGETS]
    from_tensors = _flat(_forward(model, as_tensors))
    assert [n for n, _ in from_numpy] == [n for n, _ in from_tensors]
    assert all(np.array_equal(a.numpy(), b.numpy()) for (_, a), (_, b) in zip(from_numpy, from_tensors))


def test_training_without_targets_is_an_error():
    model = tiny()
    model.train()
    with pytest.raises(ValueError, match="needs the targets"):
        model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS))


@pytest.mark.parametrize("overrides, keys", [
    (dict(dn=dict(enabled=False), dac=dict(enabled=False), mixed_selection=False, look_forward_twice=False),
     set()),                                                                    # deformable_detr (paper)
    (dict(dac=dict(enabled=False)), {"dn_meta", "dn_outputs"}),                 # dino
    (dict(dn=dict(contrastive=False, number=2)), {"dn_meta", "dn_outputs", "c_outputs", "c_dn_outputs"}),
    (dict(two_stage=False, mixed_selection=False, dn=dict(enabled=False)), {"c_outputs"}),  # one-stage
    (dict(num_feature_levels=1, num_queries=4), {"dn_meta", "dn_outputs", "c_outputs", "c_dn_outputs"}),
])
def test_variants_train(overrides, keys):
    model = tiny(**overrides)
    model.train()
    out = _forward(model)
    base = {"pred_logits", "pred_boxes", "aux_outputs"} | ({"enc_outputs"} if model.two_stage else set())
    assert set(out) == base | keys
    _surrogate(_flat(out), _pd_tensor("float32")).backward()
    assert model.class_embed[0].weight.grad.abs().sum() > 0
    if overrides.get("num_feature_levels") == 1:  # 2 x 2 tokens at stride 32
        assert out["enc_outputs"]["pred_logits"].shape == [2, 4, 4]


def test_release_layout_r50_dac_cdn_ice():
    """Same names and shapes as the torch tree's release layout (Linear weights as Paddle's [in, out]):
    576 entries, 47,739,225 parameters of which 47,516,825 trainable."""
    m = _fill(MODEL, {"num_classes": 91})
    model = DACDETR(Backbone(**A.backbone_args(m)), DeformableTransformer(**A.transformer_args(m)), **A.detr_args(m))
    sd = model.state_dict()
    assert len(sd) == 632 - 56
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == 47739225
    assert sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient) == 47516825
    expected = {"transformer.level_embed": [4, 256], "transformer.pos_trans.weight": [512, 512],
                "transformer.decoder.layers.5.self_attn.in_proj_weight": [768, 256],
                "transformer.encoder.layers.5.self_attn.sampling_offsets.weight": [256, 256],
                "transformer.decoder.layers.0.cross_attn.attention_weights.weight": [256, 128],
                "class_embed.6.weight": [256, 91], "bbox_embed.6.layers.2.weight": [256, 4],
                "query_embed.weight": [900, 256], "label_enc.weight": [92, 256],
                "input_proj.3.0.weight": [256, 2048, 3, 3], "backbone.body.layer4.2.bn3._variance": [2048]}
    for k, shape in expected.items():
        assert list(sd[k].shape) == shape, k
    assert not any(k.startswith(("transformer.decoder.class_embed", "transformer.decoder.bbox_embed")) for k in sd)


def test_init_follows_torch():
    """Deterministic parts equal torch's; the random parts have torch's distributions (Paddle's own defaults
    differ: Xavier Linear weights with zero biases, Xavier embeddings)."""
    pd, pt = tiny(), tiny_torch()
    sd_t = {k: v.detach().numpy() for k, v in pt.state_dict().items()}
    prior = -np.log(99.0)
    for i in range(3):
        np.testing.assert_allclose(pd.class_embed[i].bias.numpy(), prior, rtol=1e-6)
        assert not pd.bbox_embed[i].layers[-1].weight.numpy().any()
    np.testing.assert_array_equal(pd.transformer.encoder.layers[0].self_attn.sampling_offsets.bias.numpy(),
                                  sd_t["transformer.encoder.layers.0.self_attn.sampling_offsets.bias"])
    for name in ("class_embed.0.weight", "bbox_embed.0.layers.0.bias", "transformer.decoder.layers.0.linear1.bias",
                 "transformer.pos_trans.bias", "query_embed.weight", "label_enc.weight", "transformer.level_embed",
                 "transformer.decoder.layers.1.self_attn.in_proj_weight", "input_proj.0.0.weight"):
        a, b = np.abs(pd.state_dict()[name].numpy()), np.abs(sd_t[name])
        # same scale (max for uniform draws, mean abs for normal ones) within sampling noise
        assert abs(a.max() / b.max() - 1) < 0.3 and abs(a.mean() / b.mean() - 1) < 0.25, name


# ---------------------------------------------------------------- parity with torch_impl

KEY_PARAMS = ["backbone.body.conv1.weight", "backbone.body.layer2.0.conv1.weight", "backbone.body.layer4.1.bn2.weight",
              "input_proj.0.0.weight", "input_proj.0.1.weight", "input_proj.2.0.weight",
              "transformer.level_embed", "transformer.encoder.layers.0.self_attn.value_proj.weight",
              "transformer.encoder.layers.1.self_attn.sampling_offsets.weight", "transformer.enc_output.weight",
              "transformer.pos_trans.weight", "transformer.decoder.layers.0.self_attn.in_proj_weight",
              "transformer.decoder.layers.1.cross_attn.attention_weights.weight", "class_embed.1.weight",
              "class_embed.2.bias", "bbox_embed.0.layers.2.weight", "query_embed.weight", "label_enc.weight"]


def _pair(dtype, **overrides):
    pt, pd = tiny_torch(**overrides), tiny(**overrides)
    with torch.no_grad():
        # The ring init puts the encoder's sampling points exactly on pixel centres, where bilinear sampling has
        # a kink and the two frameworks' grid_sample take the location gradient from different sides.
        for m in pt.modules():
            if isinstance(m, pt_attention.MSDeformAttn):
                m.sampling_offsets.weight.normal_(0, 0.01)
        for head in pt.bbox_embed:  # non-zero box deltas: boxes move and the box heads get gradients
            head.layers[-1].weight.normal_(0, 0.01)
    if dtype == "float64":
        pt.double()
        pd.to(dtype="float64")
    torch_module_to_paddle(pt, pd)
    return pt, pd


def _compare(pd_items, pt_items, rtol):
    """Same output names, and every tensor equal up to rtol times its largest magnitude (at least 1)."""
    assert [n for n, _ in pd_items] == [n for n, _ in pt_items]
    for (name, a), (_, b) in zip(pd_items, pt_items):
        b = b.detach().numpy()
        np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=rtol * max(1.0, np.abs(b).max()), err_msg=name)


def test_detector_eval_matches_torch_float32():
    """float32 is enough here because the top-k order of this input is unambiguous (checked: the smallest gap
    between consecutive selected scores is far above float32 noise)."""
    pt, pd = _pair("float32")
    pt.eval()
    pd.eval()
    with torch.no_grad():
        out_t = pt(torch.from_numpy(IMAGES), torch.from_numpy(MASKS))
    with paddle.no_grad():
        out_p = pd(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS))
    scores = -np.sort(-out_t["enc_outputs"]["pred_logits"].numpy()[..., 0], axis=1)[:, :31]
    assert np.diff(-scores, axis=1).min() > 1e-4
    _compare(_flat(out_p), _flat(out_t), rtol=1e-4)  # measured 2.2e-5 (enc_outputs logits)


@pytest.mark.parametrize("overrides", [{}, dict(backbone=dict(norm="gn", frozen_stages=-1), num_feature_levels=3,
                                                deform_attn_backend="kernel")], ids=["frozen_bn", "demo_like"])
def test_detector_train_matches_torch_float64(overrides):
    """Training mode with the same numpy dn_rng on both sides (hence the same denoising queries), the C stream,
    in float64 so the two-stage top-k order cannot differ; outputs, then gradients of key parameters."""
    pt, pd = _pair("float64", **overrides)
    pt.train()
    pd.train()
    out_t = pt(torch.from_numpy(IMAGES.astype(np.float64)), torch.from_numpy(MASKS), TARGETS,
               dn_rng=np.random.default_rng(3))
    out_p = _forward(pd, seed=3, dtype="float64")
    assert out_p["dn_meta"]["pad_size"] == out_t["dn_meta"]["pad_size"] == 20
    items_t, items_p = _flat(out_t), _flat(out_p)
    assert {n.split(".")[0] for n, _ in items_p} == {"pred_logits", "pred_boxes", "aux_outputs", "enc_outputs",
                                                      "dn_outputs", "c_outputs", "c_dn_outputs"}
    # not 1e-12: both trees compute position codes and anchors in float32 (framework sin / log differ by an ulp);
    # measured 5e-8
    _compare(items_p, items_t, rtol=1e-6)
    _surrogate(items_t, torch.from_numpy).backward()
    _surrogate(items_p, _pd_tensor("float64")).backward()
    params_t, params_p = dict(pt.named_parameters()), dict(pd.named_parameters())
    linear = paddle_linear_weights(pd)
    checked = 0
    for name in KEY_PARAMS:
        if name not in params_p:  # frozen_bn: norms are buffers
            continue
        p_t, p_p = params_t[name], params_p[name]
        assert p_t.requires_grad == (not p_p.stop_gradient), name
        if p_t.grad is None or not p_t.grad.any():  # frozen, or cut at init (gn: zero last norm of a branch)
            assert p_p.grad is None or not p_p.grad.numpy().any(), name
            continue
        g_t = p_t.grad.numpy()
        g_t = g_t.T if name in linear else g_t
        np.testing.assert_allclose(p_p.grad.numpy(), g_t, rtol=1e-5, atol=1e-5 * np.abs(g_t).max(), err_msg=name)
        checked += 1
    assert checked >= 14


def tiny_with_loss(**overrides):
    """(model, criterion, postprocessor) of build_model for the tiny config."""
    paddle.seed(0)
    return build_model({"model": _model_cfg(**overrides)})


def _loss(model, criterion, targets=TARGETS, seed=0):
    out = _forward(model, targets, seed)
    return out, criterion(out, targets, max(sum(len(t["labels"]) for t in targets), 1),
                          rng=np.random.default_rng(seed))


def _adamw(model):
    return paddle.optimizer.AdamW(1e-3, parameters=[p for p in model.parameters() if not p.stop_gradient],
                                  weight_decay=0.0)


def test_losses_cover_every_term():
    model, criterion, _ = tiny_with_loss()
    model.train()
    _, losses = _loss(model, criterion)
    assert set(losses) == set(criterion.weight_dict) and len(losses) == 3 * (2 * 4 + 1)
    assert all(np.isfinite(v.item()) for v in losses.values())


def test_every_trainable_parameter_gets_gradient():
    model, criterion, _ = tiny_with_loss()
    model.train()
    opt = _adamw(model)
    # The 64x64 images' stride-64 level is 1x1 pixel: GroupNorm(32) normalizes one value per group and outputs
    # its bias, so the gradient of the convolution before it (and of the norm's weight) is zero up to rounding,
    # exactly 0 or noise depending on the kernel (torch: noise <= 2e-4). Those are checked apart.
    one_pixel = ("input_proj.3.0.", "input_proj.3.1.weight")
    no_grad = []
    for _ in range(2):
        _, losses = _loss(model, criterion)
        paddle.add_n(list(losses.values())).backward()
        no_grad.append([n for n, p in model.named_parameters() if not p.stop_gradient and not n.startswith(one_pixel)
                        and (p.grad is None or not p.grad.abs().sum().item())])
        for n, p in model.named_parameters():
            if n.startswith(one_pixel) and p.grad is not None:
                assert p.grad.abs().max().item() < 1e-3, n
        opt.step()
        opt.clear_grad()
    # As in torch (see test_torch_model.py): at step 0 the zero-initialized box-head last layers and deformable
    # offsets/weights block the box heads' first layers and level_embed.
    assert no_grad[0] == ["transformer.level_embed"] + [f"bbox_embed.{i}.layers.{j}.{w}" for i in range(3)
                                                        for j in (0, 1) for w in ("weight", "bias")]
    assert no_grad[1] == []
    frozen = [n for n, p in model.named_parameters() if p.stop_gradient]
    assert frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1")) for n in frozen)


def test_one_step_reduces_the_loss():
    model, criterion, _ = tiny_with_loss()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-3)
    assert after < before - 0.5, (before, after)


def test_overfit_tiny_batch():
    model, criterion, _ = tiny_with_loss()
    model.train()
    opt = _adamw(model)
    history = []
    for _ in range(20):
        _, losses = _loss(model, criterion)
        total = paddle.add_n(list(losses.values()))
        total.backward()
        opt.step()
        opt.clear_grad()
        history.append(total.item())
    assert history[-1] < 0.8 * history[0], history
