"""Paddle loss functions and criterion: element-by-element formulas (mirror of test_torch_criterion.py) and parity
with the torch criterion (same outputs, targets, num_boxes and rng -> same loss dict and gradients)."""
import math

import numpy as np
import paddle
import pytest
import torch

from common.denoising import prepare_dn
from common.matching import HungarianMatcher, OneToManyAssigner
from paddle_impl.models import box_ops as pbox
from paddle_impl.models.criterion import SetCriterion, ice_loss, sigmoid_focal_loss
from paddle_impl.models.utils import numpy_rng, targets_to_tensors
from torch_impl.models import box_ops as tbox
from torch_impl.models.criterion import SetCriterion as TorchSetCriterion


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _iou_cxcywh(a, b):
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union, inter / union - (hull - union) / hull


def _t(a, dtype="int64"):
    return paddle.to_tensor(np.asarray(a), dtype=dtype)


def test_ice_loss_matches_elementwise_formula():
    logits = paddle.to_tensor([[[0.5, -1.0], [2.0, 0.3], [-0.7, 1.5]]], stop_gradient=False)
    pos = (_t([0, 0]), _t([0, 2]), _t([1, 0]))
    t = paddle.to_tensor([0.6, 0.3])
    loss = ice_loss(logits, pos, t, normalizer=2.0, gamma=2.0)
    expected = 0.0
    targets = {(0, 1): 0.6, (2, 0): 0.3}
    for q in range(3):
        for c in range(2):
            p = _sig(logits[0, q, c].item())
            if (q, c) in targets:
                tt = targets[(q, c)]
                expected += -tt * math.log(p) - (1 - tt) * math.log(1 - p)
            else:
                expected += -p ** 2 * math.log(1 - p)
    assert loss.item() == pytest.approx(expected / 2.0, rel=1e-6)
    loss.backward()
    # the negative weight p^2 is not detached (release): d/dx of -p^2 log(1-p) at an unmatched entry
    x = logits[0, 0, 0].item()
    p = _sig(x)
    grad = -(2 * p * p * (1 - p)) * math.log(1 - p) + p ** 2 * p
    assert logits.grad[0, 0, 0].item() == pytest.approx(grad / 2.0, rel=1e-5)
    # a positive entry's gradient is the plain BCE one, (p - t) / normalizer: no gradient through p^gamma there
    assert logits.grad[0, 0, 1].item() == pytest.approx((_sig(-1.0) - 0.6) / 2.0, rel=1e-5)


def test_focal_loss_matches_elementwise_formula():
    logits = paddle.to_tensor([[[0.5, -1.0], [2.0, 0.3]]])
    loss = sigmoid_focal_loss(logits, (_t([0]), _t([1]), _t([0])), 3.0, 0.25, 2.0)
    expected = 0.0
    for q in range(2):
        for c in range(2):
            p = _sig(logits[0, q, c].item())
            if (q, c) == (1, 0):
                expected += -0.25 * (1 - p) ** 2 * math.log(p)
            else:
                expected += -0.75 * p ** 2 * math.log(1 - p)
    assert loss.item() == pytest.approx(expected / 3.0, rel=1e-6)


def _criterion(loss_type="ice", assigner=True, dn=True, cls=SetCriterion):
    return cls(3, HungarianMatcher(), OneToManyAssigner(k=2, threshold=0.1) if assigner else None,
               num_layers=2, two_stage=True, dn=dn, loss_type=loss_type)


def _layer_np(seed, n=6, c=3, b=2):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((b, n, c)).astype(np.float32)
    boxes = np.concatenate([rng.random((b, n, 2)) * 0.5 + 0.25, rng.random((b, n, 2)) * 0.3 + 0.1], -1)
    return {"pred_logits": logits, "pred_boxes": boxes.astype(np.float32)}


def _layer(seed, n=6, c=3):
    return {k: paddle.to_tensor(v, stop_gradient=False) for k, v in _layer_np(seed, n, c).items()}


TARGETS = [{"labels": np.array([1, 2, 1]),
            "boxes": np.array([[0.4, 0.5, 0.2, 0.3], [0.6, 0.6, 0.2, 0.2], [0.45, 0.5, 0.25, 0.3]], np.float32)},
           {"labels": np.array([0]), "boxes": np.array([[0.5, 0.4, 0.3, 0.3]], np.float32)}]


def _tgt(targets=TARGETS):
    return [{"labels": paddle.to_tensor(t["labels"]), "boxes": paddle.to_tensor(t["boxes"])} for t in targets]


def _direct_terms(layer, pairs, normalizer, ice, rank_tau=None):
    """Element-by-element reference of (ce, l1, giou) for pairs [(b, q, gt)]."""
    logits = layer["pred_logits"].numpy().astype(np.float64)
    boxes = layer["pred_boxes"].numpy().astype(np.float64)
    entries = []  # (b, q, class, t, box weight)
    for b, q, g in pairs:
        c = int(TARGETS[b]["labels"][g])
        iou, _ = _iou_cxcywh(boxes[b, q], TARGETS[b]["boxes"][g].astype(np.float64))
        entries.append([b, q, c, max(_sig(logits[b, q, c]) ** 0.25 * iou ** 0.75, 0.01), 1.0])
    if rank_tau is not None:
        for b, _, g in set((b, 0, g) for b, _, g in pairs):
            mine = [e for e, (bb, _, gg) in zip(entries, pairs) if (bb, gg) == (b, g)]
            for r, e in enumerate(sorted(mine, key=lambda e: -e[3])):
                e[4] = math.exp(-r / rank_tau)
                e[3] *= e[4]
    ce = 0.0
    pos = {}
    for b, q, c, t, _ in entries:
        pos[(b, q, c)] = max(pos.get((b, q, c), 0), t)
    for idx in np.ndindex(*logits.shape):
        p = _sig(logits[idx])
        if ice:
            t = pos.get(idx)
            ce += -t * math.log(p) - (1 - t) * math.log(1 - p) if t is not None else -p ** 2 * math.log(1 - p)
        else:
            ce += -0.25 * (1 - p) ** 2 * math.log(p) if idx in pos else -0.75 * p ** 2 * math.log(1 - p)
    l1 = giou = 0.0
    for (b, q, g), e in zip(pairs, entries):
        tb = TARGETS[b]["boxes"][g].astype(np.float64)
        l1 += e[4] * np.abs(boxes[b, q] - tb).sum()
        giou += e[4] * (1 - _iou_cxcywh(boxes[b, q], tb)[1])
    return ce / normalizer, l1 / normalizer, giou / normalizer


@pytest.mark.parametrize("ice, one_to_many", [(True, False), (True, True), (False, False)])
def test_layer_terms_match_direct_computation(ice, one_to_many):
    crit = _criterion("ice" if ice else "focal")
    layer = _layer(0)
    # query 4 of image 0 is positive for GT 0 and GT 2, both class 1: one (query, class) entry, the larger t
    indices = [(np.array([4, 1, 4, 0, 4]), np.array([0, 0, 1, 1, 2])), (np.array([2, 5]), np.array([0, 0]))]
    pairs = [(b, int(q), int(g)) for b, (qs, gs) in enumerate(indices) for q, g in zip(qs, gs)]
    terms = crit._terms(layer, _tgt(), indices, 2.5, one_to_many=one_to_many)
    ce, l1, giou = _direct_terms(layer, pairs, 2.5, ice, rank_tau=1.5 if (ice and one_to_many) else None)
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss_bbox"].item() == pytest.approx(l1, rel=1e-5)
    assert terms["loss_giou"].item() == pytest.approx(giou, rel=1e-5)


def _outputs(pad=True):
    def stream(seed, n=6):
        last = _layer(seed + 1, n)
        return dict(last, aux_outputs=[_layer(seed, n)])
    out = stream(0)
    out["enc_outputs"] = _layer(10, n=20)
    out["c_outputs"] = stream(20)
    if pad:  # 2 groups of 4 slots (2 positives, 2 negatives): image 0 has GT 0, 1; image 1 has GT 0
        out["dn_meta"] = {"pad_size": 8, "num_groups": 2, "group_size": 4,
                          "positive_idx": [(np.array([0, 1, 4, 5]), np.array([0, 1, 0, 1])),
                                           (np.array([0, 4]), np.array([0, 0]))]}
        out["dn_outputs"] = stream(30, 8)
        out["c_dn_outputs"] = stream(40, 8)
    else:
        out["dn_meta"] = {"pad_size": 0, "num_groups": 0, "group_size": 0, "positive_idx": [None, None]}
    return out


def test_criterion_terms_weights_and_normalizers():
    crit = _criterion()
    out = _outputs()
    losses = crit(out, TARGETS, num_boxes=3)
    assert set(losses) == set(crit.weight_dict)
    assert len(losses) == 3 * (2 * 4 + 1)  # 3 terms x (2 layers x 4 streams + encoder)
    assert crit.weight_dict["loss_bbox_c_0"] == 5 and crit.weight_dict["loss_ce_enc"] == 2
    tgt = _tgt()
    dn = crit._terms(out["dn_outputs"], tgt, out["dn_meta"]["positive_idx"], 3 * 2)  # num_boxes x groups
    assert losses["loss_bbox_dn"].item() == pytest.approx(5 * dn["loss_bbox"].item(), rel=1e-6)
    assert losses["loss_ce_dn"].item() == pytest.approx(dn["loss_ce"].item(), rel=1e-6)
    # encoder: class-agnostic focal loss, matched on class 0
    enc = out["enc_outputs"]
    binary = [{"labels": np.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in TARGETS]
    idx = HungarianMatcher()(enc["pred_logits"].numpy(), enc["pred_boxes"].numpy(), binary)
    bt = [{"labels": paddle.zeros([len(t["labels"])], dtype="int64"), "boxes": t["boxes"]} for t in tgt]
    ref = crit._terms(enc, bt, idx, 3, focal=True)
    assert losses["loss_ce_enc"].item() == pytest.approx(2 * ref["loss_ce"].item(), rel=1e-6)
    assert losses["loss_giou_enc"].item() == pytest.approx(2 * ref["loss_giou"].item(), rel=1e-6)


def test_c_decoder_normalized_by_three_times_num_boxes():
    crit = _criterion()
    out = _outputs()
    paddle.seed(5)
    losses = crit(out, TARGETS, num_boxes=3)
    # same assignment again: the assigner draws from a numpy rng seeded by Paddle's global RNG
    paddle.seed(5)
    layer = out["c_outputs"]
    rng = numpy_rng()
    crit.assigner(out["c_outputs"]["aux_outputs"][0]["pred_logits"].numpy(),
                  out["aux_outputs"][0]["pred_boxes"].numpy(), TARGETS, rng=rng)  # layer 0 first
    idx = crit.assigner(layer["pred_logits"].numpy(), out["pred_boxes"].numpy(), TARGETS, rng=rng)
    assert sum(len(q) for q, _ in idx) > 0
    ref = crit._terms(layer, _tgt(), idx, 9.0, one_to_many=True)
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        assert losses[k + "_c"].item() == pytest.approx(ref[k].item() * crit.weight_dict[k], rel=1e-6)


def test_criterion_without_gt_and_without_dn_queries():
    crit = _criterion()
    empty = [{"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4), np.float32)}] * 2
    out = _outputs(pad=False)
    losses = crit(out, empty, num_boxes=0)
    assert set(losses) == set(crit.weight_dict)
    assert all(bool(paddle.isfinite(v)) for v in losses.values())
    assert losses["loss_ce_dn"].item() == 0 and losses["loss_bbox"].item() == 0
    assert losses["loss_ce"].item() > 0  # every query is a negative
    sum(losses.values()).backward()
    assert np.isfinite(out["pred_logits"].grad.numpy()).all()


def test_criterion_without_dac_and_dn_keys():
    crit = _criterion("focal", assigner=False, dn=False)
    out = _outputs()
    for k in ("c_outputs", "dn_meta", "dn_outputs", "c_dn_outputs"):
        out.pop(k)
    losses = crit(out, TARGETS, 3)
    assert set(losses) == {f"loss_{t}{s}" for t in ("ce", "bbox", "giou") for s in ("", "_0", "_enc")}


def test_targets_to_tensors():
    out = targets_to_tensors([{"labels": np.array([3]), "boxes": np.array([[0.5, 0.5, 0.1, 0.2]]), "image_id": 7},
                              {"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4))}], paddle.CPUPlace())
    assert out[0]["labels"].dtype == paddle.int64 and out[0]["boxes"].dtype == paddle.float32
    assert set(out[0]) == {"labels", "boxes"} and tuple(out[1]["boxes"].shape) == (0, 4)
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'boxes'"):
        targets_to_tensors([{"labels": np.array([1])}], paddle.CPUPlace())


def test_rng_makes_the_one_to_many_sampling_reproducible():
    crit = SetCriterion(3, HungarianMatcher(), OneToManyAssigner(k=2, threshold=0.0, positive_fraction=0.5),
                        num_layers=2)
    out = _outputs()
    runs = [crit(out, TARGETS, 3, rng=np.random.default_rng(7)) for _ in range(2)]
    assert all(runs[0][k].item() == runs[1][k].item() for k in runs[0])


# ---- parity with torch_impl ----

def test_box_ops_match_torch_values_and_gradients():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 1, (7, 2, 2))
    a = np.concatenate([xy[:, 0], xy[:, 0] + rng.uniform(0.01, 0.5, (7, 2))], 1).astype(np.float32)
    b = np.concatenate([xy[:, 1], xy[:, 1] + rng.uniform(0.01, 0.5, (7, 2))], 1).astype(np.float32)
    b[0] = a[0] + 2  # disjoint pair: IoU 0, GIoU < 0
    b[1] = a[1]  # identical pair
    cxcywh = np.concatenate([a[:, :2], a[:, 2:] - a[:, :2]], 1)
    ta, tb, tc = (torch.tensor(x, requires_grad=True) for x in (a, b, cxcywh))
    pa, pb, pc = (paddle.to_tensor(x, stop_gradient=False) for x in (a, b, cxcywh))
    pairs = [(tbox.elementwise_box_iou(ta, tb)[0], pbox.elementwise_box_iou(pa, pb)[0]),
             (tbox.elementwise_box_iou(ta, tb)[1], pbox.elementwise_box_iou(pa, pb)[1]),
             (tbox.elementwise_generalized_box_iou(ta, tb), pbox.elementwise_generalized_box_iou(pa, pb)),
             (tbox.box_iou(ta, tb), pbox.box_iou(pa, pb)), (tbox.box_area(ta), pbox.box_area(pa)),
             (tbox.box_cxcywh_to_xyxy(tc), pbox.box_cxcywh_to_xyxy(pc))]
    for t_out, p_out in pairs:
        np.testing.assert_allclose(p_out.numpy(), t_out.detach().numpy(), rtol=1e-6, atol=1e-7)
    w = rng.standard_normal(7).astype(np.float32)  # a generic linear functional, so every partial derivative shows
    (tbox.elementwise_generalized_box_iou(ta, tb) * torch.tensor(w)).sum().backward()
    (pbox.elementwise_generalized_box_iou(pa, pb) * paddle.to_tensor(w)).sum().backward()
    np.testing.assert_allclose(pa.grad.numpy(), ta.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pb.grad.numpy(), tb.grad.numpy(), rtol=1e-5, atol=1e-6)


def _parity_case(gts, dn, dac, layers=2, queries=12, classes=4, seed=0):
    """numpy outputs dict in the model's layout and its targets: per-image GT counts `gts`; dn: CDN queries from
    common.denoising (as the model builds them); dac: a C-decoder stream."""
    rng = np.random.default_rng(seed)
    targets = []
    for n in gts:
        xy = rng.uniform(0.2, 0.8, (n, 2))
        wh = rng.uniform(0.05, 0.4, (n, 2))
        targets.append({"labels": rng.integers(0, classes, n), "boxes": np.concatenate([xy, wh], 1).astype(np.float32)})
    seeds = iter(range(seed * 100, seed * 100 + 100))

    def stream(n):
        ls = [_layer_np(next(seeds), n, classes, len(gts)) for _ in range(layers)]
        return dict(ls[-1], aux_outputs=ls[:-1])
    out = stream(queries)
    out["enc_outputs"] = _layer_np(next(seeds), 30, classes, len(gts))
    if dac:
        out["c_outputs"] = stream(queries)
    if dn:
        meta = prepare_dn(targets, classes, queries, 10, 0.5, 1.0, True, rng)  # 2-3 groups
        out["dn_meta"] = {k: meta[k] for k in ("pad_size", "num_groups", "group_size", "positive_idx")}
        if meta["pad_size"] > 0:
            out["dn_outputs"] = stream(meta["pad_size"])
            if dac:
                out["c_dn_outputs"] = stream(meta["pad_size"])
    return out, targets


def _convert(tree, leaf):
    if isinstance(tree, dict):
        return {k: v if k == "dn_meta" else _convert(v, leaf) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_convert(v, leaf) for v in tree]
    return leaf(tree)


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        return [x for k, v in tree.items() if k != "dn_meta" for x in _leaves(v, f"{path}/{k}")]
    if isinstance(tree, list):
        return [x for i, v in enumerate(tree) for x in _leaves(v, f"{path}/{i}")]
    return [(path, tree)]


@pytest.mark.parametrize("loss_type", ["focal", "ice"])
@pytest.mark.parametrize("dn", [False, True])
@pytest.mark.parametrize("dac", [False, True])
@pytest.mark.parametrize("gts", [(3, 2), (4, 0), (0, 0)], ids=["gt", "zero_gt_image", "no_gt"])
def test_criterion_matches_torch(loss_type, dn, dac, gts):
    out, targets = _parity_case(gts, dn, dac, seed=len(gts) + gts[0] + 3 * gts[1])
    kw = dict(num_layers=2, two_stage=True, dn=dn, loss_type=loss_type)
    crits = [cls(4, HungarianMatcher(), OneToManyAssigner(k=3, threshold=0.1) if dac else None, **kw)
             for cls in (TorchSetCriterion, SetCriterion)]
    t_out = _convert(out, lambda a: torch.from_numpy(a).requires_grad_())
    p_out = _convert(out, lambda a: paddle.to_tensor(a, stop_gradient=False))
    num_boxes = float(sum(gts))
    t_loss = crits[0](t_out, targets, num_boxes, rng=np.random.default_rng(11))
    p_loss = crits[1](p_out, targets, num_boxes, rng=np.random.default_rng(11))
    assert set(p_loss) == set(t_loss) == set(crits[1].weight_dict)
    for k in t_loss:  # measured: <= 3e-7 relative
        assert p_loss[k].item() == pytest.approx(t_loss[k].item(), rel=1e-5, abs=1e-7), k
    sum(t_loss.values()).backward()
    sum(p_loss.values()).backward()
    for (path, t), (_, p) in zip(_leaves(t_out), _leaves(p_out)):  # measured: <= 3e-7 absolute
        assert (t.grad is None) == (p.grad is None), path
        if t.grad is not None:
            np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=path)
