"""SAP-DETR in the torch tree: outputs and loss terms, the release's parameter layout, the decoder (point and
corner codes, point-enhanced cross-attention with the side-directed Gaussian, side and point updates) against a
numpy brute force, points kept in their cells, the conv-initialized content, SAP's loss terms from their
definition, training, the config checks."""
import re

import numpy as np
import pytest
import torch

from common import model_args as A
from common.set_criterion import pair_arrays
from tests.sap_detr_case import GRID, IMAGES, MASKS, TARGETS, decoder, decoder_inputs, model_cfg
from tests.torch_impl.training_checks import loss_before_and_after_one_step, params_without_gradient
from torch_impl.models import build_model
from torch_impl.models.dac_detr import MLP
from torch_impl.models.sap_detr import grid_corners
from torch_impl.models.sap_transformer import SAPTransformer

Q = GRID[0] * GRID[1]


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model({"model": model_cfg(**overrides)})


def _loss(model, criterion):
    out = model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS), TARGETS)
    return out, criterion(out, TARGETS, 3.0)


def moving_points(model, std=0.3, push=7.0):
    """Non-zero point and side deltas (the release starts their heads' last layers at 0); the point deltas are
    pushed up by `push`, since a point starts on its cell's corner, where the logit is clamped at log(1e-3)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in list(model.bbox_embed) + list(model.point_embed):
            head.layers[-1].weight.normal_(0, std, generator=gen)
            head.layers[-1].bias.normal_(0, std, generator=gen)
        for head in model.point_embed:
            head.layers[-1].bias += push


def test_outputs_and_loss_terms():
    model, criterion, post = tiny()
    model.train()
    out, losses = _loss(model, criterion)
    assert set(out) == {"pred_logits", "pred_boxes", "pred_objs", "pred_points", "aux_outputs"}
    shapes = {k: tuple(out[k].shape) for k in ("pred_logits", "pred_boxes", "pred_objs", "pred_points")}
    assert shapes == {"pred_logits": (2, Q, 4), "pred_boxes": (2, Q, 4), "pred_objs": (2, Q, 1),
                      "pred_points": (2, Q, 2)}
    assert [set(a) for a in out["aux_outputs"]] == [set(shapes)] * 2
    # the release's weights: class 1, L1 5, GIoU 2, objectness 1, inner 2 on every layer
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_obj": 1.0, "loss_inner": 2.0}
    assert criterion.weight_dict == {f"{k}{s}": w for s in ("_0", "_1", "") for k, w in weights.items()}
    assert set(losses) == set(criterion.weight_dict) and all(torch.isfinite(v) for v in losses.values())
    assert not losses["loss_inner"].requires_grad and losses["loss_obj"].requires_grad
    model.eval()
    with torch.no_grad():
        results = post(model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS)), torch.tensor([[480, 640], [300, 200]]))
    assert results[0]["boxes"].shape == (20, 4)  # num_select 20 of 6 queries x 4 classes


def test_parameter_layout():
    """The release's names and shapes: a fixed grid, learned first sides, per-layer box and point heads starting
    as copies of one, the first layer's own class head, the transformer's conv init blocks."""
    model, _, _ = tiny()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"refpoint_embed.weight": (Q, 2), "refbbox_embed.weight": (Q, 4), "obj_embed.weight": (1, 32),
                "class_embed.0.layers.2.weight": (4, 32), "class_embed.1.layers.2.weight": (4, 32),
                "bbox_embed.2.layers.2.weight": (4, 32), "point_embed.2.layers.2.weight": (2, 32),
                "input_proj.weight": (32, 256, 1, 1),
                "transformer.encoder.query_scales.1.layers.1.weight": (32, 32),
                "transformer.encoder.layers.1.self_attn.in_proj_weight": (96, 32),
                "transformer.decoder.ref_point_head.layers.0.weight": (32, 32),
                "transformer.decoder.ref_bbox_head.layers.0.weight": (32, 64),
                "transformer.decoder.query_scale.layers.1.weight": (32, 32), "transformer.decoder.norm.weight": (32,),
                "transformer.decoder.layers.0.ca_point_qpos_proj.weight": (32, 32),
                "transformer.decoder.layers.0.ca_bbox_qpos_proj.weight": (32, 32),
                "transformer.decoder.layers.2.ca_bbox_qpos_sine_proj.weight": (32, 64),
                "transformer.decoder.layers.2.sa_bbox_kpos_proj.weight": (32, 32),
                "transformer.decoder.layers.1.sdg.gaussian_proj.layers.2.weight": (16, 32),
                "transformer.point_transfer.0.weight": (32, 32, 3, 3),
                "transformer.point_transfer.7.weight": (32,)}
    assert {k: shapes.get(k) for k in expected} == expected
    absent = ("query_embed", "class_embed.2", "bbox_embed.3", "transformer.decoder.bbox_embed",
              "transformer.decoder.layers.1.ca_point_qpos_proj", "transformer.decoder.layers.2.ca_bbox_qpos_proj",
              "backbone.body.layer4", "transformer.encoder.query_scale.")
    assert not any(n.startswith(absent) for n in shapes)
    assert not model.refpoint_embed.weight.requires_grad
    assert torch.allclose(model.refpoint_embed.weight.sigmoid(), grid_corners(*GRID), atol=1.1e-3)  # logit clamp
    for heads in (model.bbox_embed, model.point_embed, model.class_embed):
        for a, b in zip(heads[0].parameters(), heads[-1].parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # copies, not one shared module
    assert not model.bbox_embed[1].layers[2].weight.any()
    assert torch.allclose(model.class_embed[1].layers[2].bias, torch.full((4,), -4.59512), atol=1e-5)


def test_every_trainable_parameter_gets_gradient():
    """Every trainable parameter is trained. With first sides of 0.05: sigmoid(N(0, 1)) sides (the release's init)
    make boxes that hold every GT, and such a box gives its point no gradient (L1: x1 and x2 pull in opposite
    directions; GIoU: moving it changes neither the intersection nor the union)."""
    model, criterion, _ = tiny()
    with torch.no_grad():
        model.refbbox_embed.weight.fill_(torch.logit(torch.tensor(0.05)).item())
    no_grad = params_without_gradient(model, lambda: sum(_loss(model, criterion)[1].values()))
    # Step 0: the box and point heads' last layers start at 0 (release init), so their first layers get no
    # gradient yet.
    heads = [f"{h}.{i}.layers.{j}.{w}" for i in range(3) for h in ("bbox_embed", "point_embed") for j in (0, 1)
             for w in ("weight", "bias")]
    assert sorted(no_grad[0]) == sorted(heads)
    assert no_grad[1] == []


def test_decoder_matches_brute_force():
    """The whole decoder (3 layers on a 3 x 4 map: point and corner codes, positional queries, lambda, the
    per-head [content; point; box] cross-attention with the SDG bias, side and point updates) against
    tests/sap_detr_case.py's numpy formulas, float64; the control (a decoder without SDG) must differ."""
    torch.manual_seed(0)
    tr = SAPTransformer(32, 4, 0, 3, 64, 0.0, conv_init=False).double().eval()
    boxes = [MLP(32, 32, 4, 3).double() for _ in range(3)]
    points = [MLP(32, 32, 2, 3).double() for _ in range(3)]
    for p in list(tr.decoder.parameters()) + [p for m in boxes + points for p in m.parameters()]:
        torch.nn.init.normal_(p, 0, 0.3)
    for m in points:  # off the cells' corners (module moving_points)
        torch.nn.init.normal_(m.layers[-1].bias, 7.0, 1.0)
    memory, pos, grid, ltrb, mask = decoder_inputs()
    cell = np.array([1 / GRID[0], 1 / GRID[1]])
    w = {k: v.numpy() for k, v in tr.decoder.state_dict().items()}
    state = [{k: v.numpy() for k, v in m.state_dict().items()} for m in boxes + points]
    want = decoder(w, state[:3], state[3:], 4, memory, pos, (3, 4), mask, grid, ltrb, cell)
    t = [torch.from_numpy(a) for a in (memory, pos, grid, ltrb, mask, cell)]
    with torch.no_grad():
        got = tr.decoder(torch.zeros(2, Q, 32, dtype=torch.float64), t[0], t[1], (3, 4), t[4], t[2], t[3], t[5],
                         boxes, points)
        control = SAPTransformer(32, 4, 0, 3, 64, 0.0, sdg=False, conv_init=False).double().decoder
        control.load_state_dict({k: v for k, v in tr.decoder.state_dict().items() if ".sdg." not in k})
        hs_control = control(torch.zeros(2, Q, 32, dtype=torch.float64), t[0], t[1], (3, 4), t[4], t[2], t[3], t[5],
                             boxes, points)[0]
    err = max(np.abs(a.numpy() - b).max() for part, ref in zip(got, want) for a, b in zip(part, ref))
    assert err <= 1e-12, err
    assert np.abs(got[1][2].numpy() - grid).max() > 1e-2  # the points move
    assert np.abs(hs_control[-1].numpy() - want[0][-1]).max() > 1e-3


def test_points_stay_in_their_cells_and_boxes_contain_them():
    """With large point and side deltas every predicted point stays in [grid, grid + cell] and inside its box;
    the points fed to later layers are detached."""
    model, _, _ = tiny()
    moving_points(model, std=3.0, push=9.0)
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(IMAGES), torch.from_numpy(MASKS))
    grid = model.refpoint_embed.weight.sigmoid()  # the corners, as far as the logit clamp allows
    cell = torch.tensor([1 / GRID[0], 1 / GRID[1]])
    for layer in out["aux_outputs"] + [out]:
        point, box = layer["pred_points"], layer["pred_boxes"]
        assert ((point >= grid - 1e-6) & (point <= grid + cell + 1e-6)).all()
        assert ((point - box[..., :2]).abs() <= box[..., 2:] / 2 + 1e-6).all()
    assert ((out["pred_points"] - grid) / cell).max() > 0.9  # they do move, to the far end of a cell


def test_conv_init_content_is_sampled_at_the_grid_points():
    """initial_content = point_transfer(memory) read bilinearly at each grid point (align_corners false: x in
    [0, 1] of the map -> pixel x W - 0.5), from its definition."""
    torch.manual_seed(0)
    tr = SAPTransformer(32, 4, 0, 1, 64, 0.0).double()
    memory = torch.randn(1, 32, 3, 5, dtype=torch.float64)
    grid = torch.rand(1, 7, 2, dtype=torch.float64)
    with torch.no_grad():
        got = tr.initial_content(memory, grid)[0].numpy()
        feat = tr.point_transfer(memory)[0].numpy()  # [D, H, W]
    want = np.zeros((7, 32))
    for q, (x, y) in enumerate(grid[0].numpy()):
        px, py = x * 5 - 0.5, y * 3 - 0.5
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                if 0 <= yy < 3 and 0 <= xx < 5:  # zero padding outside
                    want[q] += wy * wx * feat[:, yy, xx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.abs(want).max() > 1e-3


def test_sap_terms_from_their_definition():
    """loss_obj = focal loss of the objectness towards the IoU of the matched boxes (0 elsewhere), loss_inner = matched
    points outside their GT, both / num_boxes, on the last layer's pairs."""
    model, criterion, _ = tiny()
    moving_points(model)
    model.train()
    out, losses = _loss(model, criterion)
    n_layers = criterion.num_layers
    indices = criterion.matcher(*criterion._numpy(out["pred_logits"], out["pred_boxes"]), TARGETS,
                                objectness=criterion._numpy(out["pred_objs"])[0],
                                points=criterion._numpy(out["pred_points"])[0])
    batch, query, gt = pair_arrays(indices, [len(t["labels"]) for t in TARGETS])
    boxes = out["pred_boxes"].detach().double().numpy()[batch, query]
    gt_boxes = np.concatenate([t["boxes"] for t in TARGETS]).astype(np.float64)[gt]
    xyxy = lambda b: np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)  # noqa: E731
    p, g = xyxy(boxes), xyxy(gt_boxes)
    inter = np.prod(np.clip(np.minimum(p[:, 2:], g[:, 2:]) - np.maximum(p[:, :2], g[:, :2]), 0, None), 1)
    iou = inter / (np.prod(p[:, 2:] - p[:, :2], 1) + np.prod(g[:, 2:] - g[:, :2], 1) - inter)
    target = np.zeros((2, Q))
    target[batch, query] = iou
    prob = 1 / (1 + np.exp(-out["pred_objs"].detach().double().numpy()[..., 0]))
    bce = -(target * np.log(prob) + (1 - target) * np.log(1 - prob))
    p_t = prob * target + (1 - prob) * (1 - target)
    focal = (0.25 * target + 0.75 * (1 - target)) * bce * (1 - p_t) ** 2
    assert abs(losses["loss_obj"].item() - focal.sum() / 3.0) <= 1e-6 * focal.sum()
    point = out["pred_points"].detach().numpy()[batch, query]
    outside = ~((point >= g[:, :2]) & (point <= g[:, 2:])).all(1)
    assert losses["loss_inner"].item() == pytest.approx(2.0 * outside.sum() / 3.0)
    assert n_layers == 3 and len(indices) == 2


def test_one_step_lowers_the_loss():
    model, criterion, _ = tiny()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-3)
    assert after < before - 0.1, (before, after)


def test_config_checks():
    """Keys of other archs are refused (dn too: SAP-DETR has no denoising); sap.* is refused elsewhere; the grid
    must hold num_queries cells; conv_init needs a width GroupNorm(32) divides."""
    effective = A.effective(model_cfg(two_stage=True, num_feature_levels=4))
    assert not effective["two_stage"] and effective["num_feature_levels"] == 1 and not effective["dn"]["enabled"]
    for overrides, key in [(dict(dn=dict(number=7)), "model.dn.number=7"),
                           (dict(hybrid=dict(k=3)), "model.hybrid.k=3")]:
        with pytest.raises(ValueError, match="^" + re.escape(key) + " does not apply to model.arch=sap_detr"):
            A.check(model_cfg(**overrides))
    with pytest.raises(ValueError, match=re.escape("model.sap.grid=[4, 4] does not apply to model.arch=dab_detr")):
        A.check(model_cfg(arch="dab_detr", sap=dict(grid=[4, 4])))
    with pytest.raises(ValueError, match=re.escape("model.sap.grid [3, 2] gives 6 queries, model.num_queries is 8")):
        tiny(num_queries=8)
    with pytest.raises(ValueError, match=re.escape("model.sap.grid must be [columns, rows]")):
        A.detr_args(A.effective(model_cfg(sap=dict(grid=[6]))))
    with pytest.raises(ValueError, match="GroupNorm"):
        SAPTransformer(d_model=48, nhead=4)
    SAPTransformer(d_model=48, nhead=4, conv_init=False)
