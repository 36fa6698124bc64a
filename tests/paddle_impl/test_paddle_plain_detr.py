"""Plain-DETR (model.arch plain_detr) in the Paddle tree: the torch tests' mirror (parameter layout, grid proposals
and the reparameterized box decoding against their definitions, the decoder's box bias fed with the selected
proposals in pixels, hybrid matching, look-forward-twice, the L1 loss on deltas, training steps); parity with torch
is tests/test_plain_detr_parity.py, the config checks are tests/torch_impl/test_torch_plain_detr.py's (common/)."""
import numpy as np
import paddle
import pytest

from common.box_ops import box_to_delta
from paddle_impl.models import build_model, plain_detr
from paddle_impl.models.box_ops import apply_box_delta as box_delta_paddle
from tests.plain_detr_case import (IMAGES, MASKS, NO_GT, TARGETS, apply_box_delta, expected_proposals, image_sizes,
                                   model_cfg)


def tiny(reparam=True, double=False, **overrides):
    paddle.seed(0)
    model, criterion, post = build_model({"model": model_cfg(reparam, **overrides)})
    rng = np.random.default_rng(1)
    for head in model.bbox_embed:  # moving boxes: every box head's last layer starts at 0 (release init)
        last = head.layers[-1].weight
        last.set_value(rng.normal(0, 0.1, last.shape).astype(np.float32))
    if double:
        model.to(dtype="float64")
    model.train()
    return model, criterion, post


def _run(model, dtype=np.float32):
    return model(paddle.to_tensor(IMAGES.astype(dtype)), paddle.to_tensor(MASKS))


def test_parameter_layout():
    """The torch tree's names and shapes (Linear weights [in, out], transposed convolutions [in, out, 2, 2])."""
    model, _, _ = tiny()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"query_embed.weight": (18, 32), "input_proj.0.0.weight": (32, 256, 1, 1),
                "transformer.level_embed": (1, 32), "transformer.enc_output_proj.0.0.weight": (32, 32, 2, 2),
                "transformer.enc_output_proj.2.0.weight": (32, 32, 2, 2),
                "transformer.enc_output_proj.3.1.ln.weight": (32,),
                "transformer.enc_output_proj.3.3.weight": (32, 32, 2, 2),
                "transformer.decoder.final_layer_norm.weight": (32,),
                "transformer.decoder.layers.2.cross_attn.cpb_mlp1.0.weight": (2, 16),
                "transformer.decoder.layers.2.cross_attn.cpb_mlp2.2.weight": (16, 4),
                "transformer.decoder.layers.2.self_attn.in_proj_weight": (96, 32),
                "transformer.pos_trans.weight": (64, 64), "class_embed.3.weight": (32, 4),
                "bbox_embed.3.layers.2.weight": (32, 4)}
    assert all(shapes.get(k) == v for k, v in expected.items()), {k: shapes.get(k) for k in expected}
    assert not any(k.startswith(("transformer.encoder", "input_proj.1", "class_embed.4", "label_enc",
                                 "transformer.enc_output_proj.1.")) for k in shapes)
    assert isinstance(model.transformer.enc_output_proj[0][0], paddle.nn.Conv2DTranspose)


@pytest.mark.parametrize("reparam", [True, False], ids=["reparam", "logit_boxes"])
def test_proposals_match_their_definition(reparam):
    model, _, _ = tiny(reparam, double=True)
    tr = model.transformer
    map_mask = np.zeros((2, 8, 10), bool)
    map_mask[1, 6:], map_mask[1, :, 7:] = True, True  # image 1: 96 x 112 px of 128 x 160
    size = np.array([[160.0, 128.0], [112.0, 96.0]])
    src = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 32, 8, 10)))
    with paddle.no_grad():
        memory, boxes = tr.proposals(src, paddle.to_tensor(map_mask), paddle.to_tensor(size))
    want, valid = expected_proposals(map_mask, size, reparam=reparam)
    assert tuple(boxes.shape) == want.shape == (2, 16 * 20 + 8 * 10 + 4 * 5 + 2 * 2, 4)
    assert valid[0].sum() > 100 and (~valid).sum() > 100
    got = boxes.numpy()
    np.testing.assert_allclose(got[valid], want[valid], rtol=0, atol=1e-12)
    assert (got[~valid] == (10 * 16.0 if reparam else 1.0)).all()
    flat = memory.numpy()[~valid]
    np.testing.assert_allclose(flat, np.broadcast_to(flat[:1], flat.shape), rtol=0, atol=1e-12)


def test_box_delta_matches_its_definition():
    rng = np.random.default_rng(0)
    size = np.array([[160.0, 128.0], [112.0, 96.0]])
    ref = np.concatenate([rng.uniform(20, 90, (2, 50, 2)), rng.uniform(5, 80, (2, 50, 2))], -1)
    delta = rng.normal(0, 1.5, (2, 50, 4))
    got = box_delta_paddle(*(paddle.to_tensor(a) for a in (ref, delta, size))).numpy()
    np.testing.assert_allclose(got, apply_box_delta(ref, delta, size), rtol=0, atol=1e-12)


@pytest.mark.parametrize("reparam", [True, False], ids=["reparam", "logit_boxes"])
def test_first_layer_sees_the_top_proposals_in_pixels(reparam, monkeypatch):
    model, _, _ = tiny(reparam, double=True)
    model.eval()
    seen = []
    layer0 = model.transformer.decoder.layers[0].cross_attn
    monkeypatch.setattr(layer0, "forward", lambda q, k, v, boxes, *a, _f=layer0.forward: (seen.append(boxes),
                                                                                           _f(q, k, v, boxes, *a))[1])
    with paddle.no_grad():
        out = _run(model, np.float64)
    enc = out["enc_outputs"]
    logits, boxes = enc["pred_logits"].numpy()[..., 0], enc["pred_boxes"].numpy()
    top = np.argsort(-logits, axis=1, kind="stable")[:, :6]
    boxes = np.take_along_axis(boxes, top[..., None], 1) * np.tile(image_sizes(MASKS), 2)[:, None]
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    want = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    np.testing.assert_allclose(seen[0].numpy(), want, rtol=0, atol=1e-9)
    assert np.abs(want).max() > 10


def test_hybrid_queries_are_invisible_to_the_one_to_one_ones(monkeypatch):
    model, _, _ = tiny(double=True)
    out = _run(model, np.float64)
    assert tuple(out["pred_logits"].shape) == (2, 6, 4)
    assert tuple(out["one2many_outputs"]["pred_logits"].shape) == (2, 12, 4)
    model.eval()
    with paddle.no_grad():
        ref = _run(model, np.float64)
    assert "one2many_outputs" not in ref and tuple(ref["pred_boxes"].shape) == (2, 6, 4)
    for key in ("pred_logits", "pred_boxes", "pred_deltas", "ref_boxes"):
        np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=0, atol=1e-12, err_msg=key)
    mask = plain_detr.hybrid_attn_mask(6, 12).numpy()
    assert mask[:6, 6:].all() and mask[6:, :6].all() and not mask[:6, :6].any() and not mask[6:, 6:].any()
    model.train()
    monkeypatch.setattr(plain_detr, "hybrid_attn_mask", lambda *a: None)
    leaked = _run(model, np.float64)
    assert np.abs(leaked["pred_logits"].numpy() - ref["pred_logits"].numpy()).max() > 1e-6


@pytest.mark.parametrize("lft", [True, False])
def test_look_forward_twice(lft):
    model, _, _ = tiny(look_forward_twice=lft)
    _run(model)["pred_boxes"].sum().backward()
    grad = [0.0 if h.layers[-1].weight.grad is None else float(h.layers[-1].weight.grad.abs().sum())
            for h in model.bbox_embed[:3]]
    assert grad[2] > 0 and (grad[1] > 0) == lft and grad[0] == 0, grad


def test_reparam_l1_is_on_deltas():
    model, criterion, _ = tiny(double=True)
    out = _run(model, np.float64)
    terms = criterion(out, TARGETS, 3.0)
    size = image_sizes(MASKS)
    for stream, targets, norm, key in ((out, TARGETS, 3.0, "loss_bbox"),
                                       (out["one2many_outputs"], [{k: np.concatenate([v] * 3) for k, v in t.items()}
                                                                  for t in TARGETS], 9.0, "loss_bbox_one2many")):
        arrays = [stream[k].numpy() for k in ("pred_logits", "pred_boxes", "pred_deltas", "ref_boxes")]
        indices = criterion.matcher(arrays[0], arrays[1], targets, reparam=(arrays[2], arrays[3], size))
        want = 0.0
        for b, (q, g) in enumerate(indices):
            gt = targets[b]["boxes"][g].astype(np.float64) * np.tile(size[b], 2)
            want += np.abs(arrays[2][b, q] - box_to_delta(arrays[3][b, q], gt)).sum()
        got = float(terms[key]) / criterion.weight_dict[key]
        assert abs(got - want / norm) <= 1e-7 * want / norm, (key, got, want / norm)  # float32 references


@pytest.mark.parametrize("reparam", [True, False], ids=["reparam", "logit_boxes"])
def test_training_steps_lower_the_loss(reparam):
    model, criterion, _ = tiny(reparam)
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=[p for p in model.parameters() if not p.stop_gradient])
    losses = []
    for _ in range(6):
        terms = criterion(_run(model), TARGETS, 3.0)
        loss = paddle.add_n(list(terms.values()))
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert len(terms) == 21 and losses[-1] < 0.9 * losses[0], losses


def test_images_without_boxes():
    model, criterion, _ = tiny()
    terms = criterion(_run(model), NO_GT, 0.0)
    loss = paddle.add_n(list(terms.values()))
    loss.backward()
    assert bool(paddle.isfinite(loss)) and float(loss) > 0 and float(model.class_embed[0].bias.grad.abs().sum()) > 0
