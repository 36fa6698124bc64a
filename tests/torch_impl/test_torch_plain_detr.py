"""Plain-DETR (model.arch plain_detr) in the torch tree: the release's parameter layout, the pyramid's grid proposals
and the reparameterized box decoding against their definitions, the decoder's box bias fed with the selected
proposals in pixels, hybrid matching (one-to-one queries blind to the one-to-many ones, only one-to-one at
inference), look-forward-twice, the L1 loss on deltas against its definition, training steps, and the arch's
config checks."""
import numpy as np
import pytest
import torch

from common import model_args as A
from common.box_ops import box_to_delta
from common.config.model_schema import MODEL
from tests.conditional_detr_case import fill
from tests.plain_detr_case import (IMAGES, MASKS, NO_GT, TARGETS, apply_box_delta, expected_proposals, image_sizes,
                                   model_cfg)
from torch_impl.models import build_model, plain_detr
from torch_impl.models.box_ops import apply_box_delta as box_delta_torch


def tiny(reparam=True, double=False, **overrides):
    torch.manual_seed(0)
    model, criterion, post = build_model({"model": model_cfg(reparam, **overrides)})
    with torch.no_grad():  # moving boxes: every box head's last layer starts at 0 (release init)
        gen = torch.Generator().manual_seed(1)
        for head in model.bbox_embed:
            head.layers[-1].weight.normal_(0, 0.1, generator=gen)
    model.train()
    return (model.double() if double else model), criterion, post


def _run(model, dtype=np.float32):
    return model(torch.from_numpy(IMAGES.astype(dtype)), torch.from_numpy(MASKS))


def test_parameter_layout():
    """The release's names: one map's input projection, no encoder, the proposal pyramid (transposed conv for
    stride 8, none for 16, one conv for 32, conv + LayerNorm2D + GELU + conv for 64), pre-norm decoder layers with
    BoxRPB cross-attention and a final LayerNorm, content queries for both query groups, dec_layers + 1 heads."""
    model, _, _ = tiny()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"query_embed.weight": (18, 32), "input_proj.0.0.weight": (32, 256, 1, 1),
                "transformer.level_embed": (1, 32), "transformer.enc_output_proj.0.0.weight": (32, 32, 2, 2),
                "transformer.enc_output_proj.2.0.weight": (32, 32, 2, 2),
                "transformer.enc_output_proj.3.1.ln.weight": (32,),
                "transformer.enc_output_proj.3.3.weight": (32, 32, 2, 2),
                "transformer.decoder.final_layer_norm.weight": (32,),
                "transformer.decoder.layers.2.cross_attn.cpb_mlp1.0.weight": (16, 2),
                "transformer.decoder.layers.2.cross_attn.cpb_mlp2.2.weight": (4, 16),
                "transformer.decoder.layers.2.self_attn.in_proj_weight": (96, 32),
                "transformer.pos_trans.weight": (64, 64), "class_embed.3.weight": (4, 32),
                "bbox_embed.3.layers.2.weight": (4, 32)}
    assert all(shapes.get(k) == v for k, v in expected.items()), {k: shapes.get(k) for k in expected}
    assert not any(k.startswith(("transformer.encoder", "input_proj.1", "class_embed.4", "label_enc",
                                 "transformer.enc_output_proj.1.")) for k in shapes)
    assert isinstance(model.transformer.enc_output_proj[0][0], torch.nn.ConvTranspose2d)


@pytest.mark.parametrize("reparam", [True, False], ids=["reparam", "logit_boxes"])
def test_proposals_match_their_definition(reparam):
    model, _, _ = tiny(reparam, double=True)
    tr = model.transformer
    map_mask = np.zeros((2, 8, 10), bool)
    map_mask[1, 6:], map_mask[1, :, 7:] = True, True  # image 1: 96 x 112 px of 128 x 160
    size = np.array([[160.0, 128.0], [112.0, 96.0]])
    src = torch.randn(2, 32, 8, 10, dtype=torch.float64)
    with torch.no_grad():
        memory, boxes = tr.proposals(src, torch.from_numpy(map_mask), torch.from_numpy(size))
    want, valid = expected_proposals(map_mask, size, reparam=reparam)
    assert boxes.shape == want.shape == (2, 16 * 20 + 8 * 10 + 4 * 5 + 2 * 2, 4)
    assert valid[0].sum() > 100 and (~valid).sum() > 100  # both kinds, in both images
    got = boxes.numpy()
    np.testing.assert_allclose(got[valid], want[valid], rtol=0, atol=1e-12)
    dummy = 10 * 16.0 if reparam else 1.0  # max(h, w) * stride px, or the all-ones box
    assert (got[~valid] == dummy).all()
    # an invalid cell's memory is zeroed before enc_output: all its features are enc_output's bias, normalized
    flat = memory.numpy()[~valid]
    np.testing.assert_allclose(flat, np.broadcast_to(flat[:1], flat.shape), rtol=0, atol=1e-12)


def test_box_delta_matches_its_definition_and_inverts_box_to_delta():
    rng = np.random.default_rng(0)
    size = np.array([[160.0, 128.0], [112.0, 96.0]])
    ref = np.concatenate([rng.uniform(20, 90, (2, 50, 2)), rng.uniform(5, 80, (2, 50, 2))], -1)
    delta = rng.normal(0, 1.5, (2, 50, 4))  # some beyond the size clamp, some leaving the image
    got = box_delta_torch(*(torch.from_numpy(a) for a in (ref, delta, size))).numpy()
    np.testing.assert_allclose(got, apply_box_delta(ref, delta, size), rtol=0, atol=1e-12)
    # inside the image and the clamp, box_to_delta (the loss's targets) inverts it up to its 0.1 px epsilon
    small = rng.normal(0, 0.05, (2, 50, 4))
    ref[..., :2], ref[..., 2:] = np.array([60.0, 50.0]), 30.0
    moved = box_delta_torch(*(torch.from_numpy(a) for a in (ref, small, size))).numpy()
    back = box_to_delta(ref, moved)
    np.testing.assert_allclose(back[..., :2] * 30.1 / 30, small[..., :2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(back[..., 2:] - np.log(30 / 30.1), small[..., 2:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("reparam", [True, False], ids=["reparam", "logit_boxes"])
def test_first_layer_sees_the_top_proposals_in_pixels(reparam, monkeypatch):
    """Layer 0's box bias is computed from the top-k proposals (by class-0 logit), decoded, as x1y1x2y2 pixels."""
    model, _, _ = tiny(reparam, double=True)
    model.eval()
    seen = []
    layer0 = model.transformer.decoder.layers[0].cross_attn
    monkeypatch.setattr(layer0, "forward", lambda q, k, v, boxes, *a, _f=layer0.forward: (seen.append(boxes),
                                                                                           _f(q, k, v, boxes, *a))[1])
    with torch.no_grad():
        out = _run(model, np.float64)
    enc = out["enc_outputs"]
    top = torch.topk(enc["pred_logits"][..., 0], 6, dim=1)[1]
    boxes = torch.gather(enc["pred_boxes"], 1, top[..., None].expand(-1, -1, 4)).numpy()  # [0, 1] of the image
    size = np.tile(image_sizes(MASKS), 2)[:, None]
    cx, cy, w, h = np.moveaxis(boxes * size, -1, 0)
    want = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    np.testing.assert_allclose(seen[0].numpy(), want, rtol=0, atol=1e-9)
    assert np.abs(want).max() > 10  # pixels, not normalized


def test_hybrid_queries_are_invisible_to_the_one_to_one_ones(monkeypatch):
    """Training adds 12 one-to-many queries behind the 6 one-to-one ones; with the group mask, the one-to-one
    outputs equal inference's (which runs those 6 only), and without it they would not."""
    model, _, _ = tiny(double=True)
    out = _run(model, np.float64)
    assert out["pred_logits"].shape == (2, 6, 4) and out["one2many_outputs"]["pred_logits"].shape == (2, 12, 4)
    assert len(out["one2many_outputs"]["aux_outputs"]) == 2
    model.eval()
    with torch.no_grad():
        ref = _run(model, np.float64)
    assert "one2many_outputs" not in ref and ref["pred_boxes"].shape == (2, 6, 4)
    for key in ("pred_logits", "pred_boxes", "pred_deltas", "ref_boxes"):
        np.testing.assert_allclose(out[key].detach().numpy(), ref[key].numpy(), rtol=0, atol=1e-12, err_msg=key)
    mask = plain_detr.hybrid_attn_mask(6, 12, "cpu")
    assert mask[:6, 6:].all() and mask[6:, :6].all() and not mask[:6, :6].any() and not mask[6:, 6:].any()
    model.train()
    monkeypatch.setattr(plain_detr, "hybrid_attn_mask", lambda *a: None)
    leaked = _run(model, np.float64)
    assert np.abs(leaked["pred_logits"].detach().numpy() - ref["pred_logits"].numpy()).max() > 1e-6


@pytest.mark.parametrize("lft", [True, False])
def test_look_forward_twice(lft):
    """The last layer's box depends on the previous layer's head with look-forward-twice, and on no earlier head."""
    model, _, _ = tiny(look_forward_twice=lft)
    _run(model)["pred_boxes"].sum().backward()
    grad = [0.0 if h.layers[-1].weight.grad is None else h.layers[-1].weight.grad.abs().sum().item()
            for h in model.bbox_embed[:3]]
    assert grad[2] > 0 and (grad[1] > 0) == lft and grad[0] == 0, grad


def test_reparam_l1_is_on_deltas():
    """loss_bbox of a layer = sum |pred_delta - box_to_delta(ref box, GT in pixels)| over the matched pairs /
    num_boxes, with the pairs of the matcher's delta cost; the one-to-many terms match GT x k, normalized by k."""
    model, criterion, _ = tiny(double=True)
    out = _run(model, np.float64)
    terms = criterion(out, TARGETS, 3.0)
    size = image_sizes(MASKS)
    for stream, targets, norm, key in ((out, TARGETS, 3.0, "loss_bbox"),
                                       (out["one2many_outputs"], [{k: np.concatenate([v] * 3) for k, v in t.items()}
                                                                  for t in TARGETS], 9.0, "loss_bbox_one2many")):
        arrays = [stream[k].detach().numpy() for k in ("pred_logits", "pred_boxes", "pred_deltas", "ref_boxes")]
        indices = criterion.matcher(arrays[0], arrays[1], targets, reparam=(arrays[2], arrays[3], size))
        want = 0.0
        for b, (q, g) in enumerate(indices):
            gt = targets[b]["boxes"][g].astype(np.float64) * np.tile(size[b], 2)
            want += np.abs(arrays[2][b, q] - box_to_delta(arrays[3][b, q], gt)).sum()
        got = terms[key].item() / criterion.weight_dict[key]
        # the criterion reads the reference boxes as float32 (SetCriterion._numpy): measured 4e-9 relative
        assert abs(got - want / norm) <= 1e-7 * want / norm, (key, got, want / norm)


@pytest.mark.parametrize("reparam", [True, False], ids=["reparam", "logit_boxes"])
def test_training_steps_lower_the_loss(reparam):
    model, criterion, _ = tiny(reparam)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        terms = criterion(_run(model), TARGETS, 3.0)
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(terms) == 21 and losses[-1] < 0.9 * losses[0], losses


def test_images_without_boxes():
    model, criterion, _ = tiny()
    terms = criterion(_run(model), NO_GT, 0.0)
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and model.class_embed[0].bias.grad.abs().sum() > 0


def test_config_checks():
    def cfg(**kw):
        return fill(MODEL, dict(dict(arch="plain_detr", num_classes=4, dn=dict(enabled=False),
                                     dac=dict(enabled=False)), **kw))
    for key, value, words in (("enc_layers", 2, "enc_layers"), ("two_stage", False, "two_stage"),
                              ("dec_n_points", 8, "dec_n_points"), ("num_feature_levels", 2, "num_feature_levels")):
        with pytest.raises(ValueError, match=words):
            A.check(cfg(**{key: value}))
    with pytest.raises(ValueError, match="proposal_strides: 24"):
        A.transformer_args(A.effective(cfg(plain=dict(proposal_strides=[8, 24]))))
    assert A.feature_stride(cfg(backbone=dict(last_stage=3))) == 16
    assert A.feature_stride(cfg(backbone=dict(dilation=True))) == 16
    assert A.criterion_args(A.effective(cfg(hybrid=dict(num_queries=0))))["hybrid_k"] == 0
    with pytest.raises(ValueError, match="hybrid.k"):
        A.criterion_args(A.effective(cfg(hybrid=dict(k=0))))
    for arch in ("dac_detr", "dab_detr"):  # Plain-DETR's sections belong to it alone
        with pytest.raises(ValueError, match="hybrid"):
            A.check(fill(MODEL, dict(arch=arch, num_classes=4, hybrid=dict(k=3))))


def test_pixel_codes_are_unnormalized_by_default():
    """The release's reparam script codes each cell by its index ("sine_unnorm"): feature k of the x block at cell
    (i, j) is sin / cos((j + 0.5) 2 pi / T^(2 floor(k / 2) / F)); plain.pe_normalize true divides by the extent."""
    for normalize in (False, True):
        model, _, _ = tiny(plain=dict(pe_normalize=normalize))
        mask = torch.zeros(1, 4, 6, dtype=torch.bool)
        mask[:, :, 5:] = True  # 5 valid columns
        pos = model.position_embedding(mask)[0].numpy()  # [D, 4, 6]; D / 2 = 16 features per axis
        j, k = 3, np.arange(16)
        coord = (j + 0.5) * 2 * np.pi / (5 if normalize else 1)
        angle = coord / 10000.0 ** (2 * (k // 2) / 16)
        want = np.where(k % 2 == 0, np.sin(angle), np.cos(angle))
        np.testing.assert_allclose(pos[16:, 2, j], want, rtol=0, atol=1e-5)
