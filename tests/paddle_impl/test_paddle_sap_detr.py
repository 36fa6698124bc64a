"""SAP-DETR in the Paddle tree: the torch tests' mirror (outputs, the parameter names, the decoder against the
numpy brute force, points kept in their cells, the conv-initialized content, training); whole-model parity with
torch is tests/test_sap_detr_parity.py."""
import numpy as np
import paddle

from convert.frameworks import paddle_linear_weights
from convert.rules import paddle_name_to_torch
from paddle_impl.models import build_model
from paddle_impl.models.dac_detr import MLP
from paddle_impl.models.sap_detr import grid_corners
from paddle_impl.models.sap_transformer import SAPTransformer
from tests.paddle_impl.training_checks import loss_before_and_after_one_step, params_without_gradient
from tests.sap_detr_case import GRID, IMAGES, MASKS, TARGETS, decoder, decoder_inputs, model_cfg

Q = GRID[0] * GRID[1]


def tiny(**overrides):
    paddle.seed(0)
    return build_model({"model": model_cfg(**overrides)})


def _loss(model, criterion):
    out = model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS), TARGETS)
    return out, criterion(out, TARGETS, 3.0)


def _torch_layout(layer):
    linear = paddle_linear_weights(layer)
    return {k: (v.numpy().T if k in linear else v.numpy()) for k, v in layer.state_dict().items()}


def test_outputs_and_loss_terms():
    model, criterion, post = tiny()
    model.train()
    out, losses = _loss(model, criterion)
    assert set(out) == {"pred_logits", "pred_boxes", "pred_objs", "pred_points", "aux_outputs"}
    shapes = {k: out[k].shape for k in ("pred_logits", "pred_boxes", "pred_objs", "pred_points")}
    assert shapes == {"pred_logits": [2, Q, 4], "pred_boxes": [2, Q, 4], "pred_objs": [2, Q, 1],
                      "pred_points": [2, Q, 2]}
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_obj": 1.0, "loss_inner": 2.0}
    assert criterion.weight_dict == {f"{k}{s}": w for s in ("_0", "_1", "") for k, w in weights.items()}
    assert set(losses) == set(criterion.weight_dict) and all(np.isfinite(v.item()) for v in losses.values())
    model.eval()
    with paddle.no_grad():
        results = post(model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS)),
                       paddle.to_tensor([[480, 640], [300, 200]]))
    assert results[0]["boxes"].shape == [20, 4]


def test_parameters_are_the_torch_trees():
    """The same names (convert/rules.py's mapping) and shapes as torch_impl's SAPDETR; the grid is fixed, the
    heads start as copies of one."""
    import torch

    from torch_impl.models import build_model as build_torch

    model, _, _ = tiny()
    torch.manual_seed(0)
    reference = build_torch({"model": model_cfg()})[0]
    linear = paddle_linear_weights(model)
    ours = {paddle_name_to_torch(k): tuple(v.shape[::-1] if k in linear else v.shape)
            for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert model.refpoint_embed.weight.stop_gradient
    np.testing.assert_allclose(_sigmoid(model.refpoint_embed.weight.numpy()), grid_corners(*GRID).numpy(), atol=1.1e-3)
    for heads in (model.bbox_embed, model.point_embed, model.class_embed):
        for a, b in zip(heads[0].parameters(), heads[-1].parameters()):
            assert np.array_equal(a.numpy(), b.numpy()) and a.name != b.name


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_every_trainable_parameter_gets_gradient():
    """As in the torch tests (first sides of 0.05, so that the points get gradient)."""
    model, criterion, _ = tiny()
    model.refbbox_embed.weight.set_value(paddle.full(model.refbbox_embed.weight.shape, float(np.log(0.05 / 0.95))))
    no_grad = params_without_gradient(model, lambda: sum(_loss(model, criterion)[1].values()))
    heads = [f"{h}.{i}.layers.{j}.{w}" for i in range(3) for h in ("bbox_embed", "point_embed") for j in (0, 1)
             for w in ("weight", "bias")]
    assert sorted(no_grad[0]) == sorted(heads)
    assert no_grad[1] == []


def test_decoder_matches_brute_force():
    """As in the torch tests: the whole decoder against tests/sap_detr_case.py's numpy formulas, float64."""
    paddle.seed(0)
    tr = SAPTransformer(32, 4, 0, 3, 64, 0.0, conv_init=False)
    boxes = [MLP(32, 32, 4, 3) for _ in range(3)]
    points = [MLP(32, 32, 2, 3) for _ in range(3)]
    for m in [tr] + boxes + points:
        m.to(dtype="float64")
        m.eval()
    for p in list(tr.decoder.parameters()) + [p for m in boxes + points for p in m.parameters()]:
        p.set_value(paddle.normal(0.0, 0.3, p.shape).astype("float64"))
    for m in points:  # off the cells' corners
        m.layers[-1].bias.set_value(paddle.normal(7.0, 1.0, [2]).astype("float64"))
    memory, pos, grid, ltrb, mask = decoder_inputs()
    cell = np.array([1 / GRID[0], 1 / GRID[1]])
    want = decoder(_torch_layout(tr.decoder), [_torch_layout(m) for m in boxes], [_torch_layout(m) for m in points],
                   4, memory, pos, (3, 4), mask, grid, ltrb, cell)
    t = [paddle.to_tensor(a) for a in (memory, pos, grid, ltrb, mask, cell)]
    with paddle.no_grad():
        got = tr.decoder(paddle.zeros([2, Q, 32], "float64"), t[0], t[1], (3, 4), t[4], t[2], t[3], t[5], boxes,
                         points)
    err = max(np.abs(a.numpy() - b).max() for part, ref in zip(got, want) for a, b in zip(part, ref))
    assert err <= 1e-11, err  # Paddle's float64 kernels (cf. test_paddle_dab_detr)
    assert np.abs(got[1][2].numpy() - grid).max() > 1e-2


def test_points_stay_in_their_cells_and_boxes_contain_them():
    model, _, _ = tiny()
    for i, head in enumerate(list(model.bbox_embed) + list(model.point_embed)):
        paddle.seed(i)
        head.layers[-1].weight.set_value(paddle.normal(0.0, 3.0, head.layers[-1].weight.shape))
        push = 9.0 if i >= 3 else 0.0
        head.layers[-1].bias.set_value(paddle.normal(push, 3.0, head.layers[-1].bias.shape))
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(IMAGES), paddle.to_tensor(MASKS))
    grid = _sigmoid(model.refpoint_embed.weight.numpy())  # the corners, as far as the logit clamp allows
    cell = np.array([1 / GRID[0], 1 / GRID[1]])
    for layer in out["aux_outputs"] + [out]:
        point, box = layer["pred_points"].numpy(), layer["pred_boxes"].numpy()
        assert ((point >= grid - 1e-6) & (point <= grid + cell + 1e-6)).all()
        assert (np.abs(point - box[..., :2]) <= box[..., 2:] / 2 + 1e-6).all()
    assert ((out["pred_points"].numpy() - grid) / cell).max() > 0.9


def test_conv_init_content_is_sampled_at_the_grid_points():
    """As in the torch tests: bilinear reads of point_transfer(memory), align_corners false, zeros outside."""
    paddle.seed(0)
    tr = SAPTransformer(32, 4, 0, 1, 64, 0.0)
    tr.to(dtype="float64")
    memory = paddle.randn([1, 32, 3, 5], "float64")
    grid = paddle.rand([1, 7, 2], "float64")
    with paddle.no_grad():
        got = tr.initial_content(memory, grid)[0].numpy()
        feat = tr.point_transfer(memory)[0].numpy()
    want = np.zeros((7, 32))
    for q, (x, y) in enumerate(grid[0].numpy()):
        px, py = x * 5 - 0.5, y * 3 - 0.5
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                if 0 <= yy < 3 and 0 <= xx < 5:
                    want[q] += wy * wx * feat[:, yy, xx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_one_step_lowers_the_loss():
    model, criterion, _ = tiny()
    before, after = loss_before_and_after_one_step(model, lambda: sum(_loss(model, criterion)[1].values()), lr=1e-3)
    assert after < before - 0.1, (before, after)
