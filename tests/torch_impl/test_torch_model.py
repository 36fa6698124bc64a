"""The assembled detector: outputs, gradients, parameter sharing, training steps, empty images, release layout."""
import numpy as np
import pytest
import torch

from common.config.fields import Field
from common.config.model_schema import MODEL
from tests.torch_impl.training_checks import loss_before_and_after_one_step, params_without_gradient
from torch_impl.models import build_model


def _fill(schema, overrides):
    return {k: (overrides.get(k, v.default) if isinstance(v, Field) else _fill(v, overrides.get(k, {})))
            for k, v in schema.items()}


def tiny(**overrides):
    """A small DAC-DETR (cdn + ice) for CPU tests; overrides are nested dicts of model keys."""
    base = dict(num_classes=4, backbone=dict(name="resnet18", frozen_stages=1), hidden_dim=32, nheads=4,
                enc_layers=2, dec_layers=2, dim_feedforward=64, num_queries=30, dn=dict(number=10),
                deform_attn_backend="reference")
    for k, v in overrides.items():
        base[k] = dict(base.get(k, {}), **v) if isinstance(v, dict) else v
    torch.manual_seed(0)
    return build_model({"model": _fill(MODEL, base)})


IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
MASKS = torch.zeros(2, 64, 64, dtype=torch.bool)
MASKS[1, :, 48:] = True
TARGETS = [{"labels": np.array([1, 3]), "boxes": np.array([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]], np.float32)},
           {"labels": np.array([2]), "boxes": np.array([[0.4, 0.5, 0.3, 0.3]], np.float32)}]
EMPTY = {"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4), np.float32)}


def _loss(model, criterion, targets=TARGETS, seed=0):
    torch.manual_seed(seed)  # fixes the one-to-many sampling
    out = model(IMAGES, MASKS, targets, dn_rng=np.random.default_rng(seed))
    return out, criterion(out, targets, max(sum(len(t["labels"]) for t in targets), 1))


def test_training_outputs():
    model, criterion, _ = tiny()
    model.train()
    out, losses = _loss(model, criterion)
    q, c, s = 30, 4, 8 * 8 + 4 * 4 + 2 * 2 + 1  # 4 levels at strides 8..64
    pad = out["dn_meta"]["pad_size"]
    assert (out["dn_meta"]["num_groups"], pad) == (5, 20)  # 10 // 2 groups of 2 x 2 slots
    for stream, n in (("", q), ("dn_outputs", pad), ("c_outputs", q), ("c_dn_outputs", pad)):
        s_out = out[stream] if stream else out
        assert s_out["pred_logits"].shape == (2, n, c) and s_out["pred_boxes"].shape == (2, n, 4)
        assert len(s_out["aux_outputs"]) == 1 and s_out["aux_outputs"][0]["pred_boxes"].shape == (2, n, 4)
    assert out["enc_outputs"]["pred_logits"].shape == (2, s, c)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert set(losses) == set(criterion.weight_dict) and len(losses) == 3 * (2 * 4 + 1)
    assert all(torch.isfinite(v) for v in losses.values())


def test_eval_mode_has_no_c_decoder_or_denoising():
    model, _, post = tiny()
    model.eval()
    with torch.no_grad():
        out = model(IMAGES, MASKS)
    assert set(out) == {"pred_logits", "pred_boxes", "aux_outputs", "enc_outputs"}
    assert out["pred_logits"].shape == (2, 30, 4)
    results = post(out, torch.tensor([[480, 640], [300, 200]]))
    assert results[0]["boxes"].shape == (120, 4)  # min(300, 30 queries x 4 classes)
    assert (results[1]["boxes"][:, 2] <= 200 + 1e-3).all()


def test_every_trainable_parameter_gets_gradient():
    model, criterion, _ = tiny()
    no_grad = params_without_gradient(model, lambda: sum(_loss(model, criterion)[1].values()))
    # Step 0 only: zero-initialized weights (release init) block two paths. The box heads' last layers
    # start at 0, so their first layers get no gradient; sampling_offsets / attention_weights weights start
    # at 0, so the encoder queries, hence level_embed (only ever added to them), get none either.
    assert no_grad[0] == ["transformer.level_embed"] + [f"bbox_embed.{i}.layers.{j}.{w}" for i in range(3)
                                                        for j in (0, 1) for w in ("weight", "bias")]
    assert no_grad[1] == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1")) for n in frozen)


def test_c_decoder_adds_no_parameters():
    with_dac, _, _ = tiny()
    without, _, _ = tiny(dac=dict(enabled=False))
    shapes = lambda m: [(n, tuple(p.shape)) for n, p in m.named_parameters()]
    assert shapes(with_dac) == shapes(without)
    no_dn, _, _ = tiny(dn=dict(enabled=False))
    assert [n for n, _ in shapes(with_dac) if n not in dict(shapes(no_dn))] == ["label_enc.weight"]
    assert with_dac.label_enc.weight.shape == (5, 32)  # num_classes + 1 rows


def test_one_to_many_branch_gets_gradient_and_skips_self_attention():
    model, criterion, _ = tiny()
    model.train()
    _, losses = _loss(model, criterion)
    c_terms = [k for k in losses if "_c" in k.replace("_ce", "") and "_dn" not in k]
    assert len(c_terms) == 6
    sum(losses[k] for k in c_terms).backward()
    layers = model.transformer.decoder.layers
    assert layers[1].cross_attn.value_proj.weight.grad.abs().sum() > 0
    assert model.class_embed[1].weight.grad.abs().sum() > 0 and model.query_embed.weight.grad.abs().sum() > 0
    # the C-stream enters after layer 0's self-attention and never goes through layer 1's
    assert layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
    grad = layers[1].self_attn.in_proj_weight.grad
    assert grad is None or not grad.any()


def test_one_step_reduces_the_loss():
    model, criterion, _ = tiny()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-3)
    assert after < before - 0.5, (before, after)


def test_overfit_tiny_batch():
    model, criterion, _ = tiny()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0)
    history = []
    for _ in range(20):
        _, losses = _loss(model, criterion)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert history[-1] < 0.8 * history[0], history


@pytest.mark.parametrize("targets", [[TARGETS[0], EMPTY], [EMPTY, EMPTY]], ids=["one_empty", "all_empty"])
def test_images_without_objects(targets):
    model, criterion, _ = tiny()
    model.train()
    out, losses = _loss(model, criterion, targets)
    pad = out["dn_meta"]["pad_size"]
    assert pad == (0 if targets[0] is EMPTY else 20)
    assert ("dn_outputs" in out) == (pad > 0)
    assert set(losses) == set(criterion.weight_dict) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.label_enc.weight.grad is not None  # still in the graph (DDP needs every parameter used)


def test_tensor_targets_give_the_same_losses():
    model, criterion, _ = tiny()
    model.train()
    _, from_numpy = _loss(model, criterion)
    as_tensors = [{"labels": torch.as_tensor(t["labels"]), "boxes": torch.as_tensor(t["boxes"])} for t in TARGETS]
    _, from_tensors = _loss(model, criterion, as_tensors)
    assert from_numpy.keys() == from_tensors.keys()
    assert all(torch.equal(from_numpy[k], from_tensors[k]) for k in from_numpy)


def test_training_without_targets_is_an_error():
    model, _, _ = tiny()
    model.train()
    with pytest.raises(ValueError, match="needs the targets"):
        model(IMAGES, MASKS)


@pytest.mark.parametrize("overrides", [
    dict(dn=dict(enabled=False), dac=dict(enabled=False), loss=dict(type="focal"), mixed_selection=False,
         look_forward_twice=False),                                      # deformable_detr (paper)
    dict(dac=dict(enabled=False), loss=dict(type="focal")),              # dino
    dict(loss=dict(type="focal"), dn=dict(contrastive=False, number=2)),  # dac with plain DN
    dict(two_stage=False, mixed_selection=False, dn=dict(enabled=False)),  # one-stage, learned queries
    dict(num_feature_levels=1, num_queries=4, dac=dict(assign_boxes="c_decoder")),  # 2 x 2 tokens
])
def test_variants_train(overrides):
    model, criterion, _ = tiny(**overrides)
    model.train()
    _, losses = _loss(model, criterion)
    sum(losses.values()).backward()
    assert set(losses) == set(criterion.weight_dict)


def test_release_layout_r50_dac_cdn_ice():
    """Same names and shapes as the official checkpoint (backbone.0.body -> backbone.body, aliases dropped):
    576 entries, 47,739,225 parameters of which 47,516,825 trainable, as the release reports."""
    torch.manual_seed(0)
    model, _, _ = build_model({"model": _fill(MODEL, {"num_classes": 91})})
    sd = model.state_dict()
    assert len(sd) == 632 - 56
    assert sum(p.numel() for p in model.parameters()) == 47739225
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 47516825
    expected = {"transformer.level_embed": (4, 256), "transformer.pos_trans.weight": (512, 512),
                "transformer.decoder.layers.5.self_attn.in_proj_weight": (768, 256),
                "transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (256, 256),
                "transformer.decoder.layers.0.cross_attn.attention_weights.weight": (128, 256),
                "class_embed.6.weight": (91, 256), "bbox_embed.6.layers.2.weight": (4, 256),
                "query_embed.weight": (900, 256), "label_enc.weight": (92, 256),
                "input_proj.3.0.weight": (256, 2048, 3, 3), "backbone.body.layer4.2.bn3.running_var": (2048,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith(("transformer.decoder.class_embed", "transformer.decoder.bbox_embed")) for k in sd)
